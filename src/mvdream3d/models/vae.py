"""The published KL autoencoder (``first_stage_model``) as a diffusers ``AutoencoderKL``.

The network is diffusers' (its encoder pads (0, 1, 0, 1) before each stride-2 conv, uses GroupNorm
eps 1e-6 and has one single-head attention layer in each mid block, like the published LDM code).
Weights travel in the published LDM names (``encoder.down.{i}.block.{j}.*``, ``encoder.mid.attn_1.q``
as (C, C, 1, 1) 1x1-conv weights, ...): LDM -> diffusers uses diffusers' own converter
(``convert_ldm_vae_checkpoint``), the inverse is :func:`diffusers_to_ldm`. The wrapper's
``state_dict()`` / ``load_state_dict()`` speak the published names, so a model holding it as
``first_stage_model`` has exactly the published keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:  # diffusers costs seconds to import: only what builds or converts a VAE imports it
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

_DDCONFIG_KEYS = {
    "double_z",
    "z_channels",
    "resolution",
    "in_channels",
    "out_ch",
    "ch",
    "ch_mult",
    "num_res_blocks",
    "attn_resolutions",
    "dropout",
}
_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_INNER = "vae."  # the diffusers model's attribute name inside the wrapper


def diffusers_vae_config(params: Mapping[str, Any]) -> dict[str, Any]:
    """``first_stage_config.params`` (embed_dim, ddconfig) -> ``AutoencoderKL`` kwargs, with checks."""
    dd = dict(params["ddconfig"])
    unknown = set(dd) - _DDCONFIG_KEYS
    missing = _DDCONFIG_KEYS - set(dd) - {"dropout", "attn_resolutions", "double_z", "resolution"}
    if unknown or missing:
        raise ValueError(f"ddconfig: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
    if not dd.get("double_z", True):
        raise ValueError("ddconfig.double_z must be true (the published AutoencoderKL asserts it)")
    if list(dd.get("attn_resolutions") or []):
        raise ValueError(f"ddconfig.attn_resolutions must be empty, got {dd['attn_resolutions']}")
    if float(dd.get("dropout", 0.0)) != 0.0:
        raise ValueError(f"ddconfig.dropout must be 0.0, got {dd['dropout']}")
    if dd["ch_mult"][0] != 1:
        raise ValueError(f"ddconfig.ch_mult must start with 1, got {dd['ch_mult']}")
    if int(params.get("embed_dim", dd["z_channels"])) != dd["z_channels"]:
        raise ValueError(f"embed_dim ({params['embed_dim']}) must equal ddconfig.z_channels ({dd['z_channels']})")
    n = len(dd["ch_mult"])
    return {
        "in_channels": dd["in_channels"],
        "out_channels": dd["out_ch"],
        "down_block_types": ("DownEncoderBlock2D",) * n,
        "up_block_types": ("UpDecoderBlock2D",) * n,
        "block_out_channels": tuple(dd["ch"] * m for m in dd["ch_mult"]),
        "layers_per_block": dd["num_res_blocks"],
        "latent_channels": dd["z_channels"],
        "norm_num_groups": 32,
        "sample_size": dd.get("resolution", 256),
    }


def _ldm_name(key: str, levels: int) -> str:
    """One diffusers AutoencoderKL key -> its published LDM name."""
    key = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", key)
    key = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", key)
    key = re.sub(
        r"^decoder\.up_blocks\.(\d+)\.(resnets|upsamplers\.0)\.",
        lambda m: f"decoder.up.{levels - 1 - int(m[1])}.{'block' if m[2] == 'resnets' else 'upsample'}.",
        key,
    )
    key = re.sub(
        r"^(encoder|decoder)\.mid_block\.resnets\.(\d+)\.",
        lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}.",
        key,
    )
    key = re.sub(
        r"^(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.",
        lambda m: f"{m[1]}.mid.attn_1.{_ATTN[m[2]]}.",
        key,
    )
    key = re.sub(r"\.conv_shortcut\.", ".nin_shortcut.", key)
    return re.sub(r"^(encoder|decoder)\.conv_norm_out\.", r"\1.norm_out.", key)


def diffusers_to_ldm(state: Mapping[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """diffusers ``AutoencoderKL`` state dict -> published LDM names; attention weights to (C, C, 1, 1)."""
    out = {}
    for key, value in state.items():
        name = _ldm_name(key, levels)
        if ".mid.attn_1." in name and name.endswith(".weight") and value.ndim == 2:
            value = value.reshape(*value.shape, 1, 1)
        out[name] = value
    return out


def ldm_to_diffusers(state: Mapping[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """Published LDM VAE names (no ``first_stage_model.`` prefix) -> diffusers names.

    Uses diffusers' ``convert_ldm_vae_checkpoint``, which silently skips keys it does not know.
    """
    config = {
        "down_block_types": ("DownEncoderBlock2D",) * levels,
        "up_block_types": ("UpDecoderBlock2D",) * levels,
    }
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    return convert_ldm_vae_checkpoint(dict(state), config)


class AutoencoderKLWrapper(nn.Module):
    """Published ``AutoencoderKL`` interface on diffusers' network (held as ``self.vae``).

    ``encode``: images (N, in_channels, H, W) -> posterior over (N, z_channels, H/f, W/f), f = 2**(levels-1).
    ``decode``: latents (N, z_channels, h, w) -> images (N, out_ch, h*f, w*f). No scale factor inside.
    """

    def __init__(self, params: Mapping[str, Any]) -> None:
        from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL

        super().__init__()
        self.config = diffusers_vae_config(params)
        self.levels = len(self.config["block_out_channels"])
        self.vae = AutoencoderKL(**self.config)
        self.register_state_dict_post_hook(_to_ldm_hook)
        self.register_load_state_dict_pre_hook(_from_ldm_hook)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (self.levels - 1)

    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        """x: (N, C, H, W) in [-1, 1] -> posterior: ``.mean``/``.logvar`` (N, z, H/f, W/f), ``.sample()``."""
        return self.vae.encode(x).latent_dist

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z: (N, z_channels, h, w) unscaled latents -> (N, out_ch, h*f, w*f)."""
        return self.vae.decode(z).sample

    def forward(
        self, x: torch.Tensor, sample_posterior: bool = True, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, DiagonalGaussianDistribution]:
        """Reconstruction (N, C, H, W) and posterior, as the published ``AutoencoderKL.forward``."""
        posterior = self.encode(x)
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        return self.decode(z), posterior

    def ldm_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights under the published names (without ``first_stage_model.``), as in the checkpoints."""
        return dict(self.state_dict())

    def expected_ldm_shapes(self) -> dict[str, tuple[int, ...]]:
        """Published key -> shape this VAE needs."""
        return {k: tuple(v.shape) for k, v in diffusers_to_ldm(self.vae.state_dict(), self.levels).items()}

    def freeze(self) -> AutoencoderKLWrapper:
        """Eval mode, no gradients for the weights (the published first stage is always frozen)."""
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self


def _to_ldm_hook(module: AutoencoderKLWrapper, state: dict, prefix: str, local_metadata: Any) -> None:
    inner = prefix + _INNER
    ours = {k[len(inner) :]: state.pop(k) for k in [k for k in state if k.startswith(inner)]}
    state.update({prefix + k: v for k, v in diffusers_to_ldm(ours, module.levels).items()})


def _from_ldm_hook(module: AutoencoderKLWrapper, state: dict, prefix: str, *args: Any) -> None:
    """Rename published keys under ``prefix`` to the inner diffusers names; unknown keys stay (unexpected)."""
    known = set(module.expected_ldm_shapes())
    ldm = {
        k[len(prefix) :]: state.pop(k) for k in [k for k in state if k.startswith(prefix) and k[len(prefix) :] in known]
    }
    if ldm:
        state.update({prefix + _INNER + k: v for k, v in ldm_to_diffusers(ldm, module.levels).items()})


def check_ldm_state_dict(vae: AutoencoderKLWrapper, state: Mapping[str, torch.Tensor]) -> None:
    """Raise ValueError listing (a few) missing, unexpected and wrongly shaped published VAE keys."""
    want = vae.expected_ldm_shapes()
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    wrong = [
        f"{k}: {tuple(state[k].shape)} != {s}" for k, s in want.items() if k in state and tuple(state[k].shape) != s
    ]
    if missing or unexpected or wrong:
        parts = [
            f"{len(missing)} missing (e.g. {missing[:4]})" if missing else "",
            f"{len(unexpected)} unexpected (e.g. {unexpected[:4]})" if unexpected else "",
            f"{len(wrong)} wrong shapes (e.g. {wrong[:3]})" if wrong else "",
        ]
        raise ValueError(
            "VAE state dict does not match the config: "
            + "; ".join(p for p in parts if p)
            + " (keys must be the published names without 'first_stage_model.')"
        )


def load_vae(
    params: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor] | None, freeze: bool = True
) -> AutoencoderKLWrapper:
    """Build the VAE of ``first_stage_config.params``; fill it from ``state_dict`` (published names,
    no ``first_stage_model.`` prefix) or leave it randomly initialised when that is None.

    With weights, the module is built without random init on the weights' device, keeps float32 (or
    whatever it was built with) parameters and copies the values in. Frozen unless ``freeze=False``.
    """
    if state_dict is None:
        vae = AutoencoderKLWrapper(params)
    else:
        device = next(iter(state_dict.values())).device if state_dict else torch.device("cpu")
        with torch.device("meta"):
            vae = AutoencoderKLWrapper(params)
        check_ldm_state_dict(vae, state_dict)
        vae = vae.to_empty(device=device)
        vae.load_state_dict(dict(state_dict), strict=True)
    return vae.freeze() if freeze else vae
