"""The Janus verdict (mvdream3d.evaluation.janus): arcs of views that see the front feature; and the
benchmark that drives it on text-to-3D runs (benchmarks/text_to_3d_eval.py: merging runs, the figure)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from mvdream3d.evaluation import janus as J

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "text_to_3d_eval.py"


@pytest.fixture(scope="module")
def ev():
    """The benchmark script (not a package module): only its own driver code is tested through it."""
    spec = importlib.util.spec_from_file_location("_text_to_3d_eval", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _arc(n, start, length):
    v = np.zeros(n, bool)
    v[(start + np.arange(length)) % n] = True
    return v


def test_one_arc_hidden_from_the_back_is_one_front():
    v = _arc(36, 26, 20)  # seen from azimuth 260 round to 90, as the ground truth is
    assert J.fronts_verdict(v) == {"fronts": 1, "everywhere": False, "janus": False, "one_front": True}


def test_two_faces_are_janus():
    v = _arc(36, 32, 8) | _arc(36, 14, 8)
    out = J.fronts_verdict(v)
    assert out["fronts"] == 2 and out["janus"] and not out["one_front"]


def test_seen_from_all_round_is_janus():
    out = J.fronts_verdict(np.ones(36, bool))
    assert out["everywhere"] and out["janus"] and not out["one_front"]
    assert J.fronts_verdict(np.zeros(36, bool))["fronts"] == 0


def test_single_view_flips_are_noise_both_ways():
    v = _arc(36, 26, 20)
    hole = v.copy()
    hole[30] = False  # one "hidden" view inside the arc
    assert J.fronts_verdict(hole)["one_front"]
    speck = v.copy()
    speck[15] = True  # one "seen" view at the back
    assert J.fronts_verdict(speck)["one_front"]
    almost_all = np.ones(36, bool)
    almost_all[18] = False  # all round but one view: still seen from the back
    assert J.fronts_verdict(almost_all)["everywhere"]
    # two views are a run, not noise
    second = v.copy()
    second[14:16] = True
    assert J.fronts_verdict(second)["fronts"] == 2


def test_smoothing_keeps_runs_of_two():
    v = _arc(36, 5, 2)
    assert np.array_equal(J.smooth_visible(v), v)


def test_front_orientation_finds_the_front_by_geometry():
    import trimesh

    from mvdream3d.evaluation.prompts import load_prompts

    gt = J.ground_truth_mesh(load_prompts(["a blue sphere with an orange horn"])[0])
    own = J.front_orientation(gt, gt)
    assert own["best_azimuth"] == 0.0 and own["front_right"] and own["front_gain"] > 0.1
    turned = gt.copy()
    turned.apply_transform(trimesh.transformations.rotation_matrix(np.pi, [0, 1, 0]))  # horn at the back
    back = J.front_orientation(turned, gt)
    assert abs(back["best_azimuth"]) == 180.0 and not back["front_right"] and back["front_gain"] < -0.1
    body = trimesh.creation.icosphere(subdivisions=3, radius=0.4)  # no feature: no front
    assert not J.front_orientation(body, gt)["front_right"]


def test_feature_colour_reads_the_features_colour_and_place_off_the_mesh():
    import trimesh

    from mvdream3d.data.synth import COLORS
    from mvdream3d.evaluation.prompts import load_prompts

    prompt = load_prompts(["a red cube with a yellow nose"])[0]
    gt = J.ground_truth_mesh(prompt)
    own = J.feature_colour(gt, prompt)
    assert 0.03 < own["share"] < 0.3 and abs(own["azimuth"]) < 5 and own["in_colour_at_front"]
    turned = gt.copy()
    turned.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [0, 1, 0]))  # nose to +x
    side = J.feature_colour(turned, prompt, own["share"])
    assert abs(side["azimuth"] - 90) < 5 and not side["in_colour_at_front"]
    plain = gt.copy()
    plain.visual.vertex_colors = np.tile([*COLORS["red"], 255], (len(plain.vertices), 1)).astype(np.uint8)
    none = J.feature_colour(plain, prompt, own["share"])
    assert none == {"share": 0.0, "azimuth": None, "in_colour_at_front": False}
    faint = gt.copy()  # the nose's colour on only a sliver of it: under a quarter of the ground truth's share
    vc = np.array(plain.visual.vertex_colors)
    tip = np.argmax(faint.vertices[:, 2])
    vc[tip] = [*COLORS["yellow"], 255]
    faint.visual.vertex_colors = vc
    assert not J.feature_colour(faint, prompt, own["share"])["in_colour_at_front"]
    yellow = gt.copy()  # the whole object in the feature's colour: a body gone wrong, not a feature
    yellow.visual.vertex_colors = np.tile([*COLORS["yellow"], 255], (len(gt.vertices), 1)).astype(np.uint8)
    whole = J.feature_colour(yellow, prompt, own["share"])
    assert whole["share"] == 1.0 and not whole["in_colour_at_front"]
    assert J.feature_colour(gt, load_prompts(["a red cube"])[0])["share"] is None


def test_one_front_must_be_the_front():
    back_only = _arc(36, 10, 16)  # one arc round the back: one "front", in the wrong place
    out = J.fronts_verdict(back_only)
    assert out["fronts"] == 1 and not out["janus"] and not out["one_front"]


def _row(prompt, method, seed, visible):
    return {"prompt": prompt, "method": method, "seed": seed, "visible": visible, "prompt_ok": True, "seconds": 1.0}


def test_merge_combines_parallel_runs_and_links_their_folders(ev, tmp_path):
    import json

    p, front = "a blue sphere with an orange horn", _arc(36, 33, 7).tolist()
    for name, seed in (("a", 0), ("b", 1)):
        src = tmp_path / name
        ev.run_dir_of(src, p, "multiview", seed).mkdir(parents=True)
        (ev.run_dir_of(src, p, "multiview", seed) / "mesh.glb").write_text(name)
        rows = [_row(p, "ground truth", None, front), _row(p, "multiview", seed, front)]
        (src / "results.json").write_text(json.dumps(rows))
    redo = tmp_path / "redo"  # a re-run of seed 1 replaces the first one
    redo.mkdir()
    (redo / "results.json").write_text(json.dumps([{**_row(p, "multiview", 1, front), "seconds": 9.0}]))

    out = tmp_path / "all"
    assert ev.main(["--out", str(out), "--merge", str(tmp_path / "a"), str(tmp_path / "b"), str(redo)]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert sorted((r["method"], r["seed"] or 0) for r in rows) == [("ground truth", 0), ("multiview", 0),
                                                                   ("multiview", 1)]
    assert next(r for r in rows if r["seed"] == 1)["seconds"] == 9.0
    assert (ev.run_dir_of(out, p, "multiview", 0) / "mesh.glb").read_text() == "a"  # linked, not copied
    assert "| multiview | 2 |" in (out / "results.md").read_text()
    with pytest.raises(SystemExit, match="not found"):
        ev.merge_results(out, [tmp_path / "missing"])


def test_turntables_figure_has_a_labelled_row_of_frames_per_run(ev, tmp_path):
    import imageio.v3 as iio
    from PIL import Image

    p = "a blue sphere with an orange horn"
    rows = [_row(p, "ground truth", None, [False] * 36)]
    for seed, level in ((0, 40), (1, 200)):
        run = ev.run_dir_of(tmp_path, p, "multiview", seed)
        run.mkdir(parents=True)
        # distinct frames (GIF writers merge repeated ones)
        frames = np.full((16, 20, 24, 3), level, np.uint8) + np.arange(16, dtype=np.uint8)[:, None, None, None]
        frames[2, :, :, 0] = 255  # frames 0, 2, 4, ... of 16 are picked: this is the second
        iio.imwrite(run / "turntable.gif", frames, loop=0)
        rows.append(_row(p, "multiview", seed, [False] * 36))
    rows.append(_row(p, "2d", 0, [False] * 36))  # no turntable: left out
    path = ev.turntables_figure(tmp_path, rows)
    img = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert img.shape == (2 * (20 + 14), 8 * 24, 3)
    seed0, seed1 = img[14:34], img[34 + 14:]
    assert abs(seed0[:, :24].mean() - 40) < 6 and abs(seed1[:, :24].mean() - 200) < 6
    assert seed0[:, 24:48, 0].mean() > 240 and seed0[:, 48:72, 0].mean() < 60  # frames in azimuth order
    assert (img[:14] < 128).any()  # the label is drawn
    assert ev.turntables_figure(tmp_path / "empty", rows[:1]) is None


def test_the_benchmark_drives_the_package_verdict(ev):
    """One home: the benchmark judges with the package's functions, it has no verdict of its own."""
    for name in ("fronts_verdict", "smooth_visible", "front_orientation", "measure_mesh", "ground_truth_mesh"):
        assert getattr(ev, name) is getattr(J, name), name


def test_claims_table_gives_rates_with_standard_errors_and_decides(ev):
    front, janus = list(_arc(36, 30, 12)), [True] * 36  # one front through azimuth 0; seen from all round

    def run(method, seed, visible, chamfer, colour):
        return {"prompt": "p", "method": method, "seed": seed, "chamfer": chamfer,
                "mesh": {"visible": visible, "feature_colour": {"in_colour_at_front": colour}}}

    rows = ([run("multiview", s, front, 0.05 + 0.001 * s, True) for s in range(8)]
            + [run("2d", s, janus, 0.10 + 0.001 * s, False) for s in range(8)])
    table = ev.claims_table(rows)
    assert "| 1.00 +- 0.00 (8 runs) | 0.00 +- 0.00 (8 runs) | +1.00 +- 0.25 | yes |" in table  # pooled se
    assert "ratio 0.52; paired -0.0500 +- 0.0000 (8 pairs) | yes |" in table
    mixed = [run("multiview", s, front if s % 2 else janus, 0.1, False) for s in range(4)] + \
        [run("2d", s, janus if s % 2 else front, 0.1, False) for s in range(4)]
    lines = ev.claims_table(mixed).splitlines()
    assert lines[2].endswith("| 0.50 +- 0.25 (4 runs) | 0.50 +- 0.25 (4 runs) | +0.00 +- 0.35 | no |")
    assert ev.claims_table([r for r in rows if r["method"] == "2d"]) == ""
