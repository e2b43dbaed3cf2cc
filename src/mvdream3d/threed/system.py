"""Text-to-3D by multi-view score distillation: the optimisation loop and its outputs.

``text_to_3d(prompt, ...)`` builds the parts named by the config (geometry, material, background,
renderer, camera sampler, guidance), optimises the field so batches of its renders from ``n_view``
cameras satisfy the diffusion model, and writes into ``out``::

    preview.png            the multi-view model's own 4 views of the prompt (before optimising)
    progress.png           a fresh 4-view render every ``output.progress_every`` steps
    views.png              4 views of the final field at fixed cameras (azimuth 0/90/180/270)
    mesh.glb, mesh.obj     marching-cubes mesh with vertex colours (threshold chosen from the opacity)
    turntable.mp4/.gif     360-degree video of the field
    curves.png, log.jsonl  loss, timestep range and timings per step
    summary.json           settings, timings (render / guidance / backward), output paths
    config.yaml            the resolved config (what --resume checks against)
    checkpoints/latest/    field + optimiser + RNG state, written atomically; --resume continues

Ctrl-C (SIGINT) or SIGTERM finishes the step in flight, saves a checkpoint and the current 4 views, and
returns; ``resume=True`` continues exactly where it stopped. After a kill -9, ``resume=True`` continues from
the last checkpoint (``output.checkpoint_every``): ``log.jsonl`` is cut back to its step and whatever the
interrupted writes left behind (temporary checkpoint folders, half-written files) is removed at start.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

from ..cameras import get_rays
from ..devices import resolve_device
from ..files import (
    atomic_write,
    atomic_write_text,
    ensure_writable_dir,
    remove_stale_temporaries,
    replace_dir,
    truncate_jsonl,
)
from ..models.loading import resolve_model
from ..models.model import MVDreamModel
from ..signals import StopOnSignal
from .background import build_background
from .camera_sampler import RandomMultiViewCameraSampler, fixed_views
from .config import TextTo3DConfig, default_config_for, load_text_to_3d_config
from .export import extract_mesh, render_turntable, save_mesh, save_video
from .geometry import ImplicitVolume
from .guidance import build_guidance, timestep_range
from .material import DiffuseMaterial
from .renderer import VolumeRenderer

__all__ = ["TextTo3DResult", "TextTo3D", "text_to_3d"]

StepCallback = Callable[[dict[str, Any]], None]
# (stage, units done, units in the stage, images): the stages besides the optimisation steps, as they run:
# "preview" (one unit per sampling step; ``images()`` decodes the sample's current x0 prediction into
# (4, H, W, 3) in [0, 1]), "saving", the export's (``export.ExportProgress``: "density grid", "choosing the
# threshold", "marching cubes", "vertex colours", "saving the mesh", "turntable frames", "encoding the video")
# and "curves". Stages of one piece of work are reported as (name, 0, 1) and (name, 1, 1); images is None
# except for the preview.
StageCallback = Callable[[str, int, int, Callable[[], torch.Tensor] | None], None]
CHECKPOINT = Path("checkpoints") / "latest"
# temporaries of this module's atomic writes (checkpoint, summary.json, views / progress, mesh and video)
STALE_IN_CHECKPOINTS, STALE_IN_OUT = (".tmp_*",), (".summary.json.*", ".views.png.*", ".progress.png.*",
                                                   ".mesh.*", ".turntable.*")


@dataclass
class TextTo3DResult:
    out: Path
    steps_done: int
    finished: bool  # False when stopped by a signal or should_stop (resume to continue)
    files: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


class TextTo3D:
    """One text-to-3D run: the parts built from ``cfg`` around ``model`` (see module docstring)."""

    def __init__(self, prompt: str, model: MVDreamModel, cfg: TextTo3DConfig, out: Path, compile: bool = False) -> None:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("the prompt is empty: give a text prompt, e.g. \"a red cube with a yellow nose\"")
        self.prompt, self.cfg, self.out = prompt.strip(), cfg, out
        self.device = resolve_device(cfg.output.device)
        self.dtype = _dtype(cfg.output.dtype, self.device)
        self.model = self._place_model(model)
        if compile:
            self._compile_model()
        g = cfg.geometry
        self.geometry = ImplicitVolume(
            radius=g.radius, n_levels=g.n_levels, n_features_per_level=g.n_features_per_level,
            log2_hashmap_size=g.log2_hashmap_size, base_resolution=g.base_resolution,
            max_resolution=g.max_resolution, mlp_hidden=g.mlp_hidden, mlp_layers=g.mlp_layers,
            density_blob_scale=g.density_blob_scale, density_blob_std=g.density_blob_std,
            normal_type=g.normal_type).to(self.device)
        self.material = DiffuseMaterial(cfg.material.ambient_light_color, cfg.material.diffuse_light_color)
        b = cfg.background
        bg_kwargs: dict[str, Any] = {"color": tuple(b.color)} if b.name == "solid" else {}
        if b.name == "learned":
            bg_kwargs = {"random_aug": b.random_aug, "random_aug_prob": b.random_aug_prob}
        self.background = build_background(b.name, **bg_kwargs).to(self.device)
        self.renderer = VolumeRenderer(radius=g.radius, num_samples_per_ray=cfg.renderer.num_samples_per_ray)
        c = cfg.cameras
        self.cameras = RandomMultiViewCameraSampler(
            n_view=c.n_view, batch_size=c.resolution_milestones[0][2], elevation_range=tuple(c.elevation_range),
            azimuth_range=tuple(c.azimuth_range), fovy_range=tuple(c.fovy_range),
            camera_distance_range=tuple(c.camera_distance_range), relative_radius=c.relative_radius,
            light_distance_range=tuple(c.light_distance_range),
            resolution_milestones=tuple(tuple(int(x) for x in m) for m in c.resolution_milestones))
        gd = cfg.guidance
        guidance_kwargs: dict[str, Any] = dict(
            guidance_scale=gd.guidance_scale, negative_prompt=gd.negative_prompt, loss_type=gd.loss_type,
            recon_std_rescale=gd.recon_std_rescale, latent_render_size=gd.render_size,
            t_range_start=tuple(gd.t_start), t_range_end=tuple(gd.t_end), anneal_steps=gd.anneal_steps,
            dtype=self.dtype)
        if gd.name == "multiview":
            guidance_kwargs["n_view"] = c.n_view
        self.guidance = build_guidance(gd.name, self.model, **guidance_kwargs)
        o = cfg.optim
        groups = self.geometry.parameter_groups(o.lr_encoding, o.lr_mlp)
        bg_params = list(self.background.parameters())
        if bg_params:
            groups.append({"params": bg_params, "lr": o.lr_background})
        self.optimizer = torch.optim.AdamW(groups, betas=tuple(o.betas), eps=o.eps, weight_decay=0.0)
        # What the backward pass differentiates for: without this list autograd also computes gradients for the
        # sample points the analytic normals differentiate through (leaves that require grad, used by nothing),
        # a quarter of the backward's time with the builtin config; the parameters' gradients are bitwise the same.
        self._trainable = [p for g in groups for p in g["params"] if p.requires_grad]
        self.generator = torch.Generator().manual_seed(o.seed)
        self.step = 0
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ model placement
    def _place_model(self, model: MVDreamModel) -> MVDreamModel:
        model.eval().requires_grad_(False)
        if self.cfg.output.low_memory and model.vae is not None:
            model.vae.decoder = None  # only the encoder is needed for guidance; frees ~100 MB
        model.unet.to(self.device, self.dtype)
        if model.vae is not None:
            # the VAE encoder is backpropagated through: fp32 on CPU, model dtype on GPU
            model.vae.to(self.device, self.dtype if self.device.type == "cuda" else torch.float32)
        if model.text_encoder is not None and not self.cfg.output.low_memory:
            model.text_encoder.to(self.device)
        return model

    def _compile_model(self) -> None:
        """The guidance's frozen networks under ``torch.compile``, in place: the UNet and the VAE's encoder (the
        one part of the VAE a step runs, forward and backward). Each compiles at its first call with a step's
        shapes and is reused by every later step (and by the preview, whose batch compiles once more)."""
        from ..compiling import check_compile_support, compile_in_place

        check_compile_support(self.device)
        compile_in_place(self.model.unet)
        encoder = getattr(getattr(self.model.vae, "vae", None), "encoder", None)  # diffusers AutoencoderKL
        if isinstance(encoder, torch.nn.Module):
            compile_in_place(encoder)

    # ------------------------------------------------------------------ one step
    def shading_for(self, step: int) -> str:
        if step < self.cfg.material.ambient_only_steps:
            return "albedo"
        if torch.rand((), generator=self.generator).item() < self.cfg.material.textureless_prob:
            return "textureless"
        return "diffuse"

    def render(self, cams: Any, shading: str) -> dict[str, torch.Tensor]:
        c2w = cams.c2w.to(self.device)
        rays_o, rays_d = get_rays(c2w, cams.fovy_deg.to(self.device), cams.height, cams.width)
        # albedo-only renders need no normals unless the orientation loss does (normals cost 2-3x)
        normals = shading != "albedo" or self.cfg.loss.lambda_orient > 0
        return self.renderer(self.geometry, self.material, self.background, rays_o.float(), rays_d.float(),
                             cams.light_positions.to(self.device).float(), shading=shading, with_normals=normals)

    def train_step(self) -> dict[str, Any]:
        lw = self.cfg.loss
        self.geometry.train()
        self.background.train()
        self.renderer.train()
        t0 = time.perf_counter()
        cams = self.cameras.sample(self.step, generator=self.generator)
        shading = self.shading_for(self.step)
        out = self.render(cams, shading)
        t1 = time.perf_counter()
        g = self.guidance(out["comp_rgb"], cams.c2w.to(self.device), self.prompt, self.step,
                          generator=self.generator)
        t2 = time.perf_counter()
        loss = lw.lambda_sds * g["loss"]
        terms = {"loss_guidance": float(g["loss"].detach())}
        opacity = out["opacity"]
        if lw.lambda_orient > 0 and "orient" in out:
            loss = loss + lw.lambda_orient * out["orient"]
            terms["loss_orient"] = float(out["orient"].detach())
        if lw.lambda_sparsity > 0:
            sparsity = (opacity**2 + 0.01).sqrt().mean()
            loss = loss + lw.lambda_sparsity * sparsity
            terms["loss_sparsity"] = float(sparsity.detach())
        if lw.lambda_opaque > 0:
            o = opacity.clamp(1e-3, 1 - 1e-3)
            opaque = torch.nn.functional.binary_cross_entropy(o, o)
            loss = loss + lw.lambda_opaque * opaque
            terms["loss_opaque"] = float(opaque.detach())
        if lw.lambda_z_variance > 0:
            zvar = (out["z_variance"] * (opacity > 0.5)).mean()
            loss = loss + lw.lambda_z_variance * zvar
            terms["loss_z_variance"] = float(zvar.detach())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward(inputs=self._trainable)
        self.optimizer.step()
        t3 = time.perf_counter()
        if not math.isfinite(float(loss.detach())):
            raise FloatingPointError(f"the loss became {float(loss)} at step {self.step}; lower optim.lr_* or "
                                     "guidance.guidance_scale and resume from the last checkpoint")
        self.step += 1
        return {"step": self.step, "loss": float(loss.detach()), **terms, "t": int(g["t"]), "shading": shading,
                "res": cams.height, "time_render": t1 - t0, "time_guidance": t2 - t1, "time_backward": t3 - t2}

    # ------------------------------------------------------------------ checkpoints
    def state_tensors(self) -> dict[str, torch.Tensor]:
        state = {f"geometry.{k}": v for k, v in self.geometry.state_dict().items()}
        state.update({f"background.{k}": v for k, v in self.background.state_dict().items()})
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}

    def save_checkpoint(self) -> Path:
        """Append the steps since the last checkpoint to log.jsonl, then write the checkpoint: a kill in
        between leaves log rows past the checkpoint, which a resume cuts off (never steps missing)."""
        final = self.out / CHECKPOINT
        final.parent.mkdir(parents=True, exist_ok=True)
        with open(self.out / "log.jsonl", "a") as f:
            for row in self.history:
                f.write(json.dumps(row) + "\n")
        self.history = []
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".tmp_"))
        save_file(self.state_tensors(), str(tmp / "field.safetensors"))
        # the global RNG drives the renderer's sample jitter and background augmentation
        torch.save({"optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
                    "torch_rng": torch.get_rng_state()}, tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": self.step, "prompt": self.prompt}))
        return replace_dir(tmp, final)

    def load_checkpoint(self) -> int:
        """Continue from ``out/checkpoints/latest``; cuts log.jsonl back to its step. Returns the log rows
        dropped (logged after the checkpoint by a run that was killed)."""
        path = self.out / CHECKPOINT
        if not (path / "state.json").is_file():
            raise FileNotFoundError(f"--resume: no checkpoint in {path.parent}; run without --resume to start")
        state = json.loads((path / "state.json").read_text())
        if state.get("prompt") != self.prompt:
            raise ValueError(f"--resume: {self.out} holds a run for prompt {state.get('prompt')!r}, not "
                             f"{self.prompt!r}; use another --out or the same prompt")
        tensors = load_file(str(path / "field.safetensors"))
        self.geometry.load_state_dict({k[9:]: v for k, v in tensors.items() if k.startswith("geometry.")})
        self.background.load_state_dict({k[11:]: v for k, v in tensors.items() if k.startswith("background.")})
        opt = torch.load(path / "optimizer.pt", weights_only=True)
        self.optimizer.load_state_dict(opt["optimizer"])
        self.generator.set_state(opt["generator"])
        torch.set_rng_state(opt["torch_rng"])
        self.step = int(state["step"])
        return truncate_jsonl(self.out / "log.jsonl", self.step)

    # ------------------------------------------------------------------ pictures
    @torch.no_grad()
    def render_fixed_views(self, size: int | None = None, shading: str = "diffuse") -> torch.Tensor:
        """(4, H, W, 3) renders in [0, 1] at azimuths 0/90/180/270, export elevation and fov."""
        e = self.cfg.export
        self.geometry.eval()
        self.background.eval()
        self.renderer.eval()
        cams = fixed_views(n_view=4, elevation=e.elevation, fovy_deg=e.fovy, size=size or e.view_size,
                           radius=self.cfg.geometry.radius * 0.9)
        return self.render(cams, shading)["comp_rgb"].clamp(0, 1).cpu()

    def save_views(self, path: Path, size: int | None = None) -> Path:
        from ..pipeline import image_grid, to_pil

        views = self.render_fixed_views(size)
        grid = image_grid(to_pil(views.permute(0, 3, 1, 2) * 2 - 1), rows=1)
        with atomic_write(path, suffix=".png") as tmp:
            grid.save(tmp)
        return path


def _preview_reporter(model: MVDreamModel, n: int, on_stage: StageCallback) -> Callable[[int, int, torch.Tensor], None]:
    """A sampler callback telling ``on_stage`` each preview step, with the current x0 prediction's pictures."""

    def step(i: int, t: int, x0: torch.Tensor) -> None:
        def images() -> torch.Tensor:  # decoded only when asked for (a VAE decode for latent models)
            with torch.no_grad():
                return ((model.decode_latents(x0[:4]).float() + 1) / 2).permute(0, 2, 3, 1).cpu()

        on_stage("preview", i + 1, n, images)

    return step


def _write_preview(model: MVDreamModel, prompt: str, cfg: TextTo3DConfig, path: Path, device: torch.device,
                   on_stage: StageCallback | None = None) -> Path:
    from ..pipeline import MultiViewPipeline

    e = cfg.export
    pipe = MultiViewPipeline(model)
    n = cfg.output.preview_steps

    callback = None
    if on_stage is not None:
        callback = _preview_reporter(model, n, on_stage)
        on_stage("preview", 0, n, None)
    defaults = model.sampling_defaults  # what `generate` shows for this prompt; only the steps are the config's
    res = pipe(prompt, num_views=4, elevation=e.elevation, guidance_scale=float(defaults["guidance_scale"]),
               guidance_rescale=float(defaults["guidance_rescale"]), sampler=defaults["sampler"],
               num_inference_steps=n, seed=cfg.optim.seed, negative_prompt=cfg.guidance.negative_prompt,
               device=device, callback=callback)
    res.grid(rows=1).save(path)
    return path


def _write_curves(out: Path) -> Path | None:
    log = out / "log.jsonl"
    if not log.is_file():
        return None
    rows = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    axes[0].plot(steps, [r["loss_guidance"] for r in rows], lw=0.8)
    axes[0].set_title("guidance loss")
    axes[0].set_yscale("log")
    axes[1].plot(steps, [r["t"] for r in rows], ".", ms=2)
    axes[1].set_title("diffusion timestep t")
    for key, colour in (("time_render", "C0"), ("time_guidance", "C1"), ("time_backward", "C2")):
        axes[2].plot(steps, [r[key] for r in rows], lw=0.8, color=colour, label=key[5:])
    axes[2].set_title("seconds per step")
    axes[2].legend()
    for ax in axes:
        ax.set_xlabel("step")
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def text_to_3d(
    prompt: str,
    model: str | os.PathLike | MVDreamModel | None = None,
    config: str | os.PathLike | dict | None = None,
    out: str | os.PathLike = "out3d",
    steps: int | None = None,
    seed: int | None = None,
    resume: bool = False,
    overrides: list[str] | None = None,
    callback: StepCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: bool = True,
    on_stage: StageCallback | None = None,
    compile: bool = False,
) -> TextTo3DResult:
    """Optimise a 3D field for ``prompt`` and export it (see the module docstring for the files).

    Args:
        prompt: the text; an empty prompt is an error.
        model: a model name, checkpoint path or loaded model; None = the config's ``model`` or the built-in.
        config: a config name (``builtin``, ``mvdream-sd21``, ``mvdream-sd21-lowmem``), YAML path or mapping;
            None picks ``builtin`` for the built-in and other small models (<= 64 px), ``mvdream-sd21`` for
            the published ones.
        steps / seed: override ``optim.steps`` / ``optim.seed``.
        resume: continue from ``out/checkpoints/latest`` (same prompt required).
        overrides: ``section.key=value`` strings applied to the config.
        callback: called after every step with the step's log row; a ``"views"`` key holding a
            (4, H, W, 3) tensor is added on progress steps.
        should_stop: polled between steps; True stops like Ctrl-C (checkpoint saved, resumable).
        progress: a tqdm bar of the steps on stderr.
        on_stage: told the progress of the work around the optimisation steps (the preview, saving, the
            export's stages, the curves; see :data:`StageCallback`), e.g. for a progress display.
        compile: run the model's UNet and VAE encoder under ``torch.compile`` (see :mod:`mvdream3d.compiling`:
            the first step compiles, later steps reuse it; an error that says what to install where it cannot
            work). The optimisation is the same up to floating-point rounding.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("the prompt is empty: give a text prompt, e.g. \"a red cube with a yellow nose\"")
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    out = ensure_writable_dir(out)
    remove_stale_temporaries(out / CHECKPOINT.parent, STALE_IN_CHECKPOINTS, restore=[out / CHECKPOINT])
    remove_stale_temporaries(out, STALE_IN_OUT)
    saved_cfg = out / "config.yaml"
    if resume and saved_cfg.is_file() and config is None:
        config = str(saved_cfg)
    pre = load_text_to_3d_config(config, overrides) if config is not None else None
    model_ref = model if model is not None else (pre.model if pre is not None else None)
    mdl = resolve_model(model_ref)
    cfg = _run_config(pre, mdl, overrides, steps, seed)
    torch.manual_seed(cfg.optim.seed)
    run = TextTo3D(prompt, mdl, cfg, out, compile=compile)
    if resume:
        dropped = run.load_checkpoint()
        print(f"resumed from {out / CHECKPOINT} at step {run.step}"
              + (f" (log.jsonl: {dropped} rows after step {run.step} dropped)" if dropped else ""))
    else:
        (out / "log.jsonl").unlink(missing_ok=True)
    # a loaded model object has no name to record: --resume then needs --model again
    ref = str(model_ref) if isinstance(model_ref, str | os.PathLike) else cfg.model
    saved_cfg.write_text(yaml.safe_dump({**cfg.to_dict(), "model": ref}, sort_keys=False))
    files: dict[str, str] = {}
    if cfg.output.preview and not resume:
        files["preview"] = str(_write_preview(mdl, run.prompt, cfg, out / "preview.png", run.device, on_stage))
    t_start = time.perf_counter()
    finished, timings = _optimise(run, callback, should_stop, progress)
    return _write_outputs(run, files, finished, timings, t_start, on_stage)


def _run_config(pre: TextTo3DConfig | None, mdl: MVDreamModel, overrides: list[str] | None, steps: int | None,
                seed: int | None) -> TextTo3DConfig:
    """The run's config: the one given (``pre``) or the model's default, checked against the model, with
    ``steps`` and ``seed`` applied."""
    cfg = pre or load_text_to_3d_config(default_config_for(mdl), overrides)
    if not mdl.unet.has_camera and cfg.guidance.name == "multiview":
        raise ValueError("multi-view guidance needs a model with a camera embedding (camera_dim); this model has "
                         "none. Use a multi-view model, or the 2D baseline (--baseline-2d)")
    if steps is not None:
        cfg.optim.steps = steps
    if seed is not None:
        cfg.optim.seed = seed
    return cfg


def _optimise(run: TextTo3D, callback: StepCallback | None, should_stop: Callable[[], bool] | None,
              progress: bool) -> tuple[bool, dict[str, float]]:
    """The optimisation steps up to ``optim.steps``, with progress views, callbacks and periodic checkpoints;
    returns whether all steps are done (False: stopped by a signal or ``should_stop``) and the summed
    render / guidance / backward seconds."""
    from tqdm.auto import tqdm

    cfg = run.cfg
    timings = {"render": 0.0, "guidance": 0.0, "backward": 0.0}
    bar = tqdm(total=cfg.optim.steps, initial=run.step, desc="text-to-3d", disable=not progress, unit="step")
    finished = False
    with StopOnSignal() as stop:
        while run.step < cfg.optim.steps:
            row = run.train_step()
            for k in timings:
                timings[k] += row[f"time_{k}"]
            run.history.append(row)
            lo, hi = timestep_range(run.step, tuple(cfg.guidance.t_start), tuple(cfg.guidance.t_end),
                                    cfg.guidance.anneal_steps)
            bar.set_postfix(loss=f"{row['loss']:.4g}", t=row["t"], t_range=f"{lo * 1000:.0f}-{hi * 1000:.0f}",
                            res=row["res"], refresh=False)
            bar.update(1)
            row = _progress_views(run, row, callback is not None)
            if callback is not None:
                callback(row)
            if run.step % cfg.output.checkpoint_every == 0:
                run.save_checkpoint()
            if stop.requested or (should_stop is not None and should_stop()):
                break
        else:
            finished = True
    bar.close()
    return finished, timings


def _progress_views(run: TextTo3D, row: dict[str, Any], for_callback: bool) -> dict[str, Any]:
    """On progress steps (every ``output.progress_every`` and the last): write progress.png and, for a
    callback, add the 4 views to the step's row."""
    pe, steps = run.cfg.output.progress_every, run.cfg.optim.steps
    if pe and (run.step % pe == 0 or run.step == steps):
        run.save_views(run.out / "progress.png", size=64)
        if for_callback:
            row = {**row, "views": run.render_fixed_views(64)}
    return row


def _write_outputs(run: TextTo3D, files: dict[str, str], finished: bool, timings: dict[str, float],
                   t_start: float, on_stage: StageCallback | None) -> TextTo3DResult:
    """After the steps: the checkpoint and 4 views, the mesh and video of a finished run, the curves and
    summary.json."""
    out, cfg = run.out, run.cfg

    def stage(name: str, done: int, total: int) -> None:
        if on_stage is not None:
            on_stage(name, done, total, None)

    stage("saving", 0, 1)
    run.save_checkpoint()
    files["checkpoint"] = str(out / CHECKPOINT)
    files["views"] = str(run.save_views(out / "views.png"))
    stage("saving", 1, 1)
    if finished:
        files.update(export_run(run, out, progress=stage))
    stage("curves", 0, 1)
    curves = _write_curves(out)
    if curves is not None:
        files["curves"] = str(curves)
    stage("curves", 1, 1)
    timings["total_loop"] = time.perf_counter() - t_start
    summary = {"prompt": run.prompt, "steps_done": run.step, "finished": finished, "timings_s": timings, "files": files,
               "config": cfg.to_dict()}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    if not finished:
        print(f"stopped at step {run.step}; checkpoint saved. Continue with --resume (same --out)")
    return TextTo3DResult(out=out, steps_done=run.step, finished=finished, files=files, timings=timings)


def export_run(run: TextTo3D, out: Path, progress: Callable[[str, int, int], None] | None = None) -> dict[str, str]:
    """Mesh (.glb/.obj) and turntable video (.mp4/.gif) of the run's field; ``progress`` is told each stage as
    it runs (``export.ExportProgress``)."""

    def stage(name: str, done: int, total: int) -> None:
        if progress is not None:
            progress(name, done, total)

    e = run.cfg.export
    run.geometry.eval()
    run.background.eval()
    run.renderer.eval()
    t0 = time.perf_counter()
    mesh = extract_mesh(run.geometry, resolution=e.mesh_resolution, threshold=e.threshold, renderer=run.renderer,
                        background=run.background, fov_deg=e.fovy, progress=progress)
    stage("saving the mesh", 0, 1)
    files = {k: str(v) for k, v in save_mesh(mesh, out, stem="mesh").items()}
    stage("saving the mesh", 1, 1)
    frames = render_turntable(run.geometry, run.material, run.background, run.renderer, num_frames=e.video_frames,
                              elevation=e.elevation, fov_deg=e.fovy, size=e.video_size, progress=progress)
    stage("encoding the video", 0, 1)
    files.update({k: str(v) for k, v in save_video(frames, out / "turntable.mp4", out / "turntable.gif",
                                                     fps=e.video_fps).items()})
    stage("encoding the video", 1, 1)
    files["export_seconds"] = f"{time.perf_counter() - t0:.1f}"
    return files
