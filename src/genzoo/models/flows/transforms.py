"""Invertible transforms, the building blocks of every flow in genzoo.

A transform maps x to z = f(x) and reports log |det ∂f/∂x| per example in the same pass:

    z, logdet = t(x)          # forward: data side → base side, logdet of shape (B,)
    x = t.inverse(z)          # the exact inverse
    t.out_shape(shape)        # the event shape of z for an event shape of x

The change of variables then gives log p(x) = log p_Z(f(x)) + log |det ∂f/∂x|, and a composed
flow adds the log-determinants of its parts. Transforms act on batches: (B, D) vectors or
(B, C, H, W) images ("channels" are dimension 1 in both). Stack your own flow from them::

    flow = Compose(Logit(1e-6), Reshape((64,), (1, 8, 8)), Squeeze(),
                   ActNorm(4), InvertibleConv1x1(4), AffineCoupling(channel_mask((4, 4, 4)), net))

References: Dinh et al., "NICE" (2015) — additive coupling, diagonal scaling; Dinh et al.,
"Density estimation using Real NVP" (2017) — affine coupling, checkerboard/channel masks,
squeeze, multi-scale factor-out, batch normalization; Kingma & Dhariwal, "Glow" (2018) —
actnorm, invertible 1×1 convolution in LU form.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "Transform",
    "Compose",
    "Reshape",
    "AdditiveCoupling",
    "AffineCoupling",
    "Scaling",
    "ActNorm",
    "BatchNormFlow",
    "InvertibleConv1x1",
    "Squeeze",
    "Logit",
    "FactorOut",
    "checkerboard_mask",
    "channel_mask",
    "alternating_mask",
    "mlp",
    "conv_net",
    "event_sum",
]

Shape = tuple[int, ...]


def event_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over every dimension but the batch: (B, ...) → (B,)."""
    return x.reshape(len(x), -1).sum(dim=1)


def _spatial_size(x: torch.Tensor) -> int:
    """H·W for images, 1 for vectors: how many times a per-channel factor enters the determinant."""
    return math.prod(x.shape[2:])


def _per_channel(param: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """View a (C,) parameter so that it broadcasts over (B, C) or (B, C, H, W)."""
    return param.view(1, -1, *([1] * (x.dim() - 2)))


class Transform(nn.Module):
    """An invertible map with a tractable log-determinant."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def inverse(self, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def out_shape(self, shape: Shape) -> Shape:
        return tuple(shape)


class Compose(Transform):
    """t_K ∘ … ∘ t_1: the log-determinants add up."""

    def __init__(self, *transforms: Transform):
        super().__init__()
        self.transforms = nn.ModuleList(transforms)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = x.new_zeros(len(x))
        for t in self.transforms:
            x, ld = t(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        for t in reversed(self.transforms):
            z = t.inverse(z)
        return z

    def out_shape(self, shape: Shape) -> Shape:
        for t in self.transforms:
            shape = t.out_shape(shape)
        return tuple(shape)


class Reshape(Transform):
    """Change the event shape (volume preserving)."""

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int]):
        super().__init__()
        self.in_event, self.out_event = tuple(in_shape), tuple(out_shape)
        if math.prod(self.in_event) != math.prod(self.out_event):
            raise ValueError(f"cannot reshape {self.in_event} to {self.out_event}")

    def forward(self, x):
        return x.reshape(len(x), *self.out_event), x.new_zeros(len(x))

    def inverse(self, z):
        return z.reshape(len(z), *self.in_event)

    def out_shape(self, shape):
        return self.out_event

    def extra_repr(self) -> str:
        return f"{self.in_event} -> {self.out_event}"


# -- masks and conditioner networks ---------------------------------------------------------------


def alternating_mask(num_dims: int, parity: int = 0) -> torch.Tensor:
    """NICE's partition of a vector: 1 on the dimensions d with d % 2 == parity (those are kept)."""
    return (torch.arange(num_dims) % 2 == parity).float()


def checkerboard_mask(shape: Shape, parity: int = 0) -> torch.Tensor:
    """Real NVP's spatial checkerboard over (C, H, W): 1 where (h + w) % 2 == parity."""
    c, h, w = shape
    board = (torch.arange(h)[:, None] + torch.arange(w)[None, :]) % 2 == parity
    return board.float().expand(c, h, w).clone()


def channel_mask(shape: Shape, parity: int = 0) -> torch.Tensor:
    """Real NVP's channel mask over (C, H, W) (or (C,)): 1 on the first ⌊C/2⌋ channels
    (parity 0) or on the others (parity 1)."""
    c = shape[0]
    first = torch.arange(c) < c // 2
    keep = first if parity == 0 else ~first
    return keep.float().view(c, *([1] * (len(shape) - 1))).expand(*shape).clone()


def mlp(in_features: int, hidden: int, out_features: int, hidden_layers: int = 1, zero_last: bool = True) -> nn.Sequential:
    """in → [hidden, ReLU] × hidden_layers → out; the last layer starts at zero so that a
    coupling starts as the identity."""
    layers: list[nn.Module] = []
    width = in_features
    for _ in range(hidden_layers):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    last = nn.Linear(width, out_features)
    if zero_last:
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
    layers.append(last)
    return nn.Sequential(*layers)


def conv_net(in_channels: int, hidden: int, out_channels: int, hidden_layers: int = 1, kernel_size: int = 3,
             zero_last: bool = True) -> nn.Sequential:
    """The convolutional conditioner: k×k conv, [1×1 conv] × (hidden_layers − 1), k×k conv, with
    ReLUs; the last convolution starts at zero (Glow)."""
    pad = kernel_size // 2
    layers: list[nn.Module] = [nn.Conv2d(in_channels, hidden, kernel_size, padding=pad), nn.ReLU()]
    for _ in range(hidden_layers - 1):
        layers += [nn.Conv2d(hidden, hidden, 1), nn.ReLU()]
    last = nn.Conv2d(hidden, out_channels, kernel_size, padding=pad)
    if zero_last:
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
    layers.append(last)
    return nn.Sequential(*layers)


# -- coupling layers -------------------------------------------------------------------------------


class _Coupling(Transform):
    """Masked coupling: the entries where ``mask`` is 1 pass through unchanged and condition the
    update of the others, so the Jacobian is triangular. ``net`` maps the masked input (with
    ``context`` concatenated along dimension 1, if given) to the update's parameters."""

    def __init__(self, mask: torch.Tensor, net: nn.Module):
        super().__init__()
        self.register_buffer("mask", mask.float())
        self.net = net

    def _net(self, x_kept: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        return self.net(x_kept if context is None else torch.cat([x_kept, context], dim=1))


class AdditiveCoupling(_Coupling):
    """NICE (Dinh et al. 2015, eq. 4–5): z_A = x_A, z_B = x_B + m(x_A); log |det| = 0."""

    def forward(self, x, context=None):
        shift = self._net(x * self.mask, context) * (1 - self.mask)
        return x + shift, x.new_zeros(len(x))

    def inverse(self, z, context=None):
        shift = self._net(z * self.mask, context) * (1 - self.mask)
        return z - shift


class AffineCoupling(_Coupling):
    """Real NVP (Dinh et al. 2017, eq. 9): z = x_A + (1 − b) ⊙ (x ⊙ exp(s(x_A)) + t(x_A)),
    log |det| = Σ (1 − b) ⊙ s(x_A), with x_A = b ⊙ x. ``net`` returns [s_raw, t] stacked on
    dimension 1; s = scale · tanh(s_raw) with a learned per-channel scale keeps s bounded."""

    def __init__(self, mask: torch.Tensor, net: nn.Module):
        super().__init__(mask, net)
        self.scale = nn.Parameter(torch.ones(mask.shape[0]))

    def _shift_and_log_scale(self, x_kept, context):
        s_raw, t = self._net(x_kept, context).chunk(2, dim=1)
        free = 1 - self.mask
        s = _per_channel(self.scale, s_raw) * torch.tanh(s_raw) * free
        return t * free, s

    def forward(self, x, context=None):
        t, s = self._shift_and_log_scale(x * self.mask, context)
        return x * torch.exp(s) + t, event_sum(s)

    def inverse(self, z, context=None):
        t, s = self._shift_and_log_scale(z * self.mask, context)
        return (z - t) * torch.exp(-s)


# -- element-wise and per-channel layers ----------------------------------------------------------


class Scaling(Transform):
    """NICE's diagonal scaling layer (section 3.3): z = exp(s) ⊙ x, log |det| = Σ s."""

    def __init__(self, shape: Shape):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(*shape))

    def forward(self, x):
        return x * torch.exp(self.log_scale), self.log_scale.sum().expand(len(x))

    def inverse(self, z):
        return z * torch.exp(-self.log_scale)


class ActNorm(Transform):
    """Glow's activation normalization (section 3.1): z = (x + b) ⊙ exp(log s) per channel,
    log |det| = H·W·Σ log s. The first forward pass in training mode sets b and log s so that
    that batch comes out with zero mean and unit variance per channel (data-dependent
    initialization); ``initialized`` is a buffer, so a restored checkpoint does not re-initialize."""

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.log_scale = nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.eps = eps

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        per_channel = x.transpose(0, 1).reshape(x.shape[1], -1)
        mean = per_channel.mean(dim=1)
        std = per_channel.std(dim=1, unbiased=False) if per_channel.shape[1] > 1 else torch.ones_like(mean)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std + self.eps))
        self.initialized.fill_(True)

    def forward(self, x):
        if self.training and not bool(self.initialized):
            self.initialize(x)
        z = (x + _per_channel(self.bias, x)) * _per_channel(torch.exp(self.log_scale), x)
        return z, (self.log_scale.sum() * _spatial_size(x)).expand(len(x))

    def inverse(self, z):
        return z * _per_channel(torch.exp(-self.log_scale), z) - _per_channel(self.bias, z)


class BatchNormFlow(Transform):
    """Real NVP's batch normalization as a flow layer (section 3.7):
    z = (x − μ̃) / sqrt(σ̃² + ε) ⊙ exp(log γ) + β, log |det| = H·W·Σ (log γ − ½ log(σ̃² + ε)).
    In training μ̃, σ̃² are the batch's statistics (and update running averages); in evaluation
    and in the inverse, the running averages."""

    def __init__(self, num_channels: int, momentum: float = 0.05, eps: float = 1e-5):
        super().__init__()
        self.log_gamma = nn.Parameter(torch.zeros(num_channels))
        self.beta = nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("running_mean", torch.zeros(num_channels))
        self.register_buffer("running_var", torch.ones(num_channels))
        self.momentum, self.eps = momentum, eps

    def forward(self, x):
        if self.training and len(x) > 1:
            per_channel = x.transpose(0, 1).reshape(x.shape[1], -1)
            mean, var = per_channel.mean(dim=1), per_channel.var(dim=1, unbiased=False)
            with torch.no_grad():
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var, self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        x_hat = (x - _per_channel(mean, x)) / _per_channel(torch.sqrt(var + self.eps), x)
        z = x_hat * _per_channel(torch.exp(self.log_gamma), x) + _per_channel(self.beta, x)
        logdet = (self.log_gamma - 0.5 * torch.log(var + self.eps)).sum() * _spatial_size(x)
        return z, logdet.expand(len(x))

    def inverse(self, z):
        x_hat = (z - _per_channel(self.beta, z)) * _per_channel(torch.exp(-self.log_gamma), z)
        return x_hat * _per_channel(torch.sqrt(self.running_var + self.eps), z) + _per_channel(self.running_mean, z)


class InvertibleConv1x1(Transform):
    """Glow's invertible 1×1 convolution in LU form (section 3.2): W = P L (U + diag(sign ⊙ exp(log|s|))),
    log |det| = H·W·Σ log|s|. P and sign are fixed; L (unit lower), U (strictly upper) and log|s|
    are learned. W starts as a random rotation. Vectors (B, C) are treated as 1×1 images."""

    def __init__(self, num_channels: int, generator: torch.Generator | None = None):
        super().__init__()
        c = num_channels
        q, _ = torch.linalg.qr(torch.randn(c, c, generator=generator, dtype=torch.float64))
        p, lower, upper = torch.linalg.lu(q)
        s = torch.diagonal(upper)
        dtype = torch.get_default_dtype()  # as every other layer's parameters
        self.register_buffer("permutation", p.to(dtype))
        self.register_buffer("sign_s", torch.sign(s).to(dtype))
        self.register_buffer("lower_mask", torch.tril(torch.ones(c, c), -1))
        self.lower = nn.Parameter(torch.tril(lower, -1).to(dtype))
        self.upper = nn.Parameter(torch.triu(upper, 1).to(dtype))
        self.log_s = nn.Parameter(torch.log(s.abs()).to(dtype))

    def weight(self) -> torch.Tensor:
        eye = torch.eye(len(self.log_s), dtype=self.log_s.dtype, device=self.log_s.device)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.t() + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.permutation @ lower @ upper

    @staticmethod
    def _multiply(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return x @ weight.t()
        return F.conv2d(x, weight[:, :, None, None])

    def forward(self, x):
        return self._multiply(self.weight(), x), (self.log_s.sum() * _spatial_size(x)).expand(len(x))

    def inverse(self, z):
        return self._multiply(torch.linalg.inv(self.weight()), z)


class Squeeze(Transform):
    """Real NVP's squeeze (section 3.6): each 2×2×C block becomes 1×1×4C; (C, H, W) → (4C, H/2, W/2)."""

    def forward(self, x):
        b, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"squeeze needs an even height and width, got {h}x{w}")
        z = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, h // 2, w // 2)
        return z, x.new_zeros(b)

    def inverse(self, z):
        b, c4, h, w = z.shape
        c = c4 // 4
        return z.reshape(b, c, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c, 2 * h, 2 * w)

    def out_shape(self, shape):
        c, h, w = shape
        return (4 * c, h // 2, w // 2)


class Logit(Transform):
    """Logit pre-processing (Real NVP, section 4.1): for y ∈ (0, 1), s = α + (1 − 2α) y and
    z = log s − log(1 − s); log |det| = Σ [log(1 − 2α) − log s − log(1 − s)]."""

    def __init__(self, alpha: float = 1e-6):
        super().__init__()
        if not 0 <= alpha < 0.5:
            raise ValueError(f"logit alpha must lie in [0, 0.5), got {alpha}")
        self.alpha = float(alpha)

    def forward(self, y):
        s = self.alpha + (1 - 2 * self.alpha) * y
        log_s, log_1ms = torch.log(s), torch.log1p(-s)
        return log_s - log_1ms, event_sum(math.log1p(-2 * self.alpha) - log_s - log_1ms)

    def inverse(self, z):
        return (torch.sigmoid(z) - self.alpha) / (1 - 2 * self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}"


class FactorOut(Transform):
    """Real NVP's multi-scale architecture (section 3.6): the first ``keep`` channels go on
    through ``inner``; the others are factored out and go straight to the base distribution.
    The output is flat: [inner(x_keep) flattened, x_out flattened]."""

    def __init__(self, in_shape: Shape, keep: int, inner: Transform):
        super().__init__()
        self.in_event = tuple(in_shape)
        if not 0 < keep < self.in_event[0]:
            raise ValueError(f"factor-out keeps {keep} of {self.in_event[0]} channels; need 0 < keep < C")
        self.keep = keep
        self.inner = inner
        self.inner_out = inner.out_shape((keep, *self.in_event[1:]))

    def forward(self, x):
        z_inner, logdet = self.inner(x[:, : self.keep])
        return torch.cat([z_inner.reshape(len(x), -1), x[:, self.keep :].reshape(len(x), -1)], dim=1), logdet

    def inverse(self, z):
        n_inner = math.prod(self.inner_out)
        x_keep = self.inner.inverse(z[:, :n_inner].reshape(len(z), *self.inner_out))
        x_out = z[:, n_inner:].reshape(len(z), self.in_event[0] - self.keep, *self.in_event[1:])
        return torch.cat([x_keep, x_out], dim=1)

    def out_shape(self, shape):
        return (math.prod(shape),)

    def extra_repr(self) -> str:
        return f"keep={self.keep} of {self.in_event}"

