"""Cameras for text-to-3D: random multi-view training batches and fixed evaluation views.

Conventions are those of :mod:`mvdream3d.cameras`: OpenGL world with **+y up**, orbit cameras looking
at the origin, azimuth 0 on **+z** and azimuth 90 on **+x**, angles in degrees, OpenGL camera-to-world
matrices (camera looks along its local -z). ``CameraBatch.model_camera`` is exactly what the diffusion
model's camera embedding was trained on (:func:`mvdream3d.cameras.c2w_to_model_camera`).

The random sampler follows the published MVDream-threestudio recipe (``random-multiview-camera-datamodule``
with ``configs/mvdream-sd21.yaml``): a batch of ``batch_size`` renders is ``batch_size / n_view`` groups of
``n_view`` views of the same scene; within a group the elevation, field of view, distance and light
noise are shared and the azimuths are evenly spaced around the object.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ..cameras import c2w_to_model_camera, camera_distance_for_fov, orbit_c2w

__all__ = [
    "CameraBatch",
    "RandomMultiViewCameraSampler",
    "azimuth_elevation_from_c2w",
    "fixed_views",
    "view_direction_text",
]


@dataclass
class CameraBatch:
    """B cameras, object-major: B = groups x ``n_view``, the views of one group consecutive.

    Attributes:
        c2w: (B, 4, 4) float32 OpenGL camera-to-world matrices (world +y up).
        fovy_deg: (B,) vertical field of view, degrees.
        elevation_deg: (B,) degrees above the xz plane.
        azimuth_deg: (B,) degrees in [-180, 180); 0 is on +z, 90 on +x.
        distance: (B,) camera distance from the origin.
        light_positions: (B, 3) point-light positions in world coordinates.
        height, width: render size in pixels.
        n_view: views per group (the diffusion model's ``num_frames``).
    """

    c2w: Tensor
    fovy_deg: Tensor
    elevation_deg: Tensor
    azimuth_deg: Tensor
    distance: Tensor
    light_positions: Tensor
    height: int
    width: int
    n_view: int

    @property
    def batch_size(self) -> int:
        return int(self.c2w.shape[0])

    @property
    def camera_positions(self) -> Tensor:
        """(B, 3) camera centres in world coordinates."""
        return self.c2w[:, :3, 3]

    @property
    def model_camera(self) -> Tensor:
        """(B, 16) float32 camera vectors for the diffusion model (z-up world, unit distance, row-major)."""
        return c2w_to_model_camera(self.c2w).float()

    def to(self, device: torch.device | str) -> CameraBatch:
        """A copy with every tensor on ``device``."""
        tensors = ("c2w", "fovy_deg", "elevation_deg", "azimuth_deg", "distance", "light_positions")
        return replace(self, **{k: getattr(self, k).to(device) for k in tensors})


def _wrap_azimuth(az: Tensor) -> Tensor:
    """Degrees wrapped into [-180, 180)."""
    return torch.remainder(az + 180.0, 360.0) - 180.0


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator | None) -> Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64) * (hi - lo) + lo


class RandomMultiViewCameraSampler:
    """Random groups of ``n_view`` orbit cameras (the published MVDream text-to-3D camera recipe).

    Per group: one elevation (with probability 1/2 uniform in degrees over ``elevation_range``, else
    uniform on the sphere's area over the same range; one coin flip per batch, as published), one fovy
    ~ U(``fovy_range``), one distance ~ U(``camera_distance_range``) (multiplied by ``1 / tan(fovy / 2)``
    when ``relative_radius``, so the object's apparent size does not depend on the fov), and azimuths
    ``a0 + k * span / n_view`` for k = 0..n_view-1 with ``span`` the width of ``azimuth_range`` (360 by
    default) and ``a0`` uniform over the first ``span / n_view`` of the range, wrapped into [-180, 180).
    Light (DreamFusion-style): direction ``normalize(camera_position + N(0, light_position_perturb^2))``
    with the noise shared by a group, times a per-group distance ~ U(``light_distance_range``).

    ``resolution_milestones``: ``(from_step, resolution, batch_size)`` triples; the last one whose
    ``from_step <= step`` is active (published: 8 renders at 64 px, then 4 at 256 px from step 5000).
    ``None`` (or empty) means a constant ``(64, batch_size)``; otherwise ``batch_size`` is unused beyond
    its validation. ``resolution`` overrides the render size of every
    milestone (pixel models work at their native 32-64 px). ``seed`` seeds a private generator used
    when :meth:`sample` gets none; with neither, torch's global RNG is used.
    """

    def __init__(
        self,
        n_view: int = 4,
        batch_size: int = 8,
        elevation_range: tuple[float, float] = (0.0, 30.0),
        azimuth_range: tuple[float, float] = (-180.0, 180.0),
        fovy_range: tuple[float, float] = (15.0, 60.0),
        camera_distance_range: tuple[float, float] = (0.8, 1.0),
        relative_radius: bool = True,
        light_distance_range: tuple[float, float] = (0.8, 1.5),
        light_position_perturb: float = 1.0,
        resolution_milestones: Sequence[tuple[int, int, int]] | None = ((0, 64, 8), (5000, 256, 4)),
        resolution: int | None = None,
        seed: int | None = None,
    ) -> None:
        if n_view < 1:
            raise ValueError(f"n_view must be >= 1, got {n_view}")
        self.n_view = int(n_view)
        self._check_batch(batch_size)
        self.batch_size = int(batch_size)
        for name, r in (("elevation_range", elevation_range), ("azimuth_range", azimuth_range),
                        ("fovy_range", fovy_range), ("camera_distance_range", camera_distance_range),
                        ("light_distance_range", light_distance_range)):
            if len(r) != 2 or not float(r[0]) <= float(r[1]):
                raise ValueError(f"{name} must be (low, high) with low <= high, got {r}")
        if not (-90.0 <= elevation_range[0] and elevation_range[1] <= 90.0):
            raise ValueError(f"elevation_range must lie in [-90, 90], got {elevation_range}")
        if not (0.0 < fovy_range[0] and fovy_range[1] < 180.0):
            raise ValueError(f"fovy_range must lie in (0, 180), got {fovy_range}")
        if camera_distance_range[0] <= 0:
            raise ValueError(f"camera_distance_range must be positive, got {camera_distance_range}")
        self.elevation_range = (float(elevation_range[0]), float(elevation_range[1]))
        self.azimuth_range = (float(azimuth_range[0]), float(azimuth_range[1]))
        self.fovy_range = (float(fovy_range[0]), float(fovy_range[1]))
        self.camera_distance_range = (float(camera_distance_range[0]), float(camera_distance_range[1]))
        self.relative_radius = bool(relative_radius)
        self.light_distance_range = (float(light_distance_range[0]), float(light_distance_range[1]))
        self.light_position_perturb = float(light_position_perturb)
        ms = [(0, 64, self.batch_size)] if not resolution_milestones else resolution_milestones
        self.resolution_milestones = sorted((int(s), int(r), int(b)) for s, r, b in ms)
        for _, res, bs in self.resolution_milestones:
            self._check_batch(bs)
            if res < 1:
                raise ValueError(f"resolution must be >= 1, got {res}")
        if resolution is not None and resolution < 1:
            raise ValueError(f"resolution must be >= 1, got {resolution}")
        self.resolution = resolution
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def _check_batch(self, batch_size: int) -> None:
        if batch_size < 1 or batch_size % self.n_view:
            raise ValueError(f"batch size {batch_size} is not a positive multiple of n_view={self.n_view}: a batch "
                             f"holds whole groups of n_view views")

    def resolution_at(self, step: int) -> tuple[int, int]:
        """``(resolution, batch_size)`` of the milestone active at ``step`` (the first one before it starts)."""
        active = self.resolution_milestones[0]
        for m in self.resolution_milestones:
            if m[0] <= step:
                active = m
        res = self.resolution if self.resolution is not None else active[1]
        return res, active[2]

    def sample(self, step: int, generator: torch.Generator | None = None) -> CameraBatch:
        """A random batch for optimisation step ``step`` (CPU tensors; random numbers from ``generator``)."""
        g = generator if generator is not None else self.generator
        res, batch = self.resolution_at(step)
        n, v = batch // self.n_view, self.n_view

        el_lo, el_hi = self.elevation_range
        if torch.rand((), generator=g).item() < 0.5:  # uniform in degrees
            elevation = _uniform(n, el_lo, el_hi, g)
        else:  # uniform over the sphere's area between the two elevations
            s = _uniform(n, (el_lo + 90.0) / 180.0, (el_hi + 90.0) / 180.0, g)
            elevation = torch.rad2deg(torch.asin((2.0 * s - 1.0).clamp(-1.0, 1.0)))
        az_lo, az_hi = self.azimuth_range
        span = az_hi - az_lo
        start = torch.rand(n, 1, generator=g, dtype=torch.float64)
        azimuth = (start + torch.arange(v, dtype=torch.float64)) / v * span + az_lo  # (n, v)
        fovy = _uniform(n, *self.fovy_range, g)
        distance = _uniform(n, *self.camera_distance_range, g)
        if self.relative_radius:
            distance = camera_distance_for_fov(fovy, distance)
        light_distance = _uniform(n, *self.light_distance_range, g)
        light_noise = torch.randn(n, 3, generator=g, dtype=torch.float64) * self.light_position_perturb

        def per_view(x: Tensor) -> Tensor:
            return x.repeat_interleave(v, dim=0)

        elevation, fovy, distance = per_view(elevation), per_view(fovy), per_view(distance)
        azimuth = _wrap_azimuth(azimuth.reshape(-1))
        c2w = orbit_c2w(elevation, azimuth, distance)  # float64
        light_dir = torch.nn.functional.normalize(c2w[:, :3, 3] + per_view(light_noise), dim=-1)
        light = light_dir * per_view(light_distance)[:, None]
        return CameraBatch(c2w=c2w.float(), fovy_deg=fovy.float(), elevation_deg=elevation.float(),
                           azimuth_deg=azimuth.float(), distance=distance.float(), light_positions=light.float(),
                           height=res, width=res, n_view=v)


def fixed_views(
    n_view: int = 4,
    elevation: float = 15.0,
    fovy_deg: float = 40.0,
    azimuth_start: float = 0.0,
    size: int = 64,
    radius: float = 1.0,
    relative_radius: bool = True,
) -> CameraBatch:
    """``n_view`` evaluation cameras at azimuths ``azimuth_start + k * 360 / n_view`` (default 0/90/180/270).

    Distance ``radius / tan(fovy / 2)`` when ``relative_radius`` (the object's half-extent ``radius``
    fills the frame), else ``radius``. The light sits at each camera (headlight).
    """
    if n_view < 1:
        raise ValueError(f"n_view must be >= 1, got {n_view}")
    az = _wrap_azimuth(azimuth_start + torch.arange(n_view, dtype=torch.float64) * (360.0 / n_view))
    el = torch.full((n_view,), float(elevation), dtype=torch.float64)
    fov = torch.full((n_view,), float(fovy_deg), dtype=torch.float64)
    dist = camera_distance_for_fov(fov, float(radius)) if relative_radius else torch.full_like(fov, float(radius))
    c2w = orbit_c2w(el, az, dist)
    return CameraBatch(c2w=c2w.float(), fovy_deg=fov.float(), elevation_deg=el.float(), azimuth_deg=az.float(),
                       distance=dist.float(), light_positions=c2w[:, :3, 3].float(), height=size, width=size,
                       n_view=n_view)


def view_direction_text(azimuth_deg: Tensor | Sequence[float], elevation_deg: Tensor | Sequence[float]) -> list[str]:
    """DreamFusion's view-dependent prompt suffix for each camera.

    Azimuth convention of :mod:`mvdream3d.cameras`: azimuth 0 is the camera on **+z**, which we call
    the object's front. "overhead view" if elevation > 60; otherwise "front view" if |azimuth| < 45,
    "back view" if |azimuth| > 135 (azimuths are first wrapped into [-180, 180)), else "side view".

    Args:
        azimuth_deg, elevation_deg: (B,) degrees (tensors or sequences of numbers).

    Returns:
        B strings.
    """
    az = _wrap_azimuth(torch.as_tensor(azimuth_deg, dtype=torch.float64).reshape(-1))
    el = torch.as_tensor(elevation_deg, dtype=torch.float64).reshape(-1)
    if az.shape != el.shape:
        raise ValueError(f"azimuth_deg and elevation_deg must have the same length, got {az.shape} and {el.shape}")
    out = []
    for a, e in zip(az.tolist(), el.tolist(), strict=True):
        if e > 60.0:
            out.append("overhead view")
        elif abs(a) < 45.0:
            out.append("front view")
        elif abs(a) > 135.0:
            out.append("back view")
        else:
            out.append("side view")
    return out


def azimuth_elevation_from_c2w(c2w: Tensor) -> tuple[Tensor, Tensor]:
    """(azimuth, elevation) in degrees of the camera positions of (B, 4, 4) OpenGL c2w matrices.

    ``azimuth = atan2(x, z)`` (0 on +z, 90 on +x), ``elevation = asin(y / |p|)``; both (B,) float64.
    """
    p = c2w[..., :3, 3].reshape(-1, 3).double()
    az = torch.rad2deg(torch.atan2(p[:, 0], p[:, 2]))
    el = torch.rad2deg(torch.asin((p[:, 1] / p.norm(dim=-1).clamp_min(1e-12)).clamp(-1.0, 1.0)))
    return _wrap_azimuth(az), el

