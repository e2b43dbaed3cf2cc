"""Text-to-3D configuration: YAML -> validated dataclasses, one section per replaceable part.

Configs are looked up by name in ``mvdream3d/configs/text_to_3d/`` (``builtin``: the CPU recipe for the
built-in pixel model; ``mvdream-sd21``: the published MVDream-threestudio recipe; ``mvdream-sd21-lowmem``:
the same for ~8 GB GPUs) or read from a YAML path. An unknown key or a bad value is an error naming it.
``overrides`` are ``section.key=value`` strings (``optim.steps=200``), as for ``mvdream3d train``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..training.config import ConfigError, _check, _section, apply_overrides

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "text_to_3d"

__all__ = ["CONFIG_DIR", "TextTo3DConfig", "available_configs", "default_config_for", "default_config_name",
           "load_text_to_3d_config"]


@dataclass
class GeometrySection:
    radius: float = 1.0
    n_levels: int = 16
    n_features_per_level: int = 2
    log2_hashmap_size: int = 19
    base_resolution: int = 16
    max_resolution: int = 4096
    mlp_hidden: int = 64
    mlp_layers: int = 1
    density_blob_scale: float = 10.0
    density_blob_std: float = 0.5
    normal_type: str = "analytic"  # analytic | finite_difference


@dataclass
class RendererSection:
    num_samples_per_ray: int = 64


@dataclass
class MaterialSection:
    ambient_light_color: float = 0.1
    diffuse_light_color: float = 0.9
    ambient_only_steps: int = 5000  # renders are albedo only before this step
    textureless_prob: float = 0.05  # then white-albedo (shape only) renders with this probability


@dataclass
class BackgroundSection:
    name: str = "learned"  # solid | random | learned
    color: list = field(default_factory=lambda: [1.0, 1.0, 1.0])  # for "solid"
    random_aug: bool = True  # learned: random solid colour instead, with random_aug_prob
    random_aug_prob: float = 0.5


@dataclass
class CamerasSection:
    n_view: int = 4
    batch_size: int = 8
    elevation_range: list = field(default_factory=lambda: [0.0, 30.0])
    azimuth_range: list = field(default_factory=lambda: [-180.0, 180.0])
    fovy_range: list = field(default_factory=lambda: [15.0, 60.0])
    camera_distance_range: list = field(default_factory=lambda: [0.8, 1.0])
    relative_radius: bool = True  # distance *= 1 / tan(fovy / 2)
    light_distance_range: list = field(default_factory=lambda: [0.8, 1.5])
    # [from_step, render resolution, batch size]: 8 renders at 64 px, then 4 at 256 px from step 5000
    resolution_milestones: list = field(default_factory=lambda: [[0, 64, 8], [5000, 256, 4]])


@dataclass
class GuidanceSection:
    name: str = "multiview"  # multiview | 2d (DreamFusion-style baseline with view-dependent prompts)
    guidance_scale: float = 50.0
    negative_prompt: str = ""
    loss_type: str = "x0_recon"  # x0_recon | sds
    recon_std_rescale: float = 0.5
    t_start: list = field(default_factory=lambda: [0.98, 0.98])  # (t_min, t_max) fractions at step 0
    t_end: list = field(default_factory=lambda: [0.02, 0.50])  # ... reached at anneal_steps
    anneal_steps: int = 8000
    render_size: int | None = None  # renders are resized to this before encoding (None: the model's native size)


@dataclass
class LossSection:
    lambda_sds: float = 1.0
    lambda_orient: float = 0.0
    lambda_sparsity: float = 0.0
    lambda_opaque: float = 0.0
    lambda_z_variance: float = 0.0


@dataclass
class OptimSection:
    steps: int = 10000
    lr_encoding: float = 0.01
    lr_mlp: float = 0.001
    lr_background: float = 0.001
    betas: list = field(default_factory=lambda: [0.9, 0.99])
    eps: float = 1.0e-15
    seed: int = 0


@dataclass
class ExportSection:
    mesh_resolution: int = 128
    threshold: float | None = None  # None: chosen from the rendered opacity
    video_frames: int = 60
    video_size: int = 128
    video_fps: int = 20
    view_size: int = 128  # the 4 fixed views
    elevation: float = 15.0
    fovy: float = 40.0


@dataclass
class OutputSection:
    checkpoint_every: int = 200
    progress_every: int = 100  # a fresh 4-view render written to progress.png
    log_every: int = 10
    preview: bool = True  # sample the multi-view model first (preview.png) so the target is visible
    preview_steps: int = 20
    device: str = "auto"  # auto | cpu | cuda[:N]
    dtype: str = "auto"  # diffusion model dtype: auto (fp16 on GPU, fp32 on CPU) | fp32 | fp16 | bf16
    low_memory: bool = False  # text encoder and VAE decoder stay on the CPU; UNet in fp16 on GPU


@dataclass
class TextTo3DConfig:
    model: str | None = None  # None: the built-in default model
    geometry: GeometrySection = field(default_factory=GeometrySection)
    renderer: RendererSection = field(default_factory=RendererSection)
    material: MaterialSection = field(default_factory=MaterialSection)
    background: BackgroundSection = field(default_factory=BackgroundSection)
    cameras: CamerasSection = field(default_factory=CamerasSection)
    guidance: GuidanceSection = field(default_factory=GuidanceSection)
    loss: LossSection = field(default_factory=LossSection)
    optim: OptimSection = field(default_factory=OptimSection)
    export: ExportSection = field(default_factory=ExportSection)
    output: OutputSection = field(default_factory=OutputSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS = {f.name: f.type for f in dataclasses.fields(TextTo3DConfig) if f.name != "model"}
_CLASSES = {"geometry": GeometrySection, "renderer": RendererSection, "material": MaterialSection,
            "background": BackgroundSection, "cameras": CamerasSection, "guidance": GuidanceSection,
            "loss": LossSection, "optim": OptimSection, "export": ExportSection, "output": OutputSection}


def _pair(v: Any, key: str, lo: float = -float("inf"), hi: float = float("inf")) -> list[float]:
    _check(isinstance(v, list | tuple) and len(v) == 2 and all(isinstance(x, int | float) for x in v),
           key, "must be two numbers", v)
    _check(lo <= v[0] <= v[1] <= hi, key, f"must satisfy {lo} <= first <= second <= {hi}", v)
    return [float(v[0]), float(v[1])]


def validate(cfg: TextTo3DConfig) -> TextTo3DConfig:
    g, c, gd, o, e, out = cfg.geometry, cfg.cameras, cfg.guidance, cfg.optim, cfg.export, cfg.output
    _check(g.radius > 0, "geometry.radius", "must be > 0", g.radius)
    _check(g.n_levels >= 1, "geometry.n_levels", "must be >= 1", g.n_levels)
    _check(8 <= g.log2_hashmap_size <= 24, "geometry.log2_hashmap_size", "must be in [8, 24]", g.log2_hashmap_size)
    _check(g.normal_type in ("analytic", "finite_difference"), "geometry.normal_type",
           "must be analytic or finite_difference", g.normal_type)
    _check(cfg.renderer.num_samples_per_ray >= 4, "renderer.num_samples_per_ray", "must be >= 4",
           cfg.renderer.num_samples_per_ray)
    _check(0 <= cfg.material.textureless_prob <= 1, "material.textureless_prob", "must be in [0, 1]",
           cfg.material.textureless_prob)
    _check(cfg.background.name in ("solid", "random", "learned"), "background.name",
           "must be solid, random or learned", cfg.background.name)
    _check(c.n_view >= 1, "cameras.n_view", "must be >= 1", c.n_view)
    for key in ("elevation_range", "azimuth_range", "fovy_range", "camera_distance_range", "light_distance_range"):
        setattr(c, key, _pair(getattr(c, key), f"cameras.{key}"))
    _check(0 < c.fovy_range[0] and c.fovy_range[1] < 180, "cameras.fovy_range", "must lie in (0, 180)", c.fovy_range)
    ms = c.resolution_milestones
    _check(isinstance(ms, list) and ms and all(isinstance(m, list | tuple) and len(m) == 3 for m in ms),
           "cameras.resolution_milestones", "must be a list of [from_step, resolution, batch_size]", ms)
    for m in ms:
        _check(m[1] >= 8 and m[2] >= 1 and m[2] % c.n_view == 0, "cameras.resolution_milestones",
               f"need resolution >= 8 and a batch size that is a multiple of n_view={c.n_view}", m)
    _check(gd.name in ("multiview", "2d"), "guidance.name", "must be multiview or 2d", gd.name)
    _check(gd.loss_type in ("x0_recon", "sds"), "guidance.loss_type", "must be x0_recon or sds", gd.loss_type)
    _check(gd.guidance_scale >= 0, "guidance.guidance_scale", "must be >= 0", gd.guidance_scale)
    _check(0 <= gd.recon_std_rescale <= 1, "guidance.recon_std_rescale", "must be in [0, 1]", gd.recon_std_rescale)
    gd.t_start, gd.t_end = _pair(gd.t_start, "guidance.t_start", 0, 1), _pair(gd.t_end, "guidance.t_end", 0, 1)
    _check(gd.anneal_steps >= 1, "guidance.anneal_steps", "must be >= 1", gd.anneal_steps)
    _check(o.steps >= 1, "optim.steps", "must be >= 1 (the number of optimisation steps)", o.steps)
    for key in ("lr_encoding", "lr_mlp", "lr_background"):
        _check(getattr(o, key) > 0, f"optim.{key}", "must be > 0", getattr(o, key))
    o.betas = _pair(o.betas, "optim.betas", 0, 0.999999)
    _check(e.threshold is None or (isinstance(e.threshold, int | float) and e.threshold > 0), "export.threshold",
           "must be a density > 0 or null (chosen from the rendered opacity)", e.threshold)
    _check(e.mesh_resolution >= 16, "export.mesh_resolution", "must be >= 16", e.mesh_resolution)
    _check(e.video_frames >= 1, "export.video_frames", "must be >= 1", e.video_frames)
    _check(out.checkpoint_every >= 1, "output.checkpoint_every", "must be >= 1", out.checkpoint_every)
    _check(out.progress_every >= 0, "output.progress_every", "must be >= 0 (0 disables)", out.progress_every)
    _check(out.log_every >= 1, "output.log_every", "must be >= 1", out.log_every)
    _check(out.dtype in ("auto", "fp32", "fp16", "bf16"), "output.dtype", "must be auto, fp32, fp16 or bf16",
           out.dtype)
    return cfg


def config_from_dict(raw: dict[str, Any]) -> TextTo3DConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"a text-to-3D config must be a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(_CLASSES) - {"model"})
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {unknown}; known: {sorted([*_CLASSES, 'model'])}")
    model = raw.get("model")
    _check(model is None or isinstance(model, str), "model", "must be a model name or path", model)
    cfg = TextTo3DConfig(model=model, **{k: _section(cls, raw.get(k), k) for k, cls in _CLASSES.items()})
    return validate(cfg)


def available_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def default_config_name(pixel_model: bool) -> str:
    """``builtin`` for pixel-space (CPU) models, the published recipe for latent models."""
    return "builtin" if pixel_model else "mvdream-sd21"


def default_config_for(model: Any) -> str:
    """The recipe for ``model``: ``builtin`` (the CPU recipe) for the built-in model and other small models
    (native size <= 64 px, latent or pixel), the published recipe for the 256 px published models."""
    return "builtin" if model.native_size <= 64 else "mvdream-sd21"


def load_text_to_3d_config(config: str | os.PathLike | dict | None, overrides: list[str] | None = None,
                           default: str = "builtin") -> TextTo3DConfig:
    """A config by name (see :func:`available_configs`), YAML path or mapping, with ``section.key=value`` overrides."""
    if isinstance(config, dict):
        raw = dict(config)
    else:
        name = str(config) if config is not None else default
        path = Path(name)
        if not path.is_file():
            path = CONFIG_DIR / f"{name}.yaml"
        if not path.is_file():
            raise FileNotFoundError(f"text-to-3D config {name!r} not found: give a YAML path or one of "
                                    f"{available_configs()}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from e
    apply_overrides(raw, overrides, top_level=("model",))
    return config_from_dict(raw)
