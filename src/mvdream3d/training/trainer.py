"""Joint 2D + 3D training of a multi-view diffusion model (MVDream's central idea).

Each optimisation step draws, with probability ``p_2d``, a 2D image-text batch (``num_frames=1``, no
camera) and otherwise a multi-view batch (B objects x F views, object-major, with cameras). Captions
are dropped with probability ``caption_dropout`` for classifier-free guidance. The UNet learns eps
(or v) with an MSE loss; the VAE and the text encoder stay frozen. Built on ``accelerate``: the same
code runs on one CPU, one GPU or many processes (``accelerate launch``, DDP).

Never losing work: every ``checkpoint_every`` steps, and on SIGINT/SIGTERM, the UNet, EMA, optimiser,
LR scheduler, step, RNG and data position are written atomically (temp dir + rename) under
``OUT/checkpoints/step_XXXXXXX``; ``--resume`` continues from the newest complete one, cutting
``train_log.jsonl`` back to its step. A kill -9 loses at most the steps since that checkpoint; the
temporary folder of a checkpoint write it interrupted is removed when the next run starts. All randomness
of a step (batch kind, timesteps, noise, caption dropout) comes from a generator seeded by
(seed, step, rank), so a resumed run takes the same steps as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from ..checkpoints import read_checkpoint, split_state_dict, write_checkpoint
from ..devices import resolve_mixed_precision
from ..diffusion.loss import diffusion_loss
from ..diffusion.loss import min_snr_weights as min_snr_weights  # public here too
from ..files import remove_stale_temporaries, replace_dir, truncate_jsonl
from ..models.loading import checkpoint_path, read_autoencoder
from ..models.model import MVDreamModel, build_model, load_model, resolve_config
from ..signals import StopOnSignal
from .config import TrainConfig, TrainSection, config_from_dict

CKPT_DIR = "checkpoints"
LOG_FILE = "train_log.jsonl"


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The generator for all random choices of one step on one rank (resume-exact)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 257 + rank)


def init_model(cfg: TrainConfig) -> MVDreamModel:
    """Build the model: from scratch, from an MVDream checkpoint (``mvdream3d-tiny`` names the shipped
    weights), or from a 2D SD checkpoint.

    A 2D checkpoint (UNet keys without ``camera_embed``) fills everything else; the camera MLP starts
    with its last layer at zero so the initial model equals the 2D model.
    """
    model_cfg = resolve_config(cfg.model.config)
    params = model_cfg["model"]["params"]
    if cfg.model.prediction_type is not None:
        params["parameterization"] = cfg.model.prediction_type
    # what the trained model should default to: no caption suffix (training captions have none) and the
    # training resolution as its native size
    params.setdefault("prompt_suffix", "")
    vae_state = None
    if cfg.model.vae is not None:
        vae_file, vae_state = read_autoencoder(cfg.model.vae)
        params["first_stage_config"] = vae_file["first_stage_config"]
        params["scale_factor"] = vae_file["scale_factor"]
    vae_factor = 1 if str(params.get("first_stage_config", {}).get("target", "")).endswith("Identity") else \
        2 ** (len(params["first_stage_config"]["params"]["ddconfig"]["ch_mult"]) - 1)
    params["unet_config"].setdefault("params", {})["image_size"] = cfg.data.image_size // vae_factor
    init = cfg.model.init
    if init == "scratch":
        model = build_model(model_cfg)
        if vae_state is not None:
            from ..models.vae import load_vae

            model.vae = load_vae(params["first_stage_config"]["params"], vae_state)
        return model
    state, _ = read_checkpoint(checkpoint_path(init))  # mvdream3d-tiny: the shipped model's weights
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}  # fp16 files train in fp32
    parts = split_state_dict(state)
    model = build_model(model_cfg)
    has_camera_weights = any(k.startswith("camera_embed.") for k in parts["unet"])
    if not model.unet.has_camera and has_camera_weights:
        # a config without camera input, initialised from a multi-view checkpoint: its camera MLP is dropped
        state = {k: v for k, v in state.items() if ".camera_embed." not in f".{k}"}
        print(f"init: {init} has a camera MLP; this config has no camera input, so it is dropped")
    if not model.unet.has_camera or has_camera_weights:
        return load_model(model_cfg, state)  # a multi-view checkpoint of this config
    # a 2D Stable Diffusion checkpoint: everything but the camera MLP
    missing, unexpected = model.unet.load_state_dict(parts["unet"], strict=False)
    bad = [k for k in missing if not k.startswith("camera_embed.")] + list(unexpected)
    if bad:
        raise ValueError(f"2D checkpoint {init} does not fit the UNet config: e.g. {bad[:3]}")
    if model.text_encoder is not None and parts["text"]:
        model.text_encoder.load_state_dict(parts["text"], strict=True)
    if model.vae is not None and parts["vae"]:
        from ..models.vae import load_vae

        model.vae = load_vae(model.params["first_stage_config"]["params"], parts["vae"])
    torch.nn.init.zeros_(model.unet.camera_embed[2].weight)  # start exactly at the 2D model
    torch.nn.init.zeros_(model.unet.camera_embed[2].bias)
    return model


class Checkpointer:
    """Atomic training checkpoints under ``out/checkpoints/step_XXXXXXX`` (temp dir ``.tmp_step_*``, then
    :func:`mvdream3d.files.replace_dir`)."""

    TMP_PREFIX = ".tmp_step_"

    def __init__(self, out: Path, keep: int) -> None:
        self.root = out / CKPT_DIR
        self.keep = keep

    def remove_stale(self) -> list[Path]:
        """Remove the temporary folders of checkpoint writes that a kill interrupted (call before training);
        a checkpoint that a kill left only as its :func:`replace_dir` backup is put back."""
        backups = self.root.glob(".step_*.old") if self.root.is_dir() else []
        return remove_stale_temporaries(self.root, [f"{self.TMP_PREFIX}*"],
                                        restore=[self.root / b.name[1:-len(".old")] for b in backups])

    def latest(self) -> Path | None:
        if not self.root.is_dir():
            return None
        done = sorted(p for p in self.root.glob("step_*") if p.is_dir() and (p / "state.json").is_file())
        return done[-1] if done else None

    def save(self, step: int, unet: torch.nn.Module, ema: Any, optimizer: Any, scheduler: Any,
             state: dict[str, Any]) -> Path:
        from safetensors.torch import save_file

        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / f"step_{step:07d}"
        tmp = self.root / f"{self.TMP_PREFIX}{step:07d}_{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file({k: v.detach().contiguous().cpu() for k, v in unet.state_dict().items()},
                  str(tmp / "unet.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None,
                    "torch_rng": torch.get_rng_state()}, tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps(state, indent=1))  # written last: marks completeness
        replace_dir(tmp, final)
        for old in sorted(p for p in self.root.glob("step_*") if p.is_dir())[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    @staticmethod
    def load(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
        from safetensors.torch import load_file

        unet = load_file(str(path / "unet.safetensors"))
        opt = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        state = json.loads((path / "state.json").read_text())
        return unet, opt, state


def _data_streams(cfg: TrainConfig, rank: int, world: int, data_state: dict[str, Any] | None
                  ) -> tuple[Iterator[dict] | None, Iterator[dict] | None, dict[str, Any]]:
    from ..data.datasets import ImageTextDataset, MultiViewDataset, collate_multiview, infinite_loader

    d = cfg.data
    datasets: dict[str, Any] = {}
    if d.multiview is not None:
        datasets["mv"] = MultiViewDataset(d.multiview, num_views=d.num_views, image_size=d.image_size,
                                          background=d.background, seed=cfg.train.seed, rank=rank,
                                          world_size=world, feature_masks=cfg.train.feature_loss_weight > 0)
    if d.image_text is not None and d.p_2d > 0:
        datasets["2d"] = ImageTextDataset(d.image_text, image_size=d.image_size, background=d.background,
                                          seed=cfg.train.seed + 1, rank=rank, world_size=world)
    for k, ds in datasets.items():
        if data_state and k in data_state:
            ds.load_state_dict(data_state[k])
    bs2d = d.batch_size_2d or d.batch_size * d.num_views
    mv = infinite_loader(datasets["mv"], d.batch_size, d.num_workers, collate_multiview) if "mv" in datasets else None
    im = infinite_loader(datasets["2d"], bs2d, d.num_workers, collate_multiview) if "2d" in datasets else None
    return mv, im, datasets


def train(cfg: TrainConfig, resume: bool = False, max_steps_this_run: int | None = None) -> Path:
    """Run (or resume) training as configured; returns the output directory.

    The final model (EMA weights) is written as ``OUT/model.safetensors``, loadable by every command.
    ``max_steps_this_run`` stops early after that many steps (checkpointing first), for tests.
    """
    out = Path(cfg.output.dir)
    t = cfg.train
    accel = _accelerator(t)
    ckpt, latest = _open_output(accel, out, cfg.output.keep_checkpoints, resume)
    run = _Run.build(cfg, accel, out, ckpt)
    if latest is not None:
        run.restore(latest)
    run.prepare()
    run.open_data(resumed=latest is not None)
    end = t.steps if max_steps_this_run is None else min(t.steps, run.step + max_steps_this_run)
    bar = tqdm(total=t.steps, initial=run.step, desc="train", disable=not accel.is_main_process,
               dynamic_ncols=True, unit="step")
    with StopOnSignal() as stop:
        while run.step < end:
            loss, kinds = run.optimise()
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", kind="/".join(kinds))
            if run.after_step(loss, kinds, end, stopping=stop.requested):  # read once: a later signal waits a step
                accel.print(f"stopped by signal at step {run.step}; checkpoint saved. Continue with --resume")
                break
    bar.close()
    run.finish()
    return out


def _accelerator(t: TrainSection) -> Any:
    """The ``accelerate.Accelerator`` of a run: mixed precision resolved for the device, gradient
    accumulation, DDP that tolerates parameters without a gradient (the camera MLP on 2D batches)."""
    from accelerate import Accelerator, DistributedDataParallelKwargs

    precision = resolve_mixed_precision(t.mixed_precision, "cuda" if torch.cuda.is_available() else "cpu")
    if precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("train.mixed_precision: fp16 needs a GPU; use bf16 or no on a CPU")
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # accelerate keeps a process-wide singleton state; a second train() in one process (a notebook, a
        # test) with another precision must start from a clean one
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
    accel = Accelerator(
        mixed_precision=precision, gradient_accumulation_steps=t.grad_accum,
        cpu=not torch.cuda.is_available(),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    if t.mixed_precision == "auto":
        accel.print(f"mixed precision: auto -> {precision}"
                    + ("" if precision == "bf16" else " (no native bf16 on this device; emulated bf16 is slower)"))
    return accel


def _open_output(accel: Any, out: Path, keep: int, resume: bool) -> tuple[Checkpointer, Path | None]:
    """Check the output folder, find the checkpoint to resume from (None: start at step 0) and remove the
    temporaries of interrupted checkpoint writes. A folder with checkpoints needs ``resume``."""
    if accel.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if not os.access(out, os.W_OK):
            raise PermissionError(f"cannot write to output directory {out}")
    ckpt = Checkpointer(out, keep)
    latest = ckpt.latest() if resume else None
    if resume and latest is None:
        accel.print(f"--resume: no checkpoint under {out / CKPT_DIR}; starting from step 0")
    if not resume and ckpt.latest() is not None:
        raise ValueError(f"{out} already holds checkpoints: pass --resume to continue, or choose another "
                         f"output.dir")
    if accel.is_main_process:
        for stale in ckpt.remove_stale():
            accel.print(f"removed {stale}, left by an interrupted checkpoint write")
    return ckpt, latest


class _Batches:
    """Where a run's batches come from: the latent cache (``data.cache_latents``) or the data streams, and
    the per-step choice between a 2D batch (probability ``data.p_2d``) and a multi-view one."""

    def __init__(self, cfg: TrainConfig, model: MVDreamModel, out: Path, accel: Any,
                 data_state: dict[str, Any] | None) -> None:
        self.cfg = cfg
        self.cache = self.text_cache = None
        self.mv: Iterator[dict] | None = None
        self.im: Iterator[dict] | None = None
        self.datasets: dict[str, Any] = {}
        if cfg.data.cache_latents:
            from .latent_cache import CachedTextEncoder, LatentCache

            if accel.is_main_process:
                out.mkdir(parents=True, exist_ok=True)
            d = cfg.data
            self.cache = LatentCache.for_training(model, out, d.multiview, d.image_text if d.p_2d > 0 else None,
                                                  d.image_size, main=accel.is_main_process)
            self.text_cache = CachedTextEncoder(model) if model.text_encoder is not None else None
        else:
            self.mv, self.im, self.datasets = _data_streams(cfg, accel.process_index, accel.num_processes,
                                                            data_state)

    def draw(self, g: torch.Generator, step: int) -> tuple[dict[str, Any], bool]:
        """The next batch and whether it is a 2D one (the choice is drawn from ``g``)."""
        p_2d, cache = self.cfg.data.p_2d, self.cache
        if cache is not None:
            use_2d = cache.num_images > 0 and (cache.num_assets == 0 or torch.rand((), generator=g) < p_2d)
            return _cached_batch(cache, self.cfg, g, use_2d, step), use_2d
        use_2d = self.im is not None and (self.mv is None or torch.rand((), generator=g) < p_2d)
        return next(self.im if use_2d else self.mv), use_2d

    def state(self) -> dict[str, Any]:
        """The data streams' positions (``infinite_loader`` keeps them current)."""
        return {k: ds.state_dict() for k, ds in self.datasets.items()}


class _Run:
    """The live state of one training run and its steps: build, restore, optimise, log, checkpoint, finish."""

    def __init__(self, cfg: TrainConfig, accel: Any, out: Path, ckpt: Checkpointer, model: MVDreamModel,
                 optimizer: Any, scheduler: Any, ema: Any) -> None:
        self.cfg, self.accel, self.out, self.ckpt = cfg, accel, out, ckpt
        self.model, self.unet, self.optimizer, self.scheduler, self.ema = model, model.unet, optimizer, scheduler, ema
        self.rank, self.world = accel.process_index, accel.num_processes
        self.step, self.data_state, self.cpu_base = 0, None, 0.0
        self.history: list[dict[str, Any]] = []
        self.steps_done, self.wait_data = 0, 0.0

    @classmethod
    def build(cls, cfg: TrainConfig, accel: Any, out: Path, ckpt: Checkpointer) -> _Run:
        """The model (seeded), its frozen VAE / text encoder, the AdamW optimiser, LR schedule and EMA."""
        from diffusers.training_utils import EMAModel

        t = cfg.train
        torch.manual_seed(t.seed)
        model = init_model(cfg)
        if t.gradient_checkpointing:
            model.unet.enable_gradient_checkpointing()
        for part in (model.vae, model.text_encoder):
            if part is not None:
                part.requires_grad_(False).eval().to(accel.device)
        unet = model.unet
        optimizer = torch.optim.AdamW(unet.parameters(), lr=t.lr, betas=t.betas, weight_decay=t.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(t, s))
        ema = EMAModel(unet.parameters(), decay=t.ema_decay) if t.ema_decay > 0 else None
        return cls(cfg, accel, out, ckpt, model, optimizer, scheduler, ema)

    def restore(self, latest: Path) -> None:
        """Continue from checkpoint ``latest``: weights, optimiser, schedule, EMA, RNG, step, data position."""
        unet_state, opt_state, state = Checkpointer.load(latest)
        self.unet.load_state_dict(unet_state)
        self.optimizer.load_state_dict(opt_state["optimizer"])
        self.scheduler.load_state_dict(opt_state["scheduler"])
        if self.ema is not None and opt_state.get("ema") is not None:
            self.ema.load_state_dict(opt_state["ema"])
        torch.set_rng_state(opt_state["torch_rng"])
        step = self.step = state["step"]
        self.data_state = state["data"][self.rank] if self.rank < len(state["data"]) else None
        self.cpu_base = float(state.get("cpu_s", 0.0))
        # steps logged after the checkpoint by the interrupted run are taken again: each step is logged once
        dropped = truncate_jsonl(self.out / LOG_FILE, step) if self.accel.is_main_process else 0
        self.accel.print(f"resumed from {latest} at step {step}"
                         + (f" ({LOG_FILE}: {dropped} rows after step {step} dropped)" if dropped else ""))

    def prepare(self) -> None:
        """Move the UNet and EMA to the device and wrap them for (distributed) training."""
        self.unet.to(self.accel.device)
        if self.ema is not None:
            self.ema.to(self.accel.device)
        # The LR scheduler is stepped by hand once per optimiser step: accelerate's wrapper would step it once
        # per process, which suits a shared data loader, not our per-rank streams.
        self.unet_p, self.optimizer_p = self.accel.prepare(self.unet, self.optimizer)

    def open_data(self, resumed: bool) -> None:
        """Open the batches, the TensorBoard writer and the log, record the config, start the CPU clock."""
        accel, out = self.accel, self.out
        self.batches = _Batches(self.cfg, self.model, out, accel, self.data_state)
        # a resumed run's TensorBoard hides the events the interrupted run logged after the checkpoint
        self.writer = _tensorboard(out, self.step + 1 if resumed else None) if accel.is_main_process else None
        self.log_path = out / LOG_FILE
        if accel.is_main_process:
            (out / "train_config.yaml").write_text(_yaml(self.cfg.to_dict()))
        self.cpu0 = time.process_time()
        self.t0 = time.perf_counter()

    def cpu_now(self) -> float:
        """CPU seconds this run has used, summed over resumed parts (the fair cost of a CPU recipe)."""
        return round(self.cpu_base + time.process_time() - self.cpu0, 1)

    def optimise(self) -> tuple[float, list[str]]:
        """One optimiser step (``train.grad_accum`` batches); returns its mean loss and the batch kinds."""
        t, accel, unet_p = self.cfg.train, self.accel, self.unet_p
        unet_p.train()
        g = step_generator(t.seed, self.step, self.rank)
        loss_sum, kinds = 0.0, []
        for _ in range(t.grad_accum):
            with accel.accumulate(unet_p):
                tw = time.perf_counter()
                batch, use_2d = self.batches.draw(g, self.step)
                self.wait_data += time.perf_counter() - tw
                loss = _loss(self.model, unet_p, self.model.noise_schedule, batch, self.cfg, g, accel.device,
                             self.batches.text_cache, self.step)
                accel.backward(loss)
                if accel.sync_gradients and t.grad_clip > 0:
                    accel.clip_grad_norm_(unet_p.parameters(), t.grad_clip)
                self.optimizer_p.step()
                if accel.sync_gradients:
                    self.scheduler.step()
                self.optimizer_p.zero_grad(set_to_none=True)
            loss_sum += loss.item() / t.grad_accum
            kinds.append("2d" if use_2d else "mv")
        if self.ema is not None:
            self.ema.step(accel.unwrap_model(unet_p).parameters())
        self.step += 1
        self.steps_done += 1
        return loss_sum, kinds

    def after_step(self, loss: float, kinds: list[str], end: int, stopping: bool) -> bool:
        """Log the step, and sample and checkpoint when due; True when a stop signal ends the run here."""
        out, step, accel = self.cfg.output, self.step, self.accel
        if accel.is_main_process:
            self.history.append({"step": step, "loss": loss, "kind": kinds[0],
                                 "lr": self.scheduler.get_last_lr()[0], "cpu_s": self.cpu_now()})
        checkpoint_now = step % out.checkpoint_every == 0 or step == end or stopping
        if step % out.log_every == 0 or checkpoint_now:  # a checkpoint's steps are all in the log
            _log(self.writer, self.log_path, self.history, accel.is_main_process, self.t0, self.steps_done,
                 self.wait_data)
            self.history = []
        if out.sample_every and step % out.sample_every == 0:
            _sample_grid(self.model, accel.unwrap_model(self.unet_p), self.ema, self.cfg, self.out, step,
                         self.writer, accel)
        if checkpoint_now:
            self.save(step)
        return stopping

    def save(self, at: int) -> None:
        """Checkpoint step ``at`` (every rank's data position; rank 0 writes)."""
        from accelerate.utils import gather_object

        accel = self.accel
        states = gather_object([self.batches.state()]) if self.world > 1 else [self.batches.state()]
        if accel.is_main_process:
            path = self.ckpt.save(at, accel.unwrap_model(self.unet_p), self.ema, self.optimizer, self.scheduler,
                                  {"step": at, "data": states, "config": self.cfg.to_dict(), "time": time.time(),
                                   "cpu_s": self.cpu_now()})
            accel.print(f"checkpoint: {path}")
        accel.wait_for_everyone()

    def finish(self) -> None:
        """Write the final model when the last step is done; close the logs."""
        if self.step >= self.cfg.train.steps:
            self.model.config["training"] = provenance(self.cfg, self.step)
            _finish(self.model, self.accel.unwrap_model(self.unet_p), self.ema, self.out, self.accel)
        if self.writer is not None:
            self.writer.close()
        self.accel.wait_for_everyone()


def feature_weight_at(t: Any, step: int) -> float:
    """``train.feature_loss_weight`` at ``step`` (0 outside ``train.feature_loss_steps``)."""
    window = t.feature_loss_steps
    if window is not None and not window[0] <= step < window[1]:
        return 0.0
    return float(t.feature_loss_weight)


def _cached_batch(cache: Any, cfg: TrainConfig, g: torch.Generator, use_2d: bool, step: int = 0) -> dict[str, Any]:
    d = cfg.data
    if use_2d:
        return cache.image_batch(g, d.batch_size_2d or d.batch_size * d.num_views)
    return cache.multiview_batch(g, d.batch_size, d.num_views, masks=feature_weight_at(cfg.train, step) > 0)


def _loss(model: MVDreamModel, unet: torch.nn.Module, schedule: Any, batch: dict[str, Any], cfg: TrainConfig,
          g: torch.Generator, device: torch.device, text_cache: Any = None, step: int = 0) -> torch.Tensor:
    """Diffusion loss of one batch (object-major). Timesteps are shared by the views of an object.

    ``batch["latents"]`` (cached, already in model space) is used as is; else ``batch["images"]`` is
    encoded. ``text_cache`` (a :class:`~.latent_cache.CachedTextEncoder`) encodes each caption once."""
    f = int(batch["num_frames"])
    captions = [c if torch.rand((), generator=g) >= cfg.data.caption_dropout else "" for c in batch["captions"]]
    with torch.no_grad():
        x0 = batch["latents"].to(device) if "latents" in batch else model.encode_images(batch["images"].to(device))
        encoder = text_cache if text_cache is not None else model
        context = encoder.encode_text(captions).to(device) if model.text_encoder is not None else None
    b = x0.shape[0] // f
    t = torch.randint(0, schedule.num_timesteps, (b,), generator=g).repeat_interleave(f).to(device)
    noise = torch.randn(x0.shape, generator=g).to(device, x0.dtype)
    x_t = schedule.q_sample(x0, t, noise)
    camera = batch.get("cameras")
    camera = camera.to(device) if camera is not None and model.unet.has_camera else None
    if context is not None:
        context = context.repeat_interleave(f, dim=0)
    pred = unet(x_t, t, context=context, camera=camera, num_frames=f)
    weight = feature_weight_at(cfg.train, step)
    masks = batch.get("feature_weights") if weight > 0 else None
    return diffusion_loss(pred, schedule, x0, t, noise, masks=masks, mask_weight=weight,
                          normalize_mask=cfg.train.feature_loss_normalize, min_snr_gamma=cfg.train.min_snr_gamma)


def lr_factor(t: TrainSection, step: int) -> float:
    """Learning-rate multiplier after ``step`` optimiser steps: linear warm-up over ``warmup_steps``, then
    constant, or a linear / cosine decay to ``min_lr_ratio`` at ``steps`` (over the last ``decay_steps``
    only when that is > 0: a run is then constant-rate until the decay starts, so its first steps are
    those of any longer or shorter run of the same recipe)."""
    warm = max(1, t.warmup_steps)
    if step + 1 < warm:
        return (step + 1) / warm
    if t.lr_schedule == "constant":
        return 1.0
    start = max(warm, t.steps - t.decay_steps) if t.decay_steps > 0 else warm
    if step + 1 < start:
        return 1.0
    frac = min(1.0, (step + 1 - start) / max(1, t.steps - start))
    decay = 1.0 - frac if t.lr_schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * frac))
    return t.min_lr_ratio + (1.0 - t.min_lr_ratio) * decay


def _tensorboard(out: Path, purge_step: int | None = None):
    """``purge_step``: TensorBoard hides the events logged at this step and later by an earlier run."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: the JSONL log still has everything
        print("note: no TensorBoard logs (tensorboard is not installed: pip install 'mvdream3d[train]'); "
              "train_log.jsonl has every logged value", file=sys.stderr)
        return None
    return SummaryWriter(str(out / "tensorboard"), purge_step=purge_step)


def _log(writer: Any, path: Path, history: list[dict], main: bool, t0: float, steps: int, wait: float) -> None:
    if not main or not history:
        return
    elapsed = time.perf_counter() - t0
    with path.open("a") as f:
        for h in history:
            h = dict(h, steps_per_s=steps / elapsed, data_wait_share=wait / max(elapsed, 1e-9))
            f.write(json.dumps(h) + "\n")
            if writer is not None:
                writer.add_scalar("loss", h["loss"], h["step"])
                writer.add_scalar(f"loss_{h['kind']}", h["loss"], h["step"])
                writer.add_scalar("lr", h["lr"], h["step"])
    if writer is not None:
        writer.add_scalar("steps_per_s", steps / elapsed, history[-1]["step"])
        writer.add_scalar("data_wait_share", wait / max(elapsed, 1e-9), history[-1]["step"])


@torch.no_grad()
def _sample_grid(model: MVDreamModel, unet: torch.nn.Module, ema: Any, cfg: TrainConfig, out: Path, step: int,
                 writer: Any, accel: Any) -> None:
    """4-view samples of the configured prompts with the EMA weights -> PNG + TensorBoard image."""
    if not accel.is_main_process:
        return
    from ..pipeline import MultiViewPipeline

    if ema is not None:
        ema.store(unet.parameters())
        ema.copy_to(unet.parameters())
    was_training = unet.training
    unet.eval()
    try:
        pipe = MultiViewPipeline(model)
        size = cfg.data.image_size
        res = pipe(cfg.output.sample_prompts, num_views=cfg.data.num_views, num_inference_steps=cfg.output.sample_steps,
                   guidance_scale=cfg.output.sample_guidance, seed=0, height=size, width=size, prompt_suffix="")
        grid = res.grid(rows=len(cfg.output.sample_prompts))
        (out / "samples").mkdir(exist_ok=True)
        grid.save(out / "samples" / f"step_{step:07d}.png")
        if writer is not None:
            import numpy as np

            writer.add_image("samples", np.asarray(grid), step, dataformats="HWC")
    finally:
        unet.train(was_training)
        if ema is not None:
            ema.restore(unet.parameters())


def _finish(model: MVDreamModel, unet: torch.nn.Module, ema: Any, out: Path, accel: Any) -> None:
    """Write the final model (EMA weights; rank 0)."""
    if not accel.is_main_process:
        return
    if ema is not None:
        ema.store(unet.parameters())
        ema.copy_to(unet.parameters())
    model.unet = unet
    write_checkpoint(out / "model.safetensors", model.ldm_state_dict(), model.config)
    if ema is not None:
        ema.restore(unet.parameters())
    accel.print(f"final model: {out / 'model.safetensors'}")


def export_checkpoint(checkpoint: str | os.PathLike, output: str | os.PathLike, use_ema: bool = True) -> Path:
    """Write a training checkpoint (``RUN/checkpoints/step_XXXXXXX``) as a model file loadable everywhere.

    The model config is rebuilt from ``RUN/train_config.yaml`` exactly as training built it; the UNet gets
    the EMA weights (``use_ema``, when the run kept an EMA) or the raw ones. Text encoder / VAE weights
    come from the model's initialisation (they are frozen in training).
    """
    ckpt = Path(checkpoint)
    if not (ckpt / "state.json").is_file():
        raise FileNotFoundError(f"{ckpt} is not a complete training checkpoint (no state.json)")
    run_cfg = ckpt.parent.parent / "train_config.yaml"
    if not run_cfg.is_file():
        raise FileNotFoundError(f"{run_cfg} not found: export needs the run folder layout RUN/checkpoints/step_X")
    cfg = config_from_dict(yaml.safe_load(run_cfg.read_text()))
    model = init_model(cfg)
    unet_state, opt, state = Checkpointer.load(ckpt)
    model.unet.load_state_dict(unet_state)
    ema = opt.get("ema")
    if use_ema and ema is not None:
        shadow = ema["shadow_params"]
        params = list(model.unet.parameters())
        if len(shadow) != len(params):
            raise ValueError(f"EMA state of {ckpt} has {len(shadow)} tensors, the UNet {len(params)} parameters")
        with torch.no_grad():
            for p, s in zip(params, shadow, strict=True):
                p.copy_(s)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.config["training"] = provenance(cfg, int(state["step"]), use_ema=use_ema and ema is not None)
    write_checkpoint(out, model.ldm_state_dict(), model.config)
    return out


def provenance(cfg: TrainConfig, step: int, use_ema: bool = True) -> dict[str, Any]:
    """What a model file records about how it was made: the recipe, the step, EMA or raw weights, the
    git commit of the code (when run from a checkout) and the autoencoder's recipe."""
    import subprocess

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    info: dict[str, Any] = {"recipe": cfg.to_dict(), "step": int(step), "ema": bool(use_ema), "commit": commit}
    if cfg.model.vae is not None:
        vae_config, _ = read_autoencoder(cfg.model.vae)
        info["vae"] = {k: vae_config.get(k) for k in ("recipe", "metrics", "scale_factor")}
    return info


def _yaml(d: dict) -> str:
    import yaml

    return yaml.safe_dump(d, sort_keys=False)
