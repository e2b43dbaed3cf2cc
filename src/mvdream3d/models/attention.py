"""Attention layers of the multi-view UNet.

The one MVDream-specific idea lives in :class:`BasicTransformerBlock3D`: its self-attention runs over
the tokens of all ``num_frames`` views of an object together. The batch is object-major,
``(B*F, L, C)`` with rows ``b*F .. b*F+F-1`` holding the F views of object ``b``; the block folds it to
``(B, F*L, C)`` for self-attention and back for the per-view cross-attention and feed-forward.

Module and parameter names follow the published checkpoints (``attn1``, ``attn2``, ``ff.net.0.proj``,
``norm1..3``, ``proj_in``/``proj_out``) so their weights load without renaming.

Inference fast path: when autograd records nothing (``torch.no_grad()`` / ``torch.inference_mode()``),
residual additions and the GEGLU gate run in place on tensors the layer itself just made, so fewer
activations are alive at once. The results are the same sums and products (float addition and
multiplication commute), so the numbers do not change; with gradients on, the out-of-place code runs.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

AttentionBackend = Literal["sdpa", "naive"]

# PyTorch's CPU flash-attention kernel is slower for heads narrower than 16 than for 16-wide ones
# (4 objects x 4 views at 32x32, 4 heads: 8-wide 0.61 s, zero-padded to 16 0.51 s per call, measured in one
# process; benchmarks/unet_speed.py). Zero columns change no dot product, so narrow heads are padded.
_CPU_MIN_HEAD_DIM = 16


def _inference() -> bool:
    """True when autograd records nothing, so a layer may overwrite tensors it made itself."""
    return not torch.is_grad_enabled()


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Reference attention, ``softmax(q k^T / sqrt(d)) v`` written out, scores in float32.

    Shapes ``(..., Lq, d)``, ``(..., Lk, d)``, ``(..., Lk, d)`` -> ``(..., Lq, d)``. It materialises the
    full ``Lq x Lk`` score matrix, as the published code does; kept as the numerical reference
    (``set_attention_backend(model, "naive")``).
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    sim = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    return torch.matmul(sim.softmax(dim=-1).to(v.dtype), v)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) v`` through :func:`torch.nn.functional.scaled_dot_product_attention`.

    Shapes ``(N, h, Lq, d)``, ``(N, h, Lk, d)``, ``(N, h, Lk, d)`` -> ``(N, h, Lq, d)``. On CPU, heads
    narrower than 16 are zero-padded to 16 (with the scale of the true width) and cut back afterwards:
    the padding adds only zero terms to the dot products, and the CPU kernel is faster at that width.
    """
    d = q.shape[-1]
    if q.device.type == "cpu" and d < _CPU_MIN_HEAD_DIM:
        pad = (0, _CPU_MIN_HEAD_DIM - d)
        out = F.scaled_dot_product_attention(F.pad(q, pad), F.pad(k, pad), F.pad(v, pad), scale=d**-0.5)
        return out[..., :d]
    return F.scaled_dot_product_attention(q, k, v)


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

    def context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``(to_k(context), to_v(context))``, each (N, Lk, heads*dim_head).

        They depend only on the context, so a sampling run can compute them once
        (:meth:`mvdream3d.models.unet.MultiViewUNet.prepare_context`) and pass them as ``kv``.
        """
        return self.to_k(context), self.to_v(context)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """``x`` (N, Lq, query_dim) attending to ``context`` (N, Lk, context_dim), or to itself without
        one; ``kv`` (from :meth:`context_kv`) replaces the context's projections."""
        n = x.shape[0]
        k, v = self.context_kv(x if context is None else context) if kv is None else kv
        # (N, L, h*d) -> (N, h, L, d)
        q, k, v = (t.view(t.shape[0], -1, self.heads, self.dim_head).transpose(1, 2) for t in (self.to_q(x), k, v))
        if self.backend == "naive":
            out = naive_attention(q, k, v)
        else:
            out = sdpa_attention(q, k, v)
        out = out.transpose(1, 2).reshape(n, -1, self.heads * self.dim_head)
        return self.to_out(out)


class PreparedContext:
    """A text context with the keys and values of every cross-attention layer computed once.

    Made by :meth:`mvdream3d.models.unet.MultiViewUNet.prepare_context` and passed as ``context`` instead of
    the tensor: the UNet output is the same, without recomputing ``to_k`` / ``to_v`` of a context that stays
    fixed over a sampling run or a text-to-3D optimisation. ``tensor`` is the (N, L, D) context, ``kv`` maps
    each cross-attention layer to its ``(keys, values)``, (N, L, heads*dim_head) each. The projections are
    taken in the grad mode of the caller of ``prepare_context`` (so they stay differentiable if it was on);
    the object is tied to the weights it was made with: prepare again after changing them.
    """

    __slots__ = ("tensor", "kv")

    def __init__(self, tensor: torch.Tensor, kv: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.tensor = tensor
        self.kv = kv

    @property
    def shape(self) -> torch.Size:
        return self.tensor.shape

    def __repr__(self) -> str:
        return f"PreparedContext(shape={tuple(self.tensor.shape)}, layers={len(self.kv)})"


def _cross_attend(attn: CrossAttention, x: torch.Tensor, context: torch.Tensor | PreparedContext | None
                  ) -> torch.Tensor:
    if isinstance(context, PreparedContext):
        kv = context.kv.get(attn)
        return attn(x, context.tensor, kv) if kv is None else attn(x, kv=kv)
    return attn(x, context)


class GEGLU(nn.Module):
    """Gated GELU projection: ``a * gelu(b)`` with ``[a, b] = proj(x)``."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _inference():
            # the two halves of ``proj`` as two products (weight views, no copies), the gate's GELU in
            # place: 2 instead of 3 buffers of the inner width alive at once
            inner = self.proj.out_features // 2
            w, b = self.proj.weight, self.proj.bias
            a = F.linear(x, w[:inner], None if b is None else b[:inner])
            gate = torch.ops.aten.gelu_(F.linear(x, w[inner:], None if b is None else b[inner:]))
            return gate.mul_(a)
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

    def forward(self, x: torch.Tensor, context: torch.Tensor | PreparedContext | None, num_frames: int
                ) -> torch.Tensor:
        n, length, c = x.shape
        f = num_frames if self.multiview else 1
        h = x.reshape(n // f, f * length, c)  # rows are object-major, so this groups an object's views
        if _inference():  # same sums, in place on the sublayers' fresh outputs
            h = self.attn1(self.norm1(h)).add_(h)
            x = h.reshape(n, length, c)
            x = _cross_attend(self.attn2, self.norm2(x), context).add_(x)
            return self.ff(self.norm3(x)).add_(x)
        h = self.attn1(self.norm1(h)) + h
        x = h.reshape(n, length, c)
        x = _cross_attend(self.attn2, self.norm2(x), context) + x
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

    def forward(self, x: torch.Tensor, context: torch.Tensor | PreparedContext | None, num_frames: int
                ) -> torch.Tensor:
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
        # (N, H*W, C) -> (N, C, H, W); a view (channels-last strides) when the tokens are contiguous
        h = h.transpose(1, 2).reshape(n, -1, height, width)
        if not self.use_linear:
            h = self.proj_out(h)
        return h.add_(x) if _inference() else h + x


def set_attention_backend(module: nn.Module, backend: AttentionBackend) -> None:
    """Switch every :class:`CrossAttention` below ``module`` to ``"sdpa"`` or ``"naive"``."""
    if backend not in ("sdpa", "naive"):
        raise ValueError(f"attention backend must be 'sdpa' or 'naive', got {backend!r}")
    for m in module.modules():
        if isinstance(m, CrossAttention):
            m.backend = backend
