"""Evaluation of multi-view generation in the procedural world: a view classifier, metrics, reports.

* :mod:`.classifier`: a small CNN that reads shape, colour, front-feature visibility and camera azimuth
  off a view (``mvdream3d train-classifier``; a trained one ships with the package).
* :mod:`.prompts`: the held-out prompt set and a parser from captions back to attributes.
* :mod:`.metrics`: prompt accuracy, cross-view consistency, camera adherence, Janus rate, Frechet distance.
* :mod:`.janus`: the Janus verdict of a 3D object (arcs of views all round it that see the front feature).
* :mod:`.evaluate`: ``mvdream3d evaluate``: generate, classify, compare with the ground-truth ceiling, report.
"""

from .classifier import ViewClassifier, load_classifier, train_classifier
from .metrics import frechet_distance
from .prompts import load_prompts, parse_prompt

__all__ = ["ViewClassifier", "frechet_distance", "load_classifier", "load_prompts", "parse_prompt",
           "train_classifier"]
