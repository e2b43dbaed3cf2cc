"""Outputs of a text-to-3D field: a coloured mesh (marching cubes) and a turntable video.

Mesh threshold. The density at which the field "is" a surface is not known in advance (it depends on
the field's scale, which SDS does not fix). ``extract_mesh(threshold=None)`` picks it from what the field
looks like: it renders the opacity from 4 orbit views and keeps the density threshold whose occupancy
silhouette (a pixel is occupied when the density grid exceeds the threshold somewhere along its ray)
best matches ``opacity > 0.5`` (intersection over union). Among equally good thresholds (a plateau, for
a field with a sharp boundary) the geometric middle of the plateau is taken.

Files are written atomically (:func:`mvdream3d.files.atomic_write`: a temporary file beside the target, then a
rename).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from PIL import Image, ImageDraw
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.measure import marching_cubes
from torch import Tensor, nn

from ..cameras import camera_distance_for_fov, fov_to_focal, get_rays, orbit_azimuths, orbit_c2w
from ..files import atomic_write, atomic_write_bytes, atomic_write_text
from .background import SolidBackground
from .material import DiffuseMaterial
from .renderer import VolumeRenderer, eval_mode, render_views

__all__ = [
    "EmptyFieldError",
    "ExportProgress",
    "choose_threshold",
    "density_grid",
    "extract_mesh",
    "mesh_field_iou",
    "render_turntable",
    "save_mesh",
    "save_video",
]

_QUERY_CHUNK = 1 << 16
# progress of an export: (stage name, units done, units in the stage); a stage of one piece of work is
# reported as (name, 0, 1) when it starts and (name, 1, 1) when it ends
ExportProgress = Callable[[str, int, int], None]


def _report(progress: ExportProgress | None, stage: str, done: int, total: int) -> None:
    if progress is not None:
        progress(stage, done, total)


class EmptyFieldError(ValueError):
    """No density above the mesh threshold: nothing to export."""


def _empty_error(threshold: str) -> EmptyFieldError:
    return EmptyFieldError(f"the field is empty at threshold {threshold}; the optimisation likely diverged or ran "
                           f"too few steps")


def _device_of(module: nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def density_grid(geometry: nn.Module, resolution: int, progress: ExportProgress | None = None) -> np.ndarray:
    """Density on a ``resolution^3`` grid of points spanning the box [-radius, radius]^3, ends included.
    ``progress`` is told ("density grid", chunks done, chunks) as the points are queried.

    Returns:
        (R, R, R) float32 array, ``grid[i, j, k]`` = density at ``(x_i, y_j, z_k)`` with
        ``x_i = -radius + i * 2 radius / (R - 1)``.
    """
    if resolution < 2:
        raise ValueError(f"resolution must be >= 2, got {resolution}")
    axis = torch.linspace(-geometry.radius, geometry.radius, resolution, device=_device_of(geometry))
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    chunks = points.split(_QUERY_CHUNK)
    parts = []
    with eval_mode(geometry):
        for i, c in enumerate(chunks):
            _report(progress, "density grid", i, len(chunks))
            parts.append(geometry(c)["density"])
    _report(progress, "density grid", len(chunks), len(chunks))
    return torch.cat(parts).view(resolution, resolution, resolution).float().cpu().numpy()


def _query_albedo(geometry: nn.Module, points: np.ndarray) -> np.ndarray:
    pts = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32)).to(_device_of(geometry))
    with eval_mode(geometry):
        albedo = torch.cat([geometry(c)["albedo"] for c in pts.split(_QUERY_CHUNK)])
    return albedo.clamp(0, 1).float().cpu().numpy()


def _orbit_views(radius: float, fov_deg: float, n_views: int, elevation: float, device: torch.device) -> Tensor:
    """c2w (n_views, 4, 4) of evenly spaced orbit cameras framing the box like the training cameras."""
    azimuths = torch.from_numpy(orbit_azimuths(n_views)).float()
    return orbit_c2w(elevation, azimuths, camera_distance_for_fov(fov_deg, radius)).to(device)


def _field_silhouettes(geometry: nn.Module, renderer: VolumeRenderer | None, c2w: Tensor, fov_deg: float,
                       size: int) -> Tensor:
    """``opacity > 0.5`` of the field's renders: (N, size, size) bool."""
    if renderer is None:
        renderer = VolumeRenderer(radius=geometry.radius, num_samples_per_ray=128)
    out = render_views(geometry, DiffuseMaterial(), SolidBackground(), renderer, c2w, fov_deg, size,
                       shading="albedo", with_normals=False)
    return out["opacity"][..., 0].cpu() > 0.5


def _grid_ray_max(grid: np.ndarray, radius: float, c2w: Tensor, fov_deg: float, size: int) -> Tensor:
    """Largest trilinearly interpolated grid density along each pixel's ray: (N, size, size)."""
    resolution = grid.shape[0]
    volume = torch.from_numpy(grid)[None, None]  # (1, 1, X, Y, Z): grid_sample reads coords as (z, y, x)
    rays_o, rays_d = get_rays(c2w.cpu().double(), fov_deg, size, size)
    rays_o, rays_d = rays_o.reshape(-1, 3).float(), rays_d.reshape(-1, 3).float()
    near, far, hit = VolumeRenderer(radius=radius).intersect(rays_o, rays_d)
    n_steps = 2 * resolution  # about half a voxel apart along the longest chords
    ray_max = torch.zeros(rays_o.shape[0])
    frac = torch.linspace(0.0, 1.0, n_steps)
    for idx in hit.nonzero().squeeze(1).split(1024):
        t = near[idx, None] + (far - near)[idx, None] * frac  # (n, S)
        pts = rays_o[idx, None] + t[..., None] * rays_d[idx, None]  # (n, S, 3)
        coords = (pts / radius).clamp(-1, 1).flip(-1)  # (x, y, z) -> (z, y, x)
        vals = F.grid_sample(volume, coords[None, None], mode="bilinear", align_corners=True)  # (1, 1, 1, n, S)
        ray_max[idx] = vals[0, 0, 0].amax(dim=-1)
    return ray_max.view(c2w.shape[0], size, size)


def choose_threshold(
    geometry: nn.Module,
    grid: np.ndarray,
    renderer: VolumeRenderer | None = None,
    fov_deg: float = 40.0,
    size: int = 64,
    n_candidates: int = 64,
) -> tuple[float, float]:
    """Density threshold whose occupancy silhouettes best match the rendered ``opacity > 0.5``.

    Renders 4 views (elevation 15, azimuths 0/90/180/270, ``size`` pixels, distance
    ``camera_distance_for_fov(fov, radius)``, the framing of the training cameras) and compares, for
    ``n_candidates`` thresholds log-spaced over the grid's density range, the silhouette of
    ``grid > threshold`` with ``opacity > 0.5`` by IoU.

    Args:
        grid: ``density_grid(geometry, R)``.

    Returns:
        (threshold, IoU at that threshold).

    Raises:
        EmptyFieldError: no rendered pixel reaches opacity 0.5, or the grid has no positive density.
    """
    high = float(grid.max())
    if not high > 0:
        raise _empty_error("auto (the density grid is zero everywhere)")
    c2w = _orbit_views(geometry.radius, fov_deg, 4, 15.0, _device_of(geometry))
    target = _field_silhouettes(geometry, renderer, c2w, fov_deg, size)
    if not bool(target.any()):
        raise _empty_error("auto (no rendered pixel reaches opacity 0.5)")
    ray_max = _grid_ray_max(grid, geometry.radius, c2w, fov_deg, size)

    candidates = torch.logspace(math.log10(high * 1e-4), math.log10(high * 0.98), n_candidates)
    occupied = ray_max[None] > candidates[:, None, None, None]  # (C, N, H, W)
    inter = (occupied & target).flatten(1).sum(1).float()
    union = (occupied | target).flatten(1).sum(1).float()
    iou = inter / union.clamp(min=1)
    best = float(iou.max())
    plateau = (iou >= best - 0.005).nonzero().squeeze(1)
    pick = int(plateau[len(plateau) // 2])
    return float(candidates[pick]), float(iou[pick])


def _remove_small_components(mesh: trimesh.Trimesh, min_fraction: float) -> trimesh.Trimesh:
    """Drop connected components with fewer than ``min_fraction`` of the largest one's faces."""
    faces = mesh.faces
    n = len(mesh.vertices)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]]])
    adjacency = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, labels = connected_components(adjacency, directed=False)
    face_labels = labels[faces[:, 0]]
    counts = np.bincount(face_labels)
    keep = counts[face_labels] >= min_fraction * counts.max()
    if keep.all():
        return mesh
    mesh.update_faces(keep)
    mesh.remove_unreferenced_vertices()
    return mesh


def extract_mesh(
    geometry: nn.Module,
    resolution: int = 128,
    threshold: float | None = None,
    renderer: VolumeRenderer | None = None,
    background: nn.Module | None = None,
    fov_deg: float = 40.0,
    min_component_fraction: float = 0.05,
    simplify_faces: int | None = None,
    progress: ExportProgress | None = None,
) -> trimesh.Trimesh:
    """Marching-cubes mesh of ``density = threshold`` with vertex colours from the albedo.

    Args:
        geometry: a field with ``radius`` and ``forward(points, with_normal) -> {"density", "albedo"}``.
        resolution: grid points per axis over [-radius, radius] (voxel size ``2 radius / (R - 1)``).
        threshold: density of the surface; None chooses it with ``choose_threshold``.
        renderer: used for the opacity renders of the automatic threshold (its sample count); default
            a 128-sample ``VolumeRenderer`` over the geometry's box.
        background: unused (opacity does not depend on it); accepted so callers can pass their parts.
        fov_deg: field of view of the threshold's check views.
        min_component_fraction: connected components with fewer faces than this fraction of the
            largest one's are removed as floaters (0 keeps all).
        simplify_faces: target face count for quadric decimation (needs trimesh's optional
            ``fast_simplification``; skipped with a warning without it).
        progress: told each stage as it runs: "density grid" (per chunk of points), "choosing the threshold",
            "marching cubes", "vertex colours".

    Returns:
        A watertight (the grid is padded with empty space) trimesh in world coordinates, outward-facing,
        with uint8 RGBA vertex colours; ``metadata["threshold"]`` holds the threshold used and, when it
        was chosen automatically, ``metadata["threshold_iou"]`` its silhouette IoU.

    Raises:
        EmptyFieldError: nothing in the grid exceeds the threshold.
    """
    del background
    radius = float(geometry.radius)
    grid = density_grid(geometry, resolution, progress)
    metadata: dict[str, float] = {}
    if threshold is None:
        _report(progress, "choosing the threshold", 0, 1)
        threshold, metadata["threshold_iou"] = choose_threshold(geometry, grid, renderer, fov_deg)
        _report(progress, "choosing the threshold", 1, 1)
    threshold = float(threshold)
    if not threshold > 0:
        raise ValueError(f"threshold must be a positive density, got {threshold}")
    if not float(grid.max()) > threshold:
        raise _empty_error(f"{threshold:g}")

    _report(progress, "marching cubes", 0, 1)
    voxel = 2.0 * radius / (resolution - 1)
    padded = np.pad(grid, 1, constant_values=0.0)  # closes the surface where the object meets the box
    verts, faces, _, _ = marching_cubes(padded, level=threshold, spacing=(voxel, voxel, voxel), allow_degenerate=False)
    verts = verts - (radius + voxel)  # padded index 1 is x = -radius
    mesh = trimesh.Trimesh(vertices=verts, faces=faces, process=True)
    if mesh.volume < 0:
        mesh.invert()
    if min_component_fraction > 0:
        mesh = _remove_small_components(mesh, min_component_fraction)
    if simplify_faces is not None and len(mesh.faces) > simplify_faces:
        try:
            mesh = mesh.simplify_quadric_decimation(face_count=simplify_faces)
        except ImportError as e:
            warnings.warn(f"mesh simplification skipped ({e}); install fast_simplification to enable it",
                          stacklevel=2)
    _report(progress, "marching cubes", 1, 1)
    _report(progress, "vertex colours", 0, 1)
    albedo = _query_albedo(geometry, mesh.vertices)
    rgba = np.concatenate([np.round(albedo * 255), np.full((len(albedo), 1), 255)], axis=1).astype(np.uint8)
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=rgba)
    metadata["threshold"] = threshold
    mesh.metadata.update(metadata)
    _report(progress, "vertex colours", 1, 1)
    return mesh


def _rasterize_silhouettes(mesh: trimesh.Trimesh, c2w: Tensor, fov_deg: float, size: int,
                           supersample: int = 4) -> Tensor:
    """Mesh silhouettes as seen by pinhole cameras (``mvdream3d.cameras`` conventions): (N, size, size) bool.

    Triangles are filled at ``supersample`` times the resolution (PIL fills every pixel a triangle
    touches, which would dilate small silhouettes) and a pixel is covered when half its subpixels are.
    """
    big = size * supersample
    focal = fov_to_focal(float(fov_deg), big)
    masks = []
    for cam in c2w.detach().cpu().double().numpy():
        w2c = np.linalg.inv(cam)
        local = mesh.vertices @ w2c[:3, :3].T + w2c[:3, 3]  # OpenGL camera frame, looking along -z
        depth = np.maximum(-local[:, 2], 1e-9)
        cols = focal * local[:, 0] / depth + big / 2  # PIL: pixel (c, r) covers [c, c + 1) x [r, r + 1)
        rows = -focal * local[:, 1] / depth + big / 2
        image = Image.new("1", (big, big))
        draw = ImageDraw.Draw(image)
        for triangle in np.stack([cols, rows], axis=-1)[mesh.faces].tolist():  # (F, 3, 2)
            draw.polygon([tuple(p) for p in triangle], fill=1)
        cover = np.array(image, dtype=np.float32).reshape(size, supersample, size, supersample).mean(axis=(1, 3))
        masks.append(torch.from_numpy(cover >= 0.5))
    return torch.stack(masks)


def mesh_field_iou(
    mesh: trimesh.Trimesh,
    geometry: nn.Module,
    renderer: VolumeRenderer | None = None,
    fov_deg: float = 40.0,
    size: int = 64,
    n_views: int = 4,
    elevation: float = 15.0,
) -> float:
    """IoU between the mesh's silhouettes and the field's ``opacity > 0.5`` over ``n_views`` orbit views
    (a check that the exported mesh looks like the field)."""
    c2w = _orbit_views(geometry.radius, fov_deg, n_views, elevation, _device_of(geometry))
    field = _field_silhouettes(geometry, renderer, c2w, fov_deg, size)
    mesh_masks = _rasterize_silhouettes(mesh, c2w, fov_deg, size)
    union = int((field | mesh_masks).sum())
    return float((field & mesh_masks).sum()) / union if union else 1.0


def save_mesh(mesh: trimesh.Trimesh, out_dir: str | os.PathLike, stem: str = "mesh") -> dict[str, Path]:
    """Write ``<stem>.glb`` and ``<stem>.obj`` (both with vertex colours) into ``out_dir``.

    Returns:
        {"glb": path, "obj": path}.
    """
    out = Path(out_dir)
    paths = {"glb": out / f"{stem}.glb", "obj": out / f"{stem}.obj"}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(paths["glb"], mesh.export(file_type="glb"))
    atomic_write_text(paths["obj"], trimesh.exchange.obj.export_obj(mesh, include_color=True, include_texture=False))
    return paths


def render_turntable(
    geometry: nn.Module,
    material: nn.Module,
    background: nn.Module,
    renderer: VolumeRenderer,
    num_frames: int = 60,
    elevation: float = 15.0,
    fov_deg: float = 40.0,
    size: int = 128,
    distance: float | None = None,
    shading: str = "diffuse",
    views_per_batch: int = 4,
    progress: ExportProgress | None = None,
) -> np.ndarray:
    """360-degree orbit of the field (eval mode, light at the camera), starting at azimuth 0.

    Args:
        distance: camera distance; default ``camera_distance_for_fov(fov_deg, renderer.radius)``, the
            farthest camera of the training recipe.
        progress: told ("turntable frames", frames rendered, num_frames) after each batch.

    Returns:
        (num_frames, size, size, 3) uint8 frames.
    """
    if distance is None:
        distance = camera_distance_for_fov(fov_deg, renderer.radius)
    azimuths = torch.from_numpy(orbit_azimuths(num_frames)).float()
    c2w = orbit_c2w(elevation, azimuths, distance).to(_device_of(geometry))
    frames: list[np.ndarray] = []
    _report(progress, "turntable frames", 0, num_frames)
    for cams in c2w.split(views_per_batch):
        rgb = render_views(geometry, material, background, renderer, cams, fov_deg, size, shading=shading)["comp_rgb"]
        frames.append((rgb.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy())
        _report(progress, "turntable frames", sum(len(f) for f in frames), num_frames)
    return np.concatenate(frames)


def _even_size(frames: np.ndarray) -> np.ndarray:
    """Pad (T, H, W, 3) frames by edge replication to even H and W (H.264 in yuv420p needs them)."""
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return frames


def save_video(frames: np.ndarray, path_mp4: str | os.PathLike | None, path_gif: str | os.PathLike | None,
               fps: int = 20) -> dict[str, Path]:
    """Write (T, H, W, 3) uint8 frames as an H.264 mp4 and/or a looping gif (None skips one).

    Note: the gif writer (Pillow) merges identical consecutive frames, so a still scene gives fewer
    gif frames (with longer durations) than ``T``.

    Returns:
        {"mp4": path, "gif": path} for the files written.
    """
    import imageio.v2 as imageio_v2
    import imageio.v3 as iio

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be a (T, H, W, 3) uint8 array, got {frames.shape} {frames.dtype}")
    written: dict[str, Path] = {}
    if path_mp4 is not None:
        def write_mp4(tmp: str) -> None:
            with imageio_v2.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=8,
                                       pixelformat="yuv420p", macro_block_size=1) as writer:
                for frame in _even_size(frames):
                    writer.append_data(frame)

        written["mp4"] = Path(path_mp4)
        written["mp4"].parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(written["mp4"], suffix=".mp4") as tmp:  # ffmpeg picks the container by the ending
            write_mp4(str(tmp))
    if path_gif is not None:
        written["gif"] = Path(path_gif)
        written["gif"].parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(written["gif"], suffix=".gif") as tmp:
            iio.imwrite(tmp, frames, extension=".gif", duration=1000.0 / fps, loop=0)
    return written
