"""LoRA adapters on the UNet's attention projections, trained through ``peft``: injecting them, reading their
weight changes and matrices, removing them.

The adapter file format, reading and merging live in :mod:`mvdream3d.models.lora` and loading a LoRA file as a
model in :func:`mvdream3d.models.loading.load_lora_model` (both re-exported here); merging needs no ``peft``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from ..extras import require
from ..models.loading import load_lora_model
from ..models.lora import (
    DEFAULT_TARGETS,
    LORA_FORMAT_VERSION,
    LORA_METADATA_KEY,
    base_fingerprint,
    is_lora_file,
    merge_lora,
    read_lora_metadata,
    save_lora,
)

__all__ = ["DEFAULT_TARGETS", "LORA_FORMAT_VERSION", "LORA_METADATA_KEY", "add_lora", "base_fingerprint",
           "is_lora_file", "load_lora_model", "lora_state_dict", "lora_weight_deltas", "merge_lora",
           "read_lora_metadata", "remove_lora", "save_lora"]

_ADAPTER = "default"


def add_lora(unet: nn.Module, rank: int, alpha: float, targets: Sequence[str] = DEFAULT_TARGETS) -> list[nn.Parameter]:
    """Inject LoRA adapters (peft) into the ``nn.Linear`` modules whose names end with ``targets``.

    Every other UNet parameter is frozen. ``B`` starts at zero, so the model is unchanged until trained.
    Returns the trainable adapter parameters.
    """
    require("peft", "train", "LoRA training (--train lora)")
    from peft import LoraConfig, inject_adapter_in_model

    if rank < 1:
        raise ValueError(f"lora rank must be >= 1, got {rank}")
    config = LoraConfig(r=int(rank), lora_alpha=float(alpha), target_modules=list(targets), lora_dropout=0.0,
                        bias="none", init_lora_weights=True)
    inject_adapter_in_model(config, unet, adapter_name=_ADAPTER)
    params = []
    for name, p in unet.named_parameters():
        p.requires_grad_("lora_" in name)
        if "lora_" in name:
            params.append(p)
    if not params:
        raise ValueError(f"no UNet module matches the LoRA targets {list(targets)}")
    return params


def _lora_layers(unet: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, m in unet.named_modules():
        if hasattr(m, "lora_A") and hasattr(m, "get_base_layer") and _ADAPTER in m.lora_A:
            yield name, m


def lora_weight_deltas(unet: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(delta, base_weight)`` per adapted layer, ``delta = scale * B @ A`` (out, in), differentiable."""
    out = []
    for _, m in _lora_layers(unet):
        a, b = m.lora_A[_ADAPTER].weight, m.lora_B[_ADAPTER].weight
        out.append((m.scaling[_ADAPTER] * (b @ a), m.get_base_layer().weight))
    return out


def lora_state_dict(unet: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter matrices under peft's names, e.g. ``...attn1.to_q.lora_A.weight`` (detached, CPU)."""
    state = {}
    for name, m in _lora_layers(unet):
        state[f"{name}.lora_A.weight"] = m.lora_A[_ADAPTER].weight.detach().cpu().clone()
        state[f"{name}.lora_B.weight"] = m.lora_B[_ADAPTER].weight.detach().cpu().clone()
    return state


def remove_lora(unet: nn.Module) -> None:
    """Put the original layers back in place of the peft wrappers (base weights unchanged)."""
    for name, m in list(_lora_layers(unet)):
        parent_name, _, child = name.rpartition(".")
        parent = unet.get_submodule(parent_name) if parent_name else unet
        setattr(parent, child, m.get_base_layer())
