"""Tests for mvdream3d.cameras: reference values of the published camera functions and conventions."""

import math

import numpy as np
import pytest
import torch
from conftest import reference_json

from mvdream3d import cameras as C


@pytest.fixture(scope="module")
def spec() -> dict:
    return reference_json("cameras.json")


# ----------------------------------------------------------------------------------------------
# reference values (shared/spec/cameras.json, copied to tests/fixtures/spec)
# ----------------------------------------------------------------------------------------------


def test_get_camera_matches_reference(spec):
    entries = spec["get_camera"]
    assert len(entries) >= 72
    for entry in entries:
        args = dict(entry["args"])
        if "(all other args default)" in args:
            out = C.get_camera(args["num_frames"])
        else:
            out = C.get_camera(**args)
        ref = torch.tensor(entry["output"], dtype=torch.float32)
        assert entry["dtype"] == "torch.float32"
        assert out.dtype == torch.float32, args
        assert list(out.shape) == entry["shape"], args
        torch.testing.assert_close(out, ref, atol=1e-6, rtol=0, msg=lambda m, a=args: f"{a}: {m}")


def _make_input(entry: dict):
    dtype_name = entry["output_dtype"]
    if dtype_name.startswith("torch."):
        return torch.tensor(entry["input"], dtype=getattr(torch, dtype_name.split(".", 1)[1]))
    return np.array(entry["input"], dtype=np.dtype(dtype_name))


def test_normalize_camera_matches_reference_and_does_not_mutate(spec):
    for entry in spec["normalize_camera"]:
        inp = _make_input(entry)
        before = inp.clone() if isinstance(inp, torch.Tensor) else inp.copy()
        out = C.normalize_camera(inp)
        desc = entry["desc"]
        if isinstance(inp, torch.Tensor):
            assert isinstance(out, torch.Tensor), desc
            assert str(out.dtype) == entry["output_dtype"], desc
            ref = torch.tensor(entry["output"], dtype=out.dtype)
            atol = 1e-6 if out.dtype == torch.float32 else 1e-12
            torch.testing.assert_close(out, ref, atol=atol, rtol=0)
            assert torch.equal(inp, before), f"input modified: {desc}"
        else:
            assert isinstance(out, np.ndarray), desc
            assert str(out.dtype) == entry["output_dtype"], desc
            np.testing.assert_allclose(out, np.array(entry["output"]), atol=1e-12, rtol=0, err_msg=desc)
            np.testing.assert_array_equal(inp, before, err_msg=f"input modified: {desc}")
        assert out.shape == (len(entry["output"]), 16), desc


def test_create_camera_to_world_matrix_matches_reference(spec):
    for entry in spec["create_camera_to_world_matrix"]:
        el, az = entry["elevation"], entry["azimuth"]
        m = C.create_camera_to_world_matrix(el, az)
        assert m.shape == (4, 4) and m.dtype == np.float64
        ref = np.array(entry["opengl_cam2world"])
        np.testing.assert_allclose(m, ref, atol=1e-12, rtol=0, err_msg=f"el={el} az={az}")
        blender = np.array(entry["blender"])
        np.testing.assert_allclose(C.convert_opengl_to_blender(m), blender, atol=1e-12, rtol=0)
        # torch path of the conversion, single and batched
        t = torch.from_numpy(m)
        torch.testing.assert_close(
            C.convert_opengl_to_blender(t), torch.from_numpy(blender), atol=1e-12, rtol=0
        )
        torch.testing.assert_close(
            C.convert_opengl_to_blender(t[None].repeat(2, 1, 1)),
            torch.from_numpy(blender)[None].repeat(2, 1, 1),
            atol=1e-12,
            rtol=0,
        )
        # vectorised torch version
        o = C.orbit_c2w(torch.tensor([el], dtype=torch.float64), torch.tensor([az], dtype=torch.float64))
        np.testing.assert_allclose(o[0].numpy(), ref, atol=1e-12, rtol=0)


def test_elevation_90_rests_on_rounding_residue():
    for el in (90.0, -90.0):
        for az in (0.0, 30.0, 200.0):
            m = C.create_camera_to_world_matrix(el, az)
            assert np.isfinite(m).all()
            a = math.radians(az)
            np.testing.assert_allclose(m[:3, 0], [math.cos(a), 0.0, -math.sin(a)], atol=1e-12)
            np.testing.assert_allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3), atol=1e-12)
            # float32 input must not flip the camera (computed in float64 internally)
            o = C.orbit_c2w(torch.tensor([el], dtype=torch.float32), torch.tensor([az], dtype=torch.float32))
            np.testing.assert_allclose(o[0].double().numpy(), m, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# consistency between the numpy reference functions and the batched torch ones
# ----------------------------------------------------------------------------------------------


def test_orbit_c2w_equals_reference_for_random_angles():
    g = torch.Generator().manual_seed(0)
    el = torch.rand(64, generator=g, dtype=torch.float64) * 180 - 90
    az = torch.rand(64, generator=g, dtype=torch.float64) * 720 - 360
    dist = torch.rand(64, generator=g, dtype=torch.float64) * 3 + 0.5
    out64 = C.orbit_c2w(el, az, dist)
    out32 = C.orbit_c2w(el.float(), az.float(), dist.float())
    unit = C.orbit_c2w(el, az)
    assert out64.shape == (64, 4, 4) and out64.dtype == torch.float64
    assert out32.dtype == torch.float32
    for i in range(64):
        ref = C.create_camera_to_world_matrix(el[i].item(), az[i].item(), dist[i].item())
        np.testing.assert_allclose(out64[i].numpy(), ref, atol=1e-12, rtol=0)
        np.testing.assert_allclose(
            unit[i].numpy(), C.create_camera_to_world_matrix(el[i].item(), az[i].item()), atol=1e-12, rtol=0
        )
        # float32 angles are rounded before the conversion, so compare against those angles
        ref32 = C.create_camera_to_world_matrix(
            el.float()[i].item(), az.float()[i].item(), dist.float()[i].item()
        )
        np.testing.assert_allclose(out32[i].double().numpy(), ref32, atol=1e-6, rtol=0)
    # position convention and look-at
    e, a = torch.deg2rad(el), torch.deg2rad(az)
    pos = torch.stack([e.cos() * a.sin(), e.sin(), e.cos() * a.cos()], -1) * dist[:, None]
    torch.testing.assert_close(out64[:, :3, 3], pos, atol=1e-12, rtol=0)
    torch.testing.assert_close(out64[:, :3, 2], pos / dist[:, None], atol=1e-12, rtol=0)  # backward


def test_orbit_c2w_scalars_and_dtypes():
    m = C.orbit_c2w(15.0, 30.0)
    assert m.shape == (1, 4, 4) and m.dtype == torch.float32
    np.testing.assert_allclose(m[0].double().numpy(), C.create_camera_to_world_matrix(15, 30), atol=1e-6)
    m = C.orbit_c2w(torch.tensor([10.0, 20.0]), 0.0, torch.tensor(2.0, dtype=torch.float64))
    assert m.shape == (2, 4, 4) and m.dtype == torch.float64
    with pytest.raises(ValueError, match="distance"):
        C.orbit_c2w(torch.tensor([10.0]), torch.tensor([0.0]), 0.0)


@pytest.mark.parametrize(
    "num_frames,elevation,azimuth_start,azimuth_span",
    [(4, 15, 0, 360), (4, 0, 90, 360), (8, 30, 0, 180), (1, 5, 45, 360), (5, -20, 10, 300)],
)
def test_model_camera_of_orbit_equals_get_camera(num_frames, elevation, azimuth_start, azimuth_span):
    az = torch.from_numpy(C.orbit_azimuths(num_frames, azimuth_start, azimuth_span))
    el = torch.full_like(az, float(elevation))
    ref = C.get_camera(num_frames, elevation, azimuth_start, azimuth_span)
    for dist in (1.0, 2.5):
        c2w = C.orbit_c2w(el, az, dist)
        model = C.c2w_to_model_camera(c2w)
        assert model.shape == (num_frames, 16) and model.dtype == torch.float64
        torch.testing.assert_close(model.float(), ref, atol=1e-6, rtol=0)
        # the (N,16) and numpy forms give the same thing
        torch.testing.assert_close(C.c2w_to_model_camera(c2w.reshape(-1, 16)), model, atol=0, rtol=0)
        torch.testing.assert_close(C.c2w_to_model_camera(c2w.numpy()), model, atol=0, rtol=0)
    single = C.c2w_to_model_camera(C.orbit_c2w(el[:1], az[:1])[0])
    assert single.shape == (1, 16)
    torch.testing.assert_close(single.float(), ref[:1], atol=1e-6, rtol=0)
    # blender_coord=False is the plain OpenGL c2w flattened row-major
    plain = C.get_camera(num_frames, elevation, azimuth_start, azimuth_span, blender_coord=False)
    torch.testing.assert_close(C.orbit_c2w(el, az).reshape(-1, 16).float(), plain, atol=1e-6, rtol=0)


def test_get_camera_defaults_and_frame_count():
    default = C.get_camera(4)
    torch.testing.assert_close(default, C.get_camera(4, 15, 0, 360, True), atol=0, rtol=0)
    # np.arange returns 162 values here; the published code would return 162 cameras
    assert C.get_camera(161).shape == (161, 16)
    assert C.orbit_azimuths(161).shape == (161,)
    np.testing.assert_allclose(C.orbit_azimuths(4, 90), [90, 180, 270, 360])


def test_normalize_camera_does_not_mutate_and_handles_zero_translation():
    m = np.stack([C.create_camera_to_world_matrix(10, 20, 3.0), np.eye(4)])
    before = m.copy()
    out = C.normalize_camera(m)
    np.testing.assert_array_equal(m, before)
    assert out.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(out.reshape(2, 4, 4)[0, :3, 3]), 1.0, atol=1e-8)
    np.testing.assert_array_equal(out[1], np.eye(4).reshape(16))

    t = torch.from_numpy(m).float().requires_grad_(False)
    tb = t.clone()
    out_t = C.normalize_camera(t.reshape(2, 16))
    assert torch.equal(t, tb)
    assert out_t.dtype == torch.float32
    torch.testing.assert_close(out_t, torch.from_numpy(out).float(), atol=1e-6, rtol=0)
    # views keep the original untouched too
    view = t.reshape(2, 16)
    C.normalize_camera(view)
    assert torch.equal(t, tb)


# ----------------------------------------------------------------------------------------------
# intrinsics and rays
# ----------------------------------------------------------------------------------------------


def test_intrinsics_principal_point_and_focal():
    k = C.intrinsics_from_fov(90.0, width=96, height=64)
    assert k.shape == (3, 3) and k.dtype == torch.float32
    assert k[0, 2].item() == 48.0 and k[1, 2].item() == 32.0
    assert k[0, 0].item() == pytest.approx(32.0) and k[1, 1].item() == pytest.approx(32.0)
    assert k[2].tolist() == [0.0, 0.0, 1.0]
    assert C.fov_to_focal(60.0, 100) == pytest.approx(50.0 / math.tan(math.radians(30)))
    torch.testing.assert_close(
        C.fov_to_focal(torch.tensor([90.0, 60.0]), 64),
        torch.tensor([32.0, 32.0 / math.tan(math.radians(30))]),
    )
    with pytest.raises(ValueError, match="field of view"):
        C.fov_to_focal(0.0, 64)
    with pytest.raises(ValueError, match="field of view"):
        C.intrinsics_from_fov(180.0, 64, 64)


def test_rays_through_image_centre_hit_the_origin():
    el = torch.tensor([0.0, 15.0, 30.0, -20.0, 89.0], dtype=torch.float64)
    az = torch.tensor([0.0, 90.0, 200.0, 45.0, 10.0], dtype=torch.float64)
    dist = torch.tensor([1.0, 2.0, 3.5, 1.5, 2.0], dtype=torch.float64)
    c2w = C.orbit_c2w(el, az, dist)
    # odd size: the central pixel's ray goes through the origin
    origins, dirs = C.get_rays(c2w, C.DEFAULT_FOVY_DEG, height=7, width=9)
    assert origins.shape == (5, 7, 9, 3) and dirs.shape == (5, 7, 9, 3)
    assert dirs.dtype == torch.float64
    torch.testing.assert_close(dirs.norm(dim=-1), torch.ones(5, 7, 9, dtype=torch.float64))
    torch.testing.assert_close(origins[:, 0, 0], c2w[:, :3, 3])
    centre_hit = origins[:, 3, 4] + dist[:, None] * dirs[:, 3, 4]
    torch.testing.assert_close(centre_hit, torch.zeros(5, 3, dtype=torch.float64), atol=1e-12, rtol=0)
    # even size: the four central pixels are symmetric about the direction to the origin
    origins, dirs = C.get_rays(c2w, torch.full((5,), 30.0, dtype=torch.float64), height=8, width=6)
    mean = dirs[:, 3:5, 2:4].reshape(5, 4, 3).mean(1)
    mean = mean / mean.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(mean, -origins[:, 0, 0] / dist[:, None], atol=1e-12, rtol=0)


def test_rays_orientation_and_consistency_with_intrinsics():
    h, w, fov = 6, 10, 50.0
    c2w = C.orbit_c2w(torch.tensor([20.0, 0.0]), torch.tensor([60.0, 0.0]), torch.tensor([2.0, 3.0]))
    _, dirs = C.get_rays(c2w, fov, height=h, width=w)
    right, up = c2w[:, :3, 0], c2w[:, :3, 1]
    # row 0 is the top, column 0 the left
    assert (torch.einsum("nwc,nc->nw", dirs[:, 0], up) > 0).all()
    assert (torch.einsum("nwc,nc->nw", dirs[:, -1], up) < 0).all()
    assert (torch.einsum("nhc,nc->nh", dirs[:, :, 0], right) < 0).all()
    # camera at el 0 az 0 looks along world -z: the world directions are simple
    d0 = dirs[1]
    assert (d0[..., 2] < 0).all()
    assert (d0[0, :, 1] > 0).all() and (d0[:, 0, 0] < 0).all()
    # project rays back with K (OpenCV frame = (x, -y, -z) of the OpenGL camera frame): pixel centres
    k = C.intrinsics_from_fov(fov, width=w, height=h)
    cam = torch.einsum("nji,nhwj->nhwi", c2w[:, :3, :3], dirs)  # R^T d
    cv = cam * torch.tensor([1.0, -1.0, -1.0])
    uv = torch.einsum("ij,nhwj->nhwi", k, cv)
    uv = uv[..., :2] / uv[..., 2:]
    jj, ii = torch.meshgrid(torch.arange(w) + 0.5, torch.arange(h) + 0.5, indexing="xy")
    expected = torch.stack([jj, ii], -1).expand(2, h, w, 2).float()
    torch.testing.assert_close(uv, expected, atol=1e-4, rtol=0)


def test_camera_distance_for_fov_fills_frame():
    assert C.camera_distance_for_fov(90.0) == pytest.approx(1.0)
    d = C.camera_distance_for_fov(C.DEFAULT_FOVY_DEG, radius=0.8)
    assert d == pytest.approx(0.8 / math.tan(math.radians(20)))
    t = C.camera_distance_for_fov(torch.tensor([15.0, 60.0]), radius=torch.tensor([1.0, 0.8]))
    torch.testing.assert_close(
        t, torch.tensor([1 / math.tan(math.radians(7.5)), 0.8 / math.tan(math.radians(30))])
    )
    # a point at height `radius` above the origin projects onto the top edge of the image
    h = 64
    k = C.intrinsics_from_fov(C.DEFAULT_FOVY_DEG, h, h, dtype=torch.float64)
    cv = torch.tensor([0.0, -0.8, d], dtype=torch.float64)  # camera at el 0 az 0: world y up = cv -y
    v = (k @ cv)[1] / (k @ cv)[2]
    assert v.item() == pytest.approx(0.0, abs=1e-9)
    assert 15.0 <= C.DEFAULT_FOVY_DEG <= 60.0


# ----------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------


def test_num_frames_must_be_positive():
    for bad in (0, -1):
        with pytest.raises(ValueError, match="num_frames must be >= 1"):
            C.get_camera(bad)
    with pytest.raises(TypeError, match="num_frames"):
        C.get_camera(2.5)


@pytest.mark.parametrize("shape", [(3, 3), (2, 4, 3), (2, 15), (16,), (2, 2, 4, 4), (4,)])
def test_model_camera_bad_shapes(shape):
    with pytest.raises(ValueError, match=r"camera must be \(N,4,4\) or \(N,16\).*got"):
        C.c2w_to_model_camera(torch.zeros(shape))


def test_other_bad_shapes():
    with pytest.raises(ValueError, match=r"c2w must be \(4,4\) or \(N,4,4\)"):
        C.convert_opengl_to_blender(np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"c2w must be \(4,4\) or \(N,4,4\)"):
        C.convert_opengl_to_blender(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="camera must be"):
        C.normalize_camera(np.zeros((2, 15)))
    with pytest.raises(ValueError, match=r"c2w must be \(N,4,4\)"):
        C.get_rays(torch.zeros(2, 3, 4), 40.0, 4, 4)
    with pytest.raises(ValueError, match="fov_deg"):
        C.get_rays(C.orbit_c2w(torch.zeros(2), torch.zeros(2)), torch.full((3,), 40.0), 4, 4)
    with pytest.raises(ValueError, match="distance"):
        C.create_camera_to_world_matrix(0, 0, distance=0)
