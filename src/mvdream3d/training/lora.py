"""LoRA adapters on the UNet's attention projections: training (through ``peft``), files, merging.

A LoRA file (``lora.safetensors``) holds only the adapter matrices, under peft's names
(``<module>.lora_A.weight`` (r, in) and ``<module>.lora_B.weight`` (out, r)), and JSON metadata under
``mvdream3d_lora``: the base model (a name or an absolute checkpoint path), ``rank``, ``alpha``, the
target module suffixes and a fingerprint of the base weights it was trained on. Loading builds the base
model and merges ``W <- W + (alpha / rank) * B @ A`` into each adapted ``nn.Linear``, so the result is a
plain :class:`MVDreamModel` that every command can use. Merging needs no ``peft``.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

LORA_METADATA_KEY = "mvdream3d_lora"
LORA_FORMAT_VERSION = 1
DEFAULT_TARGETS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")  # every attention projection
_ADAPTER = "default"


def add_lora(unet: nn.Module, rank: int, alpha: float, targets: Sequence[str] = DEFAULT_TARGETS) -> list[nn.Parameter]:
    """Inject LoRA adapters (peft) into the ``nn.Linear`` modules whose names end with ``targets``.

    Every other UNet parameter is frozen. ``B`` starts at zero, so the model is unchanged until trained.
    Returns the trainable adapter parameters.
    """
    from ..extras import require

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
    import tempfile

    from safetensors.torch import save_file

    path = Path(path)
    meta = {"format_version": LORA_FORMAT_VERSION, **metadata}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in state.items()}, tmp, metadata={LORA_METADATA_KEY: json.dumps(meta)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


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


def load_lora_model(path: str | os.PathLike, base: Any = None):
    """The base model of a LoRA file with its adapters merged: a plain :class:`MVDreamModel`.

    ``base``: override the base recorded in the file (a name, path or model, as ``resolve_model`` takes).
    A base whose adapted weights differ from the ones the adapters were trained on gives a warning.
    """
    from safetensors.torch import load_file

    from ..pipeline import resolve_model

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
