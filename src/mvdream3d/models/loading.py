"""Loading models: every way of naming a model ends in :func:`resolve_model`, and each file is read once.

A model reference (``--model``, ``MultiViewPipeline.from_pretrained``, a LoRA file's base, a web app picker
entry, ``text_to_3d(model=...)``, ``dreambooth(model=...)``) is one of:

- None or ``"mvdream3d-tiny"``: the built-in model, its weights shipped in ``mvdream3d/weights/``;
- ``"tiny-random"`` or ``"tiny-random-SEED"``: a deterministic random tiny model (smoke runs, tests);
- a published name (``"sd-v2.1-base-4view"``, ``"sd-v1.5-4view"``): downloaded once from the Hugging Face
  Hub repo ``MVDream/MVDream`` and cached (see :func:`mvdream3d.checkpoints.download_published`);
- a checkpoint file (.safetensors, .pt, .ckpt, .pth, .bin) with the published key prefixes; its config is
  the one given, else a YAML beside it (``NAME.yaml`` or ``config.yaml``), else the one embedded in the file,
  else the published config whose UNet shapes it has (:func:`detect_config`);
- a LoRA file (``lora.safetensors`` of ``dreambooth --train lora``): its base model (itself a reference) with
  the adapters merged (:func:`load_lora_model`);
- an output folder of ``train`` or ``dreambooth`` holding ``model.safetensors`` or ``lora.safetensors``;
- a diffusers folder (``model_index.json``, ``unet/``, ...; :mod:`mvdream3d.diffusers_layout`);
- an :class:`MVDreamModel`, returned as it is.

Models come back in float32 on the CPU in eval mode. Files written by ``mvdream3d train-vae`` (an autoencoder
and its latent scale) are read by :func:`read_autoencoder`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..builtin import DEFAULT_MODEL, builtin_model, builtin_weights_path
from ..checkpoints import (
    PUBLISHED_FILES,
    VAE_PREFIX,
    CheckpointError,
    download_published,
    model_file_in,
    read_checkpoint,
    split_state_dict,
)
from ..diffusers_layout import is_diffusers_folder, load_diffusers
from .lora import DEFAULT_TARGETS, base_fingerprint, merge_lora, read_lora_metadata
from .model import MVDreamModel, available_configs, guess_published_name, load_model

__all__ = ["checkpoint_path", "detect_config", "load_checkpoint_model", "load_lora_model", "read_autoencoder",
           "resolve_model", "sidecar_config"]

ModelRef = str | os.PathLike | MVDreamModel | None


def resolve_model(model: ModelRef = None) -> MVDreamModel:
    """The model a reference names (see the module docstring for the kinds); FileNotFoundError for a path
    that does not exist or a name that is not known, CheckpointError for a file that does not fit its config."""
    if isinstance(model, MVDreamModel):
        return model
    name = DEFAULT_MODEL if model is None else str(model)
    if name == DEFAULT_MODEL or name.startswith("tiny-random"):
        return builtin_model(name)
    if name in PUBLISHED_FILES:
        return load_model(name, download_published(name))
    if os.path.isdir(name):
        if is_diffusers_folder(name):
            return load_diffusers(name)
        name = model_file_in(name)
    if os.path.exists(name):
        if read_lora_metadata(name) is not None:  # DreamBooth adapters: the base model they name, adapters merged
            return load_lora_model(name)
        return load_checkpoint_model(name)
    known = sorted({DEFAULT_MODEL, "tiny-random", *PUBLISHED_FILES})
    if name in available_configs():
        raise FileNotFoundError(f"{name!r} is a config without weights; pass a checkpoint path too")
    raise FileNotFoundError(f"model {name!r} is not a checkpoint file nor a known model ({', '.join(known)})")


def sidecar_config(path: str | os.PathLike) -> str | None:
    """The YAML config beside a checkpoint (``NAME.yaml``, else ``config.yaml`` in its folder), or None."""
    path = str(path)
    for cand in (os.path.splitext(path)[0] + ".yaml", os.path.join(os.path.dirname(path), "config.yaml")):
        if os.path.isfile(cand):
            return cand
    return None


def detect_config(path: str | os.PathLike, state: Mapping[str, torch.Tensor],
                  embedded: Mapping[str, Any] | None) -> str | Mapping[str, Any]:
    """The config of the checkpoint ``path`` already read as (``state``, ``embedded`` config): a YAML beside
    it, else the embedded config, else the name of the published config its UNet matches. CheckpointError
    when none applies."""
    beside = sidecar_config(path)
    if beside is not None:
        return beside
    if embedded is not None:
        return embedded
    guess = guess_published_name(split_state_dict(state)["unet"])
    if guess is None:
        raise CheckpointError(f"{path} carries no config and is not a published model: put its YAML beside it "
                              f"(or pass --config NAME_OR_YAML)")
    return guess


def load_checkpoint_model(path: str | os.PathLike,
                          config: str | os.PathLike | Mapping[str, Any] | None = None) -> MVDreamModel:
    """The model of one checkpoint file, read once. ``config``: a model name, YAML path or dict, or None to
    detect it (:func:`detect_config`)."""
    state, embedded = read_checkpoint(path)
    return load_model(config if config is not None else detect_config(path, state, embedded), state)


def checkpoint_path(ref: str | os.PathLike) -> Path:
    """The checkpoint file a reference names, for code that reads the weights itself (``train``'s
    ``model.init``): the built-in model's shipped file, a published checkpoint (downloaded once), an output
    folder's model.safetensors, or the path. A LoRA file holds adapters only and is refused."""
    name = str(ref)
    if name == DEFAULT_MODEL:
        path = builtin_weights_path(name)
        if path is None:
            raise FileNotFoundError(f"the built-in model {name!r} is not shipped with this installation: give a "
                                    f"checkpoint path")
        return Path(str(path))
    if name in PUBLISHED_FILES:
        return download_published(name)
    if os.path.isdir(name):
        name = model_file_in(name)
    if read_lora_metadata(name) is not None:
        raise ValueError(f"{name} is a LoRA file (adapters only): merge it into a full checkpoint first, "
                         f"e.g. mvdream3d convert {name} merged.safetensors")
    return Path(name)


def load_lora_model(path: str | os.PathLike, base: ModelRef = None) -> MVDreamModel:
    """The base model of a LoRA file with its adapters merged: a plain :class:`MVDreamModel`.

    ``base``: override the base recorded in the file (a name, path or model, as :func:`resolve_model` takes).
    A base whose adapted weights differ from the ones the adapters were trained on gives a warning.
    """
    from safetensors.torch import load_file

    meta = read_lora_metadata(path)
    if meta is None:
        raise ValueError(f"{path} is not a LoRA file written by mvdream3d dreambooth")
    ref = base if base is not None else meta.get("base_model")
    if ref is None:
        raise ValueError(f"the LoRA file {path} does not name its base model: load it with "
                         f"load_lora_model(path, base=...)")
    if isinstance(ref, str) and os.path.isabs(ref) and not os.path.exists(ref):
        raise FileNotFoundError(f"the base model of the LoRA file {path} is not found: {ref}")
    model = resolve_model(ref)
    targets = meta.get("target_modules", list(DEFAULT_TARGETS))
    expected = meta.get("base_fingerprint")
    if expected is not None:
        got = base_fingerprint(model.unet, targets)
        if abs(got - float(expected)) > 1e-6 * max(1.0, abs(float(expected))):
            warnings.warn(f"the base model {ref!r} differs from the one the LoRA file {path} was trained on; "
                          f"the adapters are applied anyway", UserWarning, stacklevel=2)
    merge_lora(model.unet, load_file(str(path)), float(meta["alpha"]) / float(meta["rank"]))
    return model.eval()


def read_autoencoder(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(embedded config, VAE state dict with published names and no prefix) of a ``vae.safetensors`` written by
    ``mvdream3d train-vae``; the config holds ``first_stage_config`` and ``scale_factor``."""
    state, config = read_checkpoint(path)
    if not config or "first_stage_config" not in config:
        raise ValueError(f"{path} is not an autoencoder written by `mvdream3d train-vae` (no first_stage_config "
                         "in its metadata)")
    return config, {k[len(VAE_PREFIX):]: v for k, v in state.items() if k.startswith(VAE_PREFIX)}
