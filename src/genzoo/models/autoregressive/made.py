"""MADE: the masked autoencoder for distribution estimation (Germain, Gregor, Murray &
Larochelle 2015).

An MLP whose weights are masked so that output d sees only the inputs before d in an ordering.
Each input has a degree m⁰(d) ∈ {1..D} (its position in the ordering); each hidden unit k of
layer l draws a degree m^l(k) uniformly from {min_k' m^{l-1}(k'), …, D − 1}; then

    M^l_{k,k'} = 1[m^l(k) ≥ m^{l-1}(k')],        M^out_{d,k} = 1[m⁰(d) > m^L(k)],
    h^l = ReLU(b^l + (W^l ⊙ M^l) h^{l-1}),        p(x_d = 1 | x_<d) = σ(c_d + (V ⊙ M^out)_d h^L).

With ``direct_connections`` the inputs also reach the outputs through a masked linear map, the
paper's direct input-to-output connections (an FVSBN beside the network):

    p(x_d = 1 | x_<d) = σ(c_d + (V ⊙ M^out)_d h^L + (A ⊙ M^direct)_d x),   M^direct_{d,j} = 1[m⁰(d) > m⁰(j)].

Connectivity-agnostic training cycles through K fixed masks (one per minibatch; the masks come
from ``mask_seed`` and never change); with ``order_agnostic`` each mask also has its own random
ordering. Evaluation averages the K models' probabilities, an exact mixture likelihood:

    p(x) = (1/K) Σ_k p_k(x).

With one mask the hidden units are numbered in order of degree (a relabelling of units, which
changes nothing about the model), so that every mask is a staircase: the layers then store and
multiply only its non-zero row blocks (``genzoo.nn.RowBlockMaskedLinear``), about 56% of the
weights and of the dense products at 784-8000-784. Stored so, the layers that read x itself (the
first one and the direct connections) sum their weight columns over the ones of x instead of
multiplying; dense layers (K masks, small layers, ``row_blocks = 0``) multiply.

Sampling computes each hidden unit once, when the inputs it depends on are known: after x with
degree t is drawn, the units of degree t are computed and the next output needs nothing else, so
a sample costs one forward pass instead of D.

Reference: Germain et al., "MADE: Masked Autoencoder for Distribution Estimation" (ICML 2015).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from genzoo.config import require
from genzoo.models.autoregressive.base import BernoulliAutoregressive, uniforms_sampler
from genzoo.models.base import register_model
from genzoo.nn import MaskedLinear, RowBlockMaskedLinear, row_blocks, row_blocks_fraction

__all__ = ["MADE", "MADEConfig", "made_degrees", "made_masks", "made_direct_mask"]


@dataclass
class MADEConfig:
    #: units of each hidden layer, input side first
    hidden_sizes: tuple[int, ...] = (500,)
    #: K, the number of masks cycled through in training and averaged over in evaluation
    num_masks: int = 1
    #: give each mask its own random ordering of the inputs (else the natural order)
    order_agnostic: bool = False
    #: seed of the masks' random degrees (and orderings), fixed so that a model keeps its masks
    mask_seed: int = 0
    #: direct input-to-output connections (masked like an FVSBN), as in the paper's MNIST runs
    direct_connections: bool = False
    #: with one mask, each layer of at least ``row_blocks_min_weights`` weights splits its rows
    #: into this many blocks and stores and multiplies only what each block's mask lets through
    #: (the same model, with fewer weights for Adam to update and, on the CPU, fewer operations);
    #: 0 or 1 keep every layer dense. Only natural-order masks are staircases: the masks of a K > 1
    #: ensemble and of an order-agnostic MADE stay dense, and so does a layer whose blocks would
    #: still multiply more than 85% of it.
    row_blocks: int = 8
    #: the smallest layer (in weights) that ``row_blocks`` splits
    row_blocks_min_weights: int = 1 << 18
    #: a row-block layer that reads x itself (the first layer, the direct connections) sums its
    #: weight columns over the ones of x instead of multiplying (on the CPU; genzoo.nn.masked's
    #: docstring); False multiplies, as the other layers do
    binary_input_sums: bool = True

    def __post_init__(self) -> None:
        self.hidden_sizes = tuple(self.hidden_sizes)
        require(len(self.hidden_sizes) >= 1, "made: hidden_sizes needs at least one layer")
        require(all(h >= 1 for h in self.hidden_sizes), f"made: hidden_sizes must be positive, got {self.hidden_sizes}")
        require(self.num_masks >= 1, f"made: num_masks must be at least 1, got {self.num_masks}")
        require(self.row_blocks >= 0, f"made: row_blocks must be 0 (dense) or more, got {self.row_blocks}")
        require(self.row_blocks_min_weights >= 0,
                f"made: row_blocks_min_weights must be 0 or more, got {self.row_blocks_min_weights}")


def made_degrees(num_dims: int, hidden_sizes: tuple[int, ...], order_agnostic: bool, seed: int,
                 sort_hidden: bool = False) -> list[torch.Tensor]:
    """Degrees [m⁰, m¹, …, m^L] of one mask, drawn reproducibly from ``seed``; ``sort_hidden``
    numbers each layer's units in order of degree (the same draws, relabelled)."""
    generator = torch.Generator().manual_seed(seed)
    if order_agnostic:
        order = torch.randperm(num_dims, generator=generator)
    else:
        order = torch.arange(num_dims)
    input_degrees = torch.empty(num_dims, dtype=torch.long)
    input_degrees[order] = torch.arange(1, num_dims + 1)
    degrees = [input_degrees]
    for size in hidden_sizes:
        low = int(degrees[-1].min()) if len(degrees) > 1 else 1
        high = max(low, num_dims - 1)
        degrees.append(torch.randint(low, high + 1, (size,), generator=generator))
    if sort_hidden:
        degrees[1:] = [torch.sort(d, stable=True).values for d in degrees[1:]]
    return degrees


def degree_mask(out_degrees: torch.Tensor, in_degrees: torch.Tensor, strict: bool) -> torch.Tensor:
    """The float mask 1[m_out(k) > m_in(k')] (strict) or 1[m_out(k) ≥ m_in(k')]."""
    # Comparing into a float tensor directly is 5× faster than building a bool mask and converting
    # it, which matters when K masks take turns at every training step.
    mask = torch.empty(len(out_degrees), len(in_degrees), device=out_degrees.device)
    compare = torch.gt if strict else torch.ge
    return compare(out_degrees.float()[:, None], in_degrees.float()[None, :], out=mask)


def made_masks(degrees: list[torch.Tensor]) -> list[torch.Tensor]:
    """The hidden masks M¹…M^L and the output mask, from the degrees."""
    masks = [degree_mask(d_out, d_in, strict=False) for d_in, d_out in zip(degrees[:-1], degrees[1:])]
    masks.append(degree_mask(degrees[0], degrees[-1], strict=True))
    return masks


def made_direct_mask(degrees: list[torch.Tensor]) -> torch.Tensor:
    """M^direct: output d sees input j directly when j comes before d in the ordering."""
    return degree_mask(degrees[0], degrees[0], strict=True)


def _reorder(tensor: torch.Tensor, rows: torch.Tensor | None, columns: torch.Tensor | None) -> torch.Tensor:
    """``tensor`` with its columns, then its rows, taken in the given orders (None: as they are)."""
    if columns is not None:
        tensor = tensor[:, columns.to(tensor.device)]
    if rows is not None:
        tensor = tensor[rows.to(tensor.device)]
    return tensor


@register_model("made", MADEConfig)
class MADE(BernoulliAutoregressive):
    #: row blocks that cover more of the dense product than this save too little for their calls
    ROW_BLOCKS_MAX_FRACTION = 0.85

    def __init__(self, data_shape: tuple[int, ...], config: MADEConfig | None = None):
        super().__init__(data_shape)
        self.config = config or MADEConfig()
        sizes = (self.num_dims, *self.config.hidden_sizes, self.num_dims)
        self.layers = nn.ModuleList(MaskedLinear(n_in, n_out) for n_in, n_out in zip(sizes[:-1], sizes[1:]))
        self.direct: MaskedLinear | RowBlockMaskedLinear | None = None
        if self.config.direct_connections:
            self.direct = MaskedLinear(self.num_dims, self.num_dims, bias=False)
            nn.init.zeros_(self.direct.weight)  # starts as the plain MADE; the data grows the FVSBN part
        # Which mask the next training step uses; a buffer so that resuming continues the cycle.
        self.register_buffer("training_step", torch.zeros((), dtype=torch.long))
        # Its value mirrored on the host, read from the buffer once after a load: reading a GPU
        # tensor waits for every queued kernel, which at each step would stall the GPU.
        self._training_step_on_host: int | None = None
        # With one mask, hidden units are numbered in order of degree (see the module docstring);
        # the initial weights are relabelled with them, so that the model is the one drawn. Saved,
        # so that a checkpoint written before units were sorted is relabelled when it loads.
        self.register_buffer("hidden_units_sorted", torch.tensor(self.sorts_hidden_units))
        if self.sorts_hidden_units:
            self._relabel_initial_hidden_units()
        self.register_load_state_dict_pre_hook(MADE._relabel_checkpoints_in_drawn_numbering)
        self.register_load_state_dict_post_hook(MADE._sync_host_state_after_load)
        self._degrees_on_device: dict[int, list[torch.Tensor]] = {}
        # layer index -> (row order, column order) that the last load applied to an older
        # checkpoint's weights, so that a resume can apply them to the optimizer's moments too
        self._relabelled_on_load: dict[int, tuple[torch.Tensor | None, torch.Tensor | None]] = {}
        self._active_mask = -1
        self.use_mask(0)
        self._store_staircase_layers_by_row_blocks()
        # Saved, so that a resume knows the layout the checkpoint's Adam moments were saved in:
        # before the layers that read x stored their blocks transposed, checkpoints lacked it.
        self.register_buffer("input_layers_transposed", torch.tensor(any(
            getattr(layer, "binary_input", False) for layer in self.masked_layers())))
        self._moments_in_other_layout = False
        self.register_load_state_dict_pre_hook(MADE._note_saved_input_layout)

    @property
    def sorts_hidden_units(self) -> bool:
        """With one mask, hidden units are numbered in order of degree; K masks keep their draws."""
        return self.config.num_masks == 1

    def masked_layers(self) -> list[MaskedLinear | RowBlockMaskedLinear]:
        """Every masked layer, the direct connections last."""
        return [*self.layers, *([self.direct] if self.direct is not None else [])]

    @staticmethod
    @torch.no_grad()
    def _relabel_checkpoints_in_drawn_numbering(self: "MADE", state_dict, prefix, local_metadata, strict,
                                                missing_keys, unexpected_keys, error_msgs) -> None:
        """A one-mask checkpoint saved before hidden units were sorted numbers them as drawn:
        relabel its weights into this model's numbering (the same model, units renamed)."""
        self._relabelled_on_load = {}
        key = prefix + "hidden_units_sorted"
        saved_sorted = bool(state_dict.get(key, torch.tensor(False)))
        if saved_sorted and not self.sorts_hidden_units:
            error_msgs.append(f"{key}: the checkpoint is a one-mask MADE (hidden units sorted by degree), "
                              f"this model has num_masks = {self.config.num_masks}")
        if saved_sorted or not self.sorts_hidden_units:
            state_dict.setdefault(key, torch.tensor(saved_sorted))
            return
        cfg = self.config
        drawn = made_degrees(self.num_dims, cfg.hidden_sizes, cfg.order_agnostic, seed=self._degree_seed(0))
        previous = None
        for i, degrees in enumerate([*drawn[1:], None]):
            weight_key, bias_key = f"{prefix}layers.{i}.weight", f"{prefix}layers.{i}.bias"
            if weight_key not in state_dict or bias_key not in state_dict:
                break  # load_state_dict reports the missing keys
            columns = previous
            if columns is not None:
                state_dict[weight_key] = state_dict[weight_key][:, columns]
            rows = previous = torch.argsort(degrees, stable=True) if degrees is not None else None
            if rows is not None:
                state_dict[weight_key] = state_dict[weight_key][rows]
                state_dict[bias_key] = state_dict[bias_key][rows]
            self._relabelled_on_load[i] = (rows, columns)
        state_dict[key] = torch.tensor(True)

    @staticmethod
    def _note_saved_input_layout(self: "MADE", state_dict, prefix, local_metadata, strict,
                                 missing_keys, unexpected_keys, error_msgs) -> None:
        """A checkpoint from before the input layers stored their blocks transposed lacks the flag
        (read as False): its weights load as they are (saved whole), and its Adam moments need
        transposing where its layout and this model's differ."""
        key = prefix + "input_layers_transposed"
        saved = bool(state_dict.get(key, torch.tensor(False)))
        self._moments_in_other_layout = saved != bool(self.input_layers_transposed)
        state_dict[key] = self.input_layers_transposed.clone()

    @torch.no_grad()
    def adapt_saved_optimizer_state(self, moments: dict[nn.Parameter, dict]) -> None:
        """Bring an older checkpoint's Adam moments into this model's layout, as loading did its
        weights: the relabelling of hidden units (``_relabel_checkpoints_in_drawn_numbering``; only
        dense layers keep their parameters' shapes, a row-block layer's state from such a
        checkpoint does not fit and is refused), and the transposed blocks of the input layers."""
        for i, (rows, columns) in self._relabelled_on_load.items():
            layer = self.layers[i]
            if not isinstance(layer, MaskedLinear):
                continue
            for param, order in ((layer.weight, (rows, columns)), (layer.bias, (rows, None))):
                saved = moments.get(param, {})
                for name, value in saved.items():
                    if isinstance(value, torch.Tensor) and value.shape == param.shape:
                        saved[name] = _reorder(value, *order)
        if self._moments_in_other_layout:
            for layer in (self.layers[0], self.direct):
                if not isinstance(layer, RowBlockMaskedLinear):
                    continue
                for param in layer.weight_blocks:
                    saved = moments.get(param, {})
                    for name, value in saved.items():
                        if isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape == param.shape[::-1]:
                            saved[name] = value.t().contiguous()
        self._relabelled_on_load, self._moments_in_other_layout = {}, False

    @staticmethod
    def _sync_host_state_after_load(module: "MADE", incompatible_keys) -> None:
        module._training_step_on_host = None

    def mask_degrees(self, k: int) -> list[torch.Tensor]:
        cfg = self.config
        return made_degrees(self.num_dims, cfg.hidden_sizes, cfg.order_agnostic, seed=self._degree_seed(k),
                            sort_hidden=self.sorts_hidden_units)

    def _degree_seed(self, k: int) -> int:
        # modulo 2**64, as torch takes a seed (a negative one wraps): any int64 mask_seed seeds a generator
        return (self.config.mask_seed * 100_003 + k) % 2**64

    @torch.no_grad()
    def _relabel_initial_hidden_units(self) -> None:
        """Permute the initial weights from the drawn numbering of hidden units to the sorted one."""
        cfg = self.config
        drawn = made_degrees(self.num_dims, cfg.hidden_sizes, cfg.order_agnostic, seed=self._degree_seed(0))
        previous = None
        for layer, degrees in zip(self.layers, [*drawn[1:], None]):
            if previous is not None:
                layer.weight.copy_(layer.weight[:, previous])
            if degrees is not None:
                previous = torch.argsort(degrees, stable=True)
                layer.weight.copy_(layer.weight[previous])
                layer.bias.copy_(layer.bias[previous])

    def _store_staircase_layers_by_row_blocks(self) -> None:
        """With units sorted, a layer big enough whose mask's row blocks skip enough of it stores
        and multiplies only those blocks (``RowBlockMaskedLinear``); the others stay dense."""
        if not self.sorts_hidden_units or not self.config.row_blocks:
            return
        for i, layer in enumerate(self.masked_layers()):
            if layer.mask.numel() < self.config.row_blocks_min_weights:
                continue
            blocks = row_blocks(layer.mask, self.config.row_blocks)
            if row_blocks_fraction(blocks, tuple(layer.mask.shape)) > self.ROW_BLOCKS_MAX_FRACTION:
                continue
            # the first layer and the direct connections read x itself, zeros and ones
            reads_x = i == 0 or layer is self.direct
            stored = RowBlockMaskedLinear.from_dense(layer, blocks, binary_input=reads_x and self.config.binary_input_sums)
            if i < len(self.layers):
                self.layers[i] = stored
            else:
                self.direct = stored

    def use_mask(self, k: int) -> None:
        if k == self._active_mask:
            return
        # Built where the weights live: a 8000×8000 layer's mask is 256 MB, which a GPU would
        # otherwise receive from the host at every training step. Never as inference tensors: a
        # mask built while sampling under torch.inference_mode() is kept, and the next training
        # step could not save it for its backward pass.
        with torch.inference_mode(False):
            degrees = self._device_degrees(k)
            masks = made_masks(degrees) + ([made_direct_mask(degrees)] if self.direct is not None else [])
        for layer, mask in zip(self.masked_layers(), masks):
            if isinstance(layer, MaskedLinear):  # a layer stored by row blocks keeps mask 0, the only one
                layer.set_mask(mask, copy=False)
        self._active_mask = k

    def _device_degrees(self, k: int) -> list[torch.Tensor]:
        """Mask k's degrees on the weights' device, copied there once: a blocking copy from the host
        at each switch of mask would make a GPU finish its queue first."""
        device = self.training_step.device
        degrees = self._degrees_on_device.get(k)
        if degrees is None or degrees[0].device != device:
            degrees = [d.to(device) for d in self.mask_degrees(k)]
            self._degrees_on_device[k] = degrees
        return degrees

    def generation_order(self) -> torch.Tensor:
        return torch.argsort(self.mask_degrees(self._active_mask)[0])

    def conditional_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits under the active mask."""
        h = x
        for layer in self.layers[:-1]:
            h = F.relu(layer(h))
        logits = self.layers[-1](h)
        return logits if self.direct is None else logits + self.direct(x)

    def _log_prob_one_mask(self, x: torch.Tensor, k: int) -> torch.Tensor:
        self.use_mask(k)
        logits = self.conditional_logits(x)
        return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(dim=1)

    def _log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """The K-mask mixture, in either mode: log p(x) = log (1/K) Σ_k p_k(x)."""
        K = self.config.num_masks
        if K == 1:
            return self._log_prob_one_mask(x, 0)
        per_mask = torch.stack([self._log_prob_one_mask(x, k) for k in range(K)])
        return torch.logsumexp(per_mask, dim=0) - math.log(K)

    def training_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """In training mode with K masks, connectivity-agnostic training: log p_k(x) under one
        mask per minibatch, k in a fixed cycle; else ``log_prob``."""
        K = self.config.num_masks
        if not (self.training and K > 1):
            return self.log_prob(x)
        x = self.flatten_input(x)
        if len(x) == 0:
            return x.new_empty(0)
        if self._training_step_on_host is None:
            self._training_step_on_host = int(self.training_step)
        k = self._training_step_on_host % K
        self._training_step_on_host += 1
        self.training_step += 1
        return self._log_prob_one_mask(x, k)

    def _split_mixture_draws(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Choose each sample's mask uniformly from the first uniform, rescaled so that it stays
        U[0, 1) for the first dimension: one set of draws fixes the whole sample."""
        K = self.config.num_masks
        if K == 1:
            return torch.zeros(len(u), dtype=torch.long, device=u.device), u
        mask_choice = torch.clamp((u[:, 0] * K).long(), max=K - 1)
        u = u.clone()
        u[:, 0] = u[:, 0] * K - mask_choice
        return mask_choice, u

    @torch.no_grad()
    def _sample_mixture(self, u: torch.Tensor, sample_one_mask) -> torch.Tensor:
        mask_choice, u = self._split_mixture_draws(u)
        x = torch.zeros_like(u)
        for k in mask_choice.unique().tolist():
            rows = mask_choice == k
            self.use_mask(k)
            x[rows] = sample_one_mask(u[rows], k)
        return x

    @uniforms_sampler
    def sample_from_uniforms(self, u: torch.Tensor) -> torch.Tensor:
        """Exact samples from the K-mask mixture, each hidden unit computed once."""
        return self._sample_mixture(u, lambda u_k, k: self._sample_one_mask(u_k, self.mask_degrees(k)))

    @uniforms_sampler
    def sample_naive(self, u: torch.Tensor) -> torch.Tensor:
        """The same mixture sampled with D full passes per mask (the reference)."""
        return self._sample_mixture(u, lambda u_k, k: super(MADE, self).sample_naive(u_k))

    def _sample_one_mask(self, u: torch.Tensor, degrees: list[torch.Tensor]) -> torch.Tensor:
        """Unit-by-degree sampler under the active mask: every hidden unit is computed once.

        Units of each layer are sorted by degree, so the units of degree t form one contiguous
        block, and every unit they connect to in the layer below lies in the prefix of degree ≤ t.
        """
        device, dtype = u.device, u.dtype
        D = self.num_dims
        order = torch.argsort(degrees[0]).to(device)  # order[t-1] = the input of degree t
        hidden_perms = [torch.argsort(d, stable=True) for d in degrees[1:]]
        # Permuted, masked weights: inputs in generation order, hidden units by degree.
        weights, biases, block_ends = [], [], []
        previous_perm = order
        for layer, perm, deg in zip(self.layers[:-1], hidden_perms, degrees[1:]):
            perm = perm.to(device)
            weights.append(layer.masked_weight()[perm][:, previous_perm])
            biases.append(layer.bias[perm])
            # block_ends[t] = number of units with degree ≤ t, for t = 0..D
            counts = torch.bincount(deg, minlength=D + 1).cumsum(0)
            block_ends.append(counts.tolist())
            previous_perm = perm
        out_weight = self.layers[-1].masked_weight()[order][:, previous_perm]
        out_bias = self.layers[-1].bias[order]
        # strictly lower triangular in generation order: output t sees inputs 0..t-1 directly
        direct_weight = self.direct.masked_weight()[order][:, order] if self.direct is not None else None

        n = len(u)
        x_ordered = torch.zeros(n, D, device=device, dtype=dtype)
        hidden = [torch.zeros(n, w.shape[0], device=device, dtype=dtype) for w in weights]
        u_ordered = u[:, order]
        last_layer_end = 0
        for t in range(D):  # draw the input of degree t + 1
            if t >= 1:
                below, below_end = x_ordered, t  # inputs of degree ≤ t are known
                for w, b, h, ends in zip(weights, biases, hidden, block_ends):
                    start, end = ends[t - 1], ends[t]
                    if end > start:
                        h[:, start:end] = F.relu(below[:, :below_end] @ w[start:end, :below_end].t() + b[start:end])
                    below, below_end = h, end
                last_layer_end = below_end
            logit = hidden[-1][:, :last_layer_end] @ out_weight[t, :last_layer_end] + out_bias[t]
            if direct_weight is not None and t >= 1:
                logit = logit + x_ordered[:, :t] @ direct_weight[t, :t]
            x_ordered[:, t] = (u_ordered[:, t] < torch.sigmoid(logit)).to(dtype)
        x = torch.empty_like(x_ordered)
        x[:, order] = x_ordered
        return x
