"""Headless multi-view renderer of 3D assets (training data for the multi-view model).

Rendering goes through OpenGL 3.3 with `moderngl <https://github.com/moderngl/moderngl>`_ on an EGL
context without any display. On a machine without a GPU, Mesa's ``llvmpipe`` software rasteriser does
the work (a few milliseconds per view at 256x256). System packages (Debian/Ubuntu)::

    apt-get install -y libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri

plus ``pip install moderngl trimesh``.

Camera convention: the project's one (:mod:`mvdream3d.cameras`). ``Renderer.render`` takes an OpenGL
camera-to-world matrix (camera looks along its -z, +y up) and a **vertical** field of view; a world
point lands on the pixel that ``cameras.get_rays`` casts through it (image row 0 is the top, pixel
centres at ``(j + 0.5, i + 0.5)``, principal point at the image centre, ``cameras.intrinsics_from_fov``).

Data recipe (``render_asset``), after the MVDream paper: ``num_views`` views at evenly spaced azimuths
starting at 0 (azimuth 0 looks from +z at the origin), each with its own random elevation, field of view
and *relative* camera distance::

    distance = d * r / sin(fov / 2),   d ~ U(distance_range),  r = bounding radius of the object

``r`` is the radius of the sphere centred at the origin (the centre of the normalised object's bounding
box) that holds every vertex, so at ``d = 1`` this sphere exactly touches the top and bottom of the
image whatever the fov: the object fills a similar fraction of every frame. (This is the "sphere" form,
``r / sin``; ``cameras.camera_distance_for_fov`` is the threestudio "plane" form ``r / tan``.)

Output of one asset: ``rgba_000.png ...`` (RGBA, transparent background, straight alpha) and
``meta.json`` (written last: its presence marks the asset as done, which makes runs resumable).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
import warnings
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..files import atomic_write_bytes, ensure_writable_dir

__all__ = [
    "ASSET_EXTENSIONS",
    "LIGHT_GREY",
    "AssetWarning",
    "Renderer",
    "add_render_subparser",
    "bounding_radius",
    "cmd_render",
    "find_assets",
    "load_asset",
    "render_asset",
    "render_assets",
    "view_distance",
]

ASSET_EXTENSIONS = (".obj", ".glb", ".gltf", ".ply")
LIGHT_GREY = (200, 200, 200, 255)  # colour of assets that carry none
DISTANCE_RULE = "distance = relative_distance * radius / sin(fov_deg / 2)"

# trimesh gives an OBJ without a material library this placeholder: a 2x2 image of (100,100,100)
# and a diffuse colour of (102,102,102). Both mean "no colour".
_TRIMESH_PLACEHOLDER_RGBA = (100, 100, 100, 255)
_TRIMESH_DEFAULT_DIFFUSE = (102, 102, 102, 255)
_MAX_TEXTURE = 4096
_SMOOTH_ANGLE_DEG = 40.0  # corners whose faces bend less than this are shaded smoothly


class AssetWarning(UserWarning):
    """An asset could not be rendered and was skipped."""


# --------------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------------


def _as_rgba_u8(c: Any) -> np.ndarray | None:
    if c is None:
        return None
    a = np.asarray(c, dtype=np.float64).reshape(-1)
    if a.size not in (3, 4) or not np.all(np.isfinite(a)):
        return None
    if a.max() <= 1.0 and np.asarray(c).dtype.kind == "f":
        a = a * 255.0
    if a.size == 3:
        a = np.append(a, 255.0)
    return np.clip(np.round(a), 0, 255).astype(np.uint8)


def _solid_image_colour(img: Any) -> np.ndarray | None:
    """The colour of a tiny uniform image (trimesh's solid-colour stand-in for a texture), else None."""
    w, h = img.size
    if w * h > 16:
        return None
    a = np.asarray(img.convert("RGBA")).reshape(-1, 4)
    if np.all(a == a[0]):
        return a[0].copy()
    return None


def _srgb_to_linear(c: np.ndarray) -> np.ndarray:
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(c: np.ndarray) -> np.ndarray:
    c = np.clip(c, 0.0, 1.0)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1 / 2.4) - 0.055)


def _pbr_factor_to_display(factor: np.ndarray) -> np.ndarray:
    """glTF ``baseColorFactor`` is linear: the colour a viewer shows is its sRGB encoding."""
    f = factor.astype(np.float64) / 255.0
    out = np.concatenate([_linear_to_srgb(f[:3]), f[3:]])
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def _bake_factor(image: Any, factor: np.ndarray | None) -> Any:
    """RGBA image of ``texture * factor`` (glTF: sRGB texture times a linear factor, multiplied in linear)."""
    from PIL import Image

    img = image.convert("RGBA")
    if factor is None or np.all(factor == 255):
        return img
    a = np.asarray(img, dtype=np.float64) / 255.0
    f = factor.astype(np.float64) / 255.0
    rgb = _linear_to_srgb(_srgb_to_linear(a[..., :3]) * f[:3])
    out = np.concatenate([rgb, a[..., 3:] * f[3]], axis=-1)
    return Image.fromarray(np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8), "RGBA")


def _material_colour_and_image(material: Any) -> tuple[np.ndarray | None, Any]:
    """(display colour RGBA uint8 or None for "no colour", texture PIL image or None) of a trimesh material.

    PBR (glTF): ``baseColorTexture`` times ``baseColorFactor`` (the factor is returned as the colour;
    without a texture the factor, encoded to sRGB, is the colour). Simple (OBJ/MTL): ``image``
    (map_Kd) with colour white, else ``diffuse`` (Kd). Tiny uniform images count as colours, and
    trimesh's placeholders for "no material" count as no colour.
    """
    if material is None:
        return None, None
    from trimesh.visual.material import PBRMaterial

    white = np.full(4, 255, np.uint8)
    if isinstance(material, PBRMaterial):
        factor = _as_rgba_u8(material.baseColorFactor)
        image = material.baseColorTexture
        if image is not None:
            solid = _solid_image_colour(image)
            if solid is None:
                return (factor if factor is not None else white), image
            baked = np.asarray(_bake_factor(image, factor).convert("RGBA"))[0, 0]
            return baked.copy(), None
        return (None if factor is None else _pbr_factor_to_display(factor)), None

    image = getattr(material, "image", None)
    diffuse = _as_rgba_u8(getattr(material, "diffuse", None))
    if image is not None:
        solid = _solid_image_colour(image)
        if solid is None:
            return white, image
        if tuple(solid) == _TRIMESH_PLACEHOLDER_RGBA:
            # placeholder image: the diffuse colour decides, unless it is trimesh's default too
            if diffuse is None or tuple(diffuse) == _TRIMESH_DEFAULT_DIFFUSE:
                return None, None
            return diffuse, None
        return solid, None
    if diffuse is None or tuple(diffuse) == _TRIMESH_DEFAULT_DIFFUSE:
        return None, None
    return diffuse, None


def _resolve_visual(mesh: Any) -> Any:
    """Give a mesh part an explicit look that concatenates cleanly.

    A real texture becomes ``TextureVisuals(uv, SimpleMaterial(image))`` with any colour factor baked
    into the image; everything else becomes vertex (or face) colours: the file's colours, the
    material's base colour, or ``LIGHT_GREY``.
    """
    from trimesh.visual import ColorVisuals, TextureVisuals
    from trimesh.visual.material import PBRMaterial, SimpleMaterial

    vis = mesh.visual
    kind = getattr(vis, "kind", None)
    n_v = len(mesh.vertices)
    grey = np.array(LIGHT_GREY, dtype=np.uint8)
    if kind == "texture":
        colour, image = _material_colour_and_image(vis.material)
        uv = getattr(vis, "uv", None)
        if image is not None and uv is not None and len(uv) == n_v and np.all(np.isfinite(uv)):
            factor = _as_rgba_u8(vis.material.baseColorFactor) if isinstance(vis.material, PBRMaterial) else None
            mesh.visual = TextureVisuals(
                uv=np.asarray(uv, dtype=np.float64), material=SimpleMaterial(image=_bake_factor(image, factor))
            )
            return mesh
        attrs = getattr(vis, "vertex_attributes", None) or {}
        vcol = attrs.get("color") if hasattr(attrs, "get") else None
        if vcol is not None and len(vcol) == n_v:  # glTF COLOR_0 without a texture
            vc = np.asarray(vcol)
            vc = (vc * 255.0 if vc.dtype.kind == "f" else vc).astype(np.float64)
            if vc.shape[1] == 3:
                vc = np.concatenate([vc, np.full((n_v, 1), 255.0)], axis=1)
            if colour is not None:
                vc = vc * colour.astype(np.float64) / 255.0
            mesh.visual = ColorVisuals(mesh, vertex_colors=np.clip(vc.round(), 0, 255).astype(np.uint8))
            return mesh
        c = colour if colour is not None else grey
        mesh.visual = ColorVisuals(mesh, vertex_colors=np.tile(c, (n_v, 1)))
        return mesh
    if kind in ("vertex", "face"):
        return mesh
    mesh.visual = ColorVisuals(mesh, vertex_colors=np.tile(grey, (n_v, 1)))
    return mesh


def bounding_radius(mesh: Any) -> float:
    """Radius of the sphere about the origin that holds every vertex (of a triangle) of ``mesh``."""
    v = np.asarray(mesh.vertices, dtype=np.float64)[np.unique(np.asarray(mesh.faces))]
    return float(np.sqrt((v * v).sum(axis=1)).max()) if len(v) else 0.0


def load_asset(path: str | os.PathLike, normalize: bool = True) -> Any:
    """Load a mesh file (.obj, .glb, .gltf, .ply) as one ``trimesh.Trimesh``.

    Scenes are flattened (node transforms applied) and their parts concatenated. Textures (UV + image)
    and vertex/face colours are kept; a material without texture becomes its base colour; a part with
    no colour at all becomes light grey (``LIGHT_GREY``).

    Args:
        path: the file.
        normalize: centre the bounding box at the origin and scale the longest side to 1 (the mesh
            then fits in [-0.5, 0.5]^3). ``False`` keeps the file's coordinates.

    Raises:
        ValueError: missing file, unsupported extension, unreadable file or no triangles in it.
    """
    import trimesh

    p = Path(path)
    if not p.exists():
        raise ValueError(f"asset not found: {p}")
    if not p.is_file():
        raise ValueError(f"asset is not a file: {p}")
    if p.suffix.lower() not in ASSET_EXTENSIONS:
        raise ValueError(f"unsupported asset type {p.suffix!r} ({p}); expected one of {', '.join(ASSET_EXTENSIONS)}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = trimesh.load(str(p), force="scene")
        parts = [g for g in loaded.dump() if isinstance(g, trimesh.Trimesh) and len(g.faces) > 0]
    except Exception as e:  # trimesh raises many kinds of errors on bad files
        raise ValueError(f"cannot read mesh {p}: {type(e).__name__}: {e}") from e
    if not parts:
        raise ValueError(f"cannot read mesh {p}: no triangles in it (corrupt or empty file?)")
    parts = [_resolve_visual(g) for g in parts]
    try:
        mesh = parts[0] if len(parts) == 1 else trimesh.util.concatenate(parts)
    except Exception as e:
        raise ValueError(f"cannot combine the parts of {p}: {type(e).__name__}: {e}") from e
    v = np.asarray(mesh.vertices, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise ValueError(f"cannot read mesh {p}: non-finite vertex coordinates")
    used = v[np.unique(mesh.faces)]
    lo, hi = used.min(axis=0), used.max(axis=0)
    if normalize:
        extent = float((hi - lo).max())
        if not extent > 0:
            raise ValueError(f"cannot normalise mesh {p}: it has zero size")
        mesh.apply_translation(-(lo + hi) / 2.0)
        mesh.apply_scale(1.0 / extent)
    mesh.metadata["source"] = str(p)
    return mesh


# --------------------------------------------------------------------------------------------------
# renderer
# --------------------------------------------------------------------------------------------------

_VERTEX_SHADER = """
#version 330
uniform mat4 mvp;
in vec3 in_pos;
in vec3 in_normal;
in vec4 in_color;
in vec2 in_uv;
out vec3 v_pos;
out vec3 v_normal;
out vec4 v_color;
out vec2 v_uv;
void main() {
    v_pos = in_pos;
    v_normal = in_normal;
    v_color = in_color;
    v_uv = in_uv;
    gl_Position = mvp * vec4(in_pos, 1.0);
}
"""

_FRAGMENT_SHADER = """
#version 330
uniform sampler2D tex;
uniform vec3 cam_pos;
uniform vec3 key_dir;
uniform vec3 fill_dir;
uniform vec3 light;  // ambient, key, fill strengths
in vec3 v_pos;
in vec3 v_normal;
in vec4 v_color;
in vec2 v_uv;
out vec4 f_color;
void main() {
    vec3 to_cam = cam_pos - v_pos;
    // geometric normal of the triangle, turned towards the camera (meshes are rendered two-sided)
    vec3 fn = cross(dFdx(v_pos), dFdy(v_pos));
    float fl = length(fn);
    fn = fl > 0.0 ? fn / fl : normalize(to_cam);
    if (dot(fn, to_cam) < 0.0) fn = -fn;
    vec3 n = v_normal;
    float nl = length(n);
    n = nl > 0.0 ? n / nl : fn;
    if (dot(n, fn) < 0.0) n = -n;
    float shade = light.x + light.y * max(dot(n, key_dir), 0.0) + light.z * max(dot(n, fill_dir), 0.0);
    vec4 albedo = v_color * texture(tex, vec2(v_uv.x, 1.0 - v_uv.y));
    f_color = vec4(clamp(albedo.rgb * shade, 0.0, 1.0), 1.0);
}
"""


def _corner_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Auto-smoothed normals per face corner, (F, 3, 3).

    Vertices are welded by position (files split them along UV seams and material borders), the
    area-weighted face normals are summed per welded vertex, and a corner takes that smooth normal
    unless it deviates from its own face's normal by more than ``_SMOOTH_ANGLE_DEG`` (sharp edges such
    as a cube's stay sharp). Winding inconsistencies are tolerated: the shader orients every normal
    towards the camera.
    """
    tri = vertices[faces]  # (F, 3, 3)
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # length = 2 * area
    length = np.linalg.norm(cross, axis=1, keepdims=True)
    fn = np.divide(cross, length, out=np.zeros_like(cross), where=length > 0)
    scale = float(np.abs(vertices).max()) or 1.0
    key = np.round(vertices / (scale * 1e-6)).astype(np.int64)
    _, weld = np.unique(key, axis=0, return_inverse=True)
    weld = weld.reshape(-1)
    acc = np.zeros((int(weld.max()) + 1, 3))
    for k in range(3):
        np.add.at(acc, weld[faces[:, k]], cross)
    al = np.linalg.norm(acc, axis=1, keepdims=True)
    acc = np.divide(acc, al, out=np.zeros_like(acc), where=al > 0)
    smooth = acc[weld[faces]]  # (F, 3, 3)
    ok = np.einsum("fkc,fc->fk", smooth, fn) > math.cos(math.radians(_SMOOTH_ANGLE_DEG))
    return np.where(ok[..., None], smooth, fn[:, None, :])


def _mesh_buffers(mesh: Any) -> tuple[np.ndarray, Any]:
    """Interleaved per-corner vertex data (3F, 12) float32 [pos, normal, rgba, uv] and a texture image."""
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
        raise ValueError("mesh has no triangles")
    n_f = len(faces)
    colour = np.empty((n_f, 3, 4))
    colour[:] = np.array(LIGHT_GREY) / 255.0
    uv = np.zeros((n_f, 3, 2))
    image = None
    vis = getattr(mesh, "visual", None)
    kind = getattr(vis, "kind", None)
    if kind == "texture":
        base, img = _material_colour_and_image(vis.material)
        vis_uv = getattr(vis, "uv", None)
        if img is not None and vis_uv is not None and len(vis_uv) == len(vertices):
            image = img
            uv = np.asarray(vis_uv, dtype=np.float64)[faces]
        if base is not None:
            colour[:] = base / 255.0
    elif kind == "vertex":
        colour = np.asarray(vis.vertex_colors, dtype=np.float64)[faces] / 255.0
    elif kind == "face":
        colour[:] = (np.asarray(vis.face_colors, dtype=np.float64) / 255.0)[:, None, :]
    normals = _corner_normals(vertices, faces)
    data = np.concatenate(
        [vertices[faces], normals, colour, np.nan_to_num(uv)], axis=-1
    ).reshape(-1, 12)
    return np.ascontiguousarray(data, dtype=np.float32), image


def _perspective(fov_deg: float, aspect: float, near: float, far: float) -> np.ndarray:
    f = 1.0 / math.tan(math.radians(fov_deg) / 2.0)
    return np.array(
        [
            [f / aspect, 0.0, 0.0, 0.0],
            [0.0, f, 0.0, 0.0],
            [0.0, 0.0, (far + near) / (near - far), 2.0 * far * near / (near - far)],
            [0.0, 0.0, -1.0, 0.0],
        ]
    )


def _gl_error_help(e: Exception) -> RuntimeError:
    return RuntimeError(
        f"cannot create a headless OpenGL (EGL) context: {type(e).__name__}: {e}. The renderer needs "
        "`pip install moderngl` and the system packages libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri "
        "(Debian/Ubuntu: apt-get install -y libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri)"
    )


class Renderer:
    """Off-screen rasteriser (OpenGL 3.3 via moderngl on EGL; Mesa llvmpipe when there is no GPU).

    One instance owns one GL context and one framebuffer; reuse it for many renders. The last mesh's
    GPU buffers are cached, so rendering many views of one mesh uploads it once.

    Args:
        size: output image size, an int (square) or ``(height, width)``.
        antialias: samples per pixel of multisample anti-aliasing (MSAA; capped at what the driver
            offers, 4 on llvmpipe); 1 or 0 turns it off.
        ambient, key, fill: light strengths: ambient, the key light (from the camera, or ``light_dir``)
            and a fill light from straight above (+y). Lambert shading; the three sum to 1 so a surface
            facing the camera and the sky shows its albedo.
    """

    def __init__(
        self,
        size: int | tuple[int, int] = 256,
        antialias: int = 4,
        ambient: float = 0.3,
        key: float = 0.55,
        fill: float = 0.15,
    ) -> None:
        if isinstance(size, Sequence):
            height, width = (int(s) for s in size)
        else:
            height = width = int(size)
        if height < 1 or width < 1:
            raise ValueError(f"image size must be >= 1, got {height}x{width}")
        if int(antialias) < 0:
            raise ValueError(f"antialias must be >= 0, got {antialias}")
        self.height, self.width = height, width
        self.light = (float(ambient), float(key), float(fill))
        try:
            import moderngl
        except ImportError as e:
            raise _gl_error_help(e) from e
        self._mgl = moderngl
        try:
            self.ctx = moderngl.create_context(standalone=True, backend="egl", require=330)
        except Exception as e:
            raise _gl_error_help(e) from e
        ctx = self.ctx
        self.prog = ctx.program(vertex_shader=_VERTEX_SHADER, fragment_shader=_FRAGMENT_SHADER)
        fb = (width, height)
        self.samples = min(int(antialias), int(ctx.max_samples)) if int(antialias) > 1 else 0
        self.fbo = ctx.framebuffer(
            color_attachments=[ctx.renderbuffer(fb, components=4, samples=self.samples)],
            depth_attachment=ctx.depth_renderbuffer(fb, samples=self.samples),
        )
        # multisampled framebuffers cannot be read: resolve (average the samples) into a plain one
        self._resolved = (
            ctx.framebuffer(color_attachments=[ctx.renderbuffer(fb, components=4)]) if self.samples else self.fbo
        )
        self._white = ctx.texture((1, 1), 4, bytes([255, 255, 255, 255]))
        self._mesh_ref: Any = None
        self._vao = self._vbo = self._tex = None
        self._vertices: np.ndarray | None = None

    @property
    def info(self) -> str:
        return f"{self.ctx.info['GL_RENDERER']} ({self.ctx.info['GL_VERSION']})"

    # -- resources ---------------------------------------------------------------------------------

    def _release_mesh(self) -> None:
        for obj in (self._vao, self._vbo, self._tex):
            if obj is not None:
                obj.release()
        self._vao = self._vbo = self._tex = None
        self._mesh_ref = None
        self._vertices = None

    def _upload(self, mesh: Any) -> None:
        if self._mesh_ref is mesh:
            return
        self._release_mesh()
        data, image = _mesh_buffers(mesh)
        self._vbo = self.ctx.buffer(data.tobytes())
        self._vao = self.ctx.vertex_array(
            self.prog, [(self._vbo, "3f 3f 4f 2f", "in_pos", "in_normal", "in_color", "in_uv")]
        )
        if image is not None:
            img = image.convert("RGBA")
            if max(img.size) > _MAX_TEXTURE:
                s = _MAX_TEXTURE / max(img.size)
                img = img.resize((max(1, round(img.size[0] * s)), max(1, round(img.size[1] * s))))
            tex = self.ctx.texture(img.size, 4, img.tobytes())
            tex.build_mipmaps()
            tex.filter = (self._mgl.LINEAR_MIPMAP_LINEAR, self._mgl.LINEAR)
            tex.repeat_x = tex.repeat_y = True
            self._tex = tex
        self._vertices = np.unique(data[:, :3].astype(np.float64), axis=0)
        self._mesh_ref = mesh

    def release(self) -> None:
        """Free the GL context (the instance is unusable afterwards)."""
        if getattr(self, "ctx", None) is None:
            return
        self._release_mesh()
        self.ctx.release()
        self.ctx = None

    def __enter__(self) -> Renderer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    # -- rendering ---------------------------------------------------------------------------------

    def render(
        self, mesh: Any, c2w: Any, fov_deg: float, light_dir: Sequence[float] | np.ndarray | None = None
    ) -> np.ndarray:
        """Render ``mesh`` seen by an OpenGL camera.

        Args:
            mesh: ``trimesh.Trimesh`` (colours as produced by ``load_asset``; raw trimesh meshes work too).
            c2w: (4, 4) OpenGL camera-to-world matrix (numpy or torch), e.g. ``cameras.orbit_c2w(...)[0]``.
            fov_deg: vertical field of view in degrees.
            light_dir: world direction *towards* the key light; default: towards the camera.

        Returns:
            (H, W, 4) uint8 RGBA, straight (not premultiplied) alpha; background alpha 0.
        """
        if self.ctx is None:
            raise RuntimeError("renderer was released")
        fov = float(fov_deg)
        if not 0.0 < fov < 180.0:
            raise ValueError(f"field of view must be in (0, 180) degrees, got {fov_deg}")
        c2w = np.asarray(c2w.detach().cpu() if hasattr(c2w, "detach") else c2w, dtype=np.float64)
        if c2w.shape == (1, 4, 4):
            c2w = c2w[0]
        if c2w.shape != (4, 4) or not np.all(np.isfinite(c2w)):
            raise ValueError(f"c2w must be a finite (4, 4) matrix, got shape {c2w.shape}")
        # Several renderers (one per image size) can live in one process; GL calls go to whichever context
        # is current, so make this one current first (without it a 32-px render after a 64-px renderer was
        # created reads another context's framebuffer: garbage).
        with self.ctx:
            return self._render(mesh, c2w, fov, light_dir)

    def _render(self, mesh: Any, c2w: np.ndarray, fov: float, light_dir: Any) -> np.ndarray:
        self._upload(mesh)

        w2c = np.linalg.inv(c2w)
        depth = -(self._vertices @ w2c[:3, :3].T + w2c[:3, 3])[:, 2]
        far = max(float(depth.max()) * 1.05, 1e-3)
        near = max(float(depth.min()) * 0.95, far * 1e-4)
        mvp = _perspective(fov, self.width / self.height, near, far) @ w2c

        cam_pos = c2w[:3, 3]
        key_dir = c2w[:3, 2] if light_dir is None else np.asarray(light_dir, dtype=np.float64).reshape(3)
        kn = np.linalg.norm(key_dir)
        if not kn > 0:
            raise ValueError("light_dir must be a non-zero 3-vector")
        prog = self.prog
        prog["mvp"].write(mvp.T.astype("f4").tobytes())  # GLSL matrices are column-major
        prog["cam_pos"].value = tuple(float(x) for x in cam_pos)
        prog["key_dir"].value = tuple(float(x) for x in key_dir / kn)
        prog["fill_dir"].value = (0.0, 1.0, 0.0)
        prog["light"].value = self.light
        prog["tex"].value = 0
        (self._tex or self._white).use(location=0)

        ctx = self.ctx
        self.fbo.use()
        ctx.enable(self._mgl.DEPTH_TEST)
        ctx.disable(self._mgl.CULL_FACE)
        self.fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
        self._vao.render(self._mgl.TRIANGLES)
        if self.samples:
            ctx.copy_framebuffer(self._resolved, self.fbo)
        raw = self._resolved.read(components=4, alignment=1)
        img = np.frombuffer(raw, dtype=np.uint8).reshape(self.height, self.width, 4)[::-1]  # GL: bottom row first
        alpha = img[..., 3]
        edge = (alpha > 0) & (alpha < 255)
        if not edge.any():
            return img.copy()
        # The background is (0, 0, 0, 0) and surfaces are opaque, so averaged samples are premultiplied
        # colours: un-premultiply the partly covered (edge) pixels to get straight alpha.
        out = img.copy()
        a = alpha[edge].astype(np.float32)[:, None]
        out[edge, :3] = np.clip(np.round(img[edge, :3].astype(np.float32) * 255.0 / a), 0, 255).astype(np.uint8)
        return out


# --------------------------------------------------------------------------------------------------
# data recipe
# --------------------------------------------------------------------------------------------------

_RENDERERS: dict[tuple[int, int], Renderer] = {}  # per process


def _shared_renderer(size: int) -> Renderer:
    """One renderer per process and size (a GL context is expensive to create)."""
    key = (int(size), int(size))
    r = _RENDERERS.get(key)
    if r is None or r.ctx is None:
        r = _RENDERERS[key] = Renderer(int(size))
    return r


def _atomic_save_png(path: Path, image: np.ndarray) -> None:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=4)
    atomic_write_bytes(path, buf.getvalue())


def _clean_temp_files(out_dir: Path) -> None:
    for p in out_dir.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            p.unlink()


def _check_range(name: str, r: Sequence[float], lo: float | None = None, hi: float | None = None) -> tuple:
    try:
        a, b = (float(x) for x in r)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be two numbers (min, max), got {r!r}") from None
    if not (math.isfinite(a) and math.isfinite(b)) or a > b:
        raise ValueError(f"{name} must be finite with min <= max, got ({a}, {b})")
    if lo is not None and a <= lo:
        raise ValueError(f"{name} must be > {lo}, got ({a}, {b})")
    if hi is not None and b >= hi:
        raise ValueError(f"{name} must be < {hi}, got ({a}, {b})")
    return a, b


def view_distance(d: float | np.ndarray, radius: float, fov_deg: float | np.ndarray) -> Any:
    """The recipe's relative camera distance ``d * radius / sin(fov / 2)`` (see module docstring)."""
    return np.asarray(d) * radius / np.sin(np.radians(np.asarray(fov_deg, dtype=np.float64)) / 2.0)


def _caption_for(source: Path | None, caption: str | None, name: str) -> str:
    if caption is not None:
        return str(caption)
    if source is not None:
        txt = source.with_suffix(".txt")
        if txt.is_file():
            text = txt.read_text(encoding="utf-8", errors="replace").strip()
            if text:
                return text
    return name.replace("_", " ")


def render_asset(
    path_or_mesh: Any,
    out_dir: str | os.PathLike,
    num_views: int = 32,
    size: int = 256,
    elevation_range: Sequence[float] = (0.0, 30.0),
    fov_range: Sequence[float] = (15.0, 60.0),
    distance_range: Sequence[float] = (0.9, 1.1),
    caption: str | None = None,
    seed: int = 0,
    *,
    normalize: bool = True,
    radius: float | None = None,
    extra_meta: Mapping[str, Any] | None = None,
    renderer: Renderer | None = None,
) -> dict:
    """Render ``num_views`` views of one asset into ``out_dir`` (``rgba_000.png``..., ``meta.json``).

    Azimuths ``360 * i / num_views`` (starting at 0 = camera on +z), and per view a random elevation in
    ``elevation_range``, fov in ``fov_range`` and relative distance ``d`` in ``distance_range``:
    ``distance = d * r / sin(fov / 2)`` with ``r`` the object's bounding radius about the origin.

    Args:
        path_or_mesh: a mesh file (loaded with ``load_asset``) or a ``trimesh.Trimesh`` (used as given).
        caption: text for the asset; default the ``.txt`` beside the file, else its stem with ``_`` -> space.
        seed: seeds the elevation/fov/distance draws (``numpy.random.default_rng(seed)``).
        normalize: for a path, normalise the mesh into the unit cube (``load_asset``).
        radius: ``r`` of the distance rule; default the mesh's bounding radius. A fixed value keeps the
            sizes of objects comparable between assets (the synthetic world uses this).
        extra_meta: extra top-level entries for meta.json (e.g. ``attributes``).
        renderer: a ``Renderer`` of the right size to use; default one shared per process.

    Returns:
        The meta.json content. If ``out_dir/meta.json`` already exists the asset is not rendered again
        and the existing meta is returned (resume).

    Raises:
        ValueError: bad arguments, unreadable mesh, unwritable ``out_dir``.
    """
    out = Path(out_dir)
    meta_path = out / "meta.json"
    if meta_path.is_file():
        try:
            return json.loads(meta_path.read_text())
        except (OSError, ValueError):
            pass  # damaged: render again
    num_views = int(num_views)
    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}")
    size = int(size)
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    el_lo, el_hi = _check_range("elevation_range", elevation_range)
    if el_lo < -90 or el_hi > 90:
        raise ValueError(f"elevation_range must lie in [-90, 90], got ({el_lo}, {el_hi})")
    fov_lo, fov_hi = _check_range("fov_range", fov_range, 0.0, 180.0)
    d_lo, d_hi = _check_range("distance_range", distance_range, 0.0)

    if isinstance(path_or_mesh, str | os.PathLike):
        source: Path | None = Path(path_or_mesh)
        mesh = load_asset(source, normalize=normalize)
        asset_name = str(source)
        stem = source.stem
    else:
        source = None
        mesh = path_or_mesh
        if not hasattr(mesh, "vertices") or not hasattr(mesh, "faces") or len(mesh.faces) == 0:
            raise ValueError("path_or_mesh must be a mesh file or a trimesh.Trimesh with triangles")
        asset_name = str(mesh.metadata.get("source") or mesh.metadata.get("name") or out.name)
        stem = Path(asset_name).stem if mesh.metadata.get("source") else out.name
    text = _caption_for(source, caption, stem)

    ensure_writable_dir(out)
    _clean_temp_files(out)

    import torch

    from ..cameras import c2w_to_model_camera, orbit_azimuths, orbit_c2w

    r = float(radius) if radius is not None else bounding_radius(mesh)
    if not (math.isfinite(r) and r > 0):
        raise ValueError(f"radius must be a positive number, got {r}")
    rng = np.random.default_rng(seed)
    azimuths = orbit_azimuths(num_views, 0.0, 360.0)
    elevations = rng.uniform(el_lo, el_hi, num_views)
    fovs = rng.uniform(fov_lo, fov_hi, num_views)
    rel = rng.uniform(d_lo, d_hi, num_views)
    distances = view_distance(rel, r, fovs)
    c2w = orbit_c2w(
        torch.from_numpy(elevations), torch.from_numpy(azimuths), torch.from_numpy(np.asarray(distances))
    )  # float64
    model_cam = c2w_to_model_camera(c2w)
    c2w_np = c2w.numpy()

    rend = renderer if renderer is not None else _shared_renderer(size)
    if (rend.height, rend.width) != (size, size):
        raise ValueError(f"renderer size {rend.height}x{rend.width} does not match size={size}")
    views = []
    for i in range(num_views):
        name = f"rgba_{i:03d}.png"
        _atomic_save_png(out / name, rend.render(mesh, c2w_np[i], float(fovs[i])))
        views.append(
            {
                "file": name,
                "c2w": c2w_np[i].tolist(),
                "model_camera": model_cam[i].tolist(),
                "elevation": float(elevations[i]),
                "azimuth": float(azimuths[i]),
                "distance": float(distances[i]),
                "fov_deg": float(fovs[i]),
            }
        )
    meta: dict[str, Any] = {
        "asset": asset_name,
        "caption": text,
        "size": size,
        "seed": int(seed),
        "radius": r,
        "radius_from": "given" if radius is not None else "bounding sphere about the origin",
        "distance_rule": DISTANCE_RULE,
        "relative_distance": [float(x) for x in rel],
        "views": views,
    }
    if extra_meta:
        meta.update(dict(extra_meta))
    atomic_write_bytes(meta_path, json.dumps(meta, indent=1).encode())
    return meta


def find_assets(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and folders (searched recursively) into a sorted, de-duplicated list of mesh files.

    Raises:
        ValueError: a path that does not exist, a file with an unsupported extension, or no assets.
    """
    found: list[Path] = []
    given = [Path(p) for p in ([paths] if isinstance(paths, str | os.PathLike) else paths)]
    for p in given:
        if p.is_dir():
            found.extend(
                sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in ASSET_EXTENSIONS)
            )
        elif p.is_file():
            if p.suffix.lower() not in ASSET_EXTENSIONS:
                raise ValueError(f"unsupported asset type {p.suffix!r} ({p}); expected {', '.join(ASSET_EXTENSIONS)}")
            found.append(p)
        else:
            raise ValueError(f"asset not found: {p}")
    seen: set[Path] = set()
    unique = []
    for p in found:
        rp = p.resolve()
        if rp not in seen:
            seen.add(rp)
            unique.append(p)
    if not unique:
        raise ValueError(
            f"no assets ({', '.join(ASSET_EXTENSIONS)}) found in {', '.join(str(p) for p in given) or 'nothing'}"
        )
    return unique


def _asset_seed(seed: int, stem: str) -> int:
    """Per-asset seed: independent of the order and number of assets (resumable, parallel-safe)."""
    return (int(seed) * 1_000_003 + zlib.crc32(stem.encode("utf-8"))) % (2**32)


def _render_task(task: tuple[str, str, dict]) -> tuple[str, str, str]:
    path, out_dir, kw = task
    try:
        if (Path(out_dir) / "meta.json").is_file():
            return path, "skipped", ""
        render_asset(path, out_dir, **kw)
        return path, "rendered", ""
    except Exception as e:
        return path, "failed", f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e)


def _worker_init(threads: int) -> None:
    # llvmpipe starts one rasteriser thread per core in every process: share the cores out instead
    os.environ.setdefault("LP_NUM_THREADS", str(threads))
    try:
        import torch

        torch.set_num_threads(1)
    except Exception:
        pass


def render_assets(
    paths: Iterable[str | os.PathLike] | str | os.PathLike,
    out_root: str | os.PathLike,
    workers: int = 1,
    *,
    extra_meta: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool = True,
    **kw: Any,
) -> dict:
    """Render many assets, one sub-folder ``out_root/<stem>/`` each (see ``render_asset`` for ``kw``).

    Folders are searched recursively. Each asset gets its own seed derived from ``seed`` and its stem.
    Assets whose meta.json exists are skipped (resume); an asset that fails is reported with an
    ``AssetWarning`` and skipped. With ``workers > 1`` assets are rendered by that many processes, each
    with its own GL context.

    Args:
        extra_meta: per-asset extra meta.json entries, keyed by the asset path as given (str) or stem.
        progress: show a tqdm progress bar.

    Returns:
        ``{"rendered": [dirs], "skipped": [dirs], "failed": {path: message}, "out": out_root}``.

    Raises:
        ValueError: no assets, unwritable ``out_root``, bad arguments, or every asset failed.
    """
    from tqdm.auto import tqdm

    assets = find_assets(paths)
    out = ensure_writable_dir(Path(out_root))
    workers = int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if "caption" in kw and kw["caption"] is not None and len(assets) > 1:
        warnings.warn("one caption given for several assets: all get the same caption", stacklevel=2)
    seed = int(kw.pop("seed", 0))
    # validate the arguments once, before starting any work
    _check_range("elevation_range", kw.get("elevation_range", (0, 30)))
    _check_range("fov_range", kw.get("fov_range", (15, 60)), 0.0, 180.0)
    _check_range("distance_range", kw.get("distance_range", (0.9, 1.1)), 0.0)
    for name in ("num_views", "size"):
        if name in kw and int(kw[name]) < 1:
            raise ValueError(f"{name} must be >= 1, got {kw[name]}")

    tasks = []
    used: dict[str, int] = {}
    for p in assets:
        name = p.stem
        if name in used:  # same stem in two folders
            used[name] += 1
            name = f"{name}_{used[p.stem]}"
            warnings.warn(f"two assets are named {p.stem!r}: {p} goes to {name}/", AssetWarning, stacklevel=2)
        else:
            used[name] = 1
        task_kw = dict(kw, seed=_asset_seed(seed, name))
        if extra_meta:
            em = extra_meta.get(str(p), extra_meta.get(p.stem))
            if em:
                task_kw["extra_meta"] = dict(em)
        tasks.append((str(p), str(out / name), task_kw))

    result: dict[str, Any] = {"rendered": [], "skipped": [], "failed": {}, "out": str(out)}
    bar = tqdm(total=len(tasks), desc="render", unit="asset", disable=not progress, file=sys.stderr)
    dirs = {t[0]: t[1] for t in tasks}

    def record(res: tuple[str, str, str]) -> None:
        path, status, msg = res
        if status == "failed":
            result["failed"][path] = msg
            warnings.warn(f"skipping asset {path}: {msg}", AssetWarning, stacklevel=3)
        else:
            result[status].append(dirs[path])
        bar.update(1)

    todo = []
    for t in tasks:
        if (Path(t[1]) / "meta.json").is_file():
            record((t[0], "skipped", ""))
        else:
            todo.append(t)
    tasks = todo
    try:
        if not tasks:
            pass
        elif workers == 1 or len(tasks) == 1:
            for t in tasks:
                record(_render_task(t))
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed
            from concurrent.futures.process import BrokenProcessPool

            # spawn: a fresh interpreter per worker (no GL state or torch threads inherited by fork)
            n = min(workers, len(tasks))
            threads = max(1, (os.cpu_count() or 1) // n)
            with ProcessPoolExecutor(
                n, mp_context=mp.get_context("spawn"), initializer=_worker_init, initargs=(threads,)
            ) as ex:
                futures = [ex.submit(_render_task, t) for t in tasks]
                try:
                    for fut in as_completed(futures):
                        record(fut.result())
                except BrokenProcessPool as e:
                    for fut in futures:
                        fut.cancel()
                    raise RuntimeError(
                        "a render worker process died (out of memory, or a crash in the GL driver?); "
                        "assets finished so far are kept, run again to resume, or use workers=1"
                    ) from e
    finally:
        bar.close()
    if result["failed"] and not result["rendered"] and not result["skipped"]:
        first = next(iter(result["failed"].items()))
        raise ValueError(f"no asset could be rendered ({len(result['failed'])} failed); {first[0]}: {first[1]}")
    return result


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------


def add_render_subparser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``render`` to a ``parser.add_subparsers()`` object (handler: ``cmd_render``)."""
    p = subparsers.add_parser(
        "render",
        help="render 3D assets into multi-view training data (RGBA views + cameras)",
        description="Render each asset (.obj/.glb/.gltf/.ply; folders are searched recursively) from "
        "evenly spaced azimuths with random elevation, fov and relative distance into OUT/<stem>/ "
        "(rgba_XXX.png + meta.json). Assets already done are skipped.",
    )
    p.add_argument("assets", nargs="+", metavar="ASSET", help="mesh files or folders")
    p.add_argument("--out", required=True, help="output root directory")
    p.add_argument("--views", type=int, default=32, help="views per asset (default 32)")
    p.add_argument("--size", type=int, default=256, help="image size in pixels (default 256)")
    p.add_argument("--elevation-range", type=float, nargs=2, default=(0.0, 30.0), metavar=("MIN", "MAX"))
    p.add_argument("--fov-range", type=float, nargs=2, default=(15.0, 60.0), metavar=("MIN", "MAX"))
    p.add_argument("--distance-range", type=float, nargs=2, default=(0.9, 1.1), metavar=("MIN", "MAX"),
                   help="relative distance d: distance = d * r / sin(fov/2) (default 0.9 1.1)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--caption", default=None, help="caption for every asset (default: ASSET.txt or the name)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_render)
    return p


def _print_warnings_plainly():
    """Context manager: show warnings as one ``warning: ...`` line on stderr."""
    from tqdm.auto import tqdm

    cm = warnings.catch_warnings()

    class _Ctx:
        def __enter__(self):
            cm.__enter__()
            warnings.simplefilter("always", AssetWarning)
            warnings.showwarning = lambda message, *a, **k: tqdm.write(f"warning: {message}", file=sys.stderr)
            return self

        def __exit__(self, *exc):
            return cm.__exit__(*exc)

    return _Ctx()


def cmd_render(args: argparse.Namespace) -> int:
    if args.views < 1:
        raise ValueError(f"--views must be >= 1, got {args.views}")
    if args.size < 1:
        raise ValueError(f"--size must be >= 1, got {args.size}")
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    t0 = time.perf_counter()
    with _print_warnings_plainly():
        res = render_assets(
            args.assets, args.out, workers=args.workers, num_views=args.views, size=args.size,
            elevation_range=tuple(args.elevation_range), fov_range=tuple(args.fov_range),
            distance_range=tuple(args.distance_range), caption=args.caption, seed=args.seed,
        )
    print(
        f"rendered {len(res['rendered'])} assets ({len(res['skipped'])} already done, "
        f"{len(res['failed'])} failed) into {res['out']} in {time.perf_counter() - t0:.1f} s"
    )
    return 0
