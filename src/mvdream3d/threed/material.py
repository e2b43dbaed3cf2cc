"""Lambertian shading of the field's albedo under one point light plus ambient light.

``diffuse``: ``albedo * (ambient + diffuse * max(0, n . l))`` with ``l`` the unit vector from the point
to the light; ``textureless``: the same with a white albedo (shape-only renders, as in DreamFusion);
``albedo``: the albedo alone (the ambient-only warm-up of the published recipe).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SHADING_MODES", "DiffuseMaterial"]

SHADING_MODES = ("diffuse", "textureless", "albedo")


def _check_shading(shading: str) -> None:
    if shading not in SHADING_MODES:
        raise ValueError(f"unknown shading {shading!r}; valid options: {', '.join(SHADING_MODES)}")


class DiffuseMaterial(nn.Module):
    """Parameter-free diffuse material: ``forward(albedo, normal, points, light_positions, shading) -> rgb``.

    Light colours are a grey level (float) or an RGB triple.
    """

    def __init__(
        self, ambient_light_color: float | Sequence[float] = 0.1, diffuse_light_color: float | Sequence[float] = 0.9
    ) -> None:
        super().__init__()
        self.ambient_light_color = ambient_light_color
        self.diffuse_light_color = diffuse_light_color

    def forward(self, albedo: Tensor, normal: Tensor | None, points: Tensor, light_positions: Tensor,
                shading: str = "diffuse") -> Tensor:
        """Shade points.

        Args:
            albedo: (N, 3) in [0, 1].
            normal: (N, 3) unit outward normals (may be None for ``shading="albedo"``).
            points: (N, 3) world positions.
            light_positions: (N, 3) world positions of each point's light.
            shading: "diffuse", "textureless" or "albedo".

        Returns:
            (N, 3) colours in [0, 1].
        """
        _check_shading(shading)
        if shading == "albedo":
            return albedo
        if normal is None:
            raise ValueError(f"shading {shading!r} needs normals")
        ambient = torch.as_tensor(self.ambient_light_color, dtype=albedo.dtype, device=albedo.device)
        diffuse = torch.as_tensor(self.diffuse_light_color, dtype=albedo.dtype, device=albedo.device)
        to_light = F.normalize(light_positions - points, dim=-1)
        cosine = (normal * to_light).sum(-1, keepdim=True).clamp(min=0.0)
        light = ambient + diffuse * cosine
        base = torch.ones_like(albedo) if shading == "textureless" else albedo
        return (base * light).clamp(0.0, 1.0)
