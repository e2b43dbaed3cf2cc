"""The headless OpenGL renderer (moderngl on EGL; Mesa llvmpipe without a GPU): :class:`Renderer`, and one
shared renderer per process and size. Camera convention: see :mod:`mvdream3d.data.render`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .assets import LIGHT_GREY, _material_colour_and_image

__all__ = ["Renderer"]

_MAX_TEXTURE = 4096
_SMOOTH_ANGLE_DEG = 40.0  # corners whose faces bend less than this are shaded smoothly

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


_RENDERERS: dict[tuple[int, int], Renderer] = {}  # per process


def _shared_renderer(size: int) -> Renderer:
    """One renderer per process and size (a GL context is expensive to create)."""
    key = (int(size), int(size))
    r = _RENDERERS.get(key)
    if r is None or r.ctx is None:
        r = _RENDERERS[key] = Renderer(int(size))
    return r
