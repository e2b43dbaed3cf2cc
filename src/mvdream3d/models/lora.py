"""LoRA adapter files: their format, reading and merging into a model (training them: ``training/lora.py``).

A LoRA file (``lora.safetensors``) holds only the adapter matrices, under peft's names
(``<module>.lora_A.weight`` (r, in) and ``<module>.lora_B.weight`` (out, r)), and JSON metadata under
``mvdream3d_lora``: the base model (a name or an absolute checkpoint path), ``rank``, ``alpha``, the
target module suffixes and a fingerprint of the base weights it was trained on. Loading (see
:func:`mvdream3d.models.loading.load_lora_model`) builds the base model and merges
``W <- W + (alpha / rank) * B @ A`` into each adapted ``nn.Linear``, so the result is a plain
:class:`~mvdream3d.models.model.MVDreamModel` that every command can use. Merging needs no ``peft``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoints import LORA_METADATA_KEY
from ..files import atomic_write_bytes

__all__ = ["DEFAULT_TARGETS", "LORA_FORMAT_VERSION", "LORA_METADATA_KEY", "base_fingerprint", "is_lora_file",
           "merge_lora", "read_lora_metadata", "save_lora"]

LORA_FORMAT_VERSION = 1
DEFAULT_TARGETS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")  # every attention projection


@torch.no_grad()
def merge_lora(unet: nn.Module, state: Mapping[str, torch.Tensor], scale: float) -> int:
    """``W += scale * B @ A`` for every adapter pair in ``state``; returns the number of layers merged.

    Raises ValueError when an adapter names a module the UNet lacks or its shapes do not fit.
    """
    layers = {k[: -len(".lora_A.weight")] for k in state if k.endswith(".lora_A.weight")}
    stray = [k for k in state if not k.endswith((".lora_A.weight", ".lora_B.weight"))]
    if stray or not layers:
        raise ValueError(f"not a LoRA state dict: {len(stray)} unexpected keys, e.g. {stray[:3]}")
    for name in sorted(layers):
        try:
            layer = unet.get_submodule(name)
        except AttributeError as e:
            raise ValueError(f"the LoRA adapter names {name!r}, which this model's UNet does not have") from e
        a, b = state[f"{name}.lora_A.weight"], state.get(f"{name}.lora_B.weight")
        if not isinstance(layer, nn.Linear) or b is None or (b.shape[0], a.shape[1]) != tuple(layer.weight.shape):
            raise ValueError(f"the LoRA adapter for {name!r} does not fit the model's layer "
                             f"{tuple(getattr(layer, 'weight', torch.empty(0)).shape)}")
        w = layer.weight
        w.add_((scale * (b.double() @ a.double())).to(w.dtype).to(w.device))
    return len(layers)


def base_fingerprint(unet: nn.Module, targets: Sequence[str]) -> float:
    """A cheap checksum of the weights the adapters modify (to notice a LoRA applied to another base)."""
    total = 0.0
    for name, m in unet.named_modules():
        if isinstance(m, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets):
            total += float(m.weight.detach().double().abs().sum()) + 1e-3 * float(m.weight.detach().double().sum())
    return total


def save_lora(path: str | os.PathLike, state: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> Path:
    """Write the adapters and their metadata atomically as safetensors."""
    from safetensors.torch import save

    meta = {"format_version": LORA_FORMAT_VERSION, **metadata}
    data = save({k: v.contiguous() for k, v in state.items()}, metadata={LORA_METADATA_KEY: json.dumps(meta)})
    return atomic_write_bytes(path, data)


def read_lora_metadata(path: str | os.PathLike) -> dict[str, Any] | None:
    """The LoRA metadata of a .safetensors file, or None when it is no LoRA file (or unreadable)."""
    if not str(path).endswith(".safetensors") or not os.path.isfile(path):
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:  # not a safetensors file: the ordinary checkpoint loader reports it
        return None
    return json.loads(meta[LORA_METADATA_KEY]) if LORA_METADATA_KEY in meta else None


def is_lora_file(path: str | os.PathLike) -> bool:
    """True for a ``.safetensors`` file written by :func:`save_lora`."""
    return read_lora_metadata(path) is not None
