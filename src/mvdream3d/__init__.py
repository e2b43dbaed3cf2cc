"""mvdream3d: MVDream multi-view diffusion (Shi et al., arXiv 2308.16512) and text-to-3D in PyTorch.

Public API (stable): ``MultiViewUNet``, ``load_vae``, ``load_model``, ``sample``, ``MultiViewPipeline``.
Names resolve lazily so that ``import mvdream3d`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "MultiViewUNet": "mvdream3d.models.unet",
    "UNetConfig": "mvdream3d.models.unet",
    "load_vae": "mvdream3d.models.vae",
    "load_model": "mvdream3d.models.model",
    "build_model": "mvdream3d.models.model",
    "MVDreamModel": "mvdream3d.models.model",
    "NoiseSchedule": "mvdream3d.diffusion.schedule",
    "sample": "mvdream3d.diffusion.sampling",
    "MultiViewPipeline": "mvdream3d.pipeline",
    "MultiViewOutput": "mvdream3d.pipeline",
    "cameras": "mvdream3d.cameras",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(_EXPORTS[name])
        return module if name == "cameras" else getattr(module, name)
    raise AttributeError(f"module 'mvdream3d' has no attribute {name!r}")
