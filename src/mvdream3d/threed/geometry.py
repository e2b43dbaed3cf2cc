"""Density + albedo field for text-to-3D: a hash-grid encoded NeRF in the box [-radius, radius]^3.

World coordinates follow ``mvdream3d.cameras`` (+y up, object at the origin). A point ``p`` is mapped to
[0, 1]^3 by ``(p + radius) / (2 radius)`` (clamped) for the hash encoding; a small ReLU MLP turns the
features into one raw density and three albedo logits::

    density = softplus(raw + blob(p)),  blob(p) = density_blob_scale * (1 - |p| / density_blob_std)
    albedo  = sigmoid(logits)

The blob bias (Magic3D's initialisation) starts the optimisation from a soft ball of radius about
``density_blob_std`` instead of empty space. Normals point outwards, ``-grad(density) / |grad(density)|``,
by central finite differences (6 extra density evaluations at ``p +- eps`` along the axes, ``eps`` in
world units) or analytically: the exact gradient, computed next to the field's values (the hash grid's
derivatives from its trilinear blend, contracted with the MLP's gradient for the density), so losses on
normals reach the field through an ordinary (first-order) backward instead of a double backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .hashgrid import HashGridEncoding

__all__ = ["NORMAL_TYPES", "ImplicitVolume"]

NORMAL_TYPES = ("finite_difference", "analytic")


class ImplicitVolume(nn.Module):
    """Hash-grid NeRF field: ``forward(points (N, 3), with_normal) -> {"density", "albedo"[, "normal"]}``."""

    def __init__(
        self,
        radius: float = 1.0,
        n_levels: int = 16,
        n_features_per_level: int = 2,
        log2_hashmap_size: int = 19,
        base_resolution: int = 16,
        max_resolution: int = 4096,
        mlp_hidden: int = 64,
        mlp_layers: int = 1,
        density_blob_scale: float = 10.0,
        density_blob_std: float = 0.5,
        normal_type: str = "finite_difference",
        finite_difference_eps: float = 0.01,
    ) -> None:
        super().__init__()
        if normal_type not in NORMAL_TYPES:
            raise ValueError(f"unknown normal_type {normal_type!r}; valid options: {', '.join(NORMAL_TYPES)}")
        if radius <= 0 or mlp_layers < 1:
            raise ValueError(f"need radius > 0 and mlp_layers >= 1, got {radius}, {mlp_layers}")
        self.radius = float(radius)
        self.density_blob_scale = float(density_blob_scale)
        self.density_blob_std = float(density_blob_std)
        self.normal_type = normal_type
        self.finite_difference_eps = float(finite_difference_eps)

        self.encoding = HashGridEncoding(n_levels, n_features_per_level, log2_hashmap_size, base_resolution,
                                         max_resolution)
        layers: list[nn.Module] = []
        width = self.encoding.output_dim
        for _ in range(mlp_layers):
            layers += [nn.Linear(width, mlp_hidden), nn.ReLU(inplace=True)]
            width = mlp_hidden
        layers.append(nn.Linear(width, 4))  # raw density, 3 albedo logits
        self.mlp = nn.Sequential(*layers)

    def density_bias(self, points: Tensor) -> Tensor:
        """Blob bias added to the raw density: (N, 3) world points -> (N, 1)."""
        dist = torch.linalg.vector_norm(points, dim=-1, keepdim=True)
        return self.density_blob_scale * (1.0 - dist / self.density_blob_std)

    def _raw(self, points: Tensor) -> tuple[Tensor, Tensor]:
        unit = ((points + self.radius) / (2.0 * self.radius)).clamp(0.0, 1.0)
        out = self.mlp(self.encoding(unit))
        return out[:, :1], out[:, 1:]

    def density(self, points: Tensor) -> Tensor:
        """Density at (N, 3) world points: (N, 1), >= 0."""
        raw, _ = self._raw(points)
        return F.softplus(raw + self.density_bias(points))

    def forward(self, points: Tensor, with_normal: bool = False) -> dict[str, Tensor]:
        """Query the field.

        Args:
            points: (N, 3) world coordinates.
            with_normal: also return unit outward normals (costs 6 extra density queries with finite
                differences, the encoding's derivatives and a few per-point products with analytic normals).

        Returns:
            ``density`` (N, 1) >= 0, ``albedo`` (N, 3) in (0, 1), and ``normal`` (N, 3) unit vectors
            (zero where the density gradient vanishes) when ``with_normal``.
        """
        if with_normal and self.normal_type == "analytic":
            return self._forward_analytic(points)
        raw, logits = self._raw(points)
        out = {"density": F.softplus(raw + self.density_bias(points)), "albedo": torch.sigmoid(logits)}
        if with_normal:
            eps = self.finite_difference_eps
            offsets = torch.eye(3, dtype=points.dtype, device=points.device) * eps  # (3, 3)
            shifted = torch.cat([points[None] + offsets[:, None], points[None] - offsets[:, None]])  # (6, N, 3)
            d = self.density(shifted.reshape(-1, 3)).view(2, 3, -1)  # [+/-, axis, N]
            grad = ((d[0] - d[1]) / (2 * eps)).t()  # (N, 3)
            out["normal"] = F.normalize(-grad, dim=-1)
        return out

    def _forward_analytic(self, points: Tensor) -> dict[str, Tensor]:
        """Density, albedo and the normal from the density's gradient, computed next to the field instead of by
        ``autograd.grad(density, points, create_graph=True)``: the encoding's derivatives
        (``HashGridEncoding.forward_with_vjp``) contracted with the raw density's gradient w.r.t. the features
        (the MLP's backward for one output, written out: ReLU masks times weights). The same derivative (up to
        the order of the additions), but its graph is first order in the parameters: a loss on normals costs one
        ordinary backward, not a double backward. MLPs other than Linear / ReLU stacks take the autograd route."""
        layers = list(self.mlp)
        if not all(isinstance(m, nn.Linear | nn.ReLU) for m in layers) or not isinstance(layers[-1], nn.Linear):
            return self._forward_analytic_autograd(points)
        two_r = 2.0 * self.radius
        scaled = (points + self.radius) / two_r
        inside = ((scaled >= 0) & (scaled <= 1)).to(points.dtype)  # (N, 3): the clamp's derivative
        h, vjp = self.encoding.forward_with_vjp(scaled.clamp(0.0, 1.0))  # (N, D) features
        h0 = h
        masks: list[Tensor | None] = []
        for layer in layers[:-1]:
            if isinstance(layer, nn.Linear):
                h = layer(h)
                masks.append(None)
            else:  # ReLU: autograd's derivative is 0 where the output is 0
                h = torch.relu(h)
                masks.append(h > 0)
        out = layers[-1](h)
        raw, logits = out[:, :1], out[:, 1:]
        # d raw / d features, (N, D): the last layer's density row taken back through the layers
        v: Tensor = layers[-1].weight[0]
        for layer, mask in zip(reversed(layers[:-1]), reversed(masks), strict=True):
            v = v @ layer.weight if mask is None else v * mask.to(h.dtype)
        d_raw = vjp(v.expand_as(h0) if v.ndim == 1 else v) * inside / two_r  # (N, 3): d raw / d points
        pre = raw + self.density_bias(points)
        density = F.softplus(pre)
        # d softplus(pre) / d pre, as autograd computes it (1 above softplus' threshold of 20)
        d_soft = torch.ops.aten.softplus_backward(torch.ones_like(pre), pre, 1.0, 20.0)  # (N, 1)
        grad = d_soft * (d_raw + self._density_bias_grad(points))  # (N, 3)
        return {"density": density, "albedo": torch.sigmoid(logits), "normal": F.normalize(-grad, dim=-1)}

    def _density_bias_grad(self, points: Tensor) -> Tensor:
        """d density_bias / d points, (N, 3): ``-scale / std * p / |p|`` (0 at the origin, as autograd's norm)."""
        dist = torch.linalg.vector_norm(points, dim=-1, keepdim=True)
        unit = points / torch.where(dist > 0, dist, torch.ones_like(dist))
        return (-self.density_blob_scale / self.density_blob_std) * unit

    def _forward_analytic_autograd(self, points: Tensor) -> dict[str, Tensor]:
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            pts = points if points.requires_grad else points.detach().requires_grad_(True)
            raw, logits = self._raw(pts)
            density = F.softplus(raw + self.density_bias(pts))
            (grad,) = torch.autograd.grad(density, pts, torch.ones_like(density), create_graph=create_graph)
        out = {"density": density, "albedo": torch.sigmoid(logits), "normal": F.normalize(-grad, dim=-1)}
        if not create_graph:
            out = {k: v.detach() for k, v in out.items()}
        return out

    def parameter_groups(self, lr_encoding: float, lr_mlp: float) -> list[dict]:
        """Optimiser parameter groups: the hash table and the MLP get their own learning rates
        (the published recipe: 0.01 for the table, 0.001 for the MLP)."""
        return [
            {"params": list(self.encoding.parameters()), "lr": lr_encoding, "name": "encoding"},
            {"params": list(self.mlp.parameters()), "lr": lr_mlp, "name": "mlp"},
        ]
