"""Headless renderer and multi-view data recipe (mvdream3d.data.render)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REQUIRE_GL, skip_unless_required
from PIL import Image

from mvdream3d import cameras
from mvdream3d.data import render as R

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"
SPOT = ASSETS / "spot.obj"


@pytest.fixture(scope="module")
def renderer():
    try:
        r = R.Renderer(64)
    except RuntimeError as e:  # no EGL / Mesa on this machine
        skip_unless_required(REQUIRE_GL, f"no headless OpenGL: {e}")
    yield r
    r.release()


@pytest.fixture
def spot():
    if not SPOT.is_file():
        pytest.skip(f"{SPOT} not available")
    return SPOT


def project(c2w: np.ndarray, fov: float, size: int, point) -> tuple[float, float]:
    """(u, v) pixel coordinates of a world point with the project's K (pixel (i, j) centre = (j+.5, i+.5))."""
    p = np.linalg.inv(c2w) @ np.array([*point, 1.0])
    x, y, z = p[0], -p[1], -p[2]  # OpenGL camera -> OpenCV camera
    k = cameras.intrinsics_from_fov(fov, size, size, dtype=torch.float64).numpy()
    uvw = k @ np.array([x, y, z])
    return uvw[0] / uvw[2], uvw[1] / uvw[2]


def alpha_centroid(img: np.ndarray) -> tuple[float, float]:
    a = img[..., 3].astype(np.float64)
    ii, jj = np.mgrid[: img.shape[0], : img.shape[1]]
    return float((a * (jj + 0.5)).sum() / a.sum()), float((a * (ii + 0.5)).sum() / a.sum())


def box_mesh(colour=(200, 30, 30, 255)):
    import trimesh

    m = trimesh.creation.box((0.6, 0.6, 0.6))
    m.visual.vertex_colors = np.tile(np.array(colour, np.uint8), (len(m.vertices), 1))
    return m


# --------------------------------------------------------------------------------------------------


def test_render_asset_spot(renderer, spot, tmp_path):
    out = tmp_path / "spot"
    meta = R.render_asset(spot, out, num_views=4, size=64, seed=3, renderer=renderer)
    assert sorted(p.name for p in out.iterdir()) == ["meta.json"] + [f"rgba_{i:03d}.png" for i in range(4)]
    assert json.loads((out / "meta.json").read_text()) == meta
    assert meta["caption"] == "spot" and meta["size"] == 64 and meta["asset"] == str(spot)
    assert len(meta["views"]) == 4
    assert [v["azimuth"] for v in meta["views"]] == [0.0, 90.0, 180.0, 270.0]
    for v in meta["views"]:
        img = np.asarray(Image.open(out / v["file"]))
        assert img.shape == (64, 64, 4) and img.dtype == np.uint8
        alpha = img[..., 3] > 0
        assert 0.05 < alpha.mean() < 0.9, "object must be visible and not fill the frame"
        assert img[0, 0, 3] == 0 and img[-1, -1, 3] == 0, "background is transparent"
        # untextured asset without colour -> light grey, Lambert shaded
        rgb = img[img[..., 3] == 255][:, :3].astype(int)
        assert np.abs(rgb[:, 0] - rgb[:, 2]).max() <= 2 and rgb.max() <= 200 and rgb.std() > 3

        c2w = np.array(v["c2w"])
        assert 0 <= v["elevation"] <= 30 and 15 <= v["fov_deg"] <= 60
        expected = cameras.orbit_c2w(
            torch.tensor(v["elevation"], dtype=torch.float64), torch.tensor(v["azimuth"], dtype=torch.float64),
            torch.tensor(v["distance"], dtype=torch.float64),
        )[0].numpy()
        np.testing.assert_allclose(c2w, expected, atol=1e-12)
        model_cam = cameras.c2w_to_model_camera(torch.tensor(c2w))[0].numpy()
        np.testing.assert_allclose(np.array(v["model_camera"]), model_cam, atol=1e-12)
        # the recipe's relative distance
        assert 0.9 <= v["distance"] * math.sin(math.radians(v["fov_deg"]) / 2) / meta["radius"] <= 1.1
        # the object is centred: the origin projects to the image centre, and so does the alpha mass
        u, w = project(c2w, v["fov_deg"], 64, (0, 0, 0))
        assert abs(u - 32) < 1e-9 and abs(w - 32) < 1e-9
        cu, cv = alpha_centroid(img)
        assert abs(cu - 32) < 8 and abs(cv - 32) < 8


def test_projection_matches_cameras(renderer):
    """A small sphere off the origin lands where intrinsics_from_fov / get_rays say it does."""
    import trimesh

    point = np.array([0.25, 0.15, -0.1])
    ball = trimesh.creation.icosphere(subdivisions=3, radius=0.04)
    ball.apply_translation(point)
    for el, az, fov in [(20.0, 30.0, 40.0), (-10.0, 200.0, 25.0), (45.0, 290.0, 55.0)]:
        c2w = cameras.orbit_c2w(torch.tensor(el, dtype=torch.float64), az, 1.5)[0]
        img = renderer.render(ball, c2w, fov)
        u, v = project(c2w.numpy(), fov, 64, point)
        cu, cv = alpha_centroid(img)
        assert abs(cu - u) < 0.35 and abs(cv - v) < 0.35, (el, az, fov, (cu, cv), (u, v))
        origins, dirs = cameras.get_rays(c2w, fov, 64, 64)
        i, j = int(cv), int(cu)  # the pixel holding the centroid
        to_point = torch.tensor(point) - origins[0, i, j]
        cos = float(torch.dot(dirs[0, i, j], to_point / to_point.norm()))
        assert math.degrees(math.acos(min(cos, 1.0))) < fov / 64  # within about one pixel


def test_image_orientation(renderer):
    """Image up is world +y, image right is world +x for the azimuth-0 camera (on +z)."""
    import trimesh

    red, blue = box_mesh((220, 20, 20, 255)), box_mesh((20, 20, 220, 255))
    red.apply_scale(0.3)
    blue.apply_scale(0.3)
    red.apply_translation((0.3, 0, 0))  # +x: right
    blue.apply_translation((0, 0.3, 0))  # +y: up
    img = renderer.render(trimesh.util.concatenate([red, blue]), cameras.orbit_c2w(0.0, 0.0, 2.0)[0], 40)
    reds = np.argwhere((img[..., 0] > 120) & (img[..., 2] < 60) & (img[..., 3] > 0))
    blues = np.argwhere((img[..., 2] > 120) & (img[..., 0] < 60) & (img[..., 3] > 0))
    assert reds[:, 1].mean() > 40 and abs(reds[:, 0].mean() - 32) < 3
    assert blues[:, 0].mean() < 24 and abs(blues[:, 1].mean() - 32) < 3


def test_light_and_antialiasing(renderer):
    m = box_mesh((255, 255, 255, 255))
    c2w = cameras.orbit_c2w(0.0, 0.0, 2.0)[0]
    img = renderer.render(m, c2w, 40)
    front = img[32, 32, :3].astype(int)
    assert front.min() >= 200  # facing the camera: ambient + key light
    lit_side = renderer.render(m, c2w, 40, light_dir=(1.0, 0.0, 0.0))  # light from +x: front in shadow
    assert lit_side[32, 32, :3].max() < front.min() - 50
    assert len(np.unique(img[..., 3])) > 2, "edges are anti-aliased"


def test_load_asset_normalises_and_keeps_colours(spot, tmp_path):
    import trimesh

    m = R.load_asset(spot)
    lo, hi = m.bounds
    assert np.isclose((hi - lo).max(), 1.0) and np.allclose((lo + hi) / 2, 0, atol=1e-9)
    assert np.all(lo >= -0.5 - 1e-9) and np.all(hi <= 0.5 + 1e-9)
    assert m.visual.kind == "vertex" and tuple(m.visual.vertex_colors[0]) == R.LIGHT_GREY

    # vertex colours survive PLY; glTF material base colour becomes the colour; scenes are concatenated
    box = box_mesh((10, 200, 30, 255))
    box.apply_scale(3.0)
    box.apply_translation((5, 5, 5))
    box.export(tmp_path / "box.ply")
    mb = R.load_asset(tmp_path / "box.ply")
    assert np.allclose(mb.bounds, [[-0.5] * 3, [0.5] * 3]) and tuple(mb.visual.vertex_colors[0]) == (10, 200, 30, 255)
    raw = R.load_asset(tmp_path / "box.ply", normalize=False)
    assert np.allclose(raw.bounds, [[4.1] * 3, [5.9] * 3])
    ball = trimesh.creation.icosphere(2, radius=0.5)
    ball.apply_translation((2, 0, 0))
    ball.visual = trimesh.visual.TextureVisuals(
        material=trimesh.visual.material.PBRMaterial(baseColorFactor=[255, 0, 0, 255])
    )
    trimesh.Scene([box_mesh((10, 200, 30, 255)), ball]).export(tmp_path / "scene.glb")
    ms = R.load_asset(tmp_path / "scene.glb")
    assert len(ms.faces) == 12 + len(ball.faces)
    colours = {tuple(c) for c in ms.visual.vertex_colors}
    assert (255, 0, 0, 255) in colours and (10, 200, 30, 255) in colours


def _textured_box(path: Path):
    import trimesh

    m = trimesh.creation.box((1, 1, 1))
    m.unmerge_vertices()
    uv = np.zeros((len(m.vertices), 2))
    for fi, f in enumerate(m.faces):
        other = [k for k in range(3) if k != int(np.argmax(np.abs(m.face_normals[fi])))]
        uv[f] = m.vertices[f][:, other] + 0.5
    tex = np.zeros((16, 16, 3), np.uint8)
    tex[:] = (230, 20, 20)
    tex[:8, :8] = tex[8:, 8:] = (20, 20, 230)
    m.visual = trimesh.visual.TextureVisuals(uv=uv, image=Image.fromarray(tex))
    m.export(path)


@pytest.mark.parametrize("ext", [".obj", ".glb"])
def test_textured_asset(renderer, tmp_path, ext):
    path = tmp_path / f"tbox{ext}"
    _textured_box(path)
    m = R.load_asset(path)
    assert m.visual.kind == "texture"
    img = renderer.render(m, cameras.orbit_c2w(20.0, 30.0, 2.2)[0], 40)
    px = img[img[..., 3] == 255][:, :3].astype(int)
    red = ((px[:, 0] > 100) & (px[:, 2] < 50)).mean()
    blue = ((px[:, 2] > 100) & (px[:, 0] < 50)).mean()
    assert red > 0.2 and blue > 0.2  # the checker texture, not a flat colour


def test_resume_and_atomic_files(renderer, tmp_path, monkeypatch):
    m = box_mesh()
    out = tmp_path / "a"
    meta = R.render_asset(m, out, num_views=2, size=64, renderer=renderer, caption="a red box")
    assert meta["caption"] == "a red box"
    (out / ".rgba_000.png.x.tmp").write_bytes(b"half")  # what a killed run could leave
    monkeypatch.setattr(R.Renderer, "render", lambda *a, **k: pytest.fail("resumed asset rendered again"))
    assert R.render_asset(m, out, num_views=2, size=64, renderer=renderer) == meta
    (out / "meta.json").unlink()
    monkeypatch.undo()
    R.render_asset(m, out, num_views=2, size=64, renderer=renderer, caption="a red box")
    assert not list(out.glob(".*.tmp")), "leftover temp files are cleaned"
    assert json.loads((out / "meta.json").read_text())["caption"] == "a red box"


def test_caption_sources(renderer, tmp_path):
    box_mesh().export(tmp_path / "red_box.ply")
    assert R.render_asset(tmp_path / "red_box.ply", tmp_path / "o1", num_views=1, size=64)["caption"] == "red box"
    (tmp_path / "red_box.txt").write_text("a shiny red box\n")
    assert R.render_asset(tmp_path / "red_box.ply", tmp_path / "o2", num_views=1, size=64)["caption"] == (
        "a shiny red box"
    )


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        R.load_asset(tmp_path / "missing.obj")
    with pytest.raises(ValueError, match="not found"):
        R.render_assets([tmp_path / "missing.obj"], tmp_path / "out")
    bad = tmp_path / "bad.obj"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="cannot read mesh"):
        R.load_asset(bad)
    (tmp_path / "notes.xyz").write_text("x")
    with pytest.raises(ValueError, match="unsupported"):
        R.load_asset(tmp_path / "notes.xyz")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no meshes here")
    with pytest.raises(ValueError, match="no assets"):
        R.render_assets([empty], tmp_path / "out")
    with pytest.raises(ValueError, match="no asset could be rendered"), pytest.warns(R.AssetWarning):
        R.render_assets([bad], tmp_path / "out", progress=False)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    box_mesh().export(tmp_path / "box.ply")
    with pytest.raises(ValueError, match="cannot write"):
        R.render_assets([tmp_path / "box.ply"], blocker / "sub")
    with pytest.raises(ValueError, match="fov_range"):
        R.render_assets([tmp_path / "box.ply"], tmp_path / "out", fov_range=(10, 190))


def test_render_assets_skips_corrupt_asset(renderer, tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    box_mesh().export(src / "box.ply")
    box_mesh((20, 20, 220, 255)).export(src / "sub" / "blue_box.ply")
    (src / "broken.obj").write_text("v 1 2\nf 1 2 7\nnonsense\n")
    with pytest.warns(R.AssetWarning, match="broken.obj"):
        res = R.render_assets([src], tmp_path / "out", workers=2, num_views=2, size=32, progress=False)
    assert sorted(Path(d).name for d in res["rendered"]) == ["blue_box", "box"]
    assert list(res["failed"]) == [str(src / "broken.obj")]
    metas = {d: json.loads((Path(d) / "meta.json").read_text()) for d in res["rendered"]}
    assert {m["caption"] for m in metas.values()} == {"box", "blue box"}
    # resume: nothing rendered twice
    with pytest.warns(R.AssetWarning):
        res2 = R.render_assets([src], tmp_path / "out", num_views=2, size=32, progress=False)
    assert res2["rendered"] == [] and sorted(res2["skipped"]) == sorted(res["rendered"])


def test_render_cli(renderer, tmp_path, capsys):
    box_mesh().export(tmp_path / "box.ply")
    parser = argparse.ArgumentParser()
    R.add_render_subparser(parser.add_subparsers(dest="command"))
    args = parser.parse_args([
        "render", str(tmp_path / "box.ply"), "--out", str(tmp_path / "out"), "--views", "3", "--size", "32",
        "--elevation-range", "5", "10", "--fov-range", "30", "30", "--distance-range", "1", "1", "--seed", "2",
    ])
    assert args.func(args) == 0
    meta = json.loads((tmp_path / "out" / "box" / "meta.json").read_text())
    assert len(meta["views"]) == 3 and meta["size"] == 32
    assert all(5 <= v["elevation"] <= 10 and v["fov_deg"] == 30 for v in meta["views"])
    assert "rendered 1 assets" in capsys.readouterr().out
    args = parser.parse_args(["render", str(tmp_path / "nothing"), "--out", str(tmp_path / "out")])
    with pytest.raises(ValueError, match="not found"):
        args.func(args)


def test_render_speed_is_reasonable(renderer, spot):
    """A guard against an accidental software fallback: 64x64 views of spot at > 20 per second."""
    import time

    m = R.load_asset(spot)
    c2w = cameras.orbit_c2w(torch.zeros(10, dtype=torch.float64), torch.arange(10.0) * 36, 2.0)
    renderer.render(m, c2w[0], 40)
    t = time.perf_counter()
    for c in c2w:
        renderer.render(m, c, 40)
    assert 10 / (time.perf_counter() - t) > 20
