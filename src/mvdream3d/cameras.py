"""Camera conventions of mvdream3d: the one place where they are defined.

The multi-view model's camera conditioning, the 3D (NeRF / mesh) renderer used for text-to-3D and the
data renderer that produces training views all import from here, so a view rendered by either renderer
and the camera vector the model sees always describe the same camera.

Conventions (all matching the published MVDream code, ``mvdream/camera_utils.py``):

World frame ("OpenGL world")
    Right-handed, **+y is up**. The object sits at the origin.

Orbit camera
    A camera at ``elevation`` / ``azimuth`` (both in **degrees**) and ``distance`` sits at::

        position = distance * (cos(el) * sin(az), sin(el), cos(el) * cos(az))

    and looks at the origin. Azimuth 0, elevation 0 is on the +z axis; azimuth 90 is on +x; positive
    elevation moves the camera up (+y).

Camera-to-world matrix (c2w), OpenGL camera axes
    A (4, 4) matrix whose rotation columns are the camera's ``right``, ``up`` and ``backward`` axes in
    world coordinates and whose last column is the camera position. The camera looks along its local
    **-z**; its local +y is "up" in the image, +x is "right". ``right = normalize(cross(forward,
    world_up))`` with ``world_up = +y`` and ``up = normalize(cross(right, forward))``.

    Elevation +-90 (forward parallel to world up) does **not** produce NaN: in float64,
    ``cos(radians(90)) = 6.1e-17`` leaves a tiny non-zero cross product that normalises to a valid
    ``right`` vector, ``(cos(az), 0, -sin(az))``. The published code relies on this rounding residue and
    so do we (the torch versions compute in float64 for the same reason; in float32 the residue has the
    opposite sign and the camera would be rolled by 180 degrees).

Model camera input (what the diffusion model's camera embedding sees)
    1. the OpenGL-world c2w is converted to "Blender" world axes (z up) by left-multiplying
       ``[[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]]`` (world y -> z, world z -> -y;
       the camera's own axes stay OpenGL ones);
    2. the translation is normalised onto the unit sphere (divided by ``norm + 1e-8``), so the camera
       distance and field of view are *not* part of the conditioning;
    3. the (4, 4) matrix is flattened **row-major** to 16 numbers.

    ``get_camera`` produces these vectors for an orbit of evenly spaced azimuths (step 2 is a no-op
    there because its cameras are already on the unit sphere); ``c2w_to_model_camera`` produces them for
    arbitrary c2w matrices (renderer / data cameras).

Azimuth origin
    ``get_camera`` defaults to ``azimuth_start=0`` like the published function. Note that the published
    text-to-image script (``scripts/t2i.py``) calls it with ``azimuth_start=90``, so its first view
    looks from +x; pass ``azimuth_start=90`` to reproduce that script's images.

Image / ray convention (renderers)
    Pinhole camera with a **vertical** field of view ``fovy``; square pixels, so
    ``fx = fy = 0.5 * height / tan(fovy / 2)``. Pixel ``(row i, col j)`` has its centre at
    ``(j + 0.5, i + 0.5)``; image row 0 is the **top** of the image and column 0 the left. Rays are
    returned in the OpenGL camera convention (look along -z, +y up) transformed to world space.
    ``intrinsics_from_fov`` returns the matching conventional K matrix, which maps points in the
    OpenCV-style camera frame ``(x, -y, -z)`` of the OpenGL camera frame ``(x, y, z)`` to pixels.

The published ``normalize_camera`` modifies its argument in place; ours never does.
"""

import math
import operator

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "BLENDER_FROM_OPENGL",
    "DEFAULT_FOVY_DEG",
    "NORMALIZE_EPS",
    "c2w_to_model_camera",
    "camera_distance_for_fov",
    "convert_opengl_to_blender",
    "create_camera_to_world_matrix",
    "fov_to_focal",
    "get_camera",
    "get_rays",
    "intrinsics_from_fov",
    "normalize_camera",
    "orbit_azimuths",
    "orbit_c2w",
]

# Vertical field of view (degrees) that the published model's renders are assumed to use.
# The model's camera input carries no intrinsics (only the rotation and a unit-norm position), so the
# field of view is a property of the images, not of the conditioning. The published text-to-3D recipe
# (MVDream-threestudio, configs/mvdream-sd21.yaml) samples fovy uniformly in [15, 60] with the camera
# distance scaled by 1 / tan(fovy / 2) (so the object's apparent size does not depend on fovy) and
# renders its evaluation views with eval_fovy_deg = 40. 40 is also close to the middle of [15, 60].
# We report 40 as the nominal value used wherever a single fov is needed (evaluation renders, data
# rendering, sampling-time previews).
DEFAULT_FOVY_DEG: float = 40.0

# Added to the translation norm before dividing, exactly like the published normalize_camera
# (keeps a zero translation at zero).
NORMALIZE_EPS: float = 1e-8

# OpenGL world (y up) -> "Blender" world (z up): x -> x, y -> z, z -> -y. Left-multiplied onto a c2w.
BLENDER_FROM_OPENGL: np.ndarray = np.array(
    [[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=np.float64
)
BLENDER_FROM_OPENGL.setflags(write=False)

_WORLD_UP = np.array([0.0, 1.0, 0.0])

ArrayOrTensor = np.ndarray | Tensor


# --------------------------------------------------------------------------------------------------
# numpy reference functions (bit-compatible with the published camera_utils)
# --------------------------------------------------------------------------------------------------


def _norm3(v: np.ndarray) -> float:
    # Plain sequential sum of squares: identical on every machine (np.linalg.norm goes through BLAS,
    # whose kernels differ between CPUs in the last bit), and it reproduces the reference values.
    x, y, z = (float(c) for c in v)
    return math.sqrt(x * x + y * y + z * z)


def create_camera_to_world_matrix(elevation: float, azimuth: float, distance: float = 1.0) -> np.ndarray:
    """OpenGL camera-to-world matrix of an orbit camera looking at the origin.

    Args:
        elevation: degrees above the xz plane (+y is up).
        azimuth: degrees; 0 is on +z, 90 on +x.
        distance: distance from the origin (> 0). The rotation does not depend on it.

    Returns:
        (4, 4) float64 array: columns of the rotation are right, up, backward (the camera looks along
        its -z), last column the camera position ``distance * (cos(el) sin(az), sin(el), cos(el) cos(az))``.
        For ``distance=1`` this equals the published ``create_camera_to_world_matrix`` exactly, including
        the rounding-residue behaviour at elevation +-90 (see module docstring).
    """
    distance = float(distance)
    if not (math.isfinite(distance) and distance > 0):
        raise ValueError(f"distance must be a finite positive number, got {distance}")
    el = np.radians(float(elevation))
    az = np.radians(float(azimuth))
    # Unit-sphere position; the rotation is built from it so that distance=1 is bit-identical.
    position = np.array([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)], dtype=np.float64)

    forward = np.zeros(3) - position  # towards the target (the origin)
    forward /= _norm3(forward)
    right = np.cross(forward, _WORLD_UP)
    right /= _norm3(right)
    up = np.cross(right, forward)
    up /= _norm3(up)

    c2w = np.eye(4, dtype=np.float64)
    c2w[:3, 0] = right
    c2w[:3, 1] = up
    c2w[:3, 2] = -forward
    c2w[:3, 3] = position * distance
    return c2w


def _check_matrix_shape(m: ArrayOrTensor, name: str) -> None:
    shape = tuple(m.shape)
    if len(shape) not in (2, 3) or shape[-2:] != (4, 4):
        raise ValueError(f"{name} must be (4,4) or (N,4,4), got {shape}")


def convert_opengl_to_blender(c2w: ArrayOrTensor) -> ArrayOrTensor:
    """Convert OpenGL-world (y up) camera-to-world matrices to "Blender" world axes (z up).

    Left-multiplies by ``BLENDER_FROM_OPENGL`` = [[1,0,0,0],[0,0,-1,0],[0,1,0,0],[0,0,0,1]].

    Args:
        c2w: numpy array or torch tensor of shape (4, 4) or (N, 4, 4).

    Returns:
        Same type and shape as the input (a new array/tensor). Floating inputs keep their dtype (torch
        also keeps its device); integer numpy inputs stay integer.
    """
    _check_matrix_shape(c2w, "c2w")
    if isinstance(c2w, np.ndarray):
        dtype = c2w.dtype if np.issubdtype(c2w.dtype, np.number) else np.float64
        return np.matmul(BLENDER_FROM_OPENGL.astype(dtype), c2w)
    if isinstance(c2w, Tensor):
        flip = torch.tensor(BLENDER_FROM_OPENGL.tolist()).to(c2w)
        return torch.matmul(flip, c2w)
    raise TypeError(f"c2w must be a numpy array or a torch tensor, got {type(c2w).__name__}")


def _check_camera_shape(c: ArrayOrTensor, name: str) -> None:
    shape = tuple(c.shape)
    ok = (len(shape) >= 2 and shape[-2:] == (4, 4)) or (len(shape) >= 1 and shape[-1] == 16)
    if not ok:
        raise ValueError(f"{name} must be (4,4), (N,4,4), (16,) or (N,16), got {shape}")


def normalize_camera(c2w: ArrayOrTensor) -> ArrayOrTensor:
    """Move camera positions onto the unit sphere and flatten (row-major) to 16 numbers per camera.

    The translation column is divided by ``(its norm + 1e-8)`` exactly like the published
    ``normalize_camera``; unlike it, the argument is **not** modified.

    Args:
        c2w: numpy array or torch tensor of shape (4, 4), (N, 4, 4), (16,) or (N, 16) (leading batch
            dimensions are flattened).

    Returns:
        (N, 16) array/tensor of the same type; floating dtypes (and the torch device) are kept,
        integer inputs are promoted to float64 (numpy) or torch's default float dtype.
    """
    _check_camera_shape(c2w, "camera")
    if isinstance(c2w, np.ndarray):
        dtype = c2w.dtype if np.issubdtype(c2w.dtype, np.floating) else np.float64
        m = np.array(c2w, dtype=dtype, copy=True).reshape(-1, 4, 4)
        t = m[:, :3, 3]
        m[:, :3, 3] = t / (np.linalg.norm(t, axis=1, keepdims=True) + NORMALIZE_EPS)
        return m.reshape(-1, 16)
    if isinstance(c2w, Tensor):
        m = c2w if c2w.is_floating_point() else c2w.to(torch.get_default_dtype())
        m = m.reshape(-1, 4, 4).clone()
        t = m[:, :3, 3]
        m[:, :3, 3] = t / (torch.linalg.vector_norm(t, dim=1, keepdim=True) + NORMALIZE_EPS)
        return m.reshape(-1, 16)
    raise TypeError(f"camera must be a numpy array or a torch tensor, got {type(c2w).__name__}")


def _check_num_frames(num_frames: int) -> int:
    if isinstance(num_frames, bool):
        raise TypeError("num_frames must be an integer, got a bool")
    try:
        n = operator.index(num_frames)
    except TypeError:
        raise TypeError(f"num_frames must be an integer, got {type(num_frames).__name__}") from None
    if n < 1:
        raise ValueError(f"num_frames must be >= 1 (number of views), got {n}")
    return n


def orbit_azimuths(num_frames: int, azimuth_start: float = 0, azimuth_span: float = 360) -> np.ndarray:
    """Evenly spaced azimuths (degrees) used by ``get_camera``.

    Same values as the published ``np.arange(azimuth_start, azimuth_start + azimuth_span,
    azimuth_span / num_frames)``, but always exactly ``num_frames`` of them (``np.arange`` on floats
    occasionally returns one extra value, e.g. for num_frames=161, which the published code would turn
    into an extra camera).

    Returns:
        (num_frames,) float64 array.
    """
    n = _check_num_frames(num_frames)
    start, span = float(azimuth_start), float(azimuth_span)
    gap = span / n
    if gap == 0.0:
        return np.full(n, start, dtype=np.float64)
    az = np.arange(start, start + span, gap, dtype=np.float64)[:n]
    if az.shape[0] < n:  # never seen in practice; keep the count right regardless
        az = start + gap * np.arange(n, dtype=np.float64)
    return az


def get_camera(
    num_frames: int,
    elevation: float = 15,
    azimuth_start: float = 0,
    azimuth_span: float = 360,
    blender_coord: bool = True,
) -> Tensor:
    """Model camera inputs for ``num_frames`` views orbiting at one elevation.

    Args:
        num_frames: number of views F (>= 1).
        elevation: degrees.
        azimuth_start: azimuth of the first view in degrees. Default 0 like the published function;
            the published text-to-image script passes 90.
        azimuth_span: the F azimuths are ``azimuth_start + k * azimuth_span / F`` for k = 0..F-1.
        blender_coord: convert to "Blender" world axes (what the published model was trained with).

    Returns:
        (F, 16) float32 tensor: each row is a unit-distance camera-to-world matrix flattened row-major,
        computed in float64 and then cast, equal to the published ``get_camera``.
    """
    cams = []
    for az in orbit_azimuths(num_frames, azimuth_start, azimuth_span):
        c2w = create_camera_to_world_matrix(elevation, float(az))
        if blender_coord:
            c2w = convert_opengl_to_blender(c2w)
        cams.append(c2w.reshape(16))
    return torch.from_numpy(np.stack(cams, axis=0)).float()


# --------------------------------------------------------------------------------------------------
# torch, batched (renderers, data, model conditioning)
# --------------------------------------------------------------------------------------------------


def _compute_dtype(device: torch.device) -> torch.dtype:
    # float64 keeps the elevation +-90 behaviour of the reference; MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


def orbit_c2w(
    elevation: Tensor | float,
    azimuth: Tensor | float,
    distance: Tensor | float = 1.0,
) -> Tensor:
    """Batched OpenGL camera-to-world matrices of orbit cameras looking at the origin.

    Vectorised torch counterpart of ``create_camera_to_world_matrix`` (same values, computed in float64
    internally).

    Args:
        elevation: degrees, tensor of shape (N,) or a scalar.
        azimuth: degrees, tensor of shape (N,) or a scalar.
        distance: tensor of shape (N,) or a scalar (> 0).
        The three are broadcast together; any batch shape B works, scalars give N = 1.

    Returns:
        (N, 4, 4) (or (*B, 4, 4)) tensor, OpenGL c2w (columns right, up, backward, position). The dtype
        is float64 if any floating input tensor is float64, else float32 (torch's default dtype);
        device of the input tensors.
    """
    tensors = [x for x in (elevation, azimuth, distance) if isinstance(x, Tensor)]
    float_dtypes = [x.dtype for x in tensors if x.is_floating_point()]
    out_dtype = torch.get_default_dtype()
    for dt in float_dtypes:
        out_dtype = torch.promote_types(out_dtype, dt)
    device = tensors[0].device if tensors else torch.device("cpu")
    cdt = _compute_dtype(device)

    el, az, dist = (torch.as_tensor(x, device=device).to(cdt) for x in (elevation, azimuth, distance))
    el, az, dist = torch.broadcast_tensors(el, az, dist)
    if el.ndim == 0:
        el, az, dist = el.reshape(1), az.reshape(1), dist.reshape(1)
    if not bool(torch.all(dist > 0)):
        raise ValueError("distance must be positive")

    el, az = torch.deg2rad(el), torch.deg2rad(az)
    cos_el = torch.cos(el)
    position = torch.stack([cos_el * torch.sin(az), torch.sin(el), cos_el * torch.cos(az)], dim=-1)

    forward = -position
    forward = forward / torch.linalg.vector_norm(forward, dim=-1, keepdim=True)
    fx, fy, fz = forward.unbind(-1)
    zero = torch.zeros_like(fx)
    # right = cross(forward, (0, 1, 0))
    right = torch.stack([zero - fz, zero, fx], dim=-1)
    right = right / torch.linalg.vector_norm(right, dim=-1, keepdim=True)
    rx, _, rz = right.unbind(-1)
    # up = cross(right, forward), right_y == 0
    up = torch.stack([zero - rz * fy, rz * fx - rx * fz, rx * fy], dim=-1)
    up = up / torch.linalg.vector_norm(up, dim=-1, keepdim=True)

    rot = torch.stack([right, up, -forward], dim=-1)  # columns
    top = torch.cat([rot, (position * dist[..., None])[..., None]], dim=-1)  # (..., 3, 4)
    bottom = torch.zeros(*top.shape[:-2], 1, 4, dtype=cdt, device=device)
    bottom[..., 0, 3] = 1.0
    return torch.cat([top, bottom], dim=-2).to(out_dtype)


def c2w_to_model_camera(c2w: Tensor) -> Tensor:
    """Exactly what the model's camera embedding sees for given OpenGL-world camera-to-world matrices.

    ``normalize_camera(convert_opengl_to_blender(c2w))``: Blender world axes, camera position moved to
    the unit sphere (distance and fov are dropped), flattened row-major.

    Args:
        c2w: OpenGL-world camera-to-world matrices, tensor (or numpy array) of shape (N, 4, 4), (4, 4),
            or (N, 16) = the same matrices flattened row-major. Do not pass model cameras (the output
            of ``get_camera``/this function): they would be converted twice.

    Returns:
        (N, 16) tensor; floating dtype and device of the input are kept.
    """
    if isinstance(c2w, np.ndarray):
        c2w = torch.from_numpy(np.array(c2w))  # copy: also fine for read-only arrays
    if not isinstance(c2w, Tensor):
        raise TypeError(f"camera must be a torch tensor or numpy array, got {type(c2w).__name__}")
    shape = tuple(c2w.shape)
    if shape == (4, 4):
        m = c2w.unsqueeze(0)
    elif len(shape) == 3 and shape[1:] == (4, 4):
        m = c2w
    elif len(shape) == 2 and shape[1] == 16:
        m = c2w.reshape(-1, 4, 4)
    else:
        raise ValueError(f"camera must be (N,4,4) or (N,16) (or a single (4,4)), got {shape}")
    if not m.is_floating_point():
        m = m.to(torch.get_default_dtype())
    return normalize_camera(convert_opengl_to_blender(m))


# --------------------------------------------------------------------------------------------------
# intrinsics and rays
# --------------------------------------------------------------------------------------------------


def _check_fov(fov_deg: Tensor | float) -> None:
    if isinstance(fov_deg, Tensor):
        ok = bool(torch.all((fov_deg > 0) & (fov_deg < 180)))
    else:
        ok = 0.0 < float(fov_deg) < 180.0
    if not ok:
        raise ValueError(f"field of view must be in (0, 180) degrees, got {fov_deg}")


def fov_to_focal(fov_deg: Tensor | float, size: int | float) -> Tensor | float:
    """Focal length in pixels for a field of view spanning ``size`` pixels.

    ``focal = 0.5 * size / tan(fov / 2)``. Use the image height with a vertical fov.

    Args:
        fov_deg: field of view in degrees, float or tensor (any shape).
        size: number of pixels the fov spans.

    Returns:
        float for a float fov, tensor of the fov's shape for a tensor fov.
    """
    _check_fov(fov_deg)
    if isinstance(fov_deg, Tensor):
        return 0.5 * size / torch.tan(torch.deg2rad(fov_deg) / 2)
    return 0.5 * size / math.tan(math.radians(float(fov_deg)) / 2)


def intrinsics_from_fov(
    fov_deg: float, width: int, height: int, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Pinhole intrinsics K for a vertical field of view.

    ``fx = fy = 0.5 * height / tan(fovy / 2)`` (square pixels), principal point at the image centre
    ``(width / 2, height / 2)`` because pixel (row i, col j) has its centre at ``(j + 0.5, i + 0.5)``.
    K maps OpenCV-style camera coordinates (x right, y down, z forward; i.e. ``(x, -y, -z)`` of the
    OpenGL camera frame) to pixels: ``u = fx * x / z + cx``, ``v = fy * y / z + cy``.

    Returns:
        (3, 3) tensor of ``dtype``.
    """
    f = fov_to_focal(float(fov_deg), height)
    return torch.tensor([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]], dtype=dtype)


def get_rays(c2w: Tensor, fov_deg: float | Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """World-space rays through every pixel centre, OpenGL camera convention.

    In camera space the ray through pixel (row i, col j) has direction
    ``((j + 0.5 - W/2) / f, -(i + 0.5 - H/2) / f, -1)`` with ``f = fov_to_focal(fovy, H)``: the camera
    looks along -z, +y is up, image row 0 is the top and column 0 the left.

    Args:
        c2w: (N, 4, 4) OpenGL camera-to-world matrices (a single (4, 4) is treated as N = 1).
        fov_deg: vertical field of view in degrees, a float or a tensor of shape (N,).
        height: H, pixels.
        width: W, pixels.

    Returns:
        origins: (N, H, W, 3) camera positions; directions: (N, H, W, 3) unit vectors. Floating dtype
        and device of ``c2w``.
    """
    if not isinstance(c2w, Tensor):
        raise TypeError(f"c2w must be a torch tensor, got {type(c2w).__name__}")
    if tuple(c2w.shape) == (4, 4):
        c2w = c2w.unsqueeze(0)
    if c2w.ndim != 3 or tuple(c2w.shape[1:]) != (4, 4):
        raise ValueError(f"c2w must be (N,4,4) or (4,4), got {tuple(c2w.shape)}")
    height, width = int(height), int(width)
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got {height}x{width}")
    if not c2w.is_floating_point():
        c2w = c2w.to(torch.get_default_dtype())
    n, dtype, device = c2w.shape[0], c2w.dtype, c2w.device

    if isinstance(fov_deg, Tensor):
        fov = fov_deg.to(device=device, dtype=dtype)
        if fov.ndim == 0:
            fov = fov.expand(n)
        elif tuple(fov.shape) != (n,):
            raise ValueError(
                f"fov_deg must be a float or a tensor of shape (N,)=({n},), got {tuple(fov.shape)}"
            )
    else:
        fov = torch.full((n,), float(fov_deg), dtype=dtype, device=device)
    focal = fov_to_focal(fov, height)  # (N,)

    js = torch.arange(width, dtype=dtype, device=device) + 0.5 - width / 2.0
    is_ = torch.arange(height, dtype=dtype, device=device) + 0.5 - height / 2.0
    f = focal[:, None, None]
    x = js[None, None, :].expand(n, height, width) / f
    y = -is_[None, :, None].expand(n, height, width) / f
    z = torch.full_like(x, -1.0)
    dirs_cam = torch.stack([x, y, z], dim=-1)  # (N, H, W, 3)

    rot = c2w[:, :3, :3]
    dirs = torch.einsum("nij,nhwj->nhwi", rot, dirs_cam)
    dirs = dirs / torch.linalg.vector_norm(dirs, dim=-1, keepdim=True)
    origins = c2w[:, None, None, :3, 3].expand(n, height, width, 3).contiguous()
    return origins, dirs


def camera_distance_for_fov(fov_deg: Tensor | float, radius: Tensor | float = 1.0) -> Tensor | float:
    """Camera distance at which an object of half-extent ``radius`` at the origin fills the frame.

    ``distance = radius / tan(fovy / 2)``: the plane through the origin facing the camera is then
    visible over exactly ``[-radius, radius]`` vertically, whatever the fov. This is the published
    text-to-3D recipe's "relative" camera distance (threestudio ``relative_radius``: the sampled
    ``camera_distance_range`` of [0.8, 1.0] is multiplied by ``1 / tan(fovy / 2)``), so use
    ``camera_distance_for_fov(fovy, r)`` with r in [0.8, 1.0] to reproduce it. (A *sphere* of radius r
    would need ``r / sin(fovy / 2)`` to be entirely inside the view.)

    Args:
        fov_deg: vertical field of view in degrees (float or tensor).
        radius: half-extent of the object (float or tensor, broadcast with fov_deg).

    Returns:
        float or tensor distance.
    """
    _check_fov(fov_deg)
    if isinstance(fov_deg, Tensor) or isinstance(radius, Tensor):
        fov = torch.as_tensor(fov_deg)
        if not fov.is_floating_point():
            fov = fov.to(torch.get_default_dtype())
        return radius / torch.tan(torch.deg2rad(fov) / 2)
    return float(radius) / math.tan(math.radians(float(fov_deg)) / 2)
