"""Samplers: small functions over a denoiser ``(x_t, t) -> model output``.

- ``sample_ddim`` reproduces the LDM reference DDIM sampler step for step: timesteps
  ``range(0, T, T // S) + 1`` visited in reverse, float32 coefficients, and a last step that goes to
  ``alphas_cumprod[0]`` rather than to 1, so the same model and noise give the same latents as the
  official sampler.
- ``sample_with_scheduler`` runs any diffusers scheduler (DPM-Solver++ 2M, UniPC, Euler, ...) built
  for the same noise schedule.
- ``cfg_denoiser`` wraps a UNet with classifier-free guidance, ``uncond + s * (cond - uncond)``,
  stacking the unconditional batch first as the reference does.

Batches are object-major ``(B*F, C, H, W)``; a cond/uncond dict holds ``context`` (B*F or B rows)
and ``camera`` ((B*F, 16), (F, 16) shared by all objects, or None).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .schedule import NoiseSchedule

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepCallback = Callable[[int, int, torch.Tensor], None]

SAMPLERS = ("ddim", "dpmpp_2m", "unipc", "euler", "euler_a")


def parse_sampling_setting(text: str) -> dict[str, Any]:
    """``"SAMPLER:STEPS:GUIDANCE:RESCALE"`` (e.g. ``"ddim:8:1.5:0"``) -> ``{"sampler", "steps",
    "guidance_scale", "guidance_rescale"}``, the keys of a model config's ``sampling`` section; a
    malformed setting raises ValueError naming the expected form."""
    form = f"SAMPLER:STEPS:GUIDANCE:RESCALE with SAMPLER one of {SAMPLERS} (e.g. ddim:8:1.5:0)"
    parts = text.split(":")
    if len(parts) != 4 or parts[0] not in SAMPLERS:
        raise ValueError(f"bad sampling setting {text!r}: want {form}")
    try:
        out = {"sampler": parts[0], "steps": int(parts[1]), "guidance_scale": float(parts[2]),
               "guidance_rescale": float(parts[3])}
    except ValueError as e:
        raise ValueError(f"bad sampling setting {text!r}: want {form} ({e})") from None
    if out["steps"] < 1 or not 0.0 <= out["guidance_rescale"] <= 1.0:
        raise ValueError(f"bad sampling setting {text!r}: steps must be >= 1 and RESCALE in [0, 1]")
    return out


def ddim_timesteps(steps: int, num_timesteps: int = 1000) -> np.ndarray:
    """The LDM "uniform" DDIM grid ``range(0, T, T // steps) + 1`` (ascending).

    Where ``steps`` does not divide ``T`` the reference grid has more than ``steps`` entries and runs
    past the schedule (the reference then fails); we keep its first ``steps`` entries, clipped to T - 1.
    """
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be between 1 and {num_timesteps}, got {steps}")
    grid = np.asarray(range(0, num_timesteps, num_timesteps // steps))[:steps] + 1
    return np.minimum(grid, num_timesteps - 1)


def _expand_camera(camera: torch.Tensor | None, n: int, num_frames: int) -> torch.Tensor | None:
    if camera is None:
        return None
    if camera.ndim == 3:
        camera = camera.reshape(camera.shape[0], -1)
    if camera.shape[0] == num_frames and n != num_frames and n % num_frames == 0:
        camera = camera.repeat(n // num_frames, 1)
    return camera


def rescale_guidance(guided: torch.Tensor, cond_out: torch.Tensor, phi: float) -> torch.Tensor:
    """Guidance rescale (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", 3.4).

    Scales each image of the guided output (N, C, H, W) to the standard deviation of the conditional
    output and mixes: ``phi * rescaled + (1 - phi) * guided``. Large guidance scales inflate the output's
    spread, which a zero-terminal-SNR v-model turns into over-saturated colours and tinted backgrounds.
    """
    dims = tuple(range(1, guided.ndim))
    rescaled = guided * (cond_out.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True).clamp_min(1e-8))
    return phi * rescaled + (1.0 - phi) * guided


def cfg_combine(out_u: torch.Tensor, out_c: torch.Tensor, scale: float, rescale: float = 0.0) -> torch.Tensor:
    """Classifier-free guidance, the one place it is written: ``out_u + scale * (out_c - out_u)`` from the
    unconditional and conditional model outputs (same shape, (N, C, H, W)), then with ``rescale`` > 0 the
    guidance rescale of :func:`rescale_guidance`. Used by the samplers (:func:`cfg_denoiser`) and by the
    3D guidance (:mod:`mvdream3d.threed.guidance`)."""
    guided = out_u + scale * (out_c - out_u)
    return rescale_guidance(guided, out_c, rescale) if rescale > 0 else guided


def cfg_denoiser(unet: nn.Module, cond: Mapping[str, Any], uncond: Mapping[str, Any] | None,
                 num_frames: int, guidance_scale: float, guidance_rescale: float = 0.0) -> Denoiser:
    """A denoiser that runs ``unet`` with classifier-free guidance.

    With ``guidance_scale == 1`` or no ``uncond`` it is the conditional model alone. ``guidance_rescale``
    (0 to 1) applies :func:`rescale_guidance` to the guided output. The conditioning is assembled once per
    batch size, not per step: the cameras and contexts of the (unconditional, conditional) halves are stacked
    once, and a UNet with ``prepare_context`` (:class:`~mvdream3d.models.unet.MultiViewUNet`) gets its
    cross-attention keys and values computed once for the whole run when autograd is off (the output is the
    same).
    """
    if not 0.0 <= guidance_rescale <= 1.0:
        raise ValueError(f"guidance_rescale must be in [0, 1], got {guidance_rescale}")
    use_cfg = uncond is not None and guidance_scale != 1.0
    prepared: dict[int, tuple[Any, torch.Tensor | None]] = {}

    def conditioning(n: int) -> tuple[Any, torch.Tensor | None]:
        if n in prepared:
            return prepared[n]
        cam = _expand_camera(cond.get("camera"), n, num_frames)
        ctx = cond.get("context")
        if use_cfg:
            assert uncond is not None
            ucam = _expand_camera(uncond.get("camera"), n, num_frames)
            uctx = uncond.get("context")
            if ctx is not None and uctx is not None and uctx.shape[0] != ctx.shape[0]:
                uctx = uctx.expand(ctx.shape[0], *uctx.shape[1:]) if uctx.shape[0] == 1 else uctx
            ctx = None if ctx is None else torch.cat([uctx, ctx])
            cam = None if cam is None else torch.cat([ucam if ucam is not None else cam, cam])
        rows = 2 * n if use_cfg else n
        # only without autograd: keys and values kept across steps must not hold a graph
        if ctx is not None and hasattr(unet, "prepare_context") and not torch.is_grad_enabled():
            if ctx.shape[0] * num_frames == rows and num_frames > 1:  # one context per object: one per view
                ctx = ctx.repeat_interleave(num_frames, dim=0)
            if ctx.shape[0] == rows:
                ctx = unet.prepare_context(ctx)
        prepared[n] = (ctx, cam)
        return ctx, cam

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ctx, cam = conditioning(x.shape[0])
        if not use_cfg:
            return unet(x, t, context=ctx, camera=cam, num_frames=num_frames)
        out_u, out_c = unet(torch.cat([x, x]), torch.cat([t, t]), context=ctx, camera=cam,
                            num_frames=num_frames).chunk(2)
        return cfg_combine(out_u, out_c, guidance_scale, guidance_rescale)

    return denoise


def _progress(total: int, enabled: bool, desc: str):
    return tqdm(total=total, desc=desc, disable=not enabled, unit="step", dynamic_ncols=True)


@torch.no_grad()
def sample_ddim(denoiser: Denoiser, x_T: torch.Tensor, schedule: NoiseSchedule, steps: int, eta: float = 0.0,
                generator: torch.Generator | None = None, callback: StepCallback | None = None,
                progress: bool = False) -> torch.Tensor:
    """DDIM from ``x_T`` with ``steps`` steps; returns the final sample (same shape as ``x_T``)."""
    grid = ddim_timesteps(steps, schedule.num_timesteps)
    alphas_cumprod = schedule.alphas_cumprod  # float32, as the reference indexes it
    a_all = alphas_cumprod[grid]
    a_prev_all = torch.cat([alphas_cumprod[:1], alphas_cumprod[grid[:-1]]])
    sigmas = eta * torch.sqrt((1 - a_prev_all.double()) / (1 - a_all.double())
                              * (1 - a_all.double() / a_prev_all.double())).float()
    x = x_T
    n = x.shape[0]
    bar = _progress(len(grid), progress, "DDIM")
    for i, step in enumerate(np.flip(grid)):
        index = len(grid) - i - 1
        t = torch.full((n,), int(step), device=x.device, dtype=torch.long)
        out = denoiser(x, t)
        a_t = a_all[index].to(x.device, torch.float32)
        a_prev = a_prev_all[index].to(x.device, torch.float32)
        sigma = sigmas[index].to(x.device, torch.float32)
        if schedule.prediction_type == "v":
            e_t = schedule.eps_from_v(x, t, out)
            pred_x0 = schedule.x0_from_v(x, t, out)
        else:
            e_t = out
            pred_x0 = (x - torch.sqrt(1.0 - a_t) * e_t) / a_t.sqrt()
        dir_xt = (1.0 - a_prev - sigma**2).sqrt() * e_t
        x_new = a_prev.sqrt() * pred_x0 + dir_xt
        if eta > 0:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x_new = x_new + sigma * noise
        x = x_new.to(x_T.dtype)
        bar.update(1)
        if callback is not None:
            callback(i, int(step), pred_x0)
    bar.close()
    return x


def make_scheduler(name: str, schedule: NoiseSchedule):
    """A diffusers scheduler for ``schedule`` ("dpmpp_2m", "unipc", "euler", "euler_a", "ddim")."""
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
        UniPCMultistepScheduler,
    )

    common = dict(
        num_train_timesteps=schedule.num_timesteps, beta_start=schedule.linear_start,
        beta_end=schedule.linear_end, beta_schedule="scaled_linear",
        prediction_type="v_prediction" if schedule.prediction_type == "v" else "epsilon",
        timestep_spacing="leading", steps_offset=1,
    )
    if name == "dpmpp_2m":
        return DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, **common)
    if name == "unipc":
        return UniPCMultistepScheduler(**common)
    if name == "euler":
        return EulerDiscreteScheduler(**common)
    if name == "euler_a":
        return EulerAncestralDiscreteScheduler(**common)
    if name == "ddim":
        return DDIMScheduler(set_alpha_to_one=False, clip_sample=False, **common)
    raise ValueError(f"unknown sampler {name!r}; choose one of {SAMPLERS}")


@torch.no_grad()
def sample_with_scheduler(denoiser: Denoiser, x_T: torch.Tensor, scheduler: Any, steps: int,
                          generator: torch.Generator | None = None, callback: StepCallback | None = None,
                          progress: bool = False) -> torch.Tensor:
    """Sample with a diffusers scheduler (its own timestep grid and update rule)."""
    scheduler.set_timesteps(steps, device=x_T.device)
    x = x_T * scheduler.init_noise_sigma
    n = x.shape[0]
    step_kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    bar = _progress(len(scheduler.timesteps), progress, type(scheduler).__name__)
    for i, t in enumerate(scheduler.timesteps):
        model_in = scheduler.scale_model_input(x, t)
        out = denoiser(model_in, t.expand(n))
        res = scheduler.step(out, t, x, **step_kwargs)
        x = res.prev_sample.to(x_T.dtype)
        bar.update(1)
        if callback is not None:
            x0 = getattr(res, "pred_original_sample", None)
            callback(i, int(t), x0 if x0 is not None else x)
    bar.close()
    return x


def sample(unet: nn.Module, x_T: torch.Tensor, cond: Mapping[str, Any], uncond: Mapping[str, Any] | None,
           num_frames: int, steps: int, guidance_scale: float, eta: float = 0.0, sampler: str = "ddim", *,
           schedule: NoiseSchedule | None = None, generator: torch.Generator | None = None,
           callback: StepCallback | None = None, progress: bool = False,
           guidance_rescale: float = 0.0) -> torch.Tensor:
    """Sample latents with a multi-view UNet: the low-level entry point under the pipeline.

    ``x_T``: (B*F, C, H, W) initial noise, object-major. ``cond``/``uncond``: dicts with ``context``
    (B*F or B rows of text embeddings) and ``camera`` ((B*F, 16), (F, 16) or None). ``sampler`` is one
    of ``SAMPLERS``; "ddim" is the LDM-exact sampler and honours ``eta``. ``schedule`` defaults to
    ``unet.noise_schedule`` if set, else SD's scaled-linear eps schedule. ``guidance_rescale`` in [0, 1]
    (0: plain CFG) rescales the guided output (:func:`rescale_guidance`). Returns the final latents.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")
    if x_T.ndim != 4:
        raise ValueError(f"x_T must be (B*F, C, H, W), got {tuple(x_T.shape)}")
    if x_T.shape[0] % num_frames:
        raise ValueError(f"x_T has {x_T.shape[0]} rows, not divisible by num_frames={num_frames}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    schedule = schedule or getattr(unet, "noise_schedule", None) or NoiseSchedule()
    denoiser = cfg_denoiser(unet, cond, uncond, num_frames, guidance_scale, guidance_rescale)
    if sampler == "ddim":
        return sample_ddim(denoiser, x_T, schedule, steps, eta, generator, callback, progress)
    return sample_with_scheduler(denoiser, x_T, make_scheduler(sampler, schedule), steps, generator,
                                 callback, progress)
