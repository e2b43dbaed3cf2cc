"""Score-distillation guidance: a frozen diffusion model turns batches of renders into a loss.

``MultiViewGuidance`` is the published MVDream-threestudio guidance: renders come in groups of
``n_view`` views of one scene (object-major, consecutive), each view conditioned on its camera, and the
UNet denoises a group jointly (``num_frames = n_view``). ``Guidance2D`` is the DreamFusion-style baseline
with the same interface: every render is denoised alone (``num_frames = 1``, no camera) with a
view-dependent prompt ("..., front view"). Both draw **one** timestep per batch, annealed by
:func:`timestep_range`, and return a scalar loss whose gradient w.r.t. the renders is the update.

Loss types (``z``: model-space latents of the renders, ``x_t = q_sample(z, t, eps)``, classifier-free
guided model output ``out = out_u + s (out_c - out_u)``):

- ``"sds"``: ``grad = (1 - alphas_cumprod[t]) (eps_hat(out) - eps)``; ``loss = 0.5 |z - (z - grad)|^2 / B``
  with the target detached, so ``d loss / d z = grad / B``.
- ``"x0_recon"`` (published default): ``x0_hat = to_x0(out)``, optionally with its std rescaled towards
  the unguided ``to_x0(out_c)`` per group (``recon_std_rescale``, as the published code);
  ``loss = 0.5 |z - x0_hat|^2 / B`` with ``x0_hat`` detached.

Random numbers: the timestep is drawn first, then the noise, both from ``generator`` (CPU or on the
latents' device; torch's global RNG when None).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cameras import c2w_to_model_camera
from ..diffusion.sampling import cfg_combine
from ..models.model import MVDreamModel
from .camera_sampler import azimuth_elevation_from_c2w, view_direction_text

__all__ = ["GUIDANCES", "Guidance2D", "MultiViewGuidance", "build_guidance", "timestep_range"]

LOSS_TYPES = ("x0_recon", "sds")


def timestep_range(step: int, start: tuple[float, float] = (0.98, 0.98), end: tuple[float, float] = (0.02, 0.50),
                   anneal_steps: int = 8000) -> tuple[float, float]:
    """(t_min, t_max) as fractions of the schedule length at optimisation step ``step``.

    Linear from ``start`` at step 0 to ``end`` at ``anneal_steps``, constant afterwards (published:
    ``min_step_percent = [0, 0.98, 0.02, 8000]``, ``max_step_percent = [0, 0.98, 0.50, 8000]``).
    """
    f = min(max(step / max(anneal_steps, 1), 0.0), 1.0)
    return (start[0] + (end[0] - start[0]) * f, start[1] + (end[1] - start[1]) * f)


def _randint(lo: int, hi: int, generator: torch.Generator | None) -> int:
    dev = generator.device if generator is not None else torch.device("cpu")
    return int(torch.randint(lo, hi + 1, (1,), generator=generator, device=dev).item())


def _randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    dev = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=dev, dtype=torch.float32).to(x.device)


class _ScoreDistillation(nn.Module):
    """Shared machinery; subclasses define the conditioning (context, camera) and ``num_frames``."""

    def __init__(self, model: MVDreamModel, guidance_scale: float = 50.0, negative_prompt: str = "",
                 loss_type: str = "x0_recon", recon_std_rescale: float = 0.5, n_view: int = 4,
                 latent_render_size: int | None = None, t_range_start: tuple[float, float] = (0.98, 0.98),
                 t_range_end: tuple[float, float] = (0.02, 0.50), anneal_steps: int = 8000,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if model.text_encoder is None:
            raise ValueError("guidance needs a model with a text encoder (this model takes context tensors only)")
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {LOSS_TYPES}")
        if not 0.0 <= recon_std_rescale <= 1.0:
            raise ValueError(f"recon_std_rescale must be in [0, 1], got {recon_std_rescale}")
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
        if n_view < 1:
            raise ValueError(f"n_view must be >= 1, got {n_view}")
        # Referenced, not registered: guidance.parameters()/state_dict()/.to() leave the model alone.
        object.__setattr__(self, "model", model)
        model.requires_grad_(False)  # the VAE encoder is backpropagated through but never trained
        self.guidance_scale = float(guidance_scale)
        self.negative_prompt = negative_prompt
        self.loss_type = loss_type
        self.recon_std_rescale = float(recon_std_rescale)
        self.n_view = int(n_view)
        size = latent_render_size or model.native_size  # 256 for the published models, 64 for the built-in
        multiple = model.downsample_factor * model.unet.downsample_factor
        if size < 1 or size % multiple:
            raise ValueError(f"latent_render_size={size} must be a positive multiple of {multiple} for this model "
                             f"(VAE factor x UNet downsampling)")
        self.latent_render_size = int(size)
        self.t_range_start, self.t_range_end = tuple(t_range_start), tuple(t_range_end)
        self.anneal_steps = int(anneal_steps)
        self.dtype = dtype
        self._text_cache: dict[str, Tensor] = {}
        self._context_cache: dict[tuple, Any] = {}

    # ------------------------------------------------------------------ text
    def _embed(self, text: str) -> Tensor:
        """(1, L, D) float32 embedding of ``text`` as given (cached), on the UNet's device."""
        if text not in self._text_cache:
            with torch.no_grad():
                self._text_cache[text] = self.model.encode_text([text]).detach().float()
        return self._text_cache[text].to(self.model.device)

    def encode_prompt(self, prompt: str) -> dict[str, Tensor]:
        """``{'cond': (1, L, D), 'uncond': (1, L, D)}`` float32: ``prompt + model.prompt_suffix`` and the
        negative prompt (no suffix). Cached per text."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("empty prompt: guidance needs a text prompt")
        return {"cond": self._embed(prompt + self.model.prompt_suffix), "uncond": self._embed(self.negative_prompt)}

    # ------------------------------------------------------------------ to be defined by subclasses
    def _conditioning(self, c2w: Tensor, prompt: str) -> tuple[Tensor, Tensor | None, int]:
        """(context (B, L, D), camera (B, 16) or None, num_frames) for B cameras."""
        raise NotImplementedError

    def _context_key(self, prompt: str) -> Any:
        """A key under which the UNet context of ``prompt`` can be reused from step to step, or None when the
        context depends on more than the prompt (and the batch size)."""
        return None

    def _unet_context(self, context: Tensor, uncond: Tensor | None, key: Any) -> Any:
        """The UNet's ``context`` for ``(uncond, cond)`` stacked (or ``context`` alone without ``uncond``). With a
        ``key`` and no autocast it is a :class:`~mvdream3d.models.attention.PreparedContext`, made once and reused:
        the cross-attention keys and values of a fixed prompt are the same at every step (call under no_grad)."""
        both = context if uncond is None else torch.cat([uncond, context])
        unet = self.model.unet
        if key is None or (self.dtype or self.model.dtype) != self.model.dtype or not hasattr(unet, "prepare_context"):
            return both
        full_key = (key, uncond is None, tuple(both.shape), both.device, self.model.dtype)
        if full_key not in self._context_cache:
            if len(self._context_cache) >= 4:  # a run uses one or two (batch sizes); keep the memory bounded
                self._context_cache.clear()
            self._context_cache[full_key] = unet.prepare_context(both)
        return self._context_cache[full_key]

    # ------------------------------------------------------------------ diffusion
    def _unet(self, x: Tensor, t: Tensor, context: Any, camera: Tensor | None, num_frames: int) -> Tensor:
        unet = self.model.unet
        run_dtype = self.dtype or self.model.dtype
        if run_dtype == self.model.dtype:  # the UNet casts its inputs to its own dtype
            out = unet(x, t, context=context, camera=camera, num_frames=num_frames)
        else:
            with torch.autocast(device_type=x.device.type, dtype=run_dtype):
                out = unet(x, t, context=context, camera=camera, num_frames=num_frames)
        return out.float()

    def _rescale_std(self, x0: Tensor, x0_text: Tensor, group: int) -> Tensor:
        """Blend ``x0`` with itself rescaled to the per-group std of the unguided ``x0_text`` (B, C, h, w)."""
        shape = x0.shape
        g, gt = x0.reshape(-1, group, *shape[1:]), x0_text.reshape(-1, group, *shape[1:])
        dims = tuple(range(1, g.ndim))
        factor = (gt.std(dim=dims, keepdim=True) + 1e-8) / (g.std(dim=dims, keepdim=True) + 1e-8)
        r = self.recon_std_rescale
        return (r * g * factor + (1.0 - r) * g).reshape(shape)

    def latent_loss(self, z: Tensor, c2w: Tensor, prompt: str, step: int,
                    generator: torch.Generator | None = None) -> dict[str, Any]:
        """The guidance loss for model-space latents ``z`` (B, C, h, w) (differentiable) and their cameras.

        Returns ``loss`` (scalar float32, differentiable w.r.t. ``z``), ``t`` (int), ``grad_norm`` (float,
        norm of d loss / d z) and ``x0_pred`` ((B, C, h, w) detached guided clean-latent estimate).
        """
        b = z.shape[0]
        context, camera, num_frames = self._conditioning(c2w, prompt)
        sched = self.model.noise_schedule
        n_t = sched.num_timesteps
        t_lo, t_hi = timestep_range(step, self.t_range_start, self.t_range_end, self.anneal_steps)
        lo = min(max(int(n_t * t_lo), 0), n_t - 1)
        t = _randint(lo, min(max(int(n_t * t_hi), lo), n_t - 1), generator)
        noise = _randn_like(z, generator)
        z32 = z.float()
        with torch.no_grad():
            tt = torch.full((b,), t, device=z.device, dtype=torch.long)
            x_t = sched.q_sample(z32.detach(), tt, noise)
            uncond = self.encode_prompt(prompt)["uncond"].expand(b, -1, -1)
            use_cfg = self.guidance_scale != 1.0
            key = self._context_key(prompt)
            if use_cfg:
                cam2 = None if camera is None else torch.cat([camera, camera])
                out_u, out_c = self._unet(torch.cat([x_t, x_t]), torch.cat([tt, tt]),
                                          self._unet_context(context, uncond, key), cam2, num_frames).chunk(2)
                out = cfg_combine(out_u, out_c, self.guidance_scale)
            else:
                out_c = out = self._unet(x_t, tt, self._unet_context(context, None, key), camera, num_frames)
            x0_hat = sched.to_x0(out, x_t, tt)
            if self.loss_type == "sds":
                w = 1.0 - sched.alphas_cumprod[t].item()
                grad = torch.nan_to_num(w * (sched.to_eps(out, x_t, tt) - noise))
                target = z32.detach() - grad
            else:
                if self.recon_std_rescale > 0:
                    x0_hat = self._rescale_std(x0_hat, sched.to_x0(out_c, x_t, tt), num_frames)
                target = x0_hat
            grad_norm = float(((z32.detach() - target) / b).norm())
        loss = 0.5 * F.mse_loss(z32, target.detach(), reduction="sum") / b
        return {"loss": loss, "t": t, "grad_norm": grad_norm, "x0_pred": x0_hat.detach()}

    def forward(self, rgb: Tensor, c2w: Tensor, prompt: str, step: int,
                generator: torch.Generator | None = None) -> dict[str, Any]:
        """The guidance loss for renders ``rgb`` (B, H, W, 3) in [0, 1] from OpenGL cameras ``c2w`` (B, 4, 4).

        The renders are mapped to [-1, 1], resized to ``latent_render_size`` (bilinear, antialiased when
        shrinking) and encoded by the model's VAE (differentiably; pixel models use them as they are).
        See :meth:`latent_loss` for the returned dict.
        """
        if rgb.ndim != 4 or rgb.shape[-1] != 3:
            raise ValueError(f"rgb must be (B, H, W, 3) renders in [0, 1], got {tuple(rgb.shape)}")
        if tuple(c2w.shape) != (rgb.shape[0], 4, 4):
            raise ValueError(f"c2w must be (B, 4, 4) = ({rgb.shape[0]}, 4, 4), got {tuple(c2w.shape)}")
        # contiguous (N, C, H, W): the permuted renders are channels-last, which would carry through the VAE encoder,
        # whose GroupNorms are slower on CPU in that layout (encode + backward of the builtin recipe's 8 renders:
        # 0.19 -> 0.17 CPU s)
        x = (rgb.permute(0, 3, 1, 2).float() * 2.0 - 1.0).contiguous()
        s = self.latent_render_size
        if x.shape[-2:] != (s, s):
            shrink = s < x.shape[-2] or s < x.shape[-1]
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=shrink)
        z = self.model.encode_images(x)
        return self.latent_loss(z, c2w, prompt, step, generator)


class MultiViewGuidance(_ScoreDistillation):
    """The published MVDream guidance: groups of ``n_view`` consecutive renders, each with its camera.

    Args: see the module docstring; ``latent_render_size`` defaults to ``model.native_size`` (the size the
    model was trained at: 256 for the published models); ``dtype`` is the UNet's compute dtype (default: the UNet's
    parameter dtype; a different one runs under autocast); the loss is always float32. The model is
    frozen (``requires_grad_(False)``) but not moved or registered as a submodule.
    """

    def __init__(self, model: MVDreamModel, guidance_scale: float = 50.0, negative_prompt: str = "",
                 loss_type: str = "x0_recon", recon_std_rescale: float = 0.5, n_view: int = 4,
                 latent_render_size: int | None = None, t_range_start: tuple[float, float] = (0.98, 0.98),
                 t_range_end: tuple[float, float] = (0.02, 0.50), anneal_steps: int = 8000,
                 dtype: torch.dtype | None = None) -> None:
        if not model.unet.has_camera:
            raise ValueError("multi-view guidance needs a model with a camera embedding (camera_dim); for a 2D "
                             "model use Guidance2D")
        super().__init__(model, guidance_scale, negative_prompt, loss_type, recon_std_rescale, n_view,
                         latent_render_size, t_range_start, t_range_end, anneal_steps, dtype)

    def _context_key(self, prompt: str) -> Any:
        return prompt  # the same text for every view: the context only depends on the prompt and batch size

    def _conditioning(self, c2w: Tensor, prompt: str) -> tuple[Tensor, Tensor | None, int]:
        b = c2w.shape[0]
        if b % self.n_view:
            raise ValueError(f"batch of {b} renders is not divisible by n_view={self.n_view}: renders must come in "
                             f"whole groups of n_view consecutive views")
        cond = self.encode_prompt(prompt)["cond"].expand(b, -1, -1)
        camera = c2w_to_model_camera(c2w.detach().float()).to(self.model.device)
        return cond, camera, self.n_view


class Guidance2D(_ScoreDistillation):
    """DreamFusion-style baseline: each render denoised alone (``num_frames=1``, ``camera=None``).

    Render i is conditioned on ``f"{prompt}, {view}" + model.prompt_suffix`` with ``view`` from
    :func:`view_direction_text` of its camera (azimuth ``atan2(x, z)``, elevation ``asin(y / |p|)`` of
    the c2w position; azimuth 0 = +z = front). Same arguments as :class:`MultiViewGuidance` without
    ``n_view``; the default loss is ``"sds"``; with ``"x0_recon"`` the std rescale is per image.
    """

    def __init__(self, model: MVDreamModel, guidance_scale: float = 50.0, negative_prompt: str = "",
                 loss_type: str = "sds", recon_std_rescale: float = 0.5, latent_render_size: int | None = None,
                 t_range_start: tuple[float, float] = (0.98, 0.98), t_range_end: tuple[float, float] = (0.02, 0.50),
                 anneal_steps: int = 8000, dtype: torch.dtype | None = None) -> None:
        super().__init__(model, guidance_scale, negative_prompt, loss_type, recon_std_rescale, 1,
                         latent_render_size, t_range_start, t_range_end, anneal_steps, dtype)

    def view_prompts(self, c2w: Tensor, prompt: str) -> list[str]:
        """The B view-dependent prompts (without the model's suffix) for cameras ``c2w`` (B, 4, 4)."""
        az, el = azimuth_elevation_from_c2w(c2w.detach().cpu())
        return [f"{prompt}, {v}" for v in view_direction_text(az, el)]

    def _conditioning(self, c2w: Tensor, prompt: str) -> tuple[Tensor, Tensor | None, int]:
        self.encode_prompt(prompt)  # validates the prompt
        texts = self.view_prompts(c2w, prompt)
        context = torch.cat([self.encode_prompt(p)["cond"] for p in texts])
        return context, None, 1


GUIDANCES = {"multiview": MultiViewGuidance, "2d": Guidance2D}


def build_guidance(name: str, model: MVDreamModel, **kwargs: Any) -> _ScoreDistillation:
    """``"multiview"`` -> :class:`MultiViewGuidance`, ``"2d"`` -> :class:`Guidance2D` (an ``n_view`` keyword
    is ignored for "2d")."""
    if name not in GUIDANCES:
        raise ValueError(f"unknown guidance {name!r}; choose one of {sorted(GUIDANCES)}")
    if name == "2d":
        kwargs.pop("n_view", None)
    return GUIDANCES[name](model, **kwargs)
