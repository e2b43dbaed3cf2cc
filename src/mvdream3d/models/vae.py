"""The published KL autoencoder (``first_stage_model``) as a diffusers ``AutoencoderKL``.

The network is diffusers' (its encoder pads (0, 1, 0, 1) before each stride-2 conv, uses GroupNorm
eps 1e-6 and has one single-head attention layer in each mid block, like the published LDM code).
Weights travel in the published LDM names (``encoder.down.{i}.block.{j}.*``, ``encoder.mid.attn_1.q``
as (C, C, 1, 1) 1x1-conv weights, ...): LDM -> diffusers uses diffusers' own converter
(``convert_ldm_vae_checkpoint``), the inverse is :func:`diffusers_to_ldm`. The wrapper's
``state_dict()`` / ``load_state_dict()`` speak the published names, so a model holding it as
``first_stage_model`` has exactly the published keys.

A frozen VAE loaded from weights on the CPU is *deferred* when the trace cache
(:mod:`mvdream3d.models.traced_cache`) holds a checked trace of its decoder: ``decode`` then runs the trace and
diffusers is not imported; anything else that needs the network (``encode``, ``state_dict``, ``parameters``,
training, conversion, ``.vae``) builds it from the kept weights on first use. The first decode of a frozen
loaded VAE writes that trace.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from . import traced_cache
from .traced_cache import DeferredLibraryModule

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


class _DecodeOnly(nn.Module):
    """``z -> vae.decode(z).sample``: the function the decoder trace records."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z).sample


class AutoencoderKLWrapper(DeferredLibraryModule):
    """Published ``AutoencoderKL`` interface on diffusers' network (held as ``self.vae``).

    ``encode``: images (N, in_channels, H, W) -> posterior over (N, z_channels, H/f, W/f), f = 2**(levels-1).
    ``decode``: latents (N, z_channels, h, w) -> images (N, out_ch, h*f, w*f). No scale factor inside.
    ``AutoencoderKLWrapper(params)`` builds the network at once (random weights); :meth:`deferred` (used by
    :func:`load_vae`) keeps published-name weights and builds it on first use (see the module docstring).
    """

    _lazy_child = "vae"

    def __init__(self, params: Mapping[str, Any]) -> None:
        from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL

        super().__init__()
        self._setup(params)
        self.vae = AutoencoderKL(**self.config)

    def _setup(self, params: Mapping[str, Any]) -> None:
        self.config = diffusers_vae_config(params)
        self.levels = len(self.config["block_out_channels"])
        self._pending: dict[str, torch.Tensor] | None = None  # published-name weights while deferred
        self._trace_pending = False  # write the decoder's trace at the next decode
        self.__dict__["_decoder_trace"] = None  # not a submodule: never in state_dict / parameters
        self.__dict__["_pending_key"] = None
        self.register_state_dict_post_hook(_to_ldm_hook)
        self.register_load_state_dict_pre_hook(_from_ldm_hook)
        self._deferred_ready = True

    @classmethod
    def deferred(cls, params: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> AutoencoderKLWrapper:
        """A wrapper that keeps ``state`` (published names, already checked against ``params``; the tensors as the
        built network would hold them) and builds the diffusers network only when something needs it."""
        self = cls.__new__(cls)
        DeferredLibraryModule.__init__(self)
        self._setup(params)
        self._pending = dict(state)
        return self

    # -- deferred state ------------------------------------------------------------------------------
    def _convert_deferred(self, fn: Any) -> None:
        assert self._pending is not None
        converted = {k: fn(v) for k, v in self._pending.items()}
        if any(converted[k] is not v for k, v in self._pending.items()):  # a real move: other key, other trace
            self.__dict__["_decoder_trace"] = self.__dict__["_pending_key"] = None
        self._pending = converted

    def _build_child(self) -> nn.Module:
        from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL

        assert self._pending is not None
        ref = next((v for v in self._pending.values() if v.is_floating_point()), None)
        with torch.device("meta"):
            vae = AutoencoderKL(**self.config)
        vae = vae.to_empty(device=ref.device if ref is not None else torch.device("cpu"))
        if ref is not None:  # nn.Module's own cast: diffusers' override warns about fp32 modules on any dtype cast
            vae = nn.Module.to(vae, ref.dtype)
        vae.load_state_dict(ldm_to_diffusers(self._pending, self.levels), strict=True)
        return vae

    def _after_build(self) -> None:
        self._pending = None
        self.__dict__["_decoder_trace"] = self.__dict__["_pending_key"] = None
        self._trace_pending = self._deferred_frozen

    def decoder_trace_path(self) -> Path | None:
        """Where the cached trace of this deferred VAE's decoder is (or would be); None when the VAE is built,
        not on the CPU, or the cache is off."""
        if not self.is_deferred or not traced_cache.cache_enabled() or self.device.type != "cpu":
            return None
        if self.__dict__["_pending_key"] is None:
            self.__dict__["_pending_key"] = _decoder_key(self._pending, self.config)
        return traced_cache.trace_path(_DECODER_KIND, self.__dict__["_pending_key"])

    def _cached_decoder(self) -> torch.jit.ScriptModule | None:
        if self.__dict__["_decoder_trace"] is None:
            path = self.decoder_trace_path()
            if path is not None:
                self.__dict__["_decoder_trace"] = traced_cache.load_trace(path, map_location=self.device)
        return self.__dict__["_decoder_trace"]

    def _write_decoder_trace(self, z: torch.Tensor, out: torch.Tensor) -> None:
        """Trace the built decoder on ``z`` (whose output is ``out``), check it on ``z`` and on a batch of
        another size and spatial size, and cache it under the key of the current weights."""
        self._trace_pending = False
        if (not traced_cache.cache_enabled() or self.training or z.device.type != "cpu"
                or any(p.requires_grad for p in self.vae.parameters())):
            return
        b, c, h, w = z.shape
        other = torch.randn((1 if b > 1 else 2, c, max(2, h // 2), max(2, w // 2)),
                            generator=torch.Generator().manual_seed(0)).to(z.dtype)
        path = traced_cache.trace_path(_DECODER_KIND, _decoder_key(self.ldm_state_dict(), self.config))
        traced_cache.trace_checked(_DecodeOnly(self.vae), (z.detach(),), [(z.detach(),), (other,)], path,
                                   "the VAE decoder", eager_outputs=[out.detach(), None])

    @property
    def dtype(self) -> torch.dtype:
        """The weights' floating dtype (without building a deferred network)."""
        if self.is_deferred:
            assert self._pending is not None
            return next(v.dtype for v in self._pending.values() if v.is_floating_point())
        return next(self.vae.parameters()).dtype

    @property
    def device(self) -> torch.device:
        """The weights' device (without building a deferred network)."""
        if self.is_deferred:
            assert self._pending is not None
            return next(iter(self._pending.values())).device
        return next(self.vae.parameters()).device

    def extra_repr(self) -> str:
        return "deferred: diffusers' AutoencoderKL is built on first use" if self.is_deferred else ""

    @property
    def downsample_factor(self) -> int:
        return 2 ** (self.levels - 1)

    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        """x: (N, C, H, W) in [-1, 1] -> posterior: ``.mean``/``.logvar`` (N, z, H/f, W/f), ``.sample()``."""
        return self.vae.encode(x).latent_dist

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z: (N, z_channels, h, w) unscaled latents -> (N, out_ch, h*f, w*f).

        A deferred VAE runs its cached decoder trace (no gradients, so not when ``z`` requires them); otherwise
        diffusers' network, whose first decode after loading writes that trace."""
        if self.is_deferred and not (z.requires_grad and torch.is_grad_enabled()):
            trace = self._cached_decoder()
            if trace is not None:
                return traced_cache.run_trace(trace, z)
        out = self.vae.decode(z).sample
        if self._trace_pending:
            self._write_decoder_trace(z, out)
        return out

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
        if self.is_deferred:
            self._deferred_frozen = True
            return self
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


_DECODER_KIND = "vae-decoder"


def _decoder_key(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> str:
    """Trace cache key of the decoder of the VAE with published-name weights ``state`` and diffusers ``config``."""
    return traced_cache.cache_key(_DECODER_KIND, state, "diffusers", {"config": dict(config), "device": "cpu"})


def load_vae(
    params: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor] | None, freeze: bool = True
) -> AutoencoderKLWrapper:
    """Build the VAE of ``first_stage_config.params``; fill it from ``state_dict`` (published names,
    no ``first_stage_model.`` prefix) or leave it randomly initialised when that is None.

    With weights, the module is built without random init on the weights' device, keeps float32 (or
    whatever it was built with) parameters and copies the values in. Frozen unless ``freeze=False``.
    A frozen VAE on the CPU whose decoder trace is cached comes back deferred (see the module docstring):
    the same weights and numbers, without importing diffusers until something needs the network.
    """
    if state_dict is None:
        vae = AutoencoderKLWrapper(params)
    else:
        device = next(iter(state_dict.values())).device if state_dict else torch.device("cpu")
        if freeze and device.type == "cpu" and state_dict and traced_cache.cache_enabled():
            # the tensors the built module would hold: float32 (the default dtype) copies on the same device
            kept = {k: v.detach().to(torch.get_default_dtype()) if v.is_floating_point() else v.detach()
                    for k, v in state_dict.items()}
            lazy = AutoencoderKLWrapper.deferred(params, kept)
            path = lazy.decoder_trace_path()
            if path is not None and path.is_file():  # written after these very weights passed the checks below
                return lazy.freeze()
        with torch.device("meta"):
            vae = AutoencoderKLWrapper(params)
        check_ldm_state_dict(vae, state_dict)
        vae = vae.to_empty(device=device)
        vae.load_state_dict(dict(state_dict), strict=True)
        vae._trace_pending = freeze and device.type == "cpu"
    return vae.freeze() if freeze else vae
