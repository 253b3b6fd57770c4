"""A causal Transformer over binary pixels (decoder-only, in the manner of Image GPT: Chen et al.
2020; the blocks of Vaswani et al. 2017 with pre-normalization, Radford et al. 2019).

Pixels are tokens in raster order. The input at position d is the previous pixel x_{d−1} (a
learned start token s at d = 0), plus a learned 2-D position (row and column embeddings; a flat
(D,) shape is one row):

    h⁰_d = (s if d = 0 else e[x_{d−1}]) + r[row(d)] + c[col(d)],
    a^l  = h^{l−1} + Attn(LN(h^{l−1})),      h^l = a^l + MLP(LN(a^l)),
    p(x_d = 1 | x_<d) = σ(w · LN(h^L_d) + b),

where Attn is multi-head causal self-attention, softmax(QKᵀ/√d_k + M)V with M_{ij} = −∞ for
j > i, computed by ``torch.nn.functional.scaled_dot_product_attention`` (the fused kernel where
the device has one). Position d sees x_{d−1}, …, x_0 only, so the model is autoregressive and
``log_prob`` is one pass.

Sampling keeps each layer's keys and values (a KV cache): step d feeds one token, appends its
key and value, and attends over the cache, so a sample costs D single-token passes instead of D
full passes over up to D tokens. For speculative sampling (``genzoo.sampling``) the same cache
verifies γ proposals at once: each sample feeds its γ + 1 new positions at its own offset and
attends over its own cached prefix; a rejection rolls the sample's position back, and the
entries past it are masked until overwritten.

References: Vaswani et al., "Attention Is All You Need" (NeurIPS 2017); Chen et al.,
"Generative Pretraining from Pixels" (ICML 2020).
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

__all__ = ["Transformer", "TransformerConfig", "KVCache", "CachedVerifier"]


@dataclass
class TransformerConfig:
    #: decoder blocks (causal self-attention and an MLP each), attention heads per block and
    #: the width of the token embeddings and residual stream
    num_layers: int = 4
    num_heads: int = 4
    embed_dim: int = 64
    #: dropout on embeddings, attention weights and residual branches in training (off in eval)
    dropout: float = 0.0
    #: hidden width of each block's MLP, as a multiple of embed_dim
    mlp_ratio: int = 4

    def __post_init__(self) -> None:
        require(self.num_layers >= 1, f"transformer: num_layers must be at least 1, got {self.num_layers}")
        require(self.num_heads >= 1, f"transformer: num_heads must be at least 1, got {self.num_heads}")
        require(self.embed_dim >= 1, f"transformer: embed_dim must be at least 1, got {self.embed_dim}")
        require(
            self.embed_dim % self.num_heads == 0,
            f"transformer: embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})",
        )
        require(0.0 <= self.dropout < 1.0, f"transformer: dropout must lie in [0, 1), got {self.dropout}")
        require(self.mlp_ratio >= 1, f"transformer: mlp_ratio must be at least 1, got {self.mlp_ratio}")


class KVCache:
    """Per-layer keys and values of the positions fed so far, preallocated to (B, H, D, d_k)."""

    def __init__(self, num_layers: int, batch: int, heads: int, length: int, head_dim: int,
                 device: torch.device, dtype: torch.dtype):
        shape = (batch, heads, length, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        #: number of positions filled (the same for every row)
        self.length = 0


class CausalSelfAttention(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim)
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.dropout = dropout

    def _heads(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, E) -> q, k, v of shape (B, H, T, d_k)."""
        B, T, E = h.shape
        q, k, v = self.qkv(h).split(E, dim=2)
        return tuple(t.view(B, T, self.num_heads, E // self.num_heads).transpose(1, 2) for t in (q, k, v))

    def _merge(self, y: torch.Tensor) -> torch.Tensor:
        B, H, T, dk = y.shape
        return self.proj(y.transpose(1, 2).reshape(B, T, H * dk))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(h)
        p = self.dropout if self.training else 0.0
        return self._merge(F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True))

    def forward_cached(self, h: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                       start: int | torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Positions start … start+T−1 attend over the cached 0 … start−1 and causally over
        themselves; their keys and values are written into the cache.

        ``start`` is one int for the whole batch, or per row a (B,) tensor, with ``rows`` (B,)
        the rows of the cache that the batch's rows use (for speculative verification, where
        each sample has reached its own position)."""
        q, k, v = self._heads(h)
        T = h.shape[1]
        if isinstance(start, torch.Tensor):
            positions = start[:, None] + torch.arange(T, device=h.device)  # (B, T)
            keys[rows[:, None], :, positions] = k.transpose(1, 2)
            values[rows[:, None], :, positions] = v.transpose(1, 2)
            j = torch.arange(keys.shape[2], device=h.device)
            # entries past a row's position are stale or empty: masked, never read
            mask = (j[None, None, :] <= positions[:, :, None])[:, None]  # (B, 1, T, L)
            return self._merge(F.scaled_dot_product_attention(q, keys[rows], values[rows], attn_mask=mask))
        keys[:, :, start:start + T] = k
        values[:, :, start:start + T] = v
        k_all, v_all = keys[:, :, :start + T], values[:, :, :start + T]
        if T == 1:  # one query sees every cached position: no mask needed
            y = F.scaled_dot_product_attention(q, k_all, v_all)
        else:  # is_causal aligns the mask top-left, wrong for T < start + T: give it explicitly
            i = torch.arange(T, device=h.device)[:, None]
            j = torch.arange(start + T, device=h.device)[None, :]
            y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=j <= start + i)
        return self._merge(y)


class Block(nn.Module):
    """Pre-norm Transformer block: LN → attention → residual, LN → MLP → residual."""

    def __init__(self, embed_dim: int, num_heads: int, mlp_ratio: int, dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(embed_dim)
        self.attn = CausalSelfAttention(embed_dim, num_heads, dropout)
        self.ln2 = nn.LayerNorm(embed_dim)
        self.mlp = nn.Sequential(
            nn.Linear(embed_dim, mlp_ratio * embed_dim), nn.GELU(), nn.Linear(mlp_ratio * embed_dim, embed_dim)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.drop(self.attn(self.ln1(h)))
        return h + self.drop(self.mlp(self.ln2(h)))

    def forward_cached(self, h: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                       start: int | torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        h = h + self.drop(self.attn.forward_cached(self.ln1(h), keys, values, start, rows))
        return h + self.drop(self.mlp(self.ln2(h)))


def raster_grid(data_shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, columns) of the raster: the last axis is the column; every other axis (channels,
    image rows) counts rows; a flat (D,) shape is one row."""
    columns = data_shape[-1]
    return math.prod(data_shape) // columns, columns


@register_model("transformer", TransformerConfig)
class Transformer(BernoulliAutoregressive):
    def __init__(self, data_shape: tuple[int, ...], config: TransformerConfig | None = None):
        super().__init__(data_shape)
        self.config = cfg = config or TransformerConfig()
        E = cfg.embed_dim
        rows, columns = raster_grid(self.data_shape)
        self.token_embedding = nn.Embedding(2, E)  # e[0], e[1]: the embeddings of the pixel values
        self.start_token = nn.Parameter(torch.zeros(E))
        self.row_embedding = nn.Embedding(rows, E)
        self.column_embedding = nn.Embedding(columns, E)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(E, cfg.num_heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.num_layers))
        self.ln_final = nn.LayerNorm(E)
        self.head = nn.Linear(E, 1)
        for module in self.modules():  # GPT-2's initialization: small weights, zero biases
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.start_token, std=0.02)
        d = torch.arange(self.num_dims)
        self.register_buffer("rows", d // columns, persistent=False)
        self.register_buffer("columns", d % columns, persistent=False)

    def _embed(self, previous: torch.Tensor, start: int | torch.Tensor) -> torch.Tensor:
        """h⁰ of positions start … start+T−1 (``start`` an int, or per row a (B,) tensor) from
        their input pixels ``previous`` (B, T); position 0 gets the start token instead. e[x] is
        written e[0] + x (e[1] − e[0]), equal on {0, 1} and differentiable in x (the Jacobian test)."""
        T = previous.shape[1]
        table = self.token_embedding.weight
        h = table[0] + previous[..., None] * (table[1] - table[0])
        if isinstance(start, torch.Tensor):
            # positions past the end (proposals a row cannot use) get the last position's embedding
            positions = (start[:, None] + torch.arange(T, device=h.device)).clamp(max=self.num_dims - 1)
            h = torch.where((positions == 0)[..., None], self.start_token, h)
        else:
            positions = torch.arange(start, start + T, device=h.device)
            if start == 0:
                h = torch.cat([self.start_token.expand(len(h), 1, -1), h[:, 1:]], dim=1)
        return self.drop(h + self.row_embedding(self.rows[positions]) + self.column_embedding(self.columns[positions]))

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Input pixels of every position: (start), x_0, …, x_{D−2}."""
        return torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(self.ln_final(h)).squeeze(-1)

    def conditional_logits(self, x: torch.Tensor) -> torch.Tensor:
        h = self._embed(self._inputs(x), 0)
        for block in self.blocks:
            h = block(h)
        return self._logits(h)

    def new_cache(self, batch: int, length: int | None = None) -> KVCache:
        cfg = self.config
        return KVCache(cfg.num_layers, batch, cfg.num_heads, length or self.num_dims, cfg.embed_dim // cfg.num_heads,
                       self.device, self._dtype())

    def logits_cached(self, previous: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Logits of positions cache.length … cache.length+T−1 from their input pixels (B, T),
        appending their keys and values to ``cache``; the earlier positions come from the cache."""
        start = cache.length
        h = self._embed(previous, start)
        for block, keys, values in zip(self.blocks, cache.keys, cache.values):
            h = block.forward_cached(h, keys, values, start)
        cache.length = start + previous.shape[1]
        return self._logits(h)

    def cached_verifier(self, n: int, gamma: int) -> "CachedVerifier":
        """A KV cache for speculative sampling of n samples with γ proposals per round."""
        return CachedVerifier(self, n, gamma)

    @uniforms_sampler
    def sample_from_uniforms(self, u: torch.Tensor) -> torch.Tensor:
        """KV-cached sampling: one new token per step; equals ``sample_naive(u)``."""
        x = torch.zeros_like(u)
        cache = self.new_cache(len(u))
        previous = torch.zeros_like(u[:, :1])  # position 0's entry is ignored (start token)
        for d in range(self.num_dims):
            logit = self.logits_cached(previous, cache)[:, 0]
            x[:, d] = (u[:, d] < torch.sigmoid(logit)).to(x.dtype)
            previous = x[:, d:d + 1]
        return x


class CachedVerifier:
    """Speculative verification against a KV cache: each round feeds a row's γ + 1 new positions
    t … t+γ (inputs x_{t−1}, x̃_t, …, x̃_{t+γ−1}) and attends over the row's cached 0 … t−1. A
    rejection needs no explicit rollback: the next round starts at the row's new position and
    rewrites the entries from there, and entries past a row's position are masked."""

    def __init__(self, model: Transformer, n: int, gamma: int):
        self.model = model
        # γ + 1 spare entries: the steps past the end of a row near D are written there, unused
        self.cache = model.new_cache(n, model.num_dims + gamma + 1)

    def logits(self, previous: torch.Tensor, rows: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """Logits (B, T) of positions start_b … start_b+T−1 of cache rows ``rows`` (B,) from
        their input pixels ``previous`` (B, T)."""
        h = self.model._embed(previous, start)
        for block, keys, values in zip(self.model.blocks, self.cache.keys, self.cache.values):
            h = block.forward_cached(h, keys, values, start, rows)
        return self.model._logits(h)
