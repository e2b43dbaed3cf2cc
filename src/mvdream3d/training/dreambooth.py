"""Multi-view DreamBooth: teach a multi-view model one subject from a few photos (MVDream, section 3.3).

The photos are single views, so the model is fine-tuned on 2D batches (``num_frames=1``, no camera) with
the prompt "a <token> <class>". Instead of DreamBooth's class-prior images, MVDream keeps the model near
its start with a parameter-preservation term::

    L = L_diffusion + lambda * ||theta - theta_0||_1 / N_theta        (lambda = 1 in the paper)

over the trained parameters (``N_theta`` their element count). What trains: the whole UNet (``full``),
its attention layers (``attention``), or LoRA adapters on the attention projections (``lora``; then
``theta - theta_0`` is the adapters' weight change ``scale * B @ A``). Because the camera pathway and
3D self-attention are not trained away, the fine-tuned model still generates consistent views of the
subject, and text-to-3D turns them into an object.

Outputs in ``out``: ``model.safetensors`` (a complete checkpoint) or ``lora.safetensors`` (adapters only;
loaded by every command through :func:`mvdream3d.models.loading.resolve_model`, which merges them into the
base model named inside), ``grid.png`` (4 views of the prompt at elevation 15, azimuths 0/90/180/270),
``loss.png`` and ``summary.json``. Ctrl-C saves a checkpoint under ``out/checkpoint`` (and so does every
``checkpoint_every`` steps); ``resume=True`` continues from it, its loss history cut at its step, and the
temporary folder of a checkpoint write interrupted by a kill is removed at start.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config_core import ConfigError, apply_overrides, check, parse_section
from ..devices import resolve_device
from ..diffusion.loss import diffusion_loss
from ..files import ensure_writable_dir, remove_stale_temporaries, replace_dir
from ..models.loading import resolve_model
from ..models.model import MVDreamModel
from ..signals import StopOnSignal
from .dreambooth_inputs import check_memory, check_token, estimate_memory, load_subject_images
from .dreambooth_outputs import GRID_AZIMUTHS as GRID_AZIMUTHS  # the grid's cameras, named here too
from .dreambooth_outputs import GRID_ELEVATION as GRID_ELEVATION
from .dreambooth_outputs import write_outputs
from .lora import (
    DEFAULT_TARGETS,
    add_lora,
    base_fingerprint,
    lora_state_dict,
    lora_weight_deltas,
    merge_lora,
    remove_lora,
    save_lora,
)
from .trainer import step_generator

__all__ = ["DreamBoothConfig", "DreamBoothResult", "DreamBoothWarning", "check_token", "dreambooth",
           "dreambooth_overrides", "estimate_memory", "load_subject_images", "preservation_loss"]

TRAIN_MODES = ("full", "attention", "lora")
DEFAULT_LR = {"full": 5e-5, "attention": 1e-4, "lora": 1e-3}
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_TMP = f".{CHECKPOINT_DIR}.tmp"
SECTION = "dreambooth"  # the config core's name for DreamBoothConfig's keys in messages and overrides


class DreamBoothWarning(UserWarning):
    """Questionable input that DreamBooth works around (resized images, a common-word token, ...)."""


@dataclass
class DreamBoothConfig:
    """Settings of a DreamBooth run (defaults suit the built-in 32 px model on a CPU: a few minutes at most).

    Built from a mapping of its fields by :meth:`from_dict` through the config core
    (:mod:`mvdream3d.config_core`): an unknown key, or a value of the wrong type or range, is a
    :class:`~mvdream3d.errors.ConfigError` naming ``dreambooth.KEY``; ``KEY=VALUE`` strings (``--set``) become
    fields with :func:`dreambooth_overrides`."""

    token: str = "sks"
    class_word: str = ""
    steps: int = 200
    lr: float | None = None  # None: DEFAULT_LR of the training mode
    batch_size: int = 4
    lambda_preservation: float = 1.0
    train: str = "full"  # full | attention | lora
    lora_rank: int = 4
    lora_alpha: float | None = None  # None: = rank (scale 1)
    lora_targets: tuple[str, ...] = DEFAULT_TARGETS
    image_size: int | None = None  # None: the model's native size
    flip: bool = True  # random horizontal flips (turn off for subjects with writing or asymmetric details)
    seed: int = 0
    mixed_precision: str = "no"  # no | bf16 | fp16 (GPU only)
    device: str = "auto"  # auto | cpu | cuda[:N]
    gradient_checkpointing: bool = False
    grad_clip: float = 1.0
    weight_decay: float = 0.0  # the preservation term plays this role
    sample_steps: int = 30
    sample_guidance: float = 5.0
    checkpoint_every: int = 0  # 0: a resumable checkpoint only when stopped
    memory_check: bool = True
    base_model: str | None = None  # recorded in lora.safetensors; needed only when the model is passed as an object

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> DreamBoothConfig:
        """The validated config of the fields in ``raw`` (None: the defaults); ConfigError naming the key of an
        unknown field or a bad value. ``lora_targets`` may be a list (as YAML gives it)."""
        cfg = parse_section(cls, dict(raw) if raw is not None else None, SECTION)
        if isinstance(cfg.lora_targets, list):
            cfg.lora_targets = tuple(cfg.lora_targets)
        cfg.validate()
        return cfg

    def merged(self, settings: Mapping[str, Any]) -> DreamBoothConfig:
        """A validated copy with ``settings`` (field -> value) applied, through :meth:`from_dict`."""
        return DreamBoothConfig.from_dict({**asdict(self), **settings})

    def validate(self) -> None:
        """ConfigError (a ValueError) naming ``dreambooth.KEY`` for a value out of its range or of the wrong type
        in the fields whose default is None."""
        key = f"{SECTION}."
        check(self.train in TRAIN_MODES, key + "train", f"must be one of {', '.join(TRAIN_MODES)}", self.train)
        for name in ("steps", "batch_size", "lora_rank", "sample_steps"):
            check(int(getattr(self, name)) >= 1, key + name, "must be >= 1", getattr(self, name))
        for name in ("lr", "lora_alpha"):
            v = getattr(self, name)
            check(v is None or (isinstance(v, int | float) and not isinstance(v, bool)), key + name,
                  "must be a number (or null: the default)", v)
        check(self.image_size is None or (isinstance(self.image_size, int) and not isinstance(self.image_size, bool)),
              key + "image_size", "must be a whole number of pixels (or null: the model's size)", self.image_size)
        check(self.base_model is None or isinstance(self.base_model, str), key + "base_model",
              "must be a model name or path (or null)", self.base_model)
        check(isinstance(self.lora_targets, tuple | list) and all(isinstance(t, str) for t in self.lora_targets),
              key + "lora_targets", "must be a list of module names", self.lora_targets)
        check(self.lr is None or self.lr > 0, key + "lr", "must be > 0", self.lr)
        check(self.lambda_preservation >= 0, key + "lambda_preservation", "must be >= 0", self.lambda_preservation)
        check(self.mixed_precision in ("no", "bf16", "fp16"), key + "mixed_precision", "must be no, bf16 or fp16",
              self.mixed_precision)
        check(self.image_size is None or self.image_size >= 8, key + "image_size", "must be >= 8 pixels",
              self.image_size)

    @property
    def learning_rate(self) -> float:
        return float(self.lr) if self.lr is not None else DEFAULT_LR[self.train]

    @property
    def prompt(self) -> str:
        return f"a {self.token} {self.class_word.strip()}"


@dataclass
class DreamBoothResult:
    """``model``: the fine-tuned model (LoRA merged); ``model_path``: model.safetensors or lora.safetensors;
    ``history``: one row per step (``step``, ``loss``, ``diffusion_loss``, ``preservation`` = the unweighted
    ``||theta - theta_0||_1 / N``, ``lr``, ``seconds``)."""

    out: Path
    model: MVDreamModel
    model_path: Path
    prompt: str
    steps_done: int
    finished: bool
    history: list[dict[str, float]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def dreambooth_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings (``--set``; ``dreambooth.KEY=VALUE`` too; values read as YAML) -> the
    :class:`DreamBoothConfig` fields they set, through the config core's ``apply_overrides``. Checked at once:
    ConfigError naming an unknown key or a bad value."""
    lines = []
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().removeprefix(f"{SECTION}.")
        if not sep or not key or "." in key:
            raise ConfigError(f"override {item!r} must look like KEY=VALUE with KEY a DreamBooth setting, "
                              f"e.g. steps=100")
        lines.append(f"{SECTION}.{key}={value}")
    raw: dict[str, Any] = {}
    apply_overrides(raw, lines)
    settings = raw.get(SECTION, {})
    DreamBoothConfig.from_dict(settings)  # unknown keys, types and ranges fail here, before any work
    return settings


def preservation_loss(params: Sequence[torch.Tensor], params0: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum_i |theta_i - theta0_i|_1 / N_theta``: the mean absolute change of ``params`` from ``params0``
    (tensors of equal shapes; ``N_theta`` = their element count). Exactly 0 at the start; differentiable
    in ``params``."""
    if len(params) != len(params0) or not params:
        raise ValueError(f"need the same non-zero number of parameters and starting values, got "
                         f"{len(params)} and {len(params0)}")
    total = sum((p.float() - p0.float()).abs().sum() for p, p0 in zip(params, params0, strict=True))
    return total / sum(p.numel() for p in params)


def _lora_preservation(unet: torch.nn.Module) -> torch.Tensor:
    """The same for LoRA: the adapted weights' change ``scale * B @ A`` against their element count."""
    deltas = lora_weight_deltas(unet)
    return sum(d.float().abs().sum() for d, _ in deltas) / sum(w.numel() for _, w in deltas)


def _warn(message: str, collected: list[str]) -> None:
    collected.append(message)
    warnings.warn(message, DreamBoothWarning, stacklevel=3)


def _base_reference(model: Any, cfg: DreamBoothConfig) -> str | None:
    if cfg.base_model is not None:
        return cfg.base_model
    if model is None:
        from ..builtin import DEFAULT_MODEL

        return DEFAULT_MODEL
    if isinstance(model, MVDreamModel):
        return None
    return os.path.abspath(model) if os.path.exists(model) else str(model)


def _trainable(model: MVDreamModel, cfg: DreamBoothConfig) -> list[torch.nn.Parameter]:
    unet = model.unet
    if cfg.train == "lora":
        return add_lora(unet, cfg.lora_rank, cfg.lora_alpha or cfg.lora_rank, cfg.lora_targets)
    from ..models.attention import CrossAttention

    if cfg.train == "full":
        chosen = set(map(id, unet.parameters()))
    else:
        chosen = {id(p) for m in unet.modules() if isinstance(m, CrossAttention) for p in m.parameters()}
    params = []
    for p in unet.parameters():
        p.requires_grad_(id(p) in chosen)
        if id(p) in chosen:
            params.append(p)
    return params


def _subject_tensor(images: Any, size: int, collected: list[str]) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] < 1:
            raise ValueError(f"images must be (N, 3, H, W) in [-1, 1] with N >= 1, got {tuple(images.shape)}")
        x = images.float()
        if x.shape[-2:] != (size, size):
            _warn(f"images of {x.shape[-1]}x{x.shape[-2]} are resized to {size}x{size}", collected)
            x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)
        return x
    x, warns = load_subject_images(images, size)
    for w in warns:
        _warn(w, collected)
    return x


def _settings_key(cfg: DreamBoothConfig, base: str | None) -> dict[str, Any]:
    keep = ("token", "class_word", "train", "lora_rank", "lora_alpha", "lora_targets", "image_size", "batch_size",
            "lambda_preservation", "seed", "flip")
    d = {k: getattr(cfg, k) for k in keep}
    d["lora_targets"] = list(d["lora_targets"])
    d["base_model"] = base
    d["lr"] = cfg.learning_rate  # the optimiser state restored on resume carries it
    return d


def _save_checkpoint(out: Path, step: int, unet: torch.nn.Module, optimizer: Any, history: list[dict],
                     settings: dict[str, Any], seconds: float) -> Path:
    """The trained tensors, optimiser state and history in ``out/checkpoint`` (temp dir + rename)."""
    from safetensors.torch import save_file

    final, tmp = out / CHECKPOINT_DIR, out / CHECKPOINT_TMP
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    trained = {n: p.detach().contiguous().cpu() for n, p in unet.named_parameters() if p.requires_grad}
    save_file(trained, str(tmp / "trained.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "settings": settings, "history": history,
                                                "seconds": seconds}))
    return replace_dir(tmp, final)  # the old checkpoint stays until the new one is in place


def _load_checkpoint(out: Path, unet: torch.nn.Module, optimizer: Any, settings: dict[str, Any]
                     ) -> tuple[int, list[dict], float]:
    from safetensors.torch import load_file

    ckpt = out / CHECKPOINT_DIR
    state = json.loads((ckpt / "state.json").read_text())
    saved = state["settings"]
    changed = [k for k in settings if saved.get(k) != settings[k]]
    if changed:
        k = changed[0]
        raise ValueError(f"cannot resume {out}: its run used {k}={saved.get(k)!r}, this one {settings[k]!r}")
    trained = load_file(str(ckpt / "trained.safetensors"))
    params = dict(unet.named_parameters())
    with torch.no_grad():
        for n, v in trained.items():
            params[n].copy_(v)
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True))
    return int(state["step"]), list(state["history"]), float(state["seconds"])


def dreambooth(
    images: str | os.PathLike | torch.Tensor,
    token: str | None = None,
    class_word: str | None = None,
    model: str | os.PathLike | MVDreamModel | None = None,
    out: str | os.PathLike = "dreambooth",
    cfg: DreamBoothConfig | None = None,
    *,
    resume: bool = False,
    callback: Callable[[dict[str, float]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: bool = True,
    on_stage: Callable[[str, int, int], None] | None = None,
    **overrides: Any,
) -> DreamBoothResult:
    """Fine-tune ``model`` on photos of one subject; write the model, a 4-view grid, curves and a summary.

    Args:
        images: 3-10 photos: a folder, a folder of subfolders or a list file (see :func:`find_subject_images`),
            or a tensor (N, 3, H, W) in [-1, 1].
        token, class_word: the prompt is "a <token> <class_word>" (override ``cfg``'s).
        model: anything :func:`mvdream3d.models.loading.resolve_model` takes (None: the built-in model). A model
            object is fine-tuned in place.
        cfg: :class:`DreamBoothConfig`; ``overrides`` replace its fields (``steps=50``, ``train="lora"``...).
        resume: continue the stopped run in ``out`` (same settings; ``steps`` may grow).
        callback: called after every step with its history row. should_stop: polled between steps; True
            stops like Ctrl-C (checkpoint saved, resumable).
        on_stage: told ``(stage, done, total)`` for the work after the training steps: "saving the model"
            (0 of 1, then 1 of 1), "drawing the grid" (per sampling step), "loss plot" (0 of 1, then 1 of 1).
    Raises ValueError (bad settings or inputs, an estimate above the free memory), FileNotFoundError,
    OutputDirError.
    """
    cfg = _run_config(cfg, token, class_word, overrides)
    collected: list[str] = []
    _check_inputs(cfg, images)  # before anything is written or loaded
    out = _open_output(out, resume)
    device = resolve_device(cfg.device)
    if cfg.mixed_precision == "fp16" and device.type != "cuda":
        raise ValueError("mixed_precision fp16 needs a GPU; use bf16 or no on a CPU")
    base_ref = _base_reference(model, cfg)
    mdl = resolve_model(model)
    size, x, memory = _subject_and_memory(mdl, cfg, images, device, collected)

    torch.manual_seed(cfg.seed)
    tuning = _Tuning(mdl, cfg, device)
    settings = _settings_key(cfg, base_ref)
    step, history, seconds_before = 0, [], 0.0
    if resume:
        step, history, seconds_before = _load_checkpoint(out, mdl.unet, tuning.optimizer, settings)
        print(f"resumed from {out / CHECKPOINT_DIR} at step {step}")  # its history ends there too
    tuning.encode_subject(x)

    t0 = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=step, desc="dreambooth", unit="step", disable=not progress,
               dynamic_ncols=True)
    mdl.unet.train()
    with StopOnSignal() as signal_stop:
        while step < cfg.steps:
            loss, diffusion, pres = tuning.step(step_generator(cfg.seed, step, 0))
            step += 1
            row = {"step": step, "loss": loss.item(), "diffusion_loss": diffusion.item(), "preservation": pres.item(),
                   "lr": cfg.learning_rate, "seconds": round(seconds_before + time.perf_counter() - t0, 3)}
            history.append(row)
            bar.update(1)
            bar.set_postfix(loss=f"{row['diffusion_loss']:.4f}", pres=f"{row['preservation']:.2e}")
            if callback is not None:
                callback(row)
            stopped = signal_stop.requested or (should_stop is not None and bool(should_stop()))
            if stopped or _checkpoint_due(cfg, step):
                _save_checkpoint(out, step, mdl.unet, tuning.optimizer, history, settings,
                                 seconds_before + time.perf_counter() - t0)
            if stopped:
                bar.write(f"stopped at step {step}; checkpoint saved in {out / CHECKPOINT_DIR}: continue with --resume")
                break
    bar.close()
    mdl.unet.eval()
    for p in mdl.unet.parameters():
        p.requires_grad_(False)
    seconds = seconds_before + time.perf_counter() - t0
    if on_stage is not None:
        on_stage("saving the model", 0, 1)
    model_path = _save_model(mdl, cfg, out, base_ref, tuning.fingerprint, step, collected)
    if on_stage is not None:
        on_stage("saving the model", 1, 1)
    result = DreamBoothResult(out=out, model=mdl, model_path=model_path, prompt=cfg.prompt, steps_done=step,
                              finished=step >= cfg.steps, history=history, warnings=collected, seconds=seconds)
    summary = {"config": {**asdict(cfg), "lr": cfg.learning_rate}, "base_model": base_ref, "images": int(x.shape[0]),
               "image_size": size, "device": str(device), "trained_parameters": tuning.n_trained,
               "memory_estimate_bytes": int(memory)}
    write_outputs(result, summary, grid=result.finished, size=size, cfg=cfg, progress=on_stage)
    if result.finished:
        shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
    return result


def _run_config(cfg: DreamBoothConfig | None, token: str | None, class_word: str | None,
                overrides: dict[str, Any]) -> DreamBoothConfig:
    """``cfg`` (default: the defaults) with ``overrides``, ``token`` and ``class_word`` applied, validated."""
    named = {k: v for k, v in (("token", token), ("class_word", class_word)) if v is not None}
    return (cfg or DreamBoothConfig()).merged({**overrides, **named})  # the config core: ConfigError naming a key


def _check_inputs(cfg: DreamBoothConfig, images: Any) -> None:
    """The checks that need no model: LoRA's extra, the class word, the token's format, the photos' folder."""
    if cfg.train == "lora":
        from ..extras import require

        require("peft", "train", "LoRA training (--train lora)")  # before any heavy work
    if not cfg.class_word.strip():
        raise ValueError("the class word is empty: name what the subject is, e.g. --class-word toy")
    check_token(cfg.token, cfg.class_word)  # format errors before any heavy work
    if not isinstance(images, torch.Tensor):
        load_subject_images(images, 8)  # a bad folder fails before anything is written or loaded


def _open_output(out: str | os.PathLike, resume: bool) -> Path:
    """The writable output folder, cleaned of an interrupted checkpoint write; a stopped run there needs
    ``resume`` and ``resume`` needs one."""
    out = ensure_writable_dir(out)
    remove_stale_temporaries(out, [CHECKPOINT_TMP], restore=[out / CHECKPOINT_DIR])
    has_ckpt = (out / CHECKPOINT_DIR / "state.json").is_file()
    if resume and not has_ckpt:
        raise ValueError(f"nothing to resume in {out}: no {CHECKPOINT_DIR}/state.json")
    if not resume and has_ckpt:
        raise ValueError(f"{out} holds a stopped run: pass --resume to continue it, or choose another --out")
    return out


def _subject_and_memory(mdl: MVDreamModel, cfg: DreamBoothConfig, images: Any, device: torch.device,
                        collected: list[str]) -> tuple[int, torch.Tensor, int]:
    """The training size, the photos as (N, 3, size, size) in [-1, 1], and the memory estimate (checked
    against the free memory with ``memory_check``); warnings go to ``collected``."""
    size = cfg.image_size or mdl.native_size
    factor = mdl.downsample_factor * mdl.unet.downsample_factor
    if size % factor:
        raise ValueError(f"image size {size} is not a multiple of {factor}, which this model needs")
    x = _subject_tensor(images, size, collected)
    for w in check_token(cfg.token, cfg.class_word, mdl.text_encoder):
        _warn(w, collected)
    memory = estimate_memory(mdl, cfg)
    if cfg.memory_check:
        memory, warns = check_memory(mdl, cfg, device, weights_resident=device.type == "cpu")
        for w in warns:
            _warn(w, collected)
    return size, x, memory


def _checkpoint_due(cfg: DreamBoothConfig, step: int) -> bool:
    """A periodic checkpoint (``checkpoint_every``) after ``step``; none after the last step."""
    return bool(cfg.checkpoint_every) and step % cfg.checkpoint_every == 0 and step < cfg.steps


class _Tuning:
    """The fine-tuning of one model: what trains, the optimiser, mixed precision and the subject's latents.

    ``step`` takes one optimisation step: a batch of the subject's latents (with flips), a shared-prompt
    diffusion loss on 2D frames (``num_frames=1``, no camera) plus ``lambda * preservation``."""

    def __init__(self, mdl: MVDreamModel, cfg: DreamBoothConfig, device: torch.device) -> None:
        """Freeze the VAE and text encoder, choose the trained parameters, move the model to ``device``."""
        self.mdl, self.cfg, self.device = mdl, cfg, device
        for part in (mdl.vae, mdl.text_encoder):
            if part is not None:
                part.requires_grad_(False).eval()
        self.fingerprint = base_fingerprint(mdl.unet, cfg.lora_targets) if cfg.train == "lora" else None
        self.params = _trainable(mdl, cfg)
        mdl.to(device)
        if cfg.gradient_checkpointing:
            mdl.unet.enable_gradient_checkpointing()
        self.params0 = [p.detach().clone() for p in self.params] if cfg.train != "lora" else None
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda") if cfg.mixed_precision == "fp16" else None
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.mixed_precision)
        self.n_trained = sum(p.numel() for p in self.params)

    @torch.no_grad()
    def encode_subject(self, x: torch.Tensor) -> None:
        """The photos' latents (and their mirror images with ``flip``) and the prompt's text context."""
        mdl, cfg, device = self.mdl, self.cfg, self.device
        pixels = torch.cat([x, x.flip(-1)]) if cfg.flip else x
        self.x0_all = torch.cat([mdl.encode_images(c.to(device, mdl.dtype)) for c in pixels.split(8)]).float()
        self.context = mdl.encode_text([cfg.prompt + mdl.prompt_suffix]).to(device) \
            if mdl.text_encoder is not None else None

    def step(self, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One optimisation step with the randomness of ``g``; returns (loss, diffusion loss, preservation)."""
        mdl, cfg, device, schedule = self.mdl, self.cfg, self.device, self.mdl.noise_schedule
        idx = torch.randint(0, self.x0_all.shape[0], (cfg.batch_size,), generator=g)
        x0 = self.x0_all[idx.to(device)]
        t = torch.randint(0, schedule.num_timesteps, (cfg.batch_size,), generator=g).to(device)
        noise = torch.randn(x0.shape, generator=g).to(device)
        ctx = self.context.expand(cfg.batch_size, -1, -1) if self.context is not None else None
        amp = self.amp_dtype
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            pred = mdl.unet(schedule.q_sample(x0, t, noise).to(mdl.dtype), t, context=ctx, camera=None,
                            num_frames=1)
        diffusion = diffusion_loss(pred, schedule, x0, t, noise)
        pres = _lora_preservation(mdl.unet) if self.params0 is None else preservation_loss(self.params, self.params0)
        loss = diffusion + cfg.lambda_preservation * pres
        self._update(loss)
        return loss, diffusion, pres

    def _update(self, loss: torch.Tensor) -> None:
        """Backward, gradient clipping and the optimiser step (through the fp16 grad scaler when there is one)."""
        optimizer, scaler = self.optimizer, self.scaler
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()


def _save_model(mdl: MVDreamModel, cfg: DreamBoothConfig, out: Path, base_ref: str | None,
                fingerprint: float | None, step: int, collected: list[str]) -> Path:
    """Write ``lora.safetensors`` (adapters, then merged into ``mdl``) or ``model.safetensors``; remove the
    other kind's file of an earlier run, so that ``out`` names one model."""
    stale = out / ("model.safetensors" if cfg.train == "lora" else "lora.safetensors")
    if stale.is_file():  # an earlier run of the other kind: OUT must name one model (resolve_model(OUT))
        _warn(f"removed {stale.name} of an earlier run in {out}", collected)
        stale.unlink()
    if cfg.train != "lora":
        from ..checkpoints import write_checkpoint

        return write_checkpoint(out / "model.safetensors", mdl.ldm_state_dict(), mdl.config)
    adapters = lora_state_dict(mdl.unet)
    remove_lora(mdl.unet)
    merge_lora(mdl.unet, adapters, (cfg.lora_alpha or cfg.lora_rank) / cfg.lora_rank)
    if base_ref is None:
        _warn("the base model was passed as an object: lora.safetensors names no base model "
              "(set base_model, or load it with load_lora_model(path, base=...))", collected)
    return save_lora(out / "lora.safetensors", adapters, {
        "base_model": base_ref, "rank": cfg.lora_rank, "alpha": cfg.lora_alpha or cfg.lora_rank,
        "target_modules": list(cfg.lora_targets), "base_fingerprint": fingerprint, "token": cfg.token,
        "class_word": cfg.class_word, "prompt": cfg.prompt, "steps": step})
