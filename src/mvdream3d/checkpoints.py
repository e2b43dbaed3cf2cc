"""Checkpoint files: reading and writing state dicts, and finding published weights.

Published MVDream checkpoints are plain state dicts with the prefixes ``model.diffusion_model.``
(UNet), ``first_stage_model.`` (VAE), ``cond_stage_model.`` (text encoder) and 12 schedule buffers
(``betas``, ``alphas_cumprod``, ...). ``.pt`` files are read with ``torch.load(weights_only=True)``:
nothing is ever unpickled. Our own checkpoints use the same names and carry their config (the
published YAML layout) as JSON metadata, so a file alone is enough to rebuild its model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import CheckpointError
from .files import atomic_write

if TYPE_CHECKING:  # torch is imported where a tensor is read or written: `mvdream3d --help` stays light
    import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model."
CONFIG_METADATA_KEY = "mvdream3d_config"
LORA_METADATA_KEY = "mvdream3d_lora"  # LoRA adapter files (models/lora.py)

HF_REPO = "MVDream/MVDream"
PUBLISHED_FILES = {
    "sd-v2.1-base-4view": "sd-v2.1-base-4view.pt",
    "sd-v1.5-4view": "sd-v1.5-4view.pt",
}

#: The model file of an output folder (``train``, ``dreambooth``), which names the model as ``--model``
MODEL_FILES_IN_FOLDER = ("model.safetensors", "lora.safetensors")


def model_file_in(folder: str | os.PathLike) -> str:
    """The model file of an output folder: its one model.safetensors or lora.safetensors."""
    found = [os.path.join(folder, f) for f in MODEL_FILES_IN_FOLDER if os.path.isfile(os.path.join(folder, f))]
    if len(found) != 1:
        raise FileNotFoundError(f"model folder {folder} must hold exactly one of {', '.join(MODEL_FILES_IN_FOLDER)} "
                                f"(found {len(found)}) or be a diffusers folder (model_index.json): pass the model "
                                f"file itself")
    return found[0]


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Read ``path`` (.safetensors, .pt, .pth, .ckpt, .bin) -> (state dict, embedded config or None).

    A ``.pt`` holding ``{"state_dict": ...}`` (Lightning style) is unwrapped.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint not found: {path}. Pass the path of a .pt or .safetensors file, or a model name "
            f"({', '.join(PUBLISHED_FILES)})."
        )
    config = None
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            state = {}
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                for k in f.keys():
                    state[k] = f.get_tensor(k)
            if CONFIG_METADATA_KEY in meta:
                config = json.loads(meta[CONFIG_METADATA_KEY])
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
            if not isinstance(obj, Mapping):
                raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
            if CONFIG_METADATA_KEY in obj:
                config = json.loads(obj[CONFIG_METADATA_KEY])
            if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
                obj = obj["state_dict"]
            state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    except CheckpointError:
        raise
    except Exception as e:  # safetensors / zipfile / unpickler errors all mean "not a readable checkpoint"
        raise CheckpointError(
            f"could not read checkpoint {path}: the file is corrupt or not a checkpoint "
            f"({type(e).__name__}: {str(e)[:200]})"
        ) from e
    if not state:
        raise CheckpointError(f"checkpoint {path} contains no tensors")
    return state, config


#: safetensors dtype names of floating-point tensors (parameters); integer ones are buffers such as position ids
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict[str, tuple[str, list[int]]], dict[str, str]]:
    """The header of a .safetensors file without reading tensors (and without torch):
    ({name: (dtype, shape)}, metadata). CheckpointError for a file that is not safetensors."""
    import struct

    try:
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            if n > 100_000_000:
                raise ValueError(f"header length {n}")
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error) as e:
        raise CheckpointError(f"could not read the safetensors header of {path}: {e}") from e
    meta = header.pop("__metadata__", None) or {}
    return {k: (v["dtype"], list(v["shape"])) for k, v in header.items()}, meta


def write_checkpoint(path: str | os.PathLike, state: Mapping[str, torch.Tensor],
                     config: Mapping[str, Any] | None = None) -> Path:
    """Write ``state`` atomically (temp file + rename) as .safetensors or .pt, with ``config`` embedded."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(path.parent, os.W_OK):
        raise PermissionError(f"cannot write to {path.parent}: directory is not writable")
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    with atomic_write(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            meta = {CONFIG_METADATA_KEY: json.dumps(config)} if config is not None else None
            save_file(_unshare(state), str(tmp), metadata=meta)
        else:
            obj: dict[str, Any] = {"state_dict": state}
            if config is not None:
                obj[CONFIG_METADATA_KEY] = json.dumps(config)
            torch.save(obj, tmp)
    return path


def _unshare(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share storage; give each its own copy where needed."""
    seen: set[int] = set()
    out = {}
    for k, v in state.items():
        ptr = v.untyped_storage().data_ptr()
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out


def split_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Split a published-format state dict into ``unet``, ``vae``, ``text``, ``other`` parts (prefixes removed)."""
    parts: dict[str, dict[str, torch.Tensor]] = {"unet": {}, "vae": {}, "text": {}, "other": {}}
    for k, v in state.items():
        for name, prefix in (("unet", UNET_PREFIX), ("vae", VAE_PREFIX), ("text", TEXT_PREFIX)):
            if k.startswith(prefix):
                parts[name][k[len(prefix):]] = v
                break
        else:
            parts["other"][k] = v
    return parts


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connection to the Hub, so that an offline machine fails at once rather than
    after huggingface_hub's retries with back-off."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def download_published(name: str) -> Path:
    """Path of a published checkpoint from the Hugging Face Hub (cached), or a clear error when offline."""
    if name not in PUBLISHED_FILES:
        raise CheckpointError(f"unknown model name {name!r}; published models: {', '.join(PUBLISHED_FILES)}")
    from huggingface_hub import hf_hub_download

    filename = PUBLISHED_FILES[name]
    hint = (
        f"To use {name} offline, download {filename} from the Hugging Face repo {HF_REPO} on a machine "
        f"with internet and pass it as a local file: --model /path/to/{filename} "
        f"(Python: MultiViewPipeline.from_checkpoint('/path/to/{filename}'))."
    )
    try:
        return Path(hf_hub_download(HF_REPO, filename, local_files_only=True))
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise CheckpointError(f"{name} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set. {hint}")
    if not _hub_reachable():
        raise CheckpointError(f"{name} is not in the local Hugging Face cache and the Hub cannot be reached. {hint}")
    try:
        return Path(hf_hub_download(HF_REPO, filename, etag_timeout=5))
    except Exception as e:
        raise CheckpointError(
            f"could not download {name} from {HF_REPO} ({type(e).__name__}). {hint}"
        ) from e
