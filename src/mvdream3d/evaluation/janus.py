"""The Janus verdict of a 3D object: how many fronts it has, judged all round it.

A multi-face ("Janus") object shows its front feature in more than one place. The verdict takes the
view classifier's per-view reading "is the front feature seen?" for views at evenly spaced azimuths
(36 renders, every 10 degrees, elevation 15, starting at azimuth 0), smooths out one-view flips (the
classifier's noise) with a 3-view circular majority vote, and counts the separate arcs of views that
see the feature (:func:`fronts_verdict`): one front = 1 arc, hidden from the back; ``janus`` = more than
one arc, or the feature seen from every azimuth (also from the back, which a single front is not: the
ground-truth mesh, measured the same way, hides it over about a quarter of the turn).

Besides the classifier, :func:`feature_colour` reads the feature's colour and place off the mesh's vertex
colours, and :func:`front_orientation` finds the front by geometry alone (the Chamfer
distance to the ground-truth mesh turned about the vertical axis), which also sees a feature grown as
geometry without its colour. ``benchmarks/text_to_3d_eval.py`` drives these on text-to-3D runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..cameras import DEFAULT_FOVY_DEG
from ..data import synth
from ..data.render import Renderer
from .classifier import render_views, to_input_array
from .evaluate import fill_open_attributes
from .prompts import Prompt

__all__ = [
    "FRONT_GAIN_MIN",
    "chamfer",
    "count_fronts",
    "front_orientation",
    "fronts_verdict",
    "feature_colour",
    "ground_truth_mesh",
    "measure_mesh",
    "mesh_views",
    "smooth_visible",
    "view_verdicts",
]

FRONT_GAIN_MIN = 0.03  # see front_orientation
FEATURE_SHARE_MIN = 0.25  # see feature_colour: of the ground truth's share
FEATURE_SHARE_MAX = 3.0  # see feature_colour: more is the body turned the feature's colour, not a feature


def count_fronts(visible: np.ndarray) -> int:
    """Separate circular runs of True in ``visible`` (views in azimuth order around the object).

    A feature seen from every azimuth is one run, but it is also seen from the back: see :func:`fronts_verdict`.
    """
    v = np.asarray(visible, bool)
    if v.all():
        return 1
    if not v.any():
        return 0
    return int(np.sum(v & ~np.roll(v, 1)))


def smooth_visible(visible: np.ndarray) -> np.ndarray:
    """Circular majority vote over each view and its two neighbours (views 10 degrees apart).

    A one-view flip is the classifier's noise, not a face: a real front is seen over an arc of about
    20 views, and a second face would be too. The vote removes single-view flips both ways (a lone
    "hidden" view inside an arc, a lone "seen" view outside one) and leaves runs of 2 or more views alone.
    """
    v = np.asarray(visible, bool)
    if len(v) < 3:
        return v
    return (v.astype(int) + np.roll(v, 1) + np.roll(v, -1)) >= 2


def fronts_verdict(visible: np.ndarray) -> dict:
    """``fronts`` (arcs in which the front feature is seen), ``everywhere`` (seen from every azimuth, i.e.
    also from the back) and ``janus``: more than one front, or a front seen from all around. A true single
    front is hidden from the back (the ground-truth renders hide it over about a quarter of the turn).
    ``one_front`` also asks that the one arc be the front: seen from azimuth 0, hidden from azimuth 180
    (``visible`` starts at azimuth 0 and goes round evenly). The per-view verdicts are first smoothed by
    :func:`smooth_visible`."""
    v = smooth_visible(visible)
    fronts = count_fronts(v)
    everywhere = bool(v.all())
    at_front = bool(len(v) and v[0] and not v[len(v) // 2])
    return {"fronts": fronts, "everywhere": everywhere, "janus": fronts > 1 or everywhere,
            "one_front": fronts == 1 and not everywhere and at_front}


def _normalised_points(mesh: Any, n: int = 2000, seed: int = 0) -> np.ndarray:
    """(n, 3) surface samples of ``mesh``, centred on its bounding box and scaled to unit box diagonal."""
    import trimesh

    pts, _ = trimesh.sample.sample_surface(mesh, n, seed=seed)
    lo, hi = mesh.bounds
    return (pts - (lo + hi) / 2) / np.linalg.norm(hi - lo)


def chamfer(mesh_a: Any, mesh_b: Any) -> float:
    """Symmetric Chamfer distance between two meshes, both centred and scaled to unit bounding-box
    diagonal (2,000 surface samples each)."""
    from scipy.spatial import cKDTree

    a, b = _normalised_points(mesh_a), _normalised_points(mesh_b)
    return float(cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean())


def front_orientation(mesh: Any, gt_mesh: Any, step_deg: float = 10.0) -> dict:
    """Where the mesh's front is, by geometry alone: the Chamfer distance to the ground-truth mesh turned
    about the vertical axis by each azimuth (every ``step_deg``), both normalised as in :func:`chamfer`.

    The body shapes are symmetric about the vertical axis (sphere, cylinder) or under quarter turns (cube),
    so only the feature makes one turn fit better than the others. ``best_azimuth`` is the best-fitting
    turn (0 = the feature on +z, the front); ``front_gain`` = Chamfer at 180 minus Chamfer at 0, positive
    when the mesh has its feature at the front and not at the back (a Janus object with the feature at the
    front and the back, or an object without it, gives about 0). ``front_right``: the best turn within 30
    degrees of 0 and a gain of at least ``FRONT_GAIN_MIN`` (meshes without a feature gave gains up to 0.012;
    the ground-truth meshes give 0.10 for the nose and 0.19 for the horn). Unlike the classifier it ignores
    colour, so it sees a feature grown as geometry only.
    """
    from scipy.spatial import cKDTree

    a, b0 = _normalised_points(mesh), _normalised_points(gt_mesh)
    tree_a = cKDTree(a)
    azimuths = np.arange(0.0, 360.0, step_deg)
    profile = []
    for az in np.radians(azimuths):
        # turn the normalised points (not the mesh): a turned cube's bounding box would change its scale
        c, s = np.cos(az), np.sin(az)
        b = b0 @ np.array([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])
        profile.append(float(cKDTree(b).query(a)[0].mean() + tree_a.query(b)[0].mean()))
    profile = np.asarray(profile)
    best = float(azimuths[int(np.argmin(profile))])
    best = best - 360.0 if best > 180.0 else best
    back = int(round(180.0 / step_deg))
    gain = float(profile[back] - profile[0])
    return {"best_azimuth": best, "front_gain": round(gain, 4),
            "front_right": abs(best) <= 30.0 and gain >= FRONT_GAIN_MIN, "profile": [round(x, 4) for x in profile]}


def feature_colour(mesh: Any, prompt: Prompt, gt_share: float | None = None) -> dict:
    """Is the front feature there in its prompt colour, and where? Read from the mesh's vertex colours, without
    the classifier.

    Every face takes the mean colour of its vertices and is labelled with the nearest colour of the world's
    palette (``synth.COLORS``, RGB distance). ``share``: the surface-area share of faces labelled with the
    prompt's feature colour. ``azimuth``: the direction of those faces' area-weighted centroid from the
    mesh's bounding-box centre, about the vertical axis (0 = +z, the front; degrees in (-180, 180]).
    ``in_colour_at_front``: a share between ``FEATURE_SHARE_MIN`` and ``FEATURE_SHARE_MAX`` times ``gt_share``
    (the ground-truth mesh's own share, when given; else any share > 0: a larger share is the body turned the
    feature's colour, not a feature) and an azimuth within 45 degrees of the front.
    A prompt without a feature gives ``share`` None.
    """
    colour = prompt.attributes.get("feature_color")
    if not prompt.attributes.get("feature") or colour is None:
        return {"share": None, "azimuth": None, "in_colour_at_front": False}
    names = list(synth.COLORS)
    palette = np.asarray([synth.COLORS[n] for n in names], np.float64)
    vc = np.asarray(mesh.visual.vertex_colors, np.float64)[:, :3]
    face_rgb = vc[mesh.faces].mean(axis=1)
    nearest = np.argmin(((face_rgb[:, None, :] - palette[None]) ** 2).sum(-1), axis=1)
    is_feature = nearest == names.index(colour)
    area = np.asarray(mesh.area_faces, np.float64)
    share = float(area[is_feature].sum() / max(area.sum(), 1e-12))
    azimuth = None
    if is_feature.any():
        lo, hi = mesh.bounds
        c = (mesh.triangles_center[is_feature] * area[is_feature, None]).sum(0) / area[is_feature].sum() - (lo + hi) / 2
        azimuth = float(np.degrees(np.arctan2(c[0], c[2])))
    enough = share > 0 if gt_share is None else FEATURE_SHARE_MIN * gt_share <= share <= FEATURE_SHARE_MAX * gt_share
    return {"share": round(share, 4), "azimuth": None if azimuth is None else round(azimuth, 1),
            "in_colour_at_front": bool(enough and azimuth is not None and abs(azimuth) <= 45.0)}


def view_verdicts(views: np.ndarray, classifier: Any, prompt: Prompt) -> dict:
    """Classify views in azimuth order (V, H, W, 3 uint8): prompt right in the 4 fixed views (azimuth
    0/90/180/270: shape and colour), and per view whether the front feature is seen.

    Returns ``{"prompt_ok": bool, "views_ok": int (of 4), "visible": [V bools]}``."""
    pred = classifier.predict(to_input_array(views, classifier.input_size))
    n = len(views)
    a = prompt.attributes
    ok = [pred["shape_name"][i] == a["shape"] and pred["color_name"][i] == a["color"]
          for i in (0, n // 4, n // 2, 3 * n // 4)]
    return {"prompt_ok": bool(all(ok)), "views_ok": int(sum(ok)), "visible": [bool(x) for x in pred["visible"]]}


def mesh_views(mesh: Any, n_azimuths: int = 36, size: int = 64) -> np.ndarray:
    """Renders of a mesh by the world's rasteriser, as the ground truth is rendered (elevation 15, the
    pipeline's field of view, the world recipe's distance), at ``n_azimuths`` azimuths: (V, size, size, 3)
    uint8."""
    az = list(np.arange(n_azimuths) * (360.0 / n_azimuths))
    with Renderer(size) as renderer:
        return render_views(renderer, mesh, [15.0] * n_azimuths, az, [DEFAULT_FOVY_DEG] * n_azimuths)


def ground_truth_mesh(prompt: Prompt) -> Any:
    """The prompt's ground-truth mesh (open attributes drawn with seed 0)."""
    return synth.build_mesh(fill_open_attributes(prompt.attributes, np.random.default_rng(0)))


def measure_mesh(mesh: Any, gt_mesh: Any, classifier: Any, prompt: Prompt, n_azimuths: int = 36,
                 size: int = 64) -> dict:
    """The verdict on an exported mesh, rendered exactly like the ground-truth row: the mesh is moved and
    scaled so that its bounding box has the ground-truth mesh's centre and diagonal, then rendered by the
    world's rasteriser at 36 azimuths (elevation 15). Unlike the field renders it has no semi-transparent
    haze (floaters are removed at export), which the classifier can read as a feature from every side."""
    m = mesh.copy()
    lo, hi = m.bounds
    glo, ghi = gt_mesh.bounds
    m.apply_translation(-(lo + hi) / 2)
    m.apply_scale(float(np.linalg.norm(ghi - glo) / max(np.linalg.norm(hi - lo), 1e-9)))
    m.apply_translation((glo + ghi) / 2)
    out = view_verdicts(mesh_views(m, n_azimuths, size), classifier, prompt)
    out["feature_colour"] = feature_colour(mesh, prompt, feature_colour(gt_mesh, prompt)["share"])
    return out
