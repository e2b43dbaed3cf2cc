"""Text-to-3D: a NeRF optimised by multi-view score distillation (MVDream's second stage).

The parts follow the split of threestudio, each replaceable on its own:

geometry (``geometry.py``, ``hashgrid.py``)
    ``ImplicitVolume``: density + albedo field in [-radius, radius]^3 (hash-grid encoding + small MLP,
    blob-initialised density, finite-difference or analytic normals).
material (``material.py``)
    ``DiffuseMaterial``: albedo shaded by ambient + Lambertian point light ("diffuse", "textureless",
    "albedo").
background (``background.py``)
    ``SolidBackground``, ``RandomColorBackground``, ``LearnedEnvironmentBackground``; ``build_background``.
renderer (``renderer.py``)
    ``VolumeRenderer``: box-clipped stratified volume rendering with training terms (opacity, depth,
    z-variance, orientation); ``render_views`` for fixed cameras.
camera sampler (``camera_sampler.py``)
    random multi-view camera batches (the MVDream recipe's elevation / fov / distance ranges).
guidance (``guidance.py``)
    ``MultiViewGuidance``: MVDream's multi-view score distillation (x0-reconstruction loss with std
    rescale, or classic SDS); ``Guidance2D``: the DreamFusion-style single-view baseline.
system (``system.py``, ``config.py``)
    ``text_to_3d``: the optimisation loop, preview, checkpoints / resume, exports; configs by name.
export (``export.py``)
    marching-cubes mesh with vertex colours (.glb / .obj) and turntable video (.mp4 / .gif).

Camera and world conventions are those of ``mvdream3d.cameras`` (+y up, object at the origin, OpenGL
camera axes).
"""

from .background import (
    BACKGROUNDS,
    LearnedEnvironmentBackground,
    RandomColorBackground,
    SolidBackground,
    build_background,
)
from .camera_sampler import CameraBatch, RandomMultiViewCameraSampler, fixed_views, view_direction_text
from .config import TextTo3DConfig, available_configs, load_text_to_3d_config
from .export import (
    EmptyFieldError,
    choose_threshold,
    density_grid,
    extract_mesh,
    mesh_field_iou,
    render_turntable,
    save_mesh,
    save_video,
)
from .geometry import NORMAL_TYPES, ImplicitVolume
from .guidance import Guidance2D, MultiViewGuidance, build_guidance, timestep_range
from .hashgrid import HashGridEncoding
from .material import SHADING_MODES, DiffuseMaterial
from .renderer import VolumeRenderer, eval_mode, render_views
from .system import TextTo3D, TextTo3DResult, text_to_3d

__all__ = [
    "CameraBatch",
    "Guidance2D",
    "MultiViewGuidance",
    "RandomMultiViewCameraSampler",
    "TextTo3D",
    "TextTo3DConfig",
    "TextTo3DResult",
    "available_configs",
    "build_guidance",
    "fixed_views",
    "load_text_to_3d_config",
    "text_to_3d",
    "timestep_range",
    "view_direction_text",
    "BACKGROUNDS",
    "NORMAL_TYPES",
    "SHADING_MODES",
    "DiffuseMaterial",
    "EmptyFieldError",
    "HashGridEncoding",
    "ImplicitVolume",
    "LearnedEnvironmentBackground",
    "RandomColorBackground",
    "SolidBackground",
    "VolumeRenderer",
    "build_background",
    "choose_threshold",
    "density_grid",
    "eval_mode",
    "extract_mesh",
    "mesh_field_iou",
    "render_turntable",
    "render_views",
    "save_mesh",
    "save_video",
]
