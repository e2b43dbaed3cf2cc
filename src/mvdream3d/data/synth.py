"""A procedural, captioned 3D world for experiments that a CPU can afford.

Assets are real ``trimesh`` meshes with vertex colours: primitives (cube, sphere, cylinder, cone, torus,
pyramid) in named colours and two sizes, optionally with a *front feature* of another colour on the +z
side: a "nose" sphere, a "horn" cone or a "face" (two eyes above a mouth; the toy form of the faces that
make 2D-lifted 3D objects Janus). Every feature covers at least 8 % of the object's silhouette in the
front view at 64 px, so the camera decides a visible part of the image (not on a torus, whose hole
would show it from behind), or two-object scenes ("a red cube and a blue
sphere", side by side along x, the first one at -x). They are rendered by the same renderer and in the
same format as real assets (:mod:`mvdream3d.data.render`).

Front = +z, consistent with :mod:`mvdream3d.cameras`: the azimuth-0 camera sits on +z looking at the
origin, so azimuth 0 sees the front feature and azimuth 180 does not; its image "right" is world +x, so
the first object of a pair is on the left in a front view.

Objects keep their size in the world (no per-asset normalisation): every view is taken at the distance
``d * WORLD_RADIUS / sin(fov / 2)`` with one fixed radius, so "small" and "large" objects look small and
large.

Besides the multi-view set, ``generate_world`` writes a 2D image-text set (single RGB renders on white)
whose concepts include *held-out* ones that never occur in the 3D set (default: the colours pink and
cyan and the shape torus): the setting of MVDream's joint training on 2D and 3D data, where 2D data
carries concepts that 3D data lacks.

Layout of ``generate_world(out)``::

    out/world.json                   the recipe (seed, counts, held-out concepts, palette, ...)
    out/assets/<id>.ply, <id>.txt    mesh (vertex colours) and caption
    out/assets/attributes.jsonl      {"id", "file", "caption", "attributes"} per asset
    out/multiview/<id>/              rgba_XXX.png + meta.json (render format, plus "attributes")
    out/multiview/<id>/feature_XXX.png  objects with a front feature: where view XXX sees it (L, 255 = feature)
    out/image_text/<id>.png, .txt    RGB image on white + caption
    out/image_text/captions.jsonl    {"file", "caption", "attributes"} per image

Attributes (the labels an evaluation classifier needs): ``shape``, ``color``, ``size`` ("small"/"large",
None for pairs), ``feature`` ("nose"/"horn"/"face"/None), ``feature_color``, ``second_shape``,
``second_color`` (None for single objects); 2D images add ``azimuth``, ``elevation``, ``fov_deg``,
``view`` ("front"/"side"/"back").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..files import atomic_write_bytes, atomic_write_text, ensure_writable_dir
from .gl_renderer import _shared_renderer
from .render import _print_warnings_plainly
from .writer import render_assets, view_distance

__all__ = [
    "COLORS",
    "DEFAULT_HELD_OUT_COLORS",
    "DEFAULT_HELD_OUT_SHAPES",
    "FEATURES",
    "SHAPES",
    "SIZES",
    "WORLD_RADIUS",
    "add_synth_subparser",
    "build_mesh",
    "caption_of",
    "cmd_synth",
    "generate_world",
    "make_asset",
    "make_image_sample",
    "view_name",
]

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 35),
    "green": (35, 165, 55),
    "blue": (35, 75, 220),
    "yellow": (240, 215, 35),
    "orange": (245, 130, 25),
    "purple": (130, 45, 180),
    "white": (235, 235, 235),
    "black": (50, 50, 50),
    "pink": (245, 135, 190),
    "cyan": (35, 205, 215),
    "brown": (130, 80, 40),
}
SHAPES: tuple[str, ...] = ("cube", "sphere", "cylinder", "cone", "torus", "pyramid")
FEATURES: tuple[str, ...] = ("nose", "horn", "face")
SIZES: dict[str, float] = {"small": 0.42, "large": 0.72}  # longest side of the main body
PAIR_SIZE = 0.4  # each object of a two-object scene
PAIR_OFFSET = 0.27  # |x| of the two objects' centres
WORLD_RADIUS = 0.66  # the fixed r of the camera-distance rule: holds every asset the generator makes
SHAPES_WITHOUT_FEATURE: tuple[str, ...] = ("torus",)
DEFAULT_HELD_OUT_COLORS: tuple[str, ...] = ("pink", "cyan")
DEFAULT_HELD_OUT_SHAPES: tuple[str, ...] = ("torus",)
ATTRIBUTE_KEYS = ("shape", "color", "size", "feature", "feature_color", "second_shape", "second_color")


# --------------------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------------------


def _rotation_x(deg: float) -> np.ndarray:
    import trimesh

    return trimesh.transformations.rotation_matrix(math.radians(deg), [1, 0, 0])


def _primitive(shape: str, s: float) -> Any:
    """A primitive centred at the origin, longest side ``s``, upright (+y up), its front facing +z."""
    import trimesh
    from trimesh import creation

    if shape == "cube":
        m = creation.box((s, s, s))
    elif shape == "sphere":
        m = creation.icosphere(subdivisions=3, radius=s / 2)
    elif shape == "cylinder":
        m = creation.cylinder(radius=0.4 * s, height=s, sections=32)
        m.apply_transform(_rotation_x(-90))  # axis z -> y
    elif shape == "cone":
        m = creation.cone(radius=s / 2, height=s, sections=32)  # base z=0, apex z=s
        m.apply_transform(_rotation_x(-90))  # apex -> +y
        m.apply_translation((0, -s / 2, 0))
    elif shape == "torus":
        # standing ring facing the front (axis z): a ring from the front and back, a slab from the side
        m = creation.torus(major_radius=0.34 * s, minor_radius=0.16 * s, major_sections=40, minor_sections=16)
    elif shape == "pyramid":
        h = s / 2
        v = np.array([[-h, -h, -h], [h, -h, -h], [h, -h, h], [-h, -h, h], [0, h, 0]], dtype=np.float64)
        f = np.array([[0, 1, 2], [0, 2, 3], [0, 4, 1], [1, 4, 2], [2, 4, 3], [3, 4, 0]])
        m = trimesh.Trimesh(v, f, process=False)  # faces wound outwards
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")
    return m


def _front_surface_z(shape: str, s: float, x: float, y: float) -> float:
    """z of the primitive's front (+z) surface above the point (x, y) of the front view."""
    if shape == "cube":
        return s / 2
    if shape == "sphere":
        return math.sqrt(max((s / 2) ** 2 - x * x - y * y, 0.0))
    if shape == "cylinder":
        return math.sqrt(max((0.4 * s) ** 2 - x * x, 0.0))
    if shape == "cone":  # radius at height y is (s/2) * (1/2 - y/s)
        r = (s / 2) * (0.5 - y / s)
        return math.sqrt(max(r * r - x * x, 0.0))
    if shape == "pyramid":  # front face: z = (s/2) * (1/2 - y/s)
        return (s / 2) * (0.5 - y / s)
    if shape == "torus":  # front of the bottom of the ring
        return 0.16 * s
    raise ValueError(f"unknown shape {shape!r}")


# Where each shape carries its feature in the front view (x, y as fractions of s): low on the slanted
# cone and pyramid, where they are wide enough to hold it; the torus carries none (its hole would show
# the feature from behind).
_FEATURE_CENTRE_Y = {"cube": 0.0, "sphere": 0.0, "cylinder": 0.0, "cone": -0.2, "pyramid": -0.2, "torus": -0.34}
# Face layout (fractions of s): eyes at (+-EYE_X, EYE_DY) and a mouth at MOUTH_DY from the feature centre;
# the cone and pyramid narrow upwards, so their faces are narrower.
_FACE_SCALE = {"cone": 0.75, "pyramid": 0.75}


def _front_anchor(shape: str, s: float) -> np.ndarray:
    """A point on the +z side of the primitive where the front feature is attached."""
    y = _FEATURE_CENTRE_Y[shape] * s if shape in _FEATURE_CENTRE_Y else None
    if y is None:
        raise ValueError(f"unknown shape {shape!r}")
    return np.array([0.0, y, _front_surface_z(shape, s, 0.0, y)])


def _feature_parts(feature: str, shape: str, s: float) -> list[Any]:
    """The meshes of a front feature on ``shape`` of side ``s``, sized so that the front view at 64 px
    (azimuth 0, elevation 0-15) shows it over at least 8 % of the object's silhouette (``tests/test_synth.py``
    measures this; at elevation 30 a small cube's horn covers 7.9 %):

    - nose: a sphere of radius 0.22 s, its centre 0.1 s in front of the surface;
    - horn: a cone of base radius 0.22 s and length 0.42 s pointing along +z;
    - face: two eyes (spheres of radius 0.1 s) above a mouth (a 0.42 s x 0.1 s bar), all standing
      slightly proud of the surface: the toy form of the paper's "faces" that make 2D lifting Janus.
    """
    from trimesh import creation

    anchor = _front_anchor(shape, s)
    if feature == "nose":
        m = creation.icosphere(subdivisions=2, radius=0.22 * s)
        m.apply_translation(anchor + np.array([0.0, 0.0, 0.1 * s]))
        return [m]
    if feature == "horn":
        m = creation.cone(radius=0.22 * s, height=0.42 * s, sections=24)  # base z=0, apex along +z
        m.apply_translation(anchor - np.array([0.0, 0.0, 0.06 * s]))
        return [m]
    if feature == "face":
        k = _FACE_SCALE.get(shape, 1.0)
        cx, cy = 0.0, float(anchor[1])
        parts = []
        for ex in (-0.19 * k * s, 0.19 * k * s):
            ey = cy + 0.12 * s
            eye = creation.icosphere(subdivisions=2, radius=0.1 * k * s)
            eye.apply_translation((cx + ex, ey, _front_surface_z(shape, s, ex, ey) + 0.02 * s))
            parts.append(eye)
        my = cy - 0.14 * s
        w, h = 0.42 * k * s, 0.1 * s
        mouth = creation.box((w, h, 0.12 * s))
        # deep enough at its ends to stay in contact with a curved surface
        z_mid = min(_front_surface_z(shape, s, x, my) for x in (-w / 2, 0.0, w / 2))
        mouth.apply_translation((cx, my, z_mid + 0.03 * s))
        parts.append(mouth)
        return parts
    raise ValueError(f"unknown feature {feature!r}; expected one of {', '.join(FEATURES)}")


def _coloured(mesh: Any, colour: str) -> Any:
    from trimesh.visual import ColorVisuals

    rgba = np.array([*COLORS[colour], 255], dtype=np.uint8)
    mesh.visual = ColorVisuals(mesh, vertex_colors=np.tile(rgba, (len(mesh.vertices), 1)))
    return mesh


def build_mesh(attributes: dict) -> Any:
    """The mesh an attribute dict describes (deterministic: no randomness left)."""
    import trimesh

    a = attributes
    if a.get("second_shape"):
        left = _coloured(_primitive(a["shape"], PAIR_SIZE), a["color"])
        left.apply_translation((-PAIR_OFFSET, 0, 0))
        right = _coloured(_primitive(a["second_shape"], PAIR_SIZE), a["second_color"])
        right.apply_translation((PAIR_OFFSET, 0, 0))
        parts = [left, right]
    else:
        s = SIZES[a["size"]]
        parts = [_coloured(_primitive(a["shape"], s), a["color"])]
        if a.get("feature"):
            parts += [_coloured(p, a["feature_color"]) for p in _feature_parts(a["feature"], a["shape"], s)]
    mesh = trimesh.util.concatenate(parts)
    mesh.metadata["name"] = caption_of(a)
    return mesh


def _a(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def caption_of(attributes: dict, size_word: bool = True) -> str:
    """The caption of an attribute dict, e.g. "a small red cube with an orange nose" ("a red cube with an
    orange nose" with ``size_word=False``: people leave attributes out, and a world whose single objects
    always name their size teaches a model that a caption without one means a two-object scene)."""
    a = attributes
    if a.get("second_shape"):
        return f"{_a(a['color'] + ' ' + a['shape'])} and {_a(a['second_color'] + ' ' + a['second_shape'])}"
    text = _a(f"{a['size']} {a['color']} {a['shape']}" if size_word else f"{a['color']} {a['shape']}")
    if a.get("feature"):
        text += f" with {_a(a['feature_color'] + ' ' + a['feature'])}"
    return text


# --------------------------------------------------------------------------------------------------
# sampling
# --------------------------------------------------------------------------------------------------


def _pick(rng: np.random.Generator, options: Sequence[str], exclude: Sequence[str] = ()) -> str:
    pool = [o for o in options if o not in exclude]
    if not pool:
        raise ValueError(f"nothing left to choose from {list(options)} after excluding {list(exclude)}")
    return pool[int(rng.integers(len(pool)))]


def _check_names(kind: str, names: Sequence[str], known: Sequence[str]) -> list[str]:
    names = list(names)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown {kind} {unknown}; known: {', '.join(known)}")
    return names


def make_attributes(
    rng: np.random.Generator,
    colors: Sequence[str] | None = None,
    shapes: Sequence[str] | None = None,
    features: Sequence[str] | None = None,
    p_feature: float = 0.5,
    p_pair: float = 0.25,
) -> dict:
    """Draw the attributes of one asset from the allowed concepts (a fixed number of draws per asset)."""
    colors = _check_names("colors", colors if colors is not None else list(COLORS), list(COLORS))
    shapes = _check_names("shapes", shapes if shapes is not None else list(SHAPES), list(SHAPES))
    features = _check_names("features", features if features is not None else list(FEATURES), list(FEATURES))
    if len(colors) < 2:
        raise ValueError(f"need at least two colours (a feature differs from its body), got {colors}")
    if not shapes:
        raise ValueError("need at least one shape")
    u = rng.random(2)
    shape, color = _pick(rng, shapes), _pick(rng, colors)
    # a torus gets no feature: seen from behind, a feature would show through its hole
    pair = bool(u[0] < p_pair)
    with_feature = bool(u[1] < p_feature) and bool(features) and shape not in SHAPES_WITHOUT_FEATURE
    size = _pick(rng, list(SIZES))
    feature = _pick(rng, features) if features else None
    feature_color = _pick(rng, colors, exclude=[color])
    second_shape, second_color = _pick(rng, shapes), _pick(rng, colors)
    a: dict[str, Any] = dict.fromkeys(ATTRIBUTE_KEYS)
    a.update(shape=shape, color=color)
    if pair:
        a.update(second_shape=second_shape, second_color=second_color)
    else:
        a.update(size=size)
        if with_feature:
            a.update(feature=feature, feature_color=feature_color)
    return a


def make_asset(
    rng: np.random.Generator | int,
    colors: Sequence[str] | None = None,
    shapes: Sequence[str] | None = None,
    features: Sequence[str] | None = None,
    p_feature: float = 0.5,
    p_pair: float = 0.25,
    size_word: bool = True,
) -> tuple[Any, str, dict]:
    """One random captioned asset.

    Args:
        rng: a ``numpy.random.Generator`` (or a seed). The same generator state gives the same asset.
        colors, shapes, features: allowed concepts (default: all of ``COLORS``, ``SHAPES``, ``FEATURES``).
        p_feature: probability that a single object has a front feature.
        p_pair: probability of a two-object scene.
        size_word: whether the caption of a single object names its size.

    Returns:
        ``(mesh, caption, attributes)``: a ``trimesh.Trimesh`` with vertex colours (world units, centred
        at the origin, front = +z, fits in a sphere of ``WORLD_RADIUS``), e.g. "a small red cube with a
        yellow nose", and the attribute dict (keys ``ATTRIBUTE_KEYS``).
    """
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    attributes = make_attributes(rng, colors, shapes, features, p_feature, p_pair)
    return build_mesh(attributes), caption_of(attributes, size_word), attributes


def view_name(azimuth: float) -> str:
    """"front" within 45 degrees of azimuth 0 (camera on +z), "back" within 45 of 180, else "side"."""
    a = float(azimuth) % 360.0
    d = min(a, 360.0 - a)
    if d <= 45.0:
        return "front"
    if d >= 135.0:
        return "back"
    return "side"


def make_image_sample(
    rng: np.random.Generator | int,
    colors: Sequence[str] | None = None,
    shapes: Sequence[str] | None = None,
    elevation_range: Sequence[float] = (0.0, 30.0),
    fov_range: Sequence[float] = (30.0, 50.0),
    distance_range: Sequence[float] = (0.9, 1.1),
    p_view: float = 0.5,
    p_feature: float = 0.5,
    p_pair: float = 0.25,
    size_word: bool = True,
) -> tuple[Any, str, dict, dict]:
    """One 2D image-text sample: ``(mesh, caption, attributes, camera)``.

    The caption says the view ("..., front view") with probability ``p_view``; ``camera`` has
    ``c2w`` (4x4 OpenGL), ``fov_deg``, ``azimuth``, ``elevation``, ``distance``.
    """
    from ..cameras import create_camera_to_world_matrix

    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    mesh, caption, attributes = make_asset(rng, colors, shapes, p_feature=p_feature, p_pair=p_pair,
                                           size_word=size_word)
    az = float(rng.uniform(0.0, 360.0))
    el = float(rng.uniform(*elevation_range))
    fov = float(rng.uniform(*fov_range))
    dist = float(view_distance(rng.uniform(*distance_range), WORLD_RADIUS, fov))
    say_view = bool(rng.random() < p_view)
    view = view_name(az)
    if say_view:
        caption = f"{caption}, {view} view"
    attributes = dict(attributes, azimuth=az, elevation=el, fov_deg=fov, view=view, caption_has_view=say_view)
    camera = {
        "c2w": create_camera_to_world_matrix(el, az, dist), "fov_deg": fov, "azimuth": az, "elevation": el,
        "distance": dist,
    }
    return mesh, caption, attributes, camera


# --------------------------------------------------------------------------------------------------
# the world on disk
# --------------------------------------------------------------------------------------------------


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    a = rgba[..., 3:4].astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32) * a + 255.0 * (1.0 - a)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def feature_mask_mesh(mesh: Any, attributes: dict) -> Any:
    """A copy of ``mesh`` that is white where the front feature is and black elsewhere (by vertex colour:
    the feature is the only part in ``attributes["feature_color"]``)."""
    m = mesh.copy()
    vc = np.array(m.visual.vertex_colors, copy=True)
    is_feature = np.all(vc[:, :3] == np.asarray(COLORS[attributes["feature_color"]], np.uint8), axis=1)
    vc[:, :3] = np.where(is_feature[:, None], 255, 0).astype(np.uint8)
    m.visual.vertex_colors = vc
    return m


def feature_pixels(render: np.ndarray) -> np.ndarray:
    """(H, W) bool: where a render (H, W, 4 uint8) of :func:`feature_mask_mesh` shows the feature (lit
    white, not the black rest of the object, not the transparent background)."""
    return (render[..., :3].max(-1) > 20) & (render[..., 3] > 0)


def feature_mask_name(view_file: str) -> str:
    """The mask file of a view: ``rgba_003.png`` -> ``feature_003.png``."""
    return "feature_" + view_file.removeprefix("rgba_")


def write_feature_masks(multiview_dir: str | os.PathLike, rows: Sequence[dict], meshes_dir: str | os.PathLike,
                        progress: bool = False) -> int:
    """For each asset with a front feature, write ``feature_XXX.png`` (uint8 L: 255 where the view sees the
    feature, 0 elsewhere) beside every ``rgba_XXX.png``, rendered with the view's own camera. Training uses
    them to weight the loss on the feature's pixels (``train.feature_loss_weight``). Existing masks are
    kept (resumable). Returns the number of masks written."""
    import io

    import trimesh
    from PIL import Image
    from tqdm.auto import tqdm

    mv, meshes = Path(multiview_dir), Path(meshes_dir)
    written = 0
    featured = [r for r in rows if r["attributes"].get("feature")]
    renderer = None
    for r in tqdm(featured, desc="feature masks", unit="asset", disable=not progress):
        folder = mv / r["id"]
        meta_path = folder / "meta.json"
        if not meta_path.is_file():
            continue
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        todo = [v for v in meta["views"] if not (folder / feature_mask_name(v["file"])).is_file()]
        if not todo:
            continue
        if renderer is None or renderer.width != int(meta["size"]):
            renderer = _shared_renderer(int(meta["size"]))
        mesh = feature_mask_mesh(trimesh.load(meshes / r["file"], process=False), r["attributes"])
        for v in todo:
            lit = feature_pixels(renderer.render(mesh, np.asarray(v["c2w"], np.float64), float(v["fov_deg"])))
            buf = io.BytesIO()
            Image.fromarray((lit * 255).astype(np.uint8), mode="L").save(buf, format="PNG")
            atomic_write_bytes(folder / feature_mask_name(v["file"]), buf.getvalue())
            written += 1
    return written


def generate_world(
    out: str | os.PathLike,
    num_3d: int = 200,
    num_2d: int = 1000,
    views: int = 32,
    size: int = 64,
    image_size: int = 64,
    seed: int = 0,
    workers: int = 1,
    held_out_colors: Sequence[str] = DEFAULT_HELD_OUT_COLORS,
    held_out_shapes: Sequence[str] = DEFAULT_HELD_OUT_SHAPES,
    elevation_range: Sequence[float] = (0.0, 30.0),
    fov_range: Sequence[float] = (15.0, 60.0),
    distance_range: Sequence[float] = (0.9, 1.1),
    image_fov_range: Sequence[float] = (30.0, 50.0),
    p_feature: float = 0.5,
    p_pair: float = 0.25,
    p_view: float = 0.5,
    p_size_word: float = 0.5,
    progress: bool = True,
) -> dict:
    """Write the synthetic world (see the module docstring for the layout). Resumable.

    Asset ``i`` is drawn from ``numpy.random.default_rng([seed, 3, i])`` and image ``i`` from
    ``default_rng([seed, 2, i])``, so every item depends only on the seed and its index (not on the
    counts). 3D assets use only the concepts that are not held out; 2D images use all of them. A single
    object's caption names its size with probability ``p_size_word``, drawn from a stream of its own
    (``[seed, 4, i]`` for assets, ``[seed, 5, i]`` for images), so the meshes and renders do not depend on it.

    Returns:
        The content of ``world.json``.

    Raises:
        ValueError: bad arguments, an unwritable ``out``, or an ``out`` that holds a world made with a
        different recipe.
    """
    from tqdm.auto import tqdm

    num_3d, num_2d, views, size, image_size = int(num_3d), int(num_2d), int(views), int(size), int(image_size)
    if num_3d < 0 or num_2d < 0:
        raise ValueError(f"counts must be >= 0, got num_3d={num_3d}, num_2d={num_2d}")
    if views < 1 or size < 1 or image_size < 1:
        raise ValueError(f"views, size and image_size must be >= 1, got {views}, {size}, {image_size}")
    for name, value in (("p_size_word", p_size_word), ("p_feature", p_feature), ("p_pair", p_pair),
                        ("p_view", p_view)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    held_c = _check_names("held-out colors", held_out_colors, list(COLORS))
    held_s = _check_names("held-out shapes", held_out_shapes, list(SHAPES))
    colors_3d = [c for c in COLORS if c not in held_c]
    shapes_3d = [s for s in SHAPES if s not in held_s]
    if len(colors_3d) < 2 or not shapes_3d:
        raise ValueError("held-out concepts leave too little for the 3D set (need >= 2 colours and >= 1 shape)")

    root = ensure_writable_dir(Path(out))
    recipe = {
        "version": 2,  # 2: front features cover >= 8 % of the front silhouette at 64 px; "face"
        "seed": int(seed),
        "num_3d": num_3d,
        "num_2d": num_2d,
        "views": views,
        "size": size,
        "image_size": image_size,
        "held_out": {"colors": held_c, "shapes": held_s},
        "concepts_3d": {"colors": colors_3d, "shapes": shapes_3d, "features": list(FEATURES)},
        "concepts_2d": {"colors": list(COLORS), "shapes": list(SHAPES), "features": list(FEATURES)},
        "palette": {k: list(v) for k, v in COLORS.items()},
        "sizes": SIZES,
        "pair": {"size": PAIR_SIZE, "offset_x": PAIR_OFFSET},
        "world_radius": WORLD_RADIUS,
        "front": "+z (azimuth 0 camera); a pair's first object is at -x (left in a front view)",
        "camera_distance": "d * world_radius / sin(fov/2)",
        "elevation_range": list(map(float, elevation_range)),
        "fov_range": list(map(float, fov_range)),
        "distance_range": list(map(float, distance_range)),
        "image_fov_range": list(map(float, image_fov_range)),
        "p_feature": p_feature,
        "p_pair": p_pair,
        "p_view": p_view,
        **({"p_size_word": p_size_word} if p_size_word != 1.0 else {}),  # worlds made before it: always 1
    }
    world_path = root / "world.json"
    if world_path.is_file():
        try:
            old = json.loads(world_path.read_text())
        except ValueError:
            old = None
        if old is not None and {k: old.get(k) for k in recipe} != json.loads(json.dumps(recipe)):
            raise ValueError(
                f"{root} holds a synthetic world made with a different recipe (see {world_path}); "
                "use another output directory"
            )
    atomic_write_text(world_path, json.dumps(dict(recipe, complete=False), indent=1))
    t0 = time.perf_counter()

    # 3D assets
    assets_dir = ensure_writable_dir(root / "assets")
    rows, paths, extra = [], [], {}
    for i in range(num_3d):
        rng = np.random.default_rng([int(seed), 3, i])
        size_word = bool(np.random.default_rng([int(seed), 4, i]).random() < p_size_word)
        mesh, caption, attributes = make_asset(rng, colors_3d, shapes_3d, p_feature=p_feature, p_pair=p_pair,
                                               size_word=size_word)
        aid = f"asset_{i:05d}"
        ply = assets_dir / f"{aid}.ply"
        if not ply.is_file():
            atomic_write_bytes(ply, mesh.export(file_type="ply"))
        atomic_write_text(assets_dir / f"{aid}.txt", caption + "\n")
        rows.append({"id": aid, "file": f"{aid}.ply", "caption": caption, "attributes": attributes})
        paths.append(ply)
        extra[str(ply)] = {"attributes": attributes, "id": aid}
    atomic_write_text(assets_dir / "attributes.jsonl", _jsonl(rows))

    # multi-view renders of the 3D assets
    mv = {"rendered": [], "skipped": [], "failed": {}}
    if paths:
        mv = render_assets(
            paths, root / "multiview", workers=workers, extra_meta=extra, progress=progress,
            num_views=views, size=size, elevation_range=tuple(elevation_range), fov_range=tuple(fov_range),
            distance_range=tuple(distance_range), seed=int(seed), normalize=False, radius=WORLD_RADIUS,
        )

    masks = write_feature_masks(root / "multiview", rows, assets_dir, progress=progress) if paths else 0

    # 2D image-text set
    img_dir = ensure_writable_dir(root / "image_text")
    renderer = _shared_renderer(image_size) if num_2d else None
    rows2 = []
    from PIL import Image

    for i in tqdm(range(num_2d), desc="images", unit="img", disable=not progress):
        rng = np.random.default_rng([int(seed), 2, i])
        mesh, caption, attributes, cam = make_image_sample(
            rng, elevation_range=elevation_range, fov_range=image_fov_range, distance_range=distance_range,
            p_view=p_view, p_feature=p_feature, p_pair=p_pair,
            size_word=bool(np.random.default_rng([int(seed), 5, i]).random() < p_size_word),
        )
        iid = f"img_{i:05d}"
        png = img_dir / f"{iid}.png"
        if not png.is_file():
            rgb = _composite_on_white(renderer.render(mesh, cam["c2w"], cam["fov_deg"]))
            import io

            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, format="PNG")
            atomic_write_bytes(png, buf.getvalue())
        atomic_write_text(img_dir / f"{iid}.txt", caption + "\n")
        rows2.append({"file": f"{iid}.png", "caption": caption, "attributes": attributes})
    atomic_write_text(img_dir / "captions.jsonl", _jsonl(rows2))

    world = dict(
        recipe,
        complete=not mv["failed"],
        counts={
            "assets": num_3d, "multiview_rendered": len(mv["rendered"]), "multiview_skipped": len(mv["skipped"]),
            "multiview_failed": len(mv["failed"]), "feature_masks_written": masks, "images": num_2d,
        },
        seconds=round(time.perf_counter() - t0, 2),
    )
    atomic_write_text(world_path, json.dumps(world, indent=1))
    return world


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------


def add_synth_subparser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``synth`` to a ``parser.add_subparsers()`` object (handler: ``cmd_synth``)."""
    p = subparsers.add_parser(
        "synth",
        help="generate a procedural captioned 3D world: assets, multi-view renders and a 2D image-text set",
        description="Write DIR/assets (meshes, captions, attributes), DIR/multiview (renders in the "
        "`mvdream3d render` format), DIR/image_text (2D images with captions, including held-out "
        "concepts absent from the 3D set) and DIR/world.json. Re-running resumes.",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--num-3d", type=int, default=200, help="number of 3D assets (default 200)")
    p.add_argument("--num-2d", type=int, default=1000, help="number of 2D image-text pairs (default 1000)")
    p.add_argument("--views", type=int, default=32, help="views per 3D asset (default 32)")
    p.add_argument("--size", type=int, default=64, help="multi-view image size (default 64)")
    p.add_argument("--image-size", type=int, default=64, help="2D image size (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="render worker processes (default 1)")
    p.add_argument("--holdout-colors", nargs="*", default=list(DEFAULT_HELD_OUT_COLORS), metavar="COLOR",
                   help=f"colours only in the 2D set (default {' '.join(DEFAULT_HELD_OUT_COLORS)}; "
                        f"known: {' '.join(COLORS)})")
    p.add_argument("--holdout-shapes", nargs="*", default=list(DEFAULT_HELD_OUT_SHAPES), metavar="SHAPE",
                   help=f"shapes only in the 2D set (default {' '.join(DEFAULT_HELD_OUT_SHAPES)}; "
                        f"known: {' '.join(SHAPES)})")
    p.add_argument("--p-size-word", type=float, default=0.5,
                   help="probability that a single object's caption names its size (default 0.5; 1 = always, "
                        "as in worlds made before this option)")
    p.add_argument("--p-feature", type=float, default=0.5,
                   help="probability that a single object has a front feature (nose, horn or face; default 0.5)")
    p.add_argument("--p-pair", type=float, default=0.25,
                   help="probability that an asset or image is a two-object scene (default 0.25)")
    p.set_defaults(func=cmd_synth)
    return p


def cmd_synth(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    with _print_warnings_plainly():
        world = generate_world(
            args.out, num_3d=args.num_3d, num_2d=args.num_2d, views=args.views, size=args.size,
            image_size=args.image_size, seed=args.seed, workers=args.workers,
            held_out_colors=args.holdout_colors, held_out_shapes=args.holdout_shapes,
            p_size_word=args.p_size_word, p_feature=args.p_feature, p_pair=args.p_pair,
        )
    c = world["counts"]
    print(
        f"wrote {c['assets']} assets ({c['multiview_rendered']} rendered, {c['multiview_skipped']} already done, "
        f"{c['multiview_failed']} failed) and {c['images']} images to {args.out} in {world['seconds']:.1f} s"
    )
    return 0
