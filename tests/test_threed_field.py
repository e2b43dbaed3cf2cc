"""Text-to-3D field parts: hash grid, implicit volume, renderer, material, backgrounds, mesh / video export.

Everything is small (tiny tables, <= 32x32 images, <= 32 samples per ray) so the file runs in seconds on
one CPU thread. Rendering and export are checked against an analytic sphere field.
"""

from __future__ import annotations

import math
from typing import Any

import imageio.v2 as imageio_v2
import imageio.v3 as iio
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import trimesh
from torch import Tensor, nn

from mvdream3d.cameras import get_rays, orbit_c2w
from mvdream3d.threed import (
    DiffuseMaterial,
    EmptyFieldError,
    HashGridEncoding,
    ImplicitVolume,
    LearnedEnvironmentBackground,
    RandomColorBackground,
    SolidBackground,
    VolumeRenderer,
    build_background,
    extract_mesh,
    mesh_field_iou,
    render_turntable,
    render_views,
    save_mesh,
    save_video,
)

TINY_FIELD = dict(n_levels=4, log2_hashmap_size=12, base_resolution=4, max_resolution=64, mlp_hidden=16)


class SphereField(nn.Module):
    """Analytic test double with ImplicitVolume's interface: constant density inside balls, zero outside,
    white albedo, radial normals (of the first ball)."""

    def __init__(self, r: float = 0.5, value: float = 50.0, radius: float = 1.0,
                 centre: tuple[float, float, float] = (0.0, 0.0, 0.0),
                 extra_balls: tuple[tuple[float, float, float, float], ...] = ()) -> None:
        super().__init__()
        self.radius = radius
        self.value = value
        self.centre = torch.tensor(centre)
        self.balls = [(*centre, r), *extra_balls]  # (cx, cy, cz, r)

    def density(self, points: Tensor) -> Tensor:
        inside = torch.zeros(points.shape[0], 1, dtype=torch.bool)
        for cx, cy, cz, r in self.balls:
            centre = torch.tensor([cx, cy, cz], dtype=points.dtype)
            inside |= torch.linalg.vector_norm(points - centre, dim=-1, keepdim=True) < r
        return inside.to(points.dtype) * self.value

    def forward(self, points: Tensor, with_normal: bool = False) -> dict[str, Tensor]:
        out = {"density": self.density(points), "albedo": torch.ones_like(points)}
        if with_normal:
            out["normal"] = F.normalize(points - self.centre, dim=-1)
        return out


def _reference_encoding(enc: HashGridEncoding, x: Tensor) -> Tensor:
    """Point-by-point Instant-NGP lookup written from the formulas, for comparison."""
    table = enc.table.detach()
    out = torch.zeros(x.shape[0], enc.output_dim)
    for n, p in enumerate(x.tolist()):
        for level, res in enumerate(enc.resolutions):
            pos = [c * res for c in p]
            low = [min(math.floor(c), res - 1) for c in pos]
            for corner in range(8):
                bits = [(corner >> 2) & 1, (corner >> 1) & 1, corner & 1]
                v = [low[a] + bits[a] for a in range(3)]
                weight = math.prod(pos[a] - low[a] if bits[a] else 1 - (pos[a] - low[a]) for a in range(3))
                if enc.hashed[level]:
                    idx = (v[0] * 1 ^ v[1] * 2654435761 ^ v[2] * 805459861) % enc.table_size
                else:
                    idx = v[0] + v[1] * (res + 1) + v[2] * (res + 1) ** 2
                f = enc.n_features_per_level
                out[n, level * f:(level + 1) * f] += weight * table[:, enc.level_offsets[level] + idx]
    return out


# ----------------------------------------------------------------------------------------- hash grid


def test_hash_grid_shape_gradients_and_reference() -> None:
    torch.manual_seed(0)
    enc = HashGridEncoding(n_levels=4, n_features_per_level=2, log2_hashmap_size=10, base_resolution=4,
                           max_resolution=64, init_scale=1.0)
    assert enc.output_dim == 8 and enc.resolutions == [4, 10, 25, 64]
    assert enc.hashed == [False, True, True, True]  # 5^3 <= 1024 < 11^3
    assert enc.table.shape == (2, 5**3 + 3 * 1024)
    x = torch.rand(300, 3, requires_grad=True)
    y = enc(x)
    assert y.shape == (300, 8)
    torch.testing.assert_close(y[:12].detach(), _reference_encoding(enc, x[:12].detach()), rtol=1e-5, atol=1e-5)

    y.square().sum().backward()
    grad = enc.table.grad
    assert grad is not None and x.grad is not None and x.grad.abs().sum() > 0
    for level in (0, 1):  # the dense and a hashed level both receive gradient
        start, size = enc.level_offsets[level], enc.level_sizes[level]
        assert grad[:, start:start + size].abs().sum() > 0


def test_hash_grid_int32_indices_give_the_int64_results_and_gradients() -> None:
    # the corner indices are kept as int32 (half the memory autograd holds); values, gradients and the double
    # backward of analytic normals are bit for bit those of int64 indices
    torch.manual_seed(0)
    enc = HashGridEncoding(n_levels=4, log2_hashmap_size=10, base_resolution=4, max_resolution=64, init_scale=1.0,
                           chunk_size=128)
    assert enc._index_dtype == torch.int32
    x0 = torch.rand(300, 3)
    results = []
    for dtype in (torch.int32, torch.int64):
        enc._index_dtype = dtype
        enc.table.grad = None
        x = x0.clone().requires_grad_(True)
        y = enc(x)
        (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
        (gx.square().sum() + y.sum()).backward()
        results.append((y.detach(), gx.detach(), enc.table.grad.clone()))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)
    assert results[0][2].abs().sum() > 0


def test_hash_grid_blend_backward_matches_autograd_lerp() -> None:
    # the trilinear blend's hand-written backward (_LerpPairs) against autograd's own torch.lerp: the same
    # values, table gradients bit for bit without point gradients, and the same point gradients and double
    # backward (analytic normals under a loss) up to the order of the additions
    from mvdream3d.threed.hashgrid import _LerpPairs

    torch.manual_seed(0)
    enc = HashGridEncoding(n_levels=4, log2_hashmap_size=10, base_resolution=4, max_resolution=64, init_scale=1.0,
                           chunk_size=128)
    x0 = torch.rand(300, 3)

    def run(points_grad: bool) -> tuple[torch.Tensor, ...]:
        enc.table.grad = None
        x = x0.clone().requires_grad_(points_grad)
        y = enc(x)
        if not points_grad:
            y.square().sum().backward()
            return y.detach(), enc.table.grad.clone()
        (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
        (gx.square().sum() + y.sum()).backward()
        return y.detach(), gx.detach(), enc.table.grad.clone()

    ours = run(False), run(True)
    autograd_lerp = staticmethod(lambda t, w: torch.lerp(*t.unbind(2), w.view(w.shape[0], *[1] * (t.ndim - 4), -1)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_LerpPairs, "apply", autograd_lerp)
        ref = run(False), run(True)
    for a, b in zip(ours[0], ref[0], strict=True):
        assert torch.equal(a, b)
    for a, b in zip(ours[1], ref[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())
    assert ours[1][2].abs().sum() > 0

    t = torch.randn(2, 3, 2, 2, 5, dtype=torch.float64, requires_grad=True)
    w = torch.rand(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_LerpPairs.apply, (t, w))
    assert torch.autograd.gradgradcheck(_LerpPairs.apply, (t, w))


def test_hash_grid_jacobian_is_autograds_derivative() -> None:
    # forward_with_jacobian: the same features as forward, and d features / d x as autograd computes it, for
    # points inside the cube, on its faces (x == 1 continues the last cell) and outside (clamped: zero)
    torch.manual_seed(0)
    enc = HashGridEncoding(n_levels=4, log2_hashmap_size=10, base_resolution=4, max_resolution=64, init_scale=1.0,
                           chunk_size=64).double()
    x = torch.rand(150, 3, dtype=torch.float64)
    x[:4] = torch.tensor([[1.0, 0.5, 0.3], [0.0, 0.2, 1.0], [1.2, 0.5, -0.1], [0.4, -0.3, 0.9]], dtype=torch.float64)
    feats, jac = enc.forward_with_jacobian(x)
    assert feats.shape == (150, enc.output_dim) and jac.shape == (3, 150, enc.output_dim)
    with torch.no_grad():
        assert torch.equal(feats, enc(x))
    xg = x.clone().requires_grad_(True)
    y = enc(xg)
    for k in range(enc.output_dim):  # points are independent: d y[:, k].sum() / d x = d y[n, k] / d x[n]
        (g,) = torch.autograd.grad(y[:, k].sum(), xg, retain_graph=True)
        torch.testing.assert_close(jac[:, :, k].t(), g, rtol=1e-12, atol=1e-12)
    assert jac[0, 2].abs().sum() == 0 and jac[2, 2].abs().sum() == 0 and jac[1, 3].abs().sum() == 0  # outside
    assert jac[0, 0].abs().sum() > 0  # x == 1: the last cell's slope
    # forward_with_vjp: the same features, and the jacobian applied to per-point weights
    feats_v, vjp = enc.forward_with_vjp(x)
    assert torch.equal(feats_v, feats)
    w = torch.randn(150, enc.output_dim, dtype=torch.float64)
    torch.testing.assert_close(vjp(w), (jac * w).sum(-1).t(), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="w must be"):
        vjp(w[:3])


def test_hash_grid_jacobian_gradients_gradcheck() -> None:
    # the jacobian's graph (w.r.t. the table: what a loss on analytic normals uses; w.r.t. the points: second
    # derivatives) against finite differences, float64, a few points away from cell faces
    torch.manual_seed(1)
    enc = HashGridEncoding(n_levels=2, log2_hashmap_size=6, base_resolution=2, max_resolution=6, init_scale=1.0,
                           chunk_size=4).double()
    x = (torch.rand(6, 3, dtype=torch.float64) * 0.8 + 0.1).requires_grad_(True)
    table = enc.table.detach().clone().requires_grad_(True)

    assert torch.autograd.gradcheck(lambda t, p: _with_table(enc, t, p), (table, x))
    w = torch.randn(6, enc.output_dim, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t, p, v: _with_table(enc, t, p, vjp=True)[1](v), (table, x, w))


def _with_table(enc: HashGridEncoding, table: Tensor, x: Tensor, vjp: bool = False) -> tuple[Tensor, Any]:
    saved = enc.table
    try:
        del enc.table
        enc.table = table  # a plain tensor attribute for the call (vjp: also for the function's later calls)
        return enc.forward_with_vjp(x) if vjp else enc.forward_with_jacobian(x)
    finally:
        del enc.table
        enc.table = saved


def test_hash_grid_is_continuous_and_chunking_is_exact() -> None:
    torch.manual_seed(0)
    enc = HashGridEncoding(n_levels=4, log2_hashmap_size=10, base_resolution=4, max_resolution=64, init_scale=1.0,
                           chunk_size=64)
    x = torch.rand(200, 3) * 0.98 + 0.01
    step = torch.randn(200, 3) * 1e-6
    with torch.no_grad():
        assert (enc(x + step) - enc(x)).abs().max() < 1e-3  # Lipschitz ~ 2 * 64 per unit
        # the last vertex (x == 1) continues the last cell
        edge = torch.tensor([[1.0, 0.5, 0.3]])
        assert (enc(edge) - enc(edge - torch.tensor([[1e-6, 0, 0]]))).abs().max() < 1e-3
        chunked = enc(x)
    enc.chunk_size = 1 << 15
    with torch.no_grad():
        torch.testing.assert_close(chunked, enc(x))


# ----------------------------------------------------------------------------------------- geometry


def test_implicit_volume_blob_init_normals_and_parameter_groups() -> None:
    torch.manual_seed(0)
    field = ImplicitVolume(**TINY_FIELD)
    with torch.no_grad():
        centre = field.density(torch.zeros(1, 3))
        corners = field.density(torch.tensor([[0.95, 0.95, 0.95], [-0.95, 0.95, -0.95]]))
    assert centre.item() > 5.0 and corners.max().item() < 1e-3

    points = F.normalize(torch.randn(64, 3), dim=-1) * 0.3
    with torch.no_grad():
        out = field(points, with_normal=True)
    assert out["density"].shape == (64, 1) and out["albedo"].shape == (64, 3) and out["normal"].shape == (64, 3)
    assert ((out["albedo"] > 0) & (out["albedo"] < 1)).all()
    cosine = (out["normal"] * F.normalize(points, dim=-1)).sum(-1)
    assert cosine.min() > 0.99  # the blob is radial, normals point outwards

    field.normal_type = "analytic"
    analytic = field(points, with_normal=True)["normal"]
    torch.testing.assert_close(analytic.detach(), out["normal"], atol=1e-2, rtol=0)

    groups = field.parameter_groups(0.01, 1e-3)
    assert [g["lr"] for g in groups] == [0.01, 1e-3]
    assert sum(len(g["params"]) for g in groups) == len(list(field.parameters()))


def test_analytic_normals_and_their_gradients_equal_autograds() -> None:
    # the normals computed next to the field (encoding jacobian + the MLP's derivative written out) against
    # autograd.grad(density, points, create_graph=True): the same normals, and a loss on them gives the same
    # table / MLP gradients (first-order graph against double backward) and point gradients, float64
    torch.manual_seed(0)
    field = ImplicitVolume(normal_type="analytic", **{**TINY_FIELD, "mlp_layers": 2}).double()
    with torch.no_grad():
        field.encoding.table.uniform_(-1, 1)
    points = (torch.rand(400, 3, dtype=torch.float64) * 2 - 1) * 1.05  # some outside the box (clamped)
    direction = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    results = []
    for fn in (field._forward_analytic, field._forward_analytic_autograd):
        field.zero_grad()
        p = points.clone().requires_grad_(True)
        out = fn(p)
        loss = (out["normal"] * direction).sum() + 0.01 * out["density"].sum() + out["albedo"].sum()
        (gp,) = torch.autograd.grad(loss, p, retain_graph=True)
        loss.backward()
        results.append([out["normal"].detach(), out["density"].detach(), gp, field.encoding.table.grad.clone(),
                        *[q.grad.clone() for q in field.mlp.parameters()]])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    assert results[0][3].abs().sum() > 0 and results[0][2].abs().sum() > 0
    with torch.no_grad():  # without gradients: plain tensors, the same normals
        torch.testing.assert_close(field(points, with_normal=True)["normal"], results[1][0], rtol=1e-9, atol=1e-10)


def test_analytic_normals_of_other_mlps_take_autograds_route() -> None:
    torch.manual_seed(0)
    field = ImplicitVolume(normal_type="analytic", **TINY_FIELD)
    field.mlp[1] = nn.Softplus()  # not a Linear / ReLU stack: the derivative is autograd's
    points = F.normalize(torch.randn(64, 3), dim=-1) * 0.3
    out = field(points, with_normal=True)
    torch.testing.assert_close(out["normal"], field._forward_analytic_autograd(points)["normal"])
    assert out["normal"].requires_grad


@pytest.mark.parametrize("normal_type", ["finite_difference", "analytic"])
def test_render_backward_reaches_table_and_mlp(normal_type: str) -> None:
    torch.manual_seed(0)
    field = ImplicitVolume(normal_type=normal_type, **TINY_FIELD)
    renderer = VolumeRenderer(num_samples_per_ray=16).train()
    rays_o, rays_d = get_rays(orbit_c2w(torch.tensor([10.0, 20.0]), torch.tensor([0.0, 90.0]), 2.7), 40.0, 8, 8)
    out = renderer(field, DiffuseMaterial(), RandomColorBackground().train(), rays_o, rays_d, rays_o[:, 0, 0],
                   shading="diffuse")
    for key, k in [("comp_rgb", 3), ("comp_rgb_fg", 3), ("comp_rgb_bg", 3), ("opacity", 1), ("depth", 1),
                   ("comp_normal", 3), ("z_variance", 1), ("weights_sum", 1)]:
        assert out[key].shape == (2, 8, 8, k), key
    assert out["orient"].ndim == 0
    loss = out["comp_rgb"].mean() + out["orient"]
    loss.backward()
    assert field.encoding.table.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in field.mlp.parameters())


def test_normals_only_where_visible_match_exact_normals() -> None:
    torch.manual_seed(0)
    field, material, background = ImplicitVolume(**TINY_FIELD), DiffuseMaterial(), SolidBackground()
    c2w = orbit_c2w(torch.tensor([15.0, -30.0]), torch.tensor([0.0, 120.0]), 2.7)
    fast = render_views(field, material, background, VolumeRenderer(num_samples_per_ray=32), c2w, 40.0, 8)
    exact = render_views(field, material, background, VolumeRenderer(num_samples_per_ray=32,
                                                                      normal_weight_threshold=0.0), c2w, 40.0, 8)
    torch.testing.assert_close(fast["comp_rgb"], exact["comp_rgb"], atol=32 * 1e-4, rtol=0)
    torch.testing.assert_close(fast["comp_normal"], exact["comp_normal"], atol=32 * 1e-4, rtol=0)


# ----------------------------------------------------------------------------------------- renderer


def _sphere_scene(field: nn.Module, size: int = 48) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    renderer = VolumeRenderer(num_samples_per_ray=32, eval_chunk_rays=500)  # several chunks
    c2w = orbit_c2w(0.0, 0.0, 3.0)  # on +z, looking at the origin; with fov 60 the image corners miss the box
    out = render_views(field, DiffuseMaterial(), SolidBackground((0.0, 0.0, 1.0)), renderer, c2w, 60.0, size)
    rays_o, rays_d = get_rays(c2w, 60.0, size, size)
    return rays_o[0], rays_d[0], {k: v if k == "orient" else v[0] for k, v in out.items()}


class InsideOutSphere(SphereField):
    def forward(self, points: Tensor, with_normal: bool = False) -> dict[str, Tensor]:
        out = super().forward(points, with_normal)
        if with_normal:
            out["normal"] = -out["normal"]
        return out


def test_render_sphere_silhouette_depth_and_composite() -> None:
    rays_o, rays_d, out = _sphere_scene(SphereField(r=0.5, value=50.0))
    assert not VolumeRenderer().intersect(rays_o.reshape(-1, 3), rays_d.reshape(-1, 3))[2].all()
    miss_distance = torch.linalg.vector_norm(torch.cross(rays_o, rays_d, dim=-1), dim=-1)  # ray-centre distance
    expected = miss_distance < 0.5
    predicted = out["opacity"][..., 0] > 0.5
    iou = (expected & predicted).sum() / (expected | predicted).sum()
    assert iou > 0.9
    assert out["opacity"][miss_distance < 0.4].min() > 0.99
    assert out["opacity"][miss_distance > 0.6].max() < 1e-6

    # central pixels: the surface is at t = 3 - sqrt(r^2 - b^2), within one sample spacing (2 / 32)
    centre = miss_distance < 0.08
    expected_t = 3.0 - torch.sqrt(0.25 - miss_distance[centre] ** 2)
    assert centre.any() and (out["depth"][..., 0][centre] - expected_t).abs().max() < 2.0 / 32
    # z-variance small on the opaque sphere; background shows where the sphere is absent
    assert out["z_variance"][centre].max() < 0.01
    torch.testing.assert_close(out["comp_rgb"][miss_distance > 0.6], torch.tensor([0.0, 0.0, 1.0]).expand(
        int((miss_distance > 0.6).sum()), 3))
    # white albedo lit from the camera: bright in the middle, no normals facing away are seen
    assert out["comp_rgb"][centre].min() > 0.95
    normals = out["comp_normal"][centre]
    assert (normals[:, 2] > 0.9).all()  # facing the camera on +z
    assert out["orient"] < 1e-3  # only the faint back faces of grazing rays
    # normals facing away from the camera are penalised by cos^2 of the incidence angle, whose mean over
    # a sphere's disc is 1/2
    inside_out = _sphere_scene(InsideOutSphere(r=0.5, value=50.0))[2]
    assert inside_out["orient"] == pytest.approx(0.5 * float(expected.float().mean()), rel=0.2)


def test_rays_missing_the_box_are_empty() -> None:
    renderer = VolumeRenderer(radius=1.0)
    origins = torch.tensor([[0.0, 0.0, 3.0], [0.0, 0.0, 3.0], [0.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    dirs = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, 1.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
    near, far, hit = renderer.intersect(origins, dirs)
    assert hit.tolist() == [True, False, False, True]
    torch.testing.assert_close(near[[0, 3]], torch.tensor([2.0, 0.0]))
    torch.testing.assert_close(far[[0, 3]], torch.tensor([4.0, 1.0]))

    field = SphereField(r=10.0)  # dense everywhere: any sample would be opaque
    out = renderer.eval()(field, DiffuseMaterial(), SolidBackground(), origins[None, None, 1:3],
                          dirs[None, None, 1:3], origins[:1], shading="albedo", with_normals=False)
    assert out["opacity"].abs().max() == 0 and "orient" not in out


def test_material_modes() -> None:
    material = DiffuseMaterial(0.1, 0.9)
    albedo = torch.tensor([[0.5, 0.2, 1.0], [0.5, 0.2, 1.0]])
    normal = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]])
    points = torch.zeros(2, 3)
    light = torch.tensor([[0.0, 0.0, 5.0], [0.0, 0.0, 5.0]])
    torch.testing.assert_close(material(albedo, normal, points, light, "diffuse"), albedo * torch.tensor([[1.0],
                                                                                                           [0.1]]))
    torch.testing.assert_close(material(albedo, normal, points, light, "textureless"),
                               torch.tensor([[1.0] * 3, [0.1] * 3]))
    torch.testing.assert_close(material(albedo, normal, points, light, "albedo"), albedo)


def test_backgrounds() -> None:
    torch.manual_seed(0)
    dirs = F.normalize(torch.randn(3, 4, 5, 3), dim=-1)
    solid = build_background("solid", color=(0.2, 0.4, 0.6))
    torch.testing.assert_close(solid(dirs)[1, 2, 3], torch.tensor([0.2, 0.4, 0.6]))

    rand = RandomColorBackground().train()
    colors = rand(dirs)
    assert (colors == colors[:, :1, :1]).all() and not torch.equal(colors[0, 0, 0], colors[1, 0, 0])
    assert (rand.eval()(dirs) == 1).all()

    learned = LearnedEnvironmentBackground(hidden=8, random_aug_prob=1.0).train()
    augmented = learned(dirs)
    assert (augmented == augmented[:, :1, :1]).all()  # one solid colour per image
    learned.eval()
    rgb = learned(dirs)
    assert rgb.shape == dirs.shape and ((rgb > 0) & (rgb < 1)).all() and torch.equal(rgb, learned(dirs))
    assert rgb.std() > 0  # depends on the direction


def test_bad_names_raise() -> None:
    x = torch.zeros(1, 3)
    with pytest.raises(ValueError, match="diffuse, textureless, albedo"):
        DiffuseMaterial()(x, x, x, x, "glossy")
    with pytest.raises(ValueError, match="solid, random, learned"):
        build_background("sky")
    with pytest.raises(ValueError, match="finite_difference, analytic"):
        ImplicitVolume(normal_type="sobel", **TINY_FIELD)
    rays = torch.zeros(1, 2, 2, 3)
    with pytest.raises(ValueError, match="needs normals"):
        VolumeRenderer()(SphereField(), DiffuseMaterial(), SolidBackground(), rays, rays + 1, x, shading="diffuse",
                         with_normals=False)


# ----------------------------------------------------------------------------------------- export


def test_extract_mesh_of_sphere_with_auto_threshold(tmp_path) -> None:
    # off-centre (catches swapped axes) with a floater in a corner
    centre = np.array([0.2, -0.1, 0.15])
    field = SphereField(r=0.45, value=50.0, centre=tuple(centre), extra_balls=((0.75, 0.75, 0.75, 0.08),))
    mesh = extract_mesh(field, resolution=64, renderer=VolumeRenderer(num_samples_per_ray=32))
    voxel = 2.0 / 63
    threshold = mesh.metadata["threshold"]
    assert 0.5 < threshold < 49.5 and mesh.metadata["threshold_iou"] > 0.9
    assert mesh.is_watertight and mesh.body_count == 1  # the floater was removed
    radii = np.linalg.norm(mesh.vertices - centre, axis=1)
    assert np.abs(radii - 0.45).mean() < 2 * voxel
    assert mesh.volume == pytest.approx(4 / 3 * math.pi * 0.45**3, rel=0.1)  # positive: faces point outwards
    assert (mesh.visual.vertex_colors == 255).all()
    assert mesh_field_iou(mesh, field, VolumeRenderer(num_samples_per_ray=32), size=32) > 0.9

    paths = save_mesh(mesh, tmp_path / "out", stem="sphere")
    assert sorted(paths) == ["glb", "obj"] and all(p.exists() for p in paths.values())
    glb = trimesh.load(paths["glb"], force="mesh")
    obj = trimesh.load(paths["obj"], force="mesh", process=False)
    assert len(glb.faces) == len(mesh.faces) and len(obj.faces) == len(mesh.faces)
    for loaded in (glb, obj):
        assert (np.asarray(loaded.visual.vertex_colors)[:, :3] == 255).all()
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left


def test_extract_mesh_of_empty_field_raises() -> None:
    field = SphereField(value=0.0)
    with pytest.raises(EmptyFieldError, match="the field is empty at threshold 5"):
        extract_mesh(field, resolution=8, threshold=5.0)
    with pytest.raises(EmptyFieldError, match="the field is empty"):
        extract_mesh(field, resolution=8)


def test_turntable_and_video_files(tmp_path) -> None:
    frames = render_turntable(SphereField(), DiffuseMaterial(), SolidBackground(),
                              VolumeRenderer(num_samples_per_ray=8), num_frames=3, size=16)
    assert frames.shape == (3, 16, 16, 3) and frames.dtype == np.uint8
    assert frames[:, 8, 8].min() > 200 and frames[:, 0, 0].min() == 255  # lit sphere on white

    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, size=(5, 17, 23, 3), dtype=np.uint8)  # odd sizes: the mp4 is padded
    paths = save_video(video, tmp_path / "v.mp4", tmp_path / "v.gif", fps=10)
    with imageio_v2.get_reader(paths["mp4"], format="FFMPEG") as reader:
        mp4_frames = list(reader.iter_data())  # list(reader) asks len(), which is inf
    assert len(mp4_frames) == 5 and mp4_frames[0].shape == (18, 24, 3)
    gif = iio.imread(paths["gif"], index=None)
    assert gif.shape[0] == 5 and gif.shape[1:3] == (17, 23)
    assert save_video(video, None, tmp_path / "only.gif").keys() == {"gif"}
