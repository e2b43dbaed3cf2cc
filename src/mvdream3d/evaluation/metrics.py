"""Metrics of multi-view generation from per-view classifier predictions.

Per object (``V`` views at known camera azimuths):

``correct``
    prompt accuracy: the predicted shape and colour equal the prompt's in every view;
``consistent``
    cross-view consistency: all views agree on the predicted shape and on the predicted colour
    (right or wrong);
``camera``
    camera adherence, objects with a front feature only: the share of views whose predicted azimuth bin
    is the bin of the camera's azimuth;
``janus``
    objects with a front feature only: the feature is classified visible in the back view (the view at
    azimuth 180), or more than one view is predicted to be a front view (azimuth bin 0): the "multi-face"
    failure of 2D-lifted generation.

:func:`summarize` averages them over objects (``camera`` over views of featured objects); the Frechet
distance of two feature sets (:func:`frechet_distance`) is this world's FID.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .classifier import AZIMUTH_BINS, azimuth_bin

__all__ = ["METRIC_NAMES", "background_speckle", "frechet_distance", "object_metrics", "summarize"]

METRIC_NAMES = {
    "prompt_accuracy": "prompt accuracy",
    "shape_accuracy": "shape accuracy (views)",
    "color_accuracy": "colour accuracy (views)",
    "consistency": "cross-view consistency",
    "camera_adherence": "camera adherence",
    "janus_rate": "Janus rate (lower is better)",
}


def object_metrics(
    pred_shape: Sequence[int], pred_color: Sequence[int], pred_visible: Sequence[bool], pred_azimuth: Sequence[int],
    shape: int, color: int, has_feature: bool, view_azimuths: Sequence[float], bins: int = AZIMUTH_BINS,
) -> dict[str, Any]:
    """Metrics of one object from the predictions for its views (arrays of length V, one per view).

    ``pred_azimuth`` are bin indices (``classifier.azimuth_bin``); ``view_azimuths`` the cameras' azimuths in
    degrees. ``camera`` and ``janus`` are None for objects without a front feature.
    """
    ps, pc = np.asarray(pred_shape), np.asarray(pred_color)
    pv, pa = np.asarray(pred_visible, dtype=bool), np.asarray(pred_azimuth)
    cam_bins = azimuth_bin(np.asarray(view_azimuths, dtype=np.float64), bins)
    n = len(ps)
    if not (len(pc) == len(pv) == len(pa) == len(cam_bins) == n) or n == 0:
        raise ValueError("predictions and view azimuths must have the same non-zero length")
    shape_ok, color_ok = ps == shape, pc == color
    res: dict[str, Any] = {
        "correct": bool(np.all(shape_ok & color_ok)),
        "consistent": bool(np.all(ps == ps[0]) and np.all(pc == pc[0])),
        "shape_accuracy": float(shape_ok.mean()),
        "color_accuracy": float(color_ok.mean()),
        "camera": None,
        "janus": None,
    }
    if has_feature:
        res["camera"] = float(np.mean(pa == cam_bins))
        back = cam_bins == bins // 2
        res["janus"] = bool(np.any(pv[back]) or np.sum(pa == 0) > 1)
    return res


def _mean(xs: list[float]) -> float | None:
    return float(np.mean(xs)) if xs else None


def _se(xs: list[float]) -> float | None:
    """Standard error of the mean of per-object values (of a rate: sqrt(p (1 - p) / n))."""
    return float(np.std(xs) / np.sqrt(len(xs))) if len(xs) > 1 else None


def summarize(objects: Sequence[dict[str, Any]], views_per_object: int | None = None) -> dict[str, Any]:
    """Average :func:`object_metrics` results: ``prompt_accuracy``, ``shape_accuracy``, ``color_accuracy``,
    ``consistency`` over all objects, ``camera_adherence`` and ``janus_rate`` over objects with a front
    feature (None when there are none), the counts ``objects`` / ``featured_objects``, and ``se``: the
    standard error of each mean over objects (objects are the independent draws)."""
    feat = [o for o in objects if o["camera"] is not None]
    per_object = {
        "prompt_accuracy": [float(o["correct"]) for o in objects],
        "shape_accuracy": [o["shape_accuracy"] for o in objects],
        "color_accuracy": [o["color_accuracy"] for o in objects],
        "consistency": [float(o["consistent"]) for o in objects],
        "camera_adherence": [o["camera"] for o in feat],
        "janus_rate": [float(o["janus"]) for o in feat],
    }
    return {
        "prompt_accuracy": _mean([float(o["correct"]) for o in objects]),
        "shape_accuracy": _mean([o["shape_accuracy"] for o in objects]),
        "color_accuracy": _mean([o["color_accuracy"] for o in objects]),
        "consistency": _mean([float(o["consistent"]) for o in objects]),
        "camera_adherence": _mean([o["camera"] for o in feat]),
        "janus_rate": _mean([float(o["janus"]) for o in feat]),
        "objects": len(objects),
        "featured_objects": len(feat),
        "se": {k: _se(v) for k, v in per_object.items()},
    }


def background_speckle(views: np.ndarray, background: int = 255, tolerance: int = 10, object_threshold: int = 40,
                       margin: int = 2) -> np.ndarray:
    """Share of each view's background pixels that are off the background colour by more than ``tolerance``.

    ``views``: (N, H, W, 3) uint8 on a plain ``background``. The object is every pixel off the background
    by more than ``object_threshold`` in some channel, grown by ``margin`` pixels (its antialiased edge);
    the rest is background. Returns (N,) floats in [0, 1] (0 for a view that is all object). Clean
    backgrounds (issue "Built-in model v2"): at most 0.01.
    """
    from scipy import ndimage

    v = np.asarray(views)
    if v.ndim != 4 or v.shape[-1] != 3:
        raise ValueError(f"views must be (N, H, W, 3) uint8, got shape {v.shape}")
    off = np.abs(v.astype(np.int16) - background).max(-1)
    obj = off > object_threshold
    if margin > 0:
        obj = ndimage.binary_dilation(obj, structure=np.ones((1, 2 * margin + 1, 2 * margin + 1), bool))
    bg = ~obj
    speck = (off > tolerance) & bg
    n_bg = bg.reshape(len(v), -1).sum(1)
    return np.where(n_bg > 0, speck.reshape(len(v), -1).sum(1) / np.maximum(n_bg, 1), 0.0)


def _mean_cov(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"features must be a non-empty (N, D) array, got shape {x.shape}")
    mu = x.mean(0)
    if x.shape[0] < 2:
        return mu, np.zeros((x.shape[1], x.shape[1]))
    return mu, np.cov(x, rowvar=False, ddof=1)


def _psd_sqrt(c: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((c + c.T) / 2.0)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N, D) and (M, D) (the FID formula).

    ``|mu_a - mu_b|^2 + tr(C_a) + tr(C_b) - 2 tr((C_a C_b)^(1/2))``, with the trace of the matrix square
    root computed as the sum of square roots of the eigenvalues of the symmetric PSD matrix
    ``C_a^(1/2) C_b C_a^(1/2)`` (same spectrum as ``C_a C_b``). Robust for few samples (singular
    covariances, N < D; a single sample counts as zero covariance); the result is clipped at 0.
    """
    mu_a, c_a = _mean_cov(a)
    mu_b, c_b = _mean_cov(b)
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"feature sets differ in dimension: {mu_a.shape[0]} vs {mu_b.shape[0]}")
    s = _psd_sqrt(c_a)
    m = s @ c_b @ s
    ev = np.linalg.eigvalsh((m + m.T) / 2.0)
    tr_sqrt = float(np.sum(np.sqrt(np.clip(ev, 0.0, None))))
    d = float(np.sum((mu_a - mu_b) ** 2) + np.trace(c_a) + np.trace(c_b) - 2.0 * tr_sqrt)
    return max(d, 0.0)
