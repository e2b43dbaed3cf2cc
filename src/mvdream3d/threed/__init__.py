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

# Imported on first use: `mvdream3d --help` and the other commands must not pay for torch-heavy
# imports of the text-to-3D parts (the CLI registers `text-to-3d` through threed/cli.py).
_LAZY = {
    "BACKGROUNDS": "background",
    "CameraBatch": "camera_sampler",
    "DiffuseMaterial": "material",
    "EmptyFieldError": "export",
    "Guidance2D": "guidance",
    "HashGridEncoding": "hashgrid",
    "ImplicitVolume": "geometry",
    "LearnedEnvironmentBackground": "background",
    "MultiViewGuidance": "guidance",
    "NORMAL_TYPES": "geometry",
    "RandomColorBackground": "background",
    "RandomMultiViewCameraSampler": "camera_sampler",
    "SHADING_MODES": "material",
    "SolidBackground": "background",
    "TextTo3D": "system",
    "TextTo3DConfig": "config",
    "TextTo3DResult": "system",
    "VolumeRenderer": "renderer",
    "available_configs": "config",
    "build_background": "background",
    "build_guidance": "guidance",
    "choose_threshold": "export",
    "density_grid": "export",
    "eval_mode": "renderer",
    "extract_mesh": "export",
    "fixed_views": "camera_sampler",
    "load_text_to_3d_config": "config",
    "mesh_field_iou": "export",
    "render_turntable": "export",
    "render_views": "renderer",
    "save_mesh": "export",
    "save_video": "export",
    "text_to_3d": "system",
    "timestep_range": "guidance",
    "view_direction_text": "camera_sampler",
}


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


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
