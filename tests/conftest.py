"""Shared fixtures: tiny random configs and the location of ../shared."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SPEC = SHARED / "spec"

# A tiny SD-1.5-shaped multi-view UNet: 2 levels, attention at both, 4 heads.
TINY_UNET = dict(
    in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[2, 1], num_res_blocks=1,
    channel_mult=[1, 2], num_heads=4, use_spatial_transformer=True, transformer_depth=1, context_dim=24,
    camera_dim=16, legacy=False,
)


def perturb(module: torch.nn.Module, std: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Add noise to every parameter so zero-initialised layers do not hide bugs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return module


@pytest.fixture
def tiny_unet():
    from mvdream3d import MultiViewUNet

    torch.manual_seed(0)
    return perturb(MultiViewUNet.from_config(TINY_UNET)).eval()


def spec_or_skip(name: str) -> Path:
    p = SPEC / name
    if not p.exists():
        pytest.skip(f"{p} not available")
    return p
