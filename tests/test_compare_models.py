"""benchmarks/compare_models.py: pooling evaluation reports over seeds, differences and verdicts."""

import importlib.util
import json
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_models.py"
_spec = importlib.util.spec_from_file_location("compare_models", _PATH)
compare_models = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare_models)


def _report(tmp_path: Path, name: str, seed: int, correct: list[bool], camera: list[float]) -> Path:
    """A report with one featureless seen prompt (``correct`` per object) and one featured held-out prompt."""
    plain = [{"correct": c, "consistent": c, "shape_accuracy": float(c), "color_accuracy": 1.0, "camera": None,
              "janus": None} for c in correct]
    def views(janus: bool) -> list[dict]:  # the feature seen at the front (bin 0 or 45) and, if Janus, at the back
        return [{"azimuth": 0.0, "feature_visible": True, "azimuth_bin_deg": 45.0 if janus else 0.0},
                {"azimuth": 90.0, "feature_visible": False, "azimuth_bin_deg": 90.0},
                {"azimuth": 180.0, "feature_visible": janus, "azimuth_bin_deg": 270.0},
                {"azimuth": 270.0, "feature_visible": False, "azimuth_bin_deg": 270.0}]

    featured = [{"correct": True, "consistent": True, "shape_accuracy": 1.0, "color_accuracy": 1.0, "camera": c,
                 "janus": c < 0.5, "views": views(c < 0.5)} for c in camera]
    report = {"settings": {"seed": seed, "ground_truth": False}, "prompts": [
        {"text": "a red cube", "groups": ["seen", "without_feature"], "model": {"objects_detail": plain}},
        {"text": "a pink torus with a nose", "groups": ["held_out", "with_feature"],
         "model": {"objects_detail": featured}},
    ]}
    path = tmp_path / f"{name}_{seed}.json"
    path.write_text(json.dumps(report))
    return path


def test_pools_seeds_and_judges_differences(tmp_path):
    a = [_report(tmp_path, "a", s, [True, False] * 4, [0.25] * 8) for s in (0, 1)]
    b = [_report(tmp_path, "b", s, [True, False] * 4, [1.0] * 8) for s in (0, 1)]
    result = compare_models.compare([("a", a), ("b", b)])
    pooled = result["pooled"]["a"]
    assert pooled["all"]["objects"] == 32 and pooled["all"]["featured_objects"] == 16
    assert pooled["seen"]["prompt_accuracy"] == 0.5 and pooled["held_out"]["prompt_accuracy"] == 1.0
    assert pooled["all"]["prompt_accuracy"] == 0.75
    cam = result["differences"]["b"]["all"]["camera_adherence"]
    assert cam["difference"] == 0.75 and cam["se"] == 0.0 and not cam["shown"]  # no spread: no verdict from se 0
    same = result["differences"]["b"]["seen"]["prompt_accuracy"]
    assert same["difference"] == 0.0 and not same["shown"]
    janus = result["differences"]["b"]["held_out"]["janus_rate"]
    assert janus["difference"] == -1.0
    assert len(result["objects"]["b"]) == 32 and {o["seed"] for o in result["objects"]["b"]} == {0, 1}
    # a: every featured object Janus: seen at the front (within one bin) and at the back (90 degrees off)
    assert result["placement"]["a"] == {"views_seen": 32, "views_seen_within_one_bin": 16, "back_views": 16,
                                        "back_views_seen": 16, "within_one_bin": 0.5, "back_seen": 1.0}
    assert result["placement"]["b"]["within_one_bin"] == 1.0 and result["placement"]["b"]["back_seen"] == 0.0
    table = compare_models.markdown(result)
    assert "| seen from the back | 1.00 (16 / 16) | 0.00 (0 / 16) |" in table
    assert "| all | camera_adherence | 0.250 +- 0.000 | 1.000 +- 0.000 | +0.750 +- 0.000 |" in table


def test_a_real_difference_is_shown_and_noise_is_not(tmp_path):
    a = [_report(tmp_path, "a", 0, [True, False] * 20, [0.0, 0.5] * 20)]
    b = [_report(tmp_path, "b", 0, [True] * 22 + [False] * 18, [1.0, 0.5] * 20)]
    d = compare_models.compare([("a", a), ("b", b)])["differences"]["b"]["all"]
    assert d["camera_adherence"]["shown"]  # 0.25 -> 0.75, se 0.056
    assert not d["prompt_accuracy"]["shown"]  # 0.75 -> 0.775 over 80 objects: within 2 se


def test_bad_input_names_the_problem(tmp_path):
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"settings": {"seed": 0, "ground_truth": True}, "prompts": []}))
    with pytest.raises(ValueError, match="ground-truth"):
        compare_models.load_objects([gt])
    a = [_report(tmp_path, "a", 0, [True], [1.0])]
    with pytest.raises(ValueError, match="names must differ"):
        compare_models.compare([("x", a), ("x", a)])
    with pytest.raises(SystemExit):
        compare_models.main(["--model", "only", str(a[0])])
