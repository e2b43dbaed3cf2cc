"""Multi-resolution hash encoding (Instant-NGP, Mueller et al. 2022) in plain PyTorch.

Level ``l`` is a grid of resolution ``res_l = floor(base * b**l)`` with ``b = exp((ln max - ln base) /
(n_levels - 1))``; a point ``x`` in [0, 1]^3 falls in the cell whose corners are the integer vertices
around ``x * res_l`` (vertices 0..res_l per axis). Each vertex owns ``n_features_per_level`` learned
numbers, looked up

* directly (``x + y (res+1) + z (res+1)^2``) when the level has no more vertices than a table holds
  (``(res+1)^3 <= 2**log2_hashmap_size``): coarse levels never collide and only store what they use;
* through the spatial hash ``(x * 1) xor (y * 2654435761) xor (z * 805459861) mod T`` otherwise.

The 8 corner features are blended trilinearly, so the output is continuous in ``x`` and differentiable
w.r.t. both the table and ``x`` (analytic normals need the latter, including double backward).

All levels share one parameter, ``table`` of shape (F, sum of per-level sizes): feature-major, so that
the lookups and the trilinear blend run over contiguous memory (about twice as fast on CPU as
(entries, F)). ``level_offsets[l]`` is where level ``l`` starts. Corner indices are computed for all dense
levels at once and for all hashed levels at once; the lookup and the blend then run for all levels at once.
``forward_with_jacobian`` / ``forward_with_vjp`` also give the derivatives w.r.t. the points from the same
blend (analytic normals without a double backward).

Memory and speed: points are encoded ``chunk_size`` (default: 8192 to 32768 by the table's size,
:meth:`HashGridEncoding.default_chunk_size`) at a time, so transient buffers stay small (~0.3 kB per level
per point of a chunk) and in cache. Under autograd the tensors the backward
pass needs (corner indices, stored as int32 when the table allows; gathered features; partial blends:
~0.15 kB per level per point) are kept for *every* point: 1M points (4 views x 64x64 rays x 64 samples)
with 16 levels hold about 2.5 GB until backward; each chunk's backward also adds one table-sized gradient
(F x entries floats, 50 MB for the 2^19 table). Render fewer rays or samples per step, or use fewer
levels, when memory is short.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["HashGridEncoding"]

_PRIMES = (1, 2654435761, 805459861)


class _GatherColumns(torch.autograd.Function):
    """``table.index_select(1, index)`` for a compact (int32) ``index``: autograd keeps the int32 index, and the
    backward scatters with an int64 copy made only then (PyTorch's backward for an int32 index takes a path
    about 25x slower on CPU). The gradient is the one ``index_select`` gives; its backward is differentiable."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, table: Tensor, index: Tensor) -> Tensor:
        ctx.save_for_backward(index)
        ctx.table_shape = table.shape
        return table.index_select(1, index)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        (index,) = ctx.saved_tensors
        return torch.ops.aten.index_select_backward(grad, ctx.table_shape, 1, index.long()), None


def _gather_columns(table: Tensor, index: Tensor) -> Tensor:
    if index.dtype == torch.int64:
        return table.index_select(1, index)
    return _GatherColumns.apply(table, index)


class _LerpPairs(torch.autograd.Function):
    """``torch.lerp(t[:, :, 0], t[:, :, 1], w)`` for ``t`` (F, L, 2, *rest, N) and ``w`` (L, N), broadcast over F
    and ``rest``: one step of the trilinear blend, with the backward autograd's own lerp would give, written
    for these shapes (the forward is the same ``lerp``).

    Why: autograd's lerp backward makes the two halves' gradients apart and copies them into ``t``'s shape
    (unbind's backward), and it reduces the gradient of the broadcast ``w`` over the non-adjacent dims
    (0, 2, ...) in one ``sum``, which runs 5-10x slower on CPU than the same sums taken one dim at a time.
    Here ``t``'s gradient halves ``g * (1 - w)`` and ``g * w`` are written straight into one buffer (the same
    products, so the same numbers), and ``w``'s is summed over F, then over ``rest`` (the same terms; the order
    of the additions differs, so it can differ in the last bits). Under ``create_graph`` the backward runs
    differentiable operations only, so double backward (analytic normals under a loss) works.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, t: Tensor, w: Tensor) -> Tensor:
        wb = w.view(w.shape[0], *([1] * (t.ndim - 4)), w.shape[1])  # (L, 1.., N) against (F, L, *rest, N)
        ctx.save_for_backward(t if w.requires_grad else None, w)
        return torch.lerp(*t.unbind(2), wb)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, g: Tensor) -> tuple[Tensor | None, Tensor | None]:
        t, w = ctx.saved_tensors
        wb = w.view(w.shape[0], *([1] * (g.ndim - 3)), w.shape[1])  # (L, 1.., N) against g (F, L, *rest, N)
        grad_t = grad_w = None
        if ctx.needs_input_grad[0]:  # (F, L, 2, *rest, N)
            if torch.is_grad_enabled():  # create_graph: differentiable operations
                grad_t = torch.stack([g * (1 - wb), g * wb], dim=2)
            else:  # the two products written straight into their halves (no stack copy); the weights expanded
                # to g's shape first: a multiplication into a strided output broadcasting them is ~1.5x slower
                grad_t = g.new_empty((g.shape[0], g.shape[1], 2, *g.shape[2:]))
                torch.mul(g, (1 - wb).expand_as(g), out=grad_t[:, :, 0])
                torch.mul(g, wb.expand_as(g), out=grad_t[:, :, 1])
        if ctx.needs_input_grad[1]:
            a, b = t.unbind(2)
            grad_w = (g * (b - a)).sum(0)  # (L, *rest, N)
            if grad_w.ndim > 2:
                grad_w = grad_w.reshape(w.shape[0], -1, w.shape[1]).sum(1)
        return grad_t, grad_w


class HashGridEncoding(nn.Module):
    """Multi-resolution hash grid: ``forward(x (N, 3) in [0, 1]) -> (N, n_levels * n_features_per_level)``.

    Output features are level-major: columns ``l*F:(l+1)*F`` belong to level ``l`` (coarsest first).
    Inputs outside [0, 1] are clamped.
    """

    def __init__(
        self,
        n_levels: int = 16,
        n_features_per_level: int = 2,
        log2_hashmap_size: int = 19,
        base_resolution: int = 16,
        max_resolution: int = 4096,
        init_scale: float = 1e-4,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        if n_levels < 1 or n_features_per_level < 1:
            raise ValueError(f"n_levels and n_features_per_level must be >= 1, got {n_levels}, {n_features_per_level}")
        if not 1 <= base_resolution <= max_resolution:
            raise ValueError(f"need 1 <= base_resolution <= max_resolution, got {base_resolution}, {max_resolution}")
        self.n_levels = n_levels
        self.n_features_per_level = n_features_per_level
        self.output_dim = n_levels * n_features_per_level
        self.table_size = 1 << log2_hashmap_size

        growth = math.exp((math.log(max_resolution) - math.log(base_resolution)) / max(n_levels - 1, 1))
        # The epsilon keeps e.g. 16 * b**15 = 4095.9999... from flooring to 4095.
        self.resolutions = [int(math.floor(base_resolution * growth**level + 1e-6)) for level in range(n_levels)]
        self.hashed = [(r + 1) ** 3 > self.table_size for r in self.resolutions]
        sizes = [self.table_size if h else (r + 1) ** 3 for r, h in zip(self.resolutions, self.hashed, strict=True)]
        self.level_sizes = sizes
        self.level_offsets = [sum(sizes[:i]) for i in range(n_levels)]

        # Corner indices are computed in int64 (the hash's products overflow int32) and stored in int32 when
        # every table index fits: they are the largest tensors autograd keeps for the backward pass.
        self._index_dtype = torch.int32 if sum(sizes) < 2**31 else torch.int64
        if chunk_size is None:
            chunk_size = self.default_chunk_size(n_levels, sum(sizes))
        self.chunk_size = int(chunk_size)
        # Runs of levels computed together: the dense levels (the coarse ones) and the hashed ones.
        n_dense = sum(not h for h in self.hashed)
        self._level_groups = [g for g in (slice(0, n_dense), slice(n_dense, n_levels)) if g.stop > g.start]
        self._res_table = torch.tensor(self.resolutions, dtype=torch.float32)[:, None, None]  # (L, 1, 1)
        self._dense_scale = torch.tensor([[1, r + 1, (r + 1) ** 2] for r in self.resolutions])[:, :, None]
        self._hash_scale = torch.tensor(_PRIMES)[None, :, None]  # (1, 3, 1)
        self._offsets = torch.tensor(self.level_offsets)[:, None, None, None, None]  # (L, 1, 1, 1, 1)
        self.table = nn.Parameter(torch.empty(n_features_per_level, sum(sizes)).uniform_(-init_scale, init_scale))

    @staticmethod
    def default_chunk_size(n_levels: int, table_entries: int) -> int:
        """Points per chunk: the power of two, between 8192 and 32768, nearest above twice the table's size in
        gathered values (``table_entries * F * 2 / (n_levels * 8 * F)``). Smaller chunks keep the gathered
        corners in cache (8192 is about 6 % faster than 32768 for the builtin recipe's field, render and
        backward); each chunk's backward adds one table-sized gradient, which a chunk must outweigh (the
        published recipe's 2^19 table keeps 32768)."""
        points = 2 * table_entries // (n_levels * 8)
        return min(1 << 15, max(1 << 13, 1 << max(points - 1, 1).bit_length()))

    def extra_repr(self) -> str:
        dense = sum(not h for h in self.hashed)
        return (f"levels={self.n_levels} (dense {dense}, hashed {self.n_levels - dense}), "
                f"features/level={self.n_features_per_level}, table={self.table_size}, "
                f"resolutions={self.resolutions[0]}..{self.resolutions[-1]}")

    def forward(self, x: Tensor) -> Tensor:
        """Encode points.

        Args:
            x: (N, 3) coordinates in [0, 1] (clamped).

        Returns:
            (N, output_dim) features, dtype of the table.
        """
        return self._chunked(x, jacobian=False)[0]

    def forward_with_jacobian(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Encode points and differentiate the encoding w.r.t. them in the same pass (forward mode).

        Args:
            x: (N, 3) coordinates in [0, 1] (clamped).

        Returns:
            ``features`` (N, output_dim), the same numbers as ``forward(x)``, and ``jacobian`` (3, N, output_dim)
            with ``jacobian[d] = d features / d x[:, d]``: the derivative autograd would give (the cell's
            trilinear blend differentiated with the cell fixed, zero along an axis where ``x`` is outside [0, 1]).
            Both are ordinary autograd results, differentiable w.r.t. the table (and ``x``); the jacobian is
            linear in the table, so a loss on it (analytic normals) needs a first-order backward only, not the
            double backward of ``autograd.grad(..., create_graph=True)``.
        """
        feats, derivs, inside = self._chunked(x, jacobian=True)
        res = self._res_table.view(1, 1, -1, 1).to(feats)  # (1, 1, L, 1): d frac / d x = res of the level
        jac = torch.cat([(d * res).permute(0, 3, 2, 1).reshape(3, d.shape[-1], self.output_dim) for d in derivs], 1)
        return feats, jac * inside[:, :, None].to(jac.dtype)

    def forward_with_vjp(self, x: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """Encode points and return, with the features, the per-point vector-jacobian product: a function
        ``vjp(w)`` of ``w`` (N, output_dim) giving (N, 3) ``sum_k w[n, k] * d features[n, k] / d x[n]``, i.e.
        ``(forward_with_jacobian(x)[1] * w).sum(-1).t()`` (up to the order of the additions) without
        materialising the (3, N, output_dim) jacobian: the gradient w.r.t. the points of any per-point function
        of the features whose gradient w.r.t. the features is ``w``. Differentiable (first order) w.r.t. the
        table and ``w``; a loss on it needs no double backward."""
        feats, derivs, inside = self._chunked(x, jacobian=True)
        n_levels, n_feat = self.n_levels, self.n_features_per_level

        def vjp(w: Tensor) -> Tensor:
            if tuple(w.shape) != tuple(feats.shape):
                raise ValueError(f"w must be (N, output_dim) = {tuple(feats.shape)}, got {tuple(w.shape)}")
            res = self._res_table.view(1, -1, 1).to(w)  # (1, L, 1)
            w_fln = (w.view(-1, n_levels, n_feat).permute(2, 1, 0) * res).contiguous()  # (F, L, N), times d frac/d x
            # one split (its backward is one concatenation; slices would each zero-fill a whole-sized gradient)
            pieces = w_fln.split([d.shape[-1] for d in derivs], dim=2)
            out = [(d * wc).sum((1, 2)) for d, wc in zip(derivs, pieces, strict=True)]  # (3, n) per chunk
            g = torch.cat(out, 1) if len(out) > 1 else out[0]
            return (g * inside.to(g.dtype)).t().contiguous()

        return feats, vjp

    def _chunked(self, x: Tensor, jacobian: bool) -> tuple[Tensor, list[Tensor], Tensor | None]:
        """Features (N, output_dim) of (N, 3) points, chunk by chunk; with ``jacobian`` also each chunk's (3, F, L, n)
        derivatives w.r.t. the position in the cells and the (3, N) mask of coordinates inside [0, 1]."""
        if x.ndim != 2 or x.shape[-1] != 3:
            raise ValueError(f"x must be (N, 3), got {tuple(x.shape)}")
        x = x.to(self.table.dtype)
        inside = ((x >= 0) & (x <= 1)).t() if jacobian else None  # (3, N): where the clamp passes the derivative
        x = x.clamp(0.0, 1.0)
        # Chunking also under autograd: small chunks stay in cache and measured ~2x faster than one big
        # batch, although each chunk's backward writes one table-sized gradient.
        if x.shape[0] <= self.chunk_size:
            feats, d = self._encode(x, jacobian)
            return feats, [d] if d is not None else [], inside
        parts = [self._encode(c, jacobian) for c in x.split(self.chunk_size)]
        feats = torch.cat([p[0] for p in parts], dim=0)
        return feats, [p[1] for p in parts if p[1] is not None], inside

    def _encode(self, x: Tensor, jacobian: bool = False) -> tuple[Tensor, Tensor | None]:
        """(N, output_dim) features of (N, 3) clamped points and, with ``jacobian``, (3, F, L, N) derivatives of the
        (F, L, N) blends w.r.t. the position inside the cells (times the level's resolution: w.r.t. the points)."""
        xt = x.t().contiguous()  # (3, N)
        n = xt.shape[1]
        # (L, 2, 2, 2, N), int32 where the table allows: kept for the backward pass, half of int64's memory.
        # The dense levels' indices are computed in the index dtype, the hashed ones' masked int64 terms converted.
        index = torch.empty((self.n_levels, 2, 2, 2, n), dtype=self._index_dtype, device=xt.device)
        fracs = [self._corners(xt, levels, index[levels]) for levels in self._level_groups]
        fx, fy, fz = (torch.cat(fracs) if len(fracs) > 1 else fracs[0]).unbind(1)  # (L, N) each
        # One lookup for all levels: its backward is a single scatter into one table-sized gradient.
        corners = _gather_columns(self.table, index.view(-1)).view(self.n_features_per_level, self.n_levels,
                                                                    2, 2, 2, n)
        along_x = _LerpPairs.apply(corners, fx)  # (F, L, 2, 2, N)
        along_xy = _LerpPairs.apply(along_x, fy)  # (F, L, 2, N)
        feats = _LerpPairs.apply(along_xy, fz)  # (F, L, N)
        out = feats.permute(2, 1, 0).reshape(n, self.output_dim)  # level-major columns
        if not jacobian:
            return out, None
        # d feats / d frac along each axis: the blend of the differences across the cell along that axis
        def across(t: Tensor) -> Tensor:
            """t[:, :, 1] - t[:, :, 0] through unbind, whose backward stacks the two halves' gradients (two selects'
            backward would zero-fill a whole-sized gradient each)."""
            low, high = t.unbind(2)
            return high - low

        d_z = across(along_xy)  # (F, L, N)
        d_y = _LerpPairs.apply(across(along_x), fz)
        d_x = _LerpPairs.apply(_LerpPairs.apply(across(corners), fy), fz)
        return out, torch.stack([d_x, d_y, d_z])  # (3, F, L, N)

    def _corners(self, xt: Tensor, levels: slice, out: Tensor) -> Tensor:
        """Table indices of the 8 cell corners of (3, N) coordinates at a run of levels that are all dense or all
        hashed, written into ``out`` (G, 2, 2, 2, N) with corner (a, b, c) at [:, a, b, c]; returns the positions
        inside the cells, (G, 3, N) in [0, 1]. All levels of the run at once (one operation per step, not one per
        level); the indices are those of the per-level formulas bit for bit."""
        res = self._res_table[levels].to(xt)  # (G, 1, 1), exact integers
        pos = xt * res  # (G, 3, N)
        # x == 1 lands on the last vertex: use the last cell with weight 1 on its far corner.
        lower = pos.detach().floor()
        lower = torch.minimum(lower, res - 1, out=lower)
        frac = pos - lower
        hashed = self.hashed[levels.start]
        axis_scale = (self._hash_scale if hashed else self._dense_scale[levels]).to(xt.device)  # (G or 1, 3, 1)
        near = lower.long().mul_(axis_scale)  # (G, 3, N): index term of the lower corner along each axis
        terms = torch.stack([near, near.add(axis_scale)], dim=2)  # (G, 3, 2, N)
        if hashed:  # (a ^ b ^ c) & m == (a & m) ^ (b & m) ^ (c & m): mask first, then combine in the index dtype
            terms = terms.bitwise_and_(self.table_size - 1).to(out.dtype)
        else:  # dense: every term fits the index dtype
            terms = terms.to(out.dtype)
        tx, ty, tz = terms[:, 0, :, None, None], terms[:, 1, None, :, None], terms[:, 2, None, None, :]
        combine = torch.bitwise_xor if hashed else torch.add
        combine(combine(tx, ty), tz, out=out)
        out += self._offsets[levels].to(out)
        return frac
