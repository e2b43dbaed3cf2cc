"""Training configuration: YAML -> validated dataclasses.

An unknown key or a bad value is an error that names it (``train.lr: must be > 0, got -1``).
Example (all sections optional except ``model`` and at least one data source)::

    model:
      config: tiny-random          # model name, YAML path or inline dict (published layout)
      init: scratch                # scratch | path to an MVDream checkpoint | path to a 2D SD checkpoint
    data:
      multiview: data/world/multiview
      image_text: data/world/image_text
      num_views: 4
      image_size: 32
      p_2d: 0.3
    train:
      steps: 1000
      lr: 1.0e-4
    output:
      dir: runs/tiny
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config_core import ConfigError, apply_overrides, check, parse_section, read_yaml


@dataclass
class ModelSection:
    config: Any = "tiny-random"
    init: str = "scratch"
    prediction_type: str | None = None  # override the config's parameterization ("eps" or "v")
    vae: str | None = None  # a `mvdream3d train-vae` file: its autoencoder and scale_factor replace the config's


@dataclass
class DataSection:
    multiview: str | list[str] | None = None
    image_text: str | list[str] | None = None
    num_views: int = 4
    image_size: int = 32
    background: Any = "white"
    p_2d: float = 0.3
    caption_dropout: float = 0.1
    batch_size: int = 4  # objects per multi-view batch
    batch_size_2d: int | None = None  # images per 2D batch; default batch_size * num_views
    num_workers: int = 0
    cache_latents: bool = False  # encode every view and 2D image once (OUT/latent_cache.safetensors), batch from memory


@dataclass
class TrainSection:
    steps: int = 1000
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # after the warm-up: constant | linear | cosine (decay to min_lr_ratio * lr)
    min_lr_ratio: float = 0.0
    decay_steps: int = 0  # > 0: the linear / cosine decay spans only the last decay_steps (constant before)
    grad_accum: int = 1
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    gradient_checkpointing: bool = False
    mixed_precision: str = "no"  # no | auto | bf16 | fp16 (GPU only)
    min_snr_gamma: float = 0.0  # > 0: Min-SNR-gamma loss weighting (Hang et al. 2023), e.g. 5; 0 = plain MSE
    # > 0: multi-view pixels on the front feature weigh 1 + this in the loss (needs the world's
    # feature_XXX.png masks); the feature is a few pixels, so without it the camera barely matters to the loss
    feature_loss_weight: float = 0.0
    # [start, end): the steps that use feature_loss_weight (a curriculum inside one recipe: weighted steps
    # teach where the feature goes, plain steps after them remove the weighting's colour bias); None: all
    feature_loss_steps: list | None = None
    # true: each image's pixel weights are divided by their mean, so weighting moves the multi-view loss onto
    # the feature without making it larger than the 2D loss (a larger one starves the 2D-only concepts)
    feature_loss_normalize: bool = False
    seed: int = 0


@dataclass
class OutputSection:
    dir: str = "runs/default"
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 10
    sample_every: int = 500
    sample_prompts: list[str] = field(default_factory=lambda: ["a red cube", "a blue sphere"])
    sample_steps: int = 20
    sample_guidance: float = 5.0


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    output: OutputSection = field(default_factory=OutputSection)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["train"]["betas"] = list(d["train"]["betas"])
        return d


def validate(cfg: TrainConfig) -> TrainConfig:
    d, t, o, m = cfg.data, cfg.train, cfg.output, cfg.model
    check(d.multiview is not None or d.image_text is not None, "data",
           "needs at least one of multiview / image_text", None)
    check(d.num_views >= 1, "data.num_views", "must be >= 1", d.num_views)
    check(d.image_size >= 8, "data.image_size", "must be >= 8", d.image_size)
    check(0.0 <= d.p_2d <= 1.0, "data.p_2d", "must be in [0, 1]", d.p_2d)
    check(0.0 <= d.caption_dropout <= 1.0, "data.caption_dropout", "must be in [0, 1]", d.caption_dropout)
    check(d.batch_size >= 1, "data.batch_size", "must be >= 1", d.batch_size)
    check(d.batch_size_2d is None or d.batch_size_2d >= 1, "data.batch_size_2d", "must be >= 1", d.batch_size_2d)
    check(d.num_workers >= 0, "data.num_workers", "must be >= 0", d.num_workers)
    check(t.steps >= 1, "train.steps", "must be >= 1", t.steps)
    check(t.lr > 0, "train.lr", "must be > 0", t.lr)
    check(t.weight_decay >= 0, "train.weight_decay", "must be >= 0", t.weight_decay)
    check(isinstance(t.betas, list | tuple) and len(t.betas) == 2 and all(0 <= b < 1 for b in t.betas),
           "train.betas", "must be two numbers in [0, 1)", t.betas)
    t.betas = (float(t.betas[0]), float(t.betas[1]))
    check(t.warmup_steps >= 0, "train.warmup_steps", "must be >= 0", t.warmup_steps)
    check(t.lr_schedule in ("constant", "linear", "cosine"), "train.lr_schedule", "must be constant, linear or cosine",
           t.lr_schedule)
    check(0.0 <= t.min_lr_ratio <= 1.0, "train.min_lr_ratio", "must be in [0, 1]", t.min_lr_ratio)
    check(t.decay_steps >= 0, "train.decay_steps", "must be >= 0", t.decay_steps)
    check(t.grad_accum >= 1, "train.grad_accum", "must be >= 1", t.grad_accum)
    check(t.grad_clip >= 0, "train.grad_clip", "must be >= 0 (0 disables clipping)", t.grad_clip)
    check(0.0 <= t.ema_decay < 1.0, "train.ema_decay", "must be in [0, 1) (0 disables EMA)", t.ema_decay)
    check(t.min_snr_gamma >= 0, "train.min_snr_gamma", "must be >= 0 (0 disables it)", t.min_snr_gamma)
    check(t.feature_loss_weight >= 0, "train.feature_loss_weight", "must be >= 0 (0 disables it)",
           t.feature_loss_weight)
    if t.feature_loss_steps is not None:
        w = t.feature_loss_steps
        check(isinstance(w, list | tuple) and len(w) == 2 and all(isinstance(x, int) for x in w) and 0 <= w[0] < w[1],
               "train.feature_loss_steps", "must be [start, end] steps with 0 <= start < end, or null for all steps", w)
    if t.mixed_precision is False:  # YAML reads a bare `no` as False
        t.mixed_precision = "no"
    check(t.mixed_precision in ("no", "auto", "bf16", "fp16"), "train.mixed_precision",
           "must be no, auto (bf16 where the device has native bf16 units, else fp32), bf16 or fp16",
           t.mixed_precision)
    check(o.checkpoint_every >= 1, "output.checkpoint_every", "must be >= 1", o.checkpoint_every)
    check(o.keep_checkpoints >= 1, "output.keep_checkpoints", "must be >= 1", o.keep_checkpoints)
    check(o.log_every >= 1, "output.log_every", "must be >= 1", o.log_every)
    check(o.sample_every >= 0, "output.sample_every", "must be >= 0 (0 disables samples)", o.sample_every)
    check(m.prediction_type in (None, "eps", "v"), "model.prediction_type", "must be eps or v", m.prediction_type)
    return cfg


def config_from_dict(raw: dict[str, Any]) -> TrainConfig:
    """Validate a config mapping. Relative paths in it are relative to the working directory."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a training config must be a mapping, got {type(raw).__name__}")
    sections = {"model": ModelSection, "data": DataSection, "train": TrainSection, "output": OutputSection}
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {unknown}; known: {sorted(sections)}")
    cfg = TrainConfig(**{k: parse_section(cls, raw.get(k), k) for k, cls in sections.items()})
    return validate(cfg)


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> TrainConfig:
    """Read and validate a YAML training config; ``overrides`` are ``section.key=value`` strings."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training config not found: {path}")
    raw = read_yaml(path)
    apply_overrides(raw, overrides)
    return config_from_dict(raw)
