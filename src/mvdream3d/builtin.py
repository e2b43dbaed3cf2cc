"""Models that need no download: the built-in default and deterministic tiny random models.

``tiny-random`` (optionally ``tiny-random-SEED``) builds ``configs/tiny-random.yaml`` with weights
drawn from a fixed seed: it produces noise-like images but exercises every code path in seconds,
for smoke runs and tests. The built-in default model ships its trained weights in
``mvdream3d/weights/`` (see docs/model_card.md once it exists).
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported on use, so that `mvdream3d info` can find the weights file without torch
    from .models.model import MVDreamModel

DEFAULT_MODEL = "mvdream3d-tiny"


def builtin_weights_path(name: str = DEFAULT_MODEL):
    """Path of a shipped weights file, or None if this installation has none."""
    p = resources.files("mvdream3d").joinpath("weights", f"{name}.safetensors")
    return p if p.is_file() else None


def builtin_model(name: str = DEFAULT_MODEL) -> MVDreamModel:
    """The shipped default model, or ``tiny-random[-SEED]``."""
    import torch

    from .models.model import build_model, load_model

    if name.startswith("tiny-random"):
        seed = int(name.rsplit("-", 1)[1]) if name.count("-") == 2 else 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_model("tiny-random")
            # Zero-initialised output layers would make a random model predict exactly zero; give them
            # small random values so samples depend on the prompt, camera and seed.
            for p in model.unet.parameters():
                if p.abs().sum() == 0 and p.ndim > 1:
                    p.data.normal_(0, 0.02)
        return model.eval()
    path = builtin_weights_path(name)
    if path is None:
        raise FileNotFoundError(
            f"the built-in model {name!r} is not shipped with this installation yet. Pass a model: "
            f"--model /path/to/checkpoint.(pt|safetensors), --model sd-v2.1-base-4view, or --model tiny-random "
            f"for a smoke run"
        )
    return load_model(None, str(path))
