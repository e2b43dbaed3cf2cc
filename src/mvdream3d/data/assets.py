"""3D assets for the renderer: finding mesh files, loading them as one ``trimesh.Trimesh`` and baking
their materials (base colours, PBR factors, placeholder textures) into colours the renderer shows."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ASSET_EXTENSIONS", "LIGHT_GREY", "AssetWarning", "bounding_radius", "find_assets", "load_asset"]

ASSET_EXTENSIONS = (".obj", ".glb", ".gltf", ".ply")
LIGHT_GREY = (200, 200, 200, 255)  # colour of assets that carry none

# trimesh gives an OBJ without a material library this placeholder: a 2x2 image of (100,100,100)
# and a diffuse colour of (102,102,102). Both mean "no colour".
_TRIMESH_PLACEHOLDER_RGBA = (100, 100, 100, 255)
_TRIMESH_DEFAULT_DIFFUSE = (102, 102, 102, 255)


class AssetWarning(UserWarning):
    """An asset could not be rendered and was skipped."""


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
