"""Evaluation suite (mvdream3d.evaluation): classifier, prompt parser, metrics, Frechet distance, evaluate."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import pytest
from conftest import REQUIRE_GL, skip_unless_required

from mvdream3d.data import synth as S
from mvdream3d.evaluation import classifier as C
from mvdream3d.evaluation import evaluate as E
from mvdream3d.evaluation.metrics import frechet_distance, object_metrics, summarize
from mvdream3d.evaluation.prompts import load_prompts, parse_prompt

AZ = (0.0, 90.0, 180.0, 270.0)


def run_cli(argv: list[str]) -> int:
    """The two commands through argparse, with the error handling of ``mvdream3d.cli.main``."""
    from mvdream3d.cli import USER_ERRORS

    parser = argparse.ArgumentParser(prog="mvdream3d")
    sub = parser.add_subparsers(dest="command", required=True)
    E.add_evaluate_subparser(sub)
    C.add_train_classifier_subparser(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


@pytest.fixture(scope="module")
def renderer():
    from mvdream3d.data.render import Renderer

    try:
        r = Renderer(32)
    except RuntimeError as e:  # no EGL / Mesa on this machine
        skip_unless_required(REQUIRE_GL, f"no headless OpenGL: {e}")
    yield r
    r.release()


@pytest.fixture(scope="module")
def clf():
    return C.load_classifier()


# --------------------------------------------------------------------------------------------------
# classifier
# --------------------------------------------------------------------------------------------------


def test_shipped_classifier_reads_fresh_renders(clf, renderer):
    card = json.loads(C.default_classifier_path().with_suffix(".json").read_text())
    assert card["test_accuracy"]["shape"] >= 0.95 and card["test_accuracy"]["color"] >= 0.95
    assert clf.input_size == 32 and sum(p.numel() for p in clf.parameters()) < 500_000
    rng = np.random.default_rng(20240601)  # assets the classifier never saw (it trained on [seed, 5, i])
    images, attrs = [], []
    for _ in range(24):
        mesh, _, a = S.make_asset(rng, p_pair=0.0)
        el, az, fov = rng.uniform(0, 30), rng.uniform(0, 360), rng.uniform(25, 50)
        images.append(C.render_views(renderer, mesh, [el], [az], [fov])[0])
        attrs.append(a)
    # a larger image is resized to the input size, and RGBA is composited on white
    big = np.asarray(C.render_views(renderer, S.build_mesh(attrs[0]), [10.0], [0.0], [40.0])[0])
    pred = clf.predict(images)
    shape_ok = np.mean([p == a["shape"] for p, a in zip(pred["shape_name"], attrs, strict=True)])
    color_ok = np.mean([p == a["color"] for p, a in zip(pred["color_name"], attrs, strict=True)])
    assert shape_ok >= 0.9 and color_ok >= 0.9, (shape_ok, color_ok)
    up = np.kron(big, np.ones((2, 2, 1), np.uint8))
    rgba = np.concatenate([up, np.full(up.shape[:2] + (1,), 255, np.uint8)], -1)
    p2 = clf.predict([up, rgba])
    assert p2["shape_name"][0] == p2["shape_name"][1] == attrs[0]["shape"]
    assert pred["features"].shape == (24, clf.config.feature_dim)


def test_azimuth_bins():
    np.testing.assert_array_equal(C.azimuth_bin([0, 22.4, 22.6, 90, 180, 337.4, 337.6, 359.9, -45]),
                                  [0, 0, 1, 2, 4, 7, 0, 0, 7])


def test_train_classifier_command_writes_weights_and_card(tmp_path, capsys):
    out = tmp_path / "clf.safetensors"
    rc = run_cli(["train-classifier", "--out", str(out), "--num-assets", "10", "--views", "2", "--steps", "2",
                  "--batch-size", "8", "--size", "16"])
    assert rc == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert set(card["test_accuracy"]) >= {"shape", "color", "visible", "azimuth"}
    assert card["recipe"]["num_assets"] == 10 and card["seed"] == 0 and "train" in card["seconds"]
    model = C.load_classifier(out)
    assert model.input_size == 16
    assert "held-out accuracy" in capsys.readouterr().out
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"nope")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        C.load_classifier(bad)
    with pytest.raises(FileNotFoundError, match="not found"):
        C.load_classifier(tmp_path / "missing.safetensors")


# --------------------------------------------------------------------------------------------------
# prompts
# --------------------------------------------------------------------------------------------------


def test_parser_round_trips_synth_captions():
    for i in range(400):
        a = S.make_attributes(np.random.default_rng([7, i]))
        assert parse_prompt(S.caption_of(a)) == a
    for i in range(40):
        _, caption, a, _ = S.make_image_sample(np.random.default_rng([8, i]), p_view=1.0)
        parsed = parse_prompt(caption)
        assert parsed.pop("view") == a["view"]
        assert parsed == {k: a[k] for k in S.ATTRIBUTE_KEYS}
    a = parse_prompt("A  Red cube with a nose, 3d asset")
    assert (a["shape"], a["color"], a["size"], a["feature"], a["feature_color"]) == ("cube", "red", None, "nose", None)


def test_default_prompt_set_groups():
    prompts = load_prompts()
    assert 24 <= len(prompts) <= 40
    held = [p for p in prompts if p.held_out]
    assert 8 <= len(held) < len(prompts)
    assert any(p.has_feature for p in held) and any(not p.has_feature for p in held)
    assert {c for p in held for c in p.held_out_concepts} == {"pink", "cyan", "torus"}


@pytest.mark.parametrize("text,match", [
    ("a glowing cube", "unknown colour 'glowing'"),
    ("a red blob", "unknown shape 'blob'"),
    ("a red torus with a nose", "no front feature"),
    ("a red cube and a blue sphere", "two objects"),
])
def test_bad_prompts(text, match):
    with pytest.raises(ValueError, match=match):
        load_prompts([text])


# --------------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------------


def test_object_metrics_hand_made():
    cube, red, blue = S.SHAPES.index("cube"), list(S.COLORS).index("red"), list(S.COLORS).index("blue")
    c4 = [cube] * 4
    # perfect featured object: bins 0, 2, 4, 6 and the feature unseen from the back
    ok = object_metrics(c4, [red] * 4, [True, True, False, True], [0, 2, 4, 6], cube, red, True, AZ)
    assert ok == {**ok, "correct": True, "consistent": True, "camera": 1.0, "janus": False}
    # Janus: the feature seen in the back view, and a second "front" view
    j1 = object_metrics(c4, [red] * 4, [True, True, True, True], [0, 2, 4, 6], cube, red, True, AZ)
    j2 = object_metrics(c4, [red] * 4, [True, False, False, False], [0, 2, 0, 6], cube, red, True, AZ)
    assert j1["janus"] and j2["janus"] and j2["camera"] == 0.75 and j1["correct"]
    # consistent but wrong colour in every view
    cw = object_metrics(c4, [blue] * 4, [False] * 4, [0] * 4, cube, red, False, AZ)
    assert cw["consistent"] and not cw["correct"] and cw["color_accuracy"] == 0.0
    assert cw["camera"] is None and cw["janus"] is None
    # inconsistent: one view reads another colour
    inc = object_metrics(c4, [red, red, blue, red], [False] * 4, [0] * 4, cube, red, False, AZ)
    assert not inc["consistent"] and not inc["correct"] and inc["color_accuracy"] == 0.75
    s = summarize([ok, j1, j2, cw, inc])
    assert s["prompt_accuracy"] == pytest.approx(3 / 5)
    assert s["consistency"] == pytest.approx(4 / 5)
    assert s["janus_rate"] == pytest.approx(2 / 3)
    assert s["camera_adherence"] == pytest.approx((1 + 1 + 0.75) / 3)
    assert s["objects"] == 5 and s["featured_objects"] == 3
    empty = summarize([cw])
    assert empty["camera_adherence"] is None and empty["janus_rate"] is None


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 16))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = np.zeros(16)
    shift[:4] = 1.0
    assert frechet_distance(a, a + shift) == pytest.approx(4.0, rel=1e-6)  # a mean shift adds |shift|^2
    assert frechet_distance(a, 2.0 * a) > 1.0
    small = rng.normal(size=(3, 16))  # fewer samples than dimensions: singular covariances
    assert frechet_distance(small, small) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(small, small + 1.0) > 0
    assert frechet_distance(a[:1], a[1:2]) > 0
    with pytest.raises(ValueError, match="dimension"):
        frechet_distance(a, a[:, :8])


# --------------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------------


def test_evaluate_tiny_random_end_to_end(tmp_path, capsys, renderer):
    prompts = tmp_path / "p.txt"
    prompts.write_text("# two prompts\na red cube with a yellow nose\n\na pink torus\n")
    out = tmp_path / "eval"
    rc = run_cli(["evaluate", "tiny-random", "--prompts", str(prompts), "--num-objects", "1", "--steps", "2",
                  "--size", "32", "--out", str(out), "--no-progress"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert [p["text"] for p in report["prompts"]] == ["a red cube with a yellow nose", "a pink torus"]
    assert report["groups"]["held_out"]["prompts"] == 1 and report["groups"]["with_feature"]["prompts"] == 1
    for side in ("model", "ceiling"):
        m = report["overall"][side]
        assert 0.0 <= m["prompt_accuracy"] <= 1.0 and m["objects"] == 2 and m["fid"] >= 0.0
    assert len(report["prompts"][0]["model"]["objects_detail"][0]["views"]) == 4
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3  # the plot and two sample grids
    assert "held-out 2D-only concepts" in (out / "report.md").read_text()
    assert (out / "metrics.png").stat().st_size > 0 and len(list((out / "grids").glob("*.png"))) == 2
    assert "prompt accuracy" in capsys.readouterr().out


def test_ground_truth_scores_high(tmp_path, renderer):
    texts = ["a red cube", "a blue sphere with a yellow nose", "a large green cone with a white horn",
             "a pink cylinder", "a cyan torus", "a small orange pyramid with a black nose"]
    report = E.evaluate(None, tmp_path / "gt", prompts=texts, num_objects=2, ground_truth=True, progress=False)
    m = report["overall"]["model"]
    assert m["prompt_accuracy"] >= 0.9 and m["consistency"] >= 0.9
    assert m["camera_adherence"] >= 0.75 and m["janus_rate"] <= 0.2
    assert report["overall"]["ceiling"] == m
    assert report["groups"]["held_out"]["model"]["prompt_accuracy"] >= 0.9


@pytest.mark.parametrize("argv,match", [
    (["evaluate", "tiny-random", "--ground-truth"], "not both"),
    (["evaluate"], "give a MODEL"),
    (["evaluate", "/nonexistent/model.pt", "--prompts", "PROMPTS"], "not a checkpoint file nor a known model"),
    (["evaluate", "--ground-truth", "--prompts", "EMPTY"], "has no prompts"),
    (["evaluate", "--ground-truth", "--prompts", "/nonexistent/prompts.txt"], "prompt file not found"),
    (["evaluate", "--ground-truth", "--prompts", "UNKNOWN"], "unknown colour 'sparkly'"),
    (["evaluate", "--ground-truth", "--num-objects", "0"], "--num-objects must be >= 1"),
    (["evaluate", "GARBAGE", "--prompts", "PROMPTS"], "GARBAGE"),
    (["evaluate", "tiny-random", "--prompts", "PROMPTS", "--size", "40"], "--size must be a multiple of"),
])
def test_evaluate_bad_inputs(tmp_path, capsys, argv, match):
    (tmp_path / "empty.txt").write_text("# nothing here\n\n")
    (tmp_path / "unknown.txt").write_text("a red cube\na sparkly cube\n")
    (tmp_path / "ok.txt").write_text("a red cube\n")
    (tmp_path / "garbage.safetensors").write_bytes(b"not a checkpoint")
    subst = {"EMPTY": tmp_path / "empty.txt", "UNKNOWN": tmp_path / "unknown.txt", "PROMPTS": tmp_path / "ok.txt",
             "GARBAGE": tmp_path / "garbage.safetensors"}
    argv = [str(subst.get(a, a)) for a in argv]
    match = str(subst.get(match, match))
    rc = run_cli(argv + ["--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and match in err and "Traceback" not in err


def test_evaluate_unwritable_out(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc = run_cli(["evaluate", "--ground-truth", "--out", str(blocker / "sub"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot write to output directory" in err
    rc = run_cli(["evaluate", "--ground-truth", "--out", str(blocker), "--no-progress"])
    assert rc == 2 and "not a directory" in capsys.readouterr().err


def test_fill_open_attributes_draws_only_what_is_open():
    a = parse_prompt("a red cube with a nose")
    drawn = {E.fill_open_attributes(a, np.random.default_rng(i))["feature_color"] for i in range(50)}
    assert "red" not in drawn and len(drawn) > 3
    fixed = E.fill_open_attributes(parse_prompt("a small red cube"), np.random.default_rng(0))
    assert fixed["size"] == "small" and fixed["feature"] is None


def test_background_speckle_counts_only_background_pixels():
    from mvdream3d.evaluation.metrics import background_speckle, summarize

    clean = np.full((2, 32, 32, 3), 255, np.uint8)
    clean[:, 8:24, 8:24] = (200, 30, 30)  # an object; its edge is not background
    noisy = clean.copy()
    noisy[1, 0:2, 0:20] = 240  # 40 speckled background pixels, 15/255 off white
    s = background_speckle(noisy)
    assert s[0] == 0.0 and background_speckle(clean).tolist() == [0.0, 0.0]
    n_bg = 32 * 32 - 20 * 20  # the 16 px object grown by 2 px on each side
    assert abs(s[1] - 40 / n_bg) < 1e-9
    objs = [{"correct": c, "consistent": True, "shape_accuracy": 1.0, "color_accuracy": 1.0, "camera": None,
             "janus": None} for c in (True, False, True, True)]
    se = summarize(objs)["se"]
    assert abs(se["prompt_accuracy"] - np.sqrt(0.75 * 0.25 / 4)) < 1e-12 and se["consistency"] == 0.0
