"""Backgrounds: the colour seen where a ray leaves the field, as a function of the ray direction.

All share ``forward(dirs (B, H, W, 3) unit world directions) -> rgb (B, H, W, 3) in [0, 1]``; the
renderer composites the field over it. Random colours (``random``, and the augmentation of ``learned``)
stop the field from painting the background into the object: a colour the field cannot predict is only
matched by letting it show through. In eval mode they are deterministic (white / no augmentation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "BACKGROUNDS",
    "LearnedEnvironmentBackground",
    "RandomColorBackground",
    "SolidBackground",
    "build_background",
]


def _check_dirs(dirs: Tensor) -> None:
    if dirs.ndim != 4 or dirs.shape[-1] != 3:
        raise ValueError(f"dirs must be (B, H, W, 3), got {tuple(dirs.shape)}")


def _random_colors(dirs: Tensor) -> Tensor:
    """One uniformly random colour per image, expanded to (B, H, W, 3)."""
    colors = torch.rand(dirs.shape[0], 1, 1, 3, dtype=dirs.dtype, device=dirs.device)
    return colors.expand_as(dirs)


class SolidBackground(nn.Module):
    """The same colour everywhere (default white)."""

    def __init__(self, color: Sequence[float] = (1.0, 1.0, 1.0)) -> None:
        super().__init__()
        if len(color) != 3:
            raise ValueError(f"color must be 3 numbers (RGB in [0, 1]), got {color}")
        self.register_buffer("color", torch.tensor([float(c) for c in color]), persistent=False)

    def forward(self, dirs: Tensor) -> Tensor:
        _check_dirs(dirs)
        return self.color.to(dirs).expand_as(dirs)


class RandomColorBackground(nn.Module):
    """Training: one uniformly random colour per image at each call. Eval: white."""

    def forward(self, dirs: Tensor) -> Tensor:
        _check_dirs(dirs)
        if self.training:
            return _random_colors(dirs)
        return torch.ones_like(dirs)


class LearnedEnvironmentBackground(nn.Module):
    """Small MLP of the ray direction (sin/cos features), sigmoid output.

    In training mode, with probability ``random_aug_prob`` per call (one draw for the whole batch), the
    output is replaced by one random solid colour per image (the published recipe's augmentation).
    """

    def __init__(self, hidden: int = 32, random_aug: bool = True, random_aug_prob: float = 0.5,
                 n_frequencies: int = 3) -> None:
        super().__init__()
        if not 0.0 <= random_aug_prob <= 1.0:
            raise ValueError(f"random_aug_prob must be in [0, 1], got {random_aug_prob}")
        self.random_aug = random_aug
        self.random_aug_prob = float(random_aug_prob)
        freqs = math.pi * 2.0 ** torch.arange(n_frequencies, dtype=torch.float32)
        self.register_buffer("frequencies", freqs, persistent=False)
        in_dim = 3 + 6 * n_frequencies
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden),
                                 nn.ReLU(inplace=True), nn.Linear(hidden, 3))

    def forward(self, dirs: Tensor) -> Tensor:
        _check_dirs(dirs)
        if self.training and self.random_aug and torch.rand(()).item() < self.random_aug_prob:
            return _random_colors(dirs)
        angles = (dirs[..., None] * self.frequencies.to(dirs)).flatten(-2)  # (B, H, W, 3 * n_freq)
        features = torch.cat([dirs, torch.sin(angles), torch.cos(angles)], dim=-1)
        return torch.sigmoid(self.mlp(features))


BACKGROUNDS: dict[str, type[nn.Module]] = {
    "solid": SolidBackground,
    "random": RandomColorBackground,
    "learned": LearnedEnvironmentBackground,
}


def build_background(name: str, **kwargs: Any) -> nn.Module:
    """Background by name: "solid" (``color``), "random" or "learned" (``hidden``, ``random_aug``,
    ``random_aug_prob``, ``n_frequencies``)."""
    if name not in BACKGROUNDS:
        raise ValueError(f"unknown background {name!r}; valid options: {', '.join(BACKGROUNDS)}")
    return BACKGROUNDS[name](**kwargs)
