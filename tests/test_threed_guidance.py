"""Text-to-3D camera sampler and score-distillation guidance (fast, tiny random model)."""

from __future__ import annotations

import math

import pytest
import torch

from mvdream3d.cameras import c2w_to_model_camera, orbit_c2w
from mvdream3d.threed.camera_sampler import (
    RandomMultiViewCameraSampler,
    azimuth_elevation_from_c2w,
    fixed_views,
    view_direction_text,
)
from mvdream3d.threed.guidance import Guidance2D, MultiViewGuidance, build_guidance, timestep_range

PROMPT = "a red cube"
SIZE = 32  # tiny-random is latent with an 8x VAE: 32 px -> 4x4 latents


@pytest.fixture(scope="module")
def model():
    from mvdream3d.builtin import builtin_model

    return builtin_model("tiny-random")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------- cameras


def test_sampler_group_structure():
    s = RandomMultiViewCameraSampler(n_view=4, batch_size=8, seed=0)
    for _ in range(10):
        c = s.sample(0)
        assert c.c2w.shape == (8, 4, 4) and c.c2w.dtype == torch.float32 and c.n_view == 4
        el, fov, dist = (x.reshape(2, 4).double() for x in (c.elevation_deg, c.fovy_deg, c.distance))
        az = c.azimuth_deg.reshape(2, 4).double()
        for x in (el, fov, dist):
            assert torch.all(x == x[:, :1])
        gaps = torch.remainder(az[:, 1:] - az[:, :-1], 360.0)
        torch.testing.assert_close(gaps, torch.full_like(gaps, 90.0), atol=1e-3, rtol=0)
        assert torch.all((c.azimuth_deg >= -180) & (c.azimuth_deg < 180))
        assert torch.all((el >= -1e-4) & (el <= 30 + 1e-4)) and torch.all((fov >= 15) & (fov <= 60))
        r = dist * torch.tan(torch.deg2rad(fov) / 2)  # distance = r / tan(fov / 2), r in [0.8, 1]
        assert torch.all((r >= 0.8 - 1e-5) & (r <= 1.0 + 1e-5))
        expect = orbit_c2w(c.elevation_deg, c.azimuth_deg, c.distance)
        torch.testing.assert_close(c.c2w, expect, atol=1e-4, rtol=1e-4)
        light = c.light_positions.norm(dim=-1)
        assert torch.all((light >= 0.8 - 1e-5) & (light <= 1.5 + 1e-5))


def test_sampler_absolute_radius_and_model_camera():
    c = RandomMultiViewCameraSampler(relative_radius=False, seed=1).sample(0)
    assert torch.all((c.distance >= 0.8) & (c.distance <= 1.0))
    mc = c.model_camera
    assert mc.shape == (8, 16) and mc.dtype == torch.float32
    torch.testing.assert_close(mc, c2w_to_model_camera(c.c2w))
    torch.testing.assert_close(mc.reshape(-1, 4, 4)[:, :3, 3].norm(dim=-1), torch.ones(8), atol=1e-5, rtol=0)


def test_sampler_milestones_and_errors():
    s = RandomMultiViewCameraSampler(seed=0)
    a, b = s.sample(4999), s.sample(5000)
    assert (a.height, a.width, a.batch_size) == (64, 64, 8)
    assert (b.height, b.width, b.batch_size) == (256, 256, 4)
    assert RandomMultiViewCameraSampler(resolution=32).sample(6000).height == 32
    with pytest.raises(ValueError, match=r"6.*n_view=4"):
        RandomMultiViewCameraSampler(n_view=4, batch_size=6)
    with pytest.raises(ValueError, match=r"10.*n_view=4"):
        RandomMultiViewCameraSampler(n_view=4, resolution_milestones=[(0, 64, 10)])
    # same seed, same batch
    torch.testing.assert_close(RandomMultiViewCameraSampler(seed=3).sample(0).c2w,
                               RandomMultiViewCameraSampler().sample(0, generator=gen(3)).c2w)


def test_fixed_views_and_view_text():
    c = fixed_views(n_view=4, elevation=15.0, fovy_deg=40.0, size=48)
    torch.testing.assert_close(torch.remainder(c.azimuth_deg, 360), torch.tensor([0.0, 90.0, 180.0, 270.0]))
    torch.testing.assert_close(c.distance, torch.full((4,), 1 / math.tan(math.radians(20))))
    torch.testing.assert_close(c.light_positions, c.c2w[:, :3, 3])
    assert (c.height, c.width) == (48, 48)
    az, el = azimuth_elevation_from_c2w(c.c2w)
    torch.testing.assert_close(torch.remainder(az, 360), torch.tensor([0.0, 90.0, 180.0, 270.0], dtype=torch.float64),
                               atol=1e-4, rtol=0)
    torch.testing.assert_close(el, torch.full((4,), 15.0, dtype=torch.float64), atol=1e-4, rtol=0)
    assert view_direction_text(az, el) == ["front view", "side view", "back view", "side view"]
    got = view_direction_text([0, 44, -44, 46, -100, 136, -179, 200, 10], [0, 0, 0, 0, 0, 0, 0, 0, 61])
    assert got == ["front view", "front view", "front view", "side view", "side view", "back view", "back view",
                   "back view", "overhead view"]


def test_timestep_range():
    assert timestep_range(0) == pytest.approx((0.98, 0.98))
    assert timestep_range(4000) == pytest.approx((0.50, 0.74))
    assert timestep_range(8000) == pytest.approx((0.02, 0.50))
    assert timestep_range(20000) == pytest.approx((0.02, 0.50))
    assert timestep_range(50, (0.9, 0.9), (0.1, 0.5), 100) == pytest.approx((0.5, 0.7))


# ---------------------------------------------------------------------------------------------- guidance


@pytest.mark.parametrize("loss_type", ["x0_recon", "sds"])
def test_guidance_step_gives_gradients(model, loss_type):
    g = MultiViewGuidance(model, guidance_scale=7.5, loss_type=loss_type, latent_render_size=SIZE)
    assert list(g.parameters()) == []  # the model is referenced, not registered
    rgb = torch.rand(8, 48, 48, 3, requires_grad=True)  # 48 -> 32: antialiased downsampling
    c2w = RandomMultiViewCameraSampler(seed=0).sample(0).c2w
    out = g(rgb, c2w, PROMPT, step=4000, generator=gen())
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    assert 500 <= out["t"] <= 740 and out["grad_norm"] > 0
    assert out["x0_pred"].shape == (8, 4, 4, 4) and not out["x0_pred"].requires_grad
    out["loss"].backward()
    assert torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def _hand_outputs(model, z, c2w, step, seed, scale, num_frames=4, context=None, camera="c2w"):
    """Redo the guidance's random draws (t first, then the noise) and its guided UNet output by hand."""
    sched = model.noise_schedule
    lo, hi = timestep_range(step)
    g = gen(seed)
    t = int(torch.randint(int(1000 * lo), int(1000 * hi) + 1, (1,), generator=g))
    noise = torch.randn(z.shape, generator=g)
    tt = torch.full((z.shape[0],), t)
    x_t = sched.q_sample(z.detach(), tt, noise)
    cond = context if context is not None else model.encode_text([PROMPT + model.prompt_suffix]).expand(len(z), -1, -1)
    uncond = model.encode_text([""]).expand(len(z), -1, -1)
    cam = c2w_to_model_camera(c2w) if camera == "c2w" else None
    # one batched call [uncond; cond], as the guidance makes it: two separate calls differ in float
    # rounding, which a guidance scale of 100 and 1/sqrt(alpha_bar) at high t blow up past the tolerance
    with torch.no_grad():
        out_u, out_c = model.unet(torch.cat([x_t, x_t]), torch.cat([tt, tt]), context=torch.cat([uncond, cond]),
                                  camera=None if cam is None else torch.cat([cam, cam]),
                                  num_frames=num_frames).chunk(2)
    return t, noise, x_t, tt, out_u + scale * (out_c - out_u)


def test_x0_recon_without_rescale_matches_hand(model):
    g = MultiViewGuidance(model, guidance_scale=5.0, recon_std_rescale=0.0, latent_render_size=SIZE)
    c2w = fixed_views(size=SIZE).c2w
    z = torch.randn(4, 4, 4, 4, generator=gen(1)).requires_grad_(True)
    out = g.latent_loss(z, c2w, PROMPT, step=2000, generator=gen(7))
    t, _, x_t, tt, guided = _hand_outputs(model, z, c2w, 2000, 7, 5.0)
    x0 = model.noise_schedule.to_x0(guided, x_t, tt)
    assert out["t"] == t
    torch.testing.assert_close(out["loss"], 0.5 * ((z.detach() - x0) ** 2).sum() / 4, rtol=1e-4, atol=1e-5)
    out["loss"].backward()
    torch.testing.assert_close(z.grad, (z.detach() - x0) / 4, rtol=1e-4, atol=1e-5)


def test_x0_recon_std_rescale_matches_hand(model):
    g = MultiViewGuidance(model, guidance_scale=100.0, recon_std_rescale=0.5, latent_render_size=SIZE)
    c2w = fixed_views(size=SIZE).c2w
    z = torch.randn(4, 4, 4, 4, generator=gen(1))
    out = g.latent_loss(z, c2w, PROMPT, step=2000, generator=gen(7))
    *_, x_t, tt, guided = _hand_outputs(model, z, c2w, 2000, 7, 100.0)
    *_, unguided = _hand_outputs(model, z, c2w, 2000, 7, 1.0)  # scale 1: the conditional output
    x0, x0_text = (model.noise_schedule.to_x0(o, x_t, tt) for o in (guided, unguided))
    factor = (x0_text.std() + 1e-8) / (x0.std() + 1e-8)  # one group of 4 views
    assert abs(factor - 1) > 0.1  # the check below is not vacuous
    torch.testing.assert_close(out["x0_pred"], 0.5 * x0 * factor + 0.5 * x0, rtol=1e-4, atol=1e-4)


def test_prompt_context_reused_across_steps_and_batch_sizes(model):
    # the UNet context of a prompt is prepared once per batch size and reused; each call still matches by hand
    g = MultiViewGuidance(model, guidance_scale=5.0, recon_std_rescale=0.0, latent_render_size=SIZE)
    c2w4 = fixed_views(size=SIZE).c2w
    for n in (4, 8, 4):
        c2w = c2w4.repeat(n // 4, 1, 1)
        z = torch.randn(n, 4, 4, 4, generator=gen(n))
        out = g.latent_loss(z, c2w, PROMPT, step=2000, generator=gen(7))
        *_, x_t, tt, guided = _hand_outputs(model, z, c2w, 2000, 7, 5.0)
        torch.testing.assert_close(out["x0_pred"], model.noise_schedule.to_x0(guided, x_t, tt), rtol=1e-4, atol=1e-5)


def test_sds_gradient_matches_hand(model):
    g = MultiViewGuidance(model, guidance_scale=5.0, loss_type="sds", latent_render_size=SIZE)
    c2w = fixed_views(size=SIZE).c2w
    z = torch.randn(4, 4, 4, 4, generator=gen(2)).requires_grad_(True)
    out = g.latent_loss(z, c2w, PROMPT, step=8000, generator=gen(3))
    out["loss"].backward()
    t, noise, x_t, tt, guided = _hand_outputs(model, z, c2w, 8000, 3, 5.0)
    eps_hat = model.noise_schedule.to_eps(guided, x_t, tt)
    w = 1 - model.noise_schedule.alphas_cumprod[t]
    torch.testing.assert_close(z.grad, w * (eps_hat - noise) / 4, rtol=1e-4, atol=1e-6)
    assert out["grad_norm"] == pytest.approx(float((w * (eps_hat - noise) / 4).norm()), rel=1e-4)


def test_guidance_bf16_autocast(model):
    g = MultiViewGuidance(model, latent_render_size=SIZE, dtype=torch.bfloat16)
    rgb = torch.rand(4, SIZE, SIZE, 3, requires_grad=True)
    out = g(rgb, fixed_views(size=SIZE).c2w, PROMPT, step=0, generator=gen())
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])


def test_guidance_2d_single_view_no_camera(model, monkeypatch):
    g = build_guidance("2d", model, guidance_scale=5.0, latent_render_size=SIZE, n_view=4)
    assert isinstance(g, Guidance2D) and g.loss_type == "sds"
    c2w = fixed_views(size=SIZE).c2w
    assert g.view_prompts(c2w, PROMPT) == [f"{PROMPT}, {v}" for v in ("front view", "side view", "back view",
                                                                     "side view")]
    calls = []
    forward = model.unet.forward

    def spy(x, t, context=None, camera=None, num_frames=1):
        calls.append((camera, num_frames, context.shape[0]))
        return forward(x, t, context=context, camera=camera, num_frames=num_frames)

    monkeypatch.setattr(model.unet, "forward", spy)
    rgb = torch.rand(4, SIZE, SIZE, 3, requires_grad=True)
    out = g(rgb, c2w, PROMPT, step=100, generator=gen())
    out["loss"].backward()
    assert calls == [(None, 1, 8)]
    assert torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
    # one context per image: front/back differ, the two side views are the same text
    ctx = torch.cat([g.encode_prompt(p)["cond"] for p in g.view_prompts(c2w, PROMPT)])
    assert not torch.equal(ctx[0], ctx[2]) and torch.equal(ctx[1], ctx[3])


def test_errors(model, monkeypatch):
    from mvdream3d.models.model import build_model, resolve_config

    cfg = resolve_config("tiny-random")
    cfg["model"]["params"]["unet_config"]["params"]["camera_dim"] = None
    cfg["model"]["params"]["first_stage_config"] = {"target": "torch.nn.Identity"}  # cheaper; pixel model
    cfg["model"]["params"]["unet_config"]["params"]["in_channels"] = 3
    cfg["model"]["params"]["unet_config"]["params"]["out_channels"] = 3
    flat = build_model(cfg)
    with pytest.raises(ValueError, match="camera embedding.*Guidance2D"):
        MultiViewGuidance(flat)
    g2 = Guidance2D(flat, guidance_scale=3.0)
    assert g2.latent_render_size == flat.native_size == 32
    assert torch.isfinite(g2(torch.rand(2, 16, 16, 3), fixed_views(2).c2w, PROMPT, 0, gen())["loss"])

    g = MultiViewGuidance(model, latent_render_size=SIZE)
    for bad in ("", "   "):
        with pytest.raises(ValueError, match="empty prompt"):
            g.encode_prompt(bad)
    with pytest.raises(ValueError, match="empty prompt"):
        g(torch.rand(4, SIZE, SIZE, 3), fixed_views(size=SIZE).c2w, "", 0)
    with pytest.raises(ValueError, match="n_view=4"):
        g(torch.rand(2, SIZE, SIZE, 3), fixed_views(2).c2w, PROMPT, 0)
    with pytest.raises(ValueError, match="multiview"):
        build_guidance("3d", model)
    with pytest.raises(ValueError, match="loss_type"):
        MultiViewGuidance(model, loss_type="l2")
    with pytest.raises(ValueError, match="multiple of 16"):
        MultiViewGuidance(model, latent_render_size=40)
    monkeypatch.setattr(model, "text_encoder", None)
    with pytest.raises(ValueError, match="text encoder"):
        MultiViewGuidance(model)
