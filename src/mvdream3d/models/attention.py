"""Attention layers of the multi-view UNet.

The one MVDream-specific idea lives in :class:`BasicTransformerBlock3D`: its self-attention runs over
the tokens of all ``num_frames`` views of an object together. The batch is object-major,
``(B*F, L, C)`` with rows ``b*F .. b*F+F-1`` holding the F views of object ``b``; the block folds it to
``(B, F*L, C)`` for self-attention and back for the per-view cross-attention and feed-forward.

Module and parameter names follow the published checkpoints (``attn1``, ``attn2``, ``ff.net.0.proj``,
``norm1..3``, ``proj_in``/``proj_out``) so their weights load without renaming.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

AttentionBackend = Literal["sdpa", "naive"]


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Reference attention, ``softmax(q k^T / sqrt(d)) v`` written out, scores in float32.

    Shapes ``(..., Lq, d)``, ``(..., Lk, d)``, ``(..., Lk, d)`` -> ``(..., Lq, d)``. It materialises the
    full ``Lq x Lk`` score matrix, as the published code does; kept only as the numerical reference
    and the baseline of ``benchmarks/unet_speed.py``.
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    sim = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    return torch.matmul(sim.softmax(dim=-1).to(v.dtype), v)


class CrossAttention(nn.Module):
    """Multi-head attention of ``x`` (N, Lq, query_dim) over ``context`` (N, Lk, context_dim).

    Without ``context`` it is self-attention. Runs through
    :func:`torch.nn.functional.scaled_dot_product_attention` unless ``backend`` is ``"naive"``.
    """

    def __init__(
        self,
        query_dim: int,
        context_dim: int | None = None,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        inner_dim = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.dim_head = dim_head
        self.backend: AttentionBackend = "sdpa"
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        n = x.shape[0]
        # (N, L, h*d) -> (N, h, L, d)
        q, k, v = (
            t.view(n, -1, self.heads, self.dim_head).transpose(1, 2)
            for t in (self.to_q(x), self.to_k(context), self.to_v(context))
        )
        if self.backend == "naive":
            out = naive_attention(q, k, v)
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(n, -1, self.heads * self.dim_head)
        return self.to_out(out)


class GEGLU(nn.Module):
    """Gated GELU projection: ``a * gelu(b)`` with ``[a, b] = proj(x)``."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    """Transformer MLP with a GEGLU input layer (``net.0.proj``, ``net.2``), as in Stable Diffusion."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Dropout(dropout), nn.Linear(inner, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock3D(nn.Module):
    """Self-attention across views, cross-attention to text per view, feed-forward per token.

    ``x``: (B*F, L, C) object-major; ``context``: (B*F, Lc, Dc). With ``multiview=False`` the
    self-attention stays inside each view (the per-view ablation of the paper).
    """

    def __init__(
        self,
        dim: int,
        n_heads: int,
        d_head: int,
        context_dim: int | None,
        dropout: float = 0.0,
        multiview: bool = True,
    ) -> None:
        super().__init__()
        self.multiview = multiview
        self.attn1 = CrossAttention(dim, None, n_heads, d_head, dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(dim, context_dim, n_heads, d_head, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None, num_frames: int) -> torch.Tensor:
        n, length, c = x.shape
        f = num_frames if self.multiview else 1
        h = x.reshape(n // f, f * length, c)  # rows are object-major, so this groups an object's views
        h = self.attn1(self.norm1(h)) + h
        x = h.reshape(n, length, c)
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer3D(nn.Module):
    """Feature map (B*F, C, H, W) -> tokens -> transformer blocks -> feature map, plus the input.

    ``use_linear`` selects linear projections (SD 2.x) instead of 1x1 convolutions (SD 1.x).
    """

    def __init__(
        self,
        in_channels: int,
        n_heads: int,
        d_head: int,
        depth: int = 1,
        context_dim: int | None = None,
        use_linear: bool = False,
        dropout: float = 0.0,
        multiview: bool = True,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        inner = n_heads * d_head
        self.use_linear = use_linear
        self.use_checkpoint = use_checkpoint
        self.norm = nn.GroupNorm(32, in_channels, eps=1e-6)
        if use_linear:
            self.proj_in = nn.Linear(in_channels, inner)
            self.proj_out = nn.Linear(inner, in_channels)
        else:
            self.proj_in = nn.Conv2d(in_channels, inner, 1)
            self.proj_out = nn.Conv2d(inner, in_channels, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock3D(inner, n_heads, d_head, context_dim, dropout, multiview)
            for _ in range(depth)
        )
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None, num_frames: int) -> torch.Tensor:
        n, _, height, width = x.shape
        h = F.group_norm(x.float(), 32, self.norm.weight.float(), self.norm.bias.float(), 1e-6).to(x.dtype)
        if not self.use_linear:
            h = self.proj_in(h)
        h = h.flatten(2).transpose(1, 2)  # (N, H*W, C)
        if self.use_linear:
            h = self.proj_in(h)
        for block in self.transformer_blocks:
            if self.use_checkpoint and torch.is_grad_enabled():
                h = checkpoint(block, h, context, num_frames, use_reentrant=False)
            else:
                h = block(h, context, num_frames)
        if self.use_linear:
            h = self.proj_out(h)
        h = h.transpose(1, 2).reshape(n, -1, height, width)
        if not self.use_linear:
            h = self.proj_out(h)
        return h + x


def set_attention_backend(module: nn.Module, backend: AttentionBackend) -> None:
    """Switch every :class:`CrossAttention` below ``module`` to ``"sdpa"`` or ``"naive"``."""
    if backend not in ("sdpa", "naive"):
        raise ValueError(f"attention backend must be 'sdpa' or 'naive', got {backend!r}")
    for m in module.modules():
        if isinstance(m, CrossAttention):
            m.backend = backend
