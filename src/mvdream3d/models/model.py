"""A complete multi-view diffusion model: UNet + optional VAE + optional text encoder + schedule.

Configs are data: the published YAML layout (``model.params`` with ``unet_config``,
``first_stage_config``, ``cond_stage_config``, ``linear_start``, ``linear_end``, ``timesteps``,
``scale_factor``, ``parameterization``). Model names resolve to YAML files in ``mvdream3d/configs``.
A ``first_stage_config`` that is missing or targets ``torch.nn.Identity`` means a pixel-space model;
a ``cond_stage_config`` target of ``torch.nn.Identity`` means no text encoder.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from ..checkpoints import (
    TEXT_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    CheckpointError,
    read_checkpoint,
    split_state_dict,
)
from ..diffusion.schedule import SCHEDULE_BUFFER_NAMES, NoiseSchedule
from .text_encoders import build_text_encoder
from .unet import MultiViewUNet
from .vae import diffusers_vae_config, load_vae


def available_configs() -> list[str]:
    """Names of the model configs shipped in ``mvdream3d/configs``."""
    return sorted(p.name[:-5] for p in resources.files("mvdream3d.configs").iterdir() if p.name.endswith(".yaml"))


def resolve_config(config: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """A model name, a YAML path or a dict -> the full config dict ``{"model": {"params": ...}}``."""
    if isinstance(config, Mapping):
        cfg = copy.deepcopy(dict(config))
    else:
        text = str(config)
        path = Path(text)
        if text in available_configs():
            cfg = yaml.safe_load(resources.files("mvdream3d.configs").joinpath(f"{text}.yaml").read_text())
        elif path.is_file():
            cfg = yaml.safe_load(path.read_text())
        else:
            raise FileNotFoundError(
                f"model config {text!r} is neither a known name ({', '.join(available_configs())}) "
                f"nor an existing YAML file"
            )
    if "model" not in cfg and "params" in cfg:
        cfg = {"model": cfg}
    if "params" not in cfg.get("model", {}) or "unet_config" not in cfg["model"]["params"]:
        raise ValueError("model config must have model.params.unet_config (the published YAML layout)")
    return cfg


def _is_identity(sub: Mapping[str, Any] | None) -> bool:
    return sub is None or str(sub.get("target", "")).endswith("torch.nn.Identity")


class MVDreamModel(nn.Module):
    """The parts of a multi-view diffusion model and the operations that join them.

    ``unet``: :class:`MultiViewUNet`; ``vae``: latent autoencoder or None (pixel space);
    ``text_encoder``: module with ``encode(list[str]) -> (N, 77, D)`` or None;
    ``noise_schedule``: :class:`NoiseSchedule`; ``scale_factor``: latent scaling (0.18215 for SD).
    """

    def __init__(self, config: Mapping[str, Any], unet: MultiViewUNet, vae: nn.Module | None,
                 text_encoder: nn.Module | None) -> None:
        super().__init__()
        self.config = dict(config)
        params = self.config["model"]["params"]
        self.unet = unet
        self.vae = vae
        self.text_encoder = text_encoder
        self.noise_schedule = NoiseSchedule.from_config(params)
        self.scale_factor = float(params.get("scale_factor", 0.18215 if vae is not None else 1.0))
        self.unet.noise_schedule = self.noise_schedule  # sample() picks it up

    @property
    def params(self) -> dict[str, Any]:
        return self.config["model"]["params"]

    @property
    def latent_channels(self) -> int:
        return self.unet.config.in_channels

    @property
    def downsample_factor(self) -> int:
        """Pixels per latent cell (1 for pixel-space models)."""
        if self.vae is None:
            return 1
        return 2 ** (len(self.params["first_stage_config"]["params"]["ddconfig"]["ch_mult"]) - 1)

    @property
    def native_size(self) -> int:
        """Image side (pixels) the model was trained at: ``unet_config.params.image_size`` x the VAE factor."""
        return int(self.params["unet_config"].get("params", {}).get("image_size", 32)) * self.downsample_factor

    @property
    def prompt_suffix(self) -> str:
        """Text appended to prompts: the config's ``prompt_suffix``, else the published ", 3d asset"."""
        return str(self.params.get("prompt_suffix", ", 3d asset"))

    @property
    def sampling_defaults(self) -> dict[str, Any]:
        """Sampler, steps, CFG scale and guidance rescale the CLI, ``evaluate`` and the web app use when none
        are given.

        The published models' (DDIM, 50 steps, scale 7.5, no rescale) unless the config's ``sampling``
        section names the settings the model was evaluated with (the built-in model's come from a sweep, see
        docs/model_card.md).
        """
        out: dict[str, Any] = {"sampler": "ddim", "steps": 50, "guidance_scale": 7.5, "guidance_rescale": 0.0}
        out.update(self.params.get("sampling") or {})
        return out

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """Text embeddings (N, 77, context_dim) for ``prompts``."""
        if self.text_encoder is None:
            raise ValueError("this model has no text encoder: pass context tensors directly")
        return self.text_encoder.encode(list(prompts))

    def encode_images(self, images: torch.Tensor, sample: bool = False,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """Images (N, 3, H, W) in [-1, 1] -> model-space latents (scaled), or the images for pixel models."""
        if self.vae is None:
            return images
        post = self.vae.encode(images.to(self.vae_dtype))
        z = post.sample(generator=generator) if sample else post.mean
        return z * self.scale_factor

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images (N, 3, H, W) in [-1, 1] (clamped)."""
        if self.vae is None:
            return latents.clamp(-1, 1)
        return self.vae.decode(latents.to(self.vae_dtype) / self.scale_factor).clamp(-1, 1)

    @property
    def vae_dtype(self) -> torch.dtype:
        assert self.vae is not None
        dtype = getattr(self.vae, "dtype", None)  # the wrapper's: does not build a deferred VAE
        return dtype if isinstance(dtype, torch.dtype) else next(self.vae.parameters()).dtype

    def ldm_state_dict(self) -> dict[str, torch.Tensor]:
        """All weights under the published names and prefixes, plus the schedule buffers."""
        out = {UNET_PREFIX + k: v for k, v in self.unet.state_dict().items()}
        if self.vae is not None:
            out.update({VAE_PREFIX + k: v for k, v in self.vae.ldm_state_dict().items()})
        if self.text_encoder is not None and not getattr(self.text_encoder, "weights_external", False):
            out.update({TEXT_PREFIX + k: v for k, v in self.text_encoder.state_dict().items()})
        out.update(self.noise_schedule.ldm_buffers())
        return out

    def save(self, path: str | os.PathLike) -> Path:
        """Write a self-describing checkpoint (.safetensors or .pt) loadable by :func:`load_model`."""
        from ..checkpoints import write_checkpoint

        return write_checkpoint(path, self.ldm_state_dict(), self.config)

    def parameter_counts(self) -> dict[str, int]:
        parts = {"unet": self.unet, "vae": self.vae, "text_encoder": self.text_encoder}
        return {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items() if m is not None}


def build_model(config: str | os.PathLike | Mapping[str, Any]) -> MVDreamModel:
    """A randomly initialised model for ``config`` (name, YAML path or dict)."""
    cfg = resolve_config(config)
    params = cfg["model"]["params"]
    unet = MultiViewUNet.from_config(params["unet_config"].get("params", {}))
    vae = None if _is_identity(params.get("first_stage_config")) else load_vae(
        params["first_stage_config"]["params"], None)
    text = build_text_encoder(params.get("cond_stage_config"))
    return MVDreamModel(cfg, unet, vae, text)


def _build_without_vae(cfg: Mapping[str, Any]) -> tuple[MultiViewUNet, nn.Module | None]:
    """The UNet (random) and text encoder of the resolved config ``cfg``, built in :func:`build_model`'s order,
    for :func:`load_model`, which builds the VAE from the checkpoint's weights only (no random one first)."""
    params = cfg["model"]["params"]
    unet = MultiViewUNet.from_config(params["unet_config"].get("params", {}))
    if not _is_identity(params.get("first_stage_config")):
        diffusers_vae_config(params["first_stage_config"]["params"])  # a bad VAE config fails here, as in build_model
    return unet, build_text_encoder(params.get("cond_stage_config"))


def guess_published_name(unet_state: Mapping[str, torch.Tensor]) -> str | None:
    """The published config ("sd-v2.1-base-4view", "sd-v1.5-4view") whose UNet has the shapes of ``unet_state``
    (UNet weights without prefix), from its cross-attention width and proj_in kind; None for any other UNet."""
    w = unet_state.get("input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight")
    if w is None or unet_state.get("input_blocks.1.1.proj_in.weight") is None:
        return None
    linear = unet_state["input_blocks.1.1.proj_in.weight"].ndim == 2
    return {(1024, True): "sd-v2.1-base-4view", (768, False): "sd-v1.5-4view"}.get((w.shape[1], linear))


def load_part(module: nn.Module, state: Mapping[str, torch.Tensor], what: str, config_name: str,
              guess: str | None) -> None:
    """Load ``state`` into ``module`` (the model's ``what``: "UNet", "text encoder") strictly, or raise a
    :class:`CheckpointError` that counts the missing, unexpected and mismatched keys, names the config and,
    when ``guess`` names another published config the weights fit, says to pass that one."""
    own = module.state_dict()
    # transformers-version-dependent buffer: present in old SD 1.5 checkpoints, absent in new ones;
    # the text encoder's load hooks add or drop it.
    optional = ("embeddings.position_ids",)
    missing = [k for k in own if k not in state and not k.endswith(optional)]
    unexpected = [k for k in state if k not in own and not k.endswith(optional)]
    mismatched = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items()
                  if k in state and state[k].shape != v.shape]
    if missing or unexpected or mismatched:
        msg = [f"the checkpoint's {what} weights do not fit the config {config_name!r}"]
        if guess and guess != config_name:
            msg.append(f"(the checkpoint looks like {guess!r}: pass that config)")
        if mismatched:
            k, a, b = mismatched[0]
            msg.append(f"{len(mismatched)} shape mismatches, e.g. {k}: checkpoint {a} vs model {b}")
        if missing:
            msg.append(f"{len(missing)} missing keys, e.g. {missing[:3]}")
        if unexpected:
            msg.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[:3]}")
        raise CheckpointError("; ".join(msg))
    module.load_state_dict(state, strict=True)


def load_model(config: str | os.PathLike | Mapping[str, Any] | None,
               checkpoint: str | os.PathLike | Mapping[str, torch.Tensor]) -> MVDreamModel:
    """Build the model of ``config`` and fill it from ``checkpoint``.

    ``config``: a model name ("sd-v2.1-base-4view"), a published-format YAML path, the same as a dict,
    or None to use the config embedded in a checkpoint written by this project. ``checkpoint``: a
    .pt/.safetensors path or a state dict with the published prefixes. Schedule buffers in the
    checkpoint are ignored (recomputed from the config). Weights of another config raise
    :class:`CheckpointError` naming both.
    """
    embedded = None
    if isinstance(checkpoint, Mapping):
        state = dict(checkpoint)
    else:
        state, embedded = read_checkpoint(checkpoint)
    if config is None:
        if embedded is None:
            raise CheckpointError(
                f"checkpoint {checkpoint} carries no config: pass one (a model name such as "
                f"'sd-v2.1-base-4view' or a YAML path)"
            )
        config = embedded
    config_name = config if isinstance(config, str) else str(config) if isinstance(config, os.PathLike) \
        else "<dict config>"
    cfg = resolve_config(config)
    unet, text = _build_without_vae(cfg)
    parts = split_state_dict(state)
    guess = guess_published_name(parts["unet"])
    if not parts["unet"]:
        raise CheckpointError(f"checkpoint has no UNet weights (no keys starting with {UNET_PREFIX!r})")
    load_part(unet, parts["unet"], "UNet", config_name, guess)
    vae = None
    if not _is_identity(cfg["model"]["params"].get("first_stage_config")):
        if not parts["vae"]:
            raise CheckpointError(f"config {config_name!r} has a VAE but the checkpoint has no {VAE_PREFIX} keys")
        vae_params = cfg["model"]["params"]["first_stage_config"]["params"]
        try:
            vae = load_vae(vae_params, parts["vae"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"the checkpoint's VAE weights do not fit the config {config_name!r}: {e}") from e
    model = MVDreamModel(cfg, unet, vae, text)
    if model.text_encoder is not None and not getattr(model.text_encoder, "weights_external", False):
        if not parts["text"]:
            raise CheckpointError(
                f"config {config_name!r} has a text encoder but the checkpoint has no {TEXT_PREFIX} keys")
        load_part(model.text_encoder, parts["text"], "text encoder", config_name, guess)
    stray = [k for k in parts["other"] if k not in SCHEDULE_BUFFER_NAMES]
    if stray:
        raise CheckpointError(f"checkpoint has {len(stray)} unexpected keys, e.g. {stray[:3]}")
    return model.eval()
