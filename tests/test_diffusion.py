import pytest
import torch

from mvdream3d import NoiseSchedule, sample
from mvdream3d.diffusion.sampling import (
    cfg_denoiser,
    ddim_timesteps,
    make_scheduler,
    rescale_guidance,
    sample_ddim,
)


def test_scaled_linear_schedule_known_values():
    s = NoiseSchedule()
    assert s.betas.dtype == torch.float32 and s.betas.shape == (1000,)
    assert s.betas[0].item() == pytest.approx(0.00085, rel=1e-6)
    assert s.betas[-1].item() == pytest.approx(0.012, rel=1e-6)
    assert s.alphas_cumprod[0].item() == pytest.approx(0.99915, rel=1e-6)
    assert s.alphas_cumprod[-1].item() == pytest.approx(0.0046570, rel=1e-3)  # SD's value
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    torch.testing.assert_close(s.alphas_cumprod, ref.alphas_cumprod.float(), atol=1e-6, rtol=1e-5)


def test_ddim_grid_is_ldm_uniform_with_offset_one():
    g = ddim_timesteps(50)
    assert g[0] == 1 and g[1] == 21 and g[-1] == 981 and len(g) == 50
    assert list(ddim_timesteps(4)) == [1, 251, 501, 751]
    with pytest.raises(ValueError):
        ddim_timesteps(0)


@pytest.mark.parametrize("pred", ["eps", "v"])
def test_conversions_round_trip(pred):
    s = NoiseSchedule(prediction_type=pred)
    x0, noise = torch.randn(3, 4, 4, 4), torch.randn(3, 4, 4, 4)
    t = torch.tensor([0, 500, 999])
    xt = s.q_sample(x0, t, noise)
    target = s.training_target(x0, t, noise)
    torch.testing.assert_close(s.to_x0(target, xt, t), x0, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(s.to_eps(target, xt, t), noise, atol=2e-3, rtol=1e-3)


def _toy_denoiser(scale=0.3):
    def d(x, t):
        return scale * x + 1e-4 * t.float().view(-1, 1, 1, 1)
    return d


def test_ddim_matches_diffusers_ddim_scheduler():
    s = NoiseSchedule()
    x_T = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ours = sample_ddim(_toy_denoiser(), x_T, s, 20)
    sched = make_scheduler("ddim", s)
    sched.set_timesteps(20)
    assert list(sched.timesteps.numpy()[::-1]) == list(ddim_timesteps(20))
    x = x_T
    for t in sched.timesteps:
        x = sched.step(_toy_denoiser()(x, t.expand(4)), t, x).prev_sample
    torch.testing.assert_close(ours, x, atol=1e-4, rtol=1e-4)


def test_ddim_last_step_goes_to_alphas_cumprod_0():
    # with a perfect x0 predictor the final sample is sqrt(a_0) * x0 + sqrt(1 - a_0) * eps_hat
    s = NoiseSchedule()
    x0 = torch.ones(1, 1, 2, 2)

    def oracle(x, t):
        return s.eps_from_x0(x, t, x0)

    out = sample_ddim(oracle, torch.randn(1, 1, 2, 2), s, 10)
    a0 = s.alphas_cumprod[0]
    eps_last = (out - a0.sqrt() * x0) / (1 - a0).sqrt()
    assert not torch.allclose(out, x0)  # it does not step to alpha = 1
    assert torch.isfinite(eps_last).all()


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "unipc", "euler"])
def test_sampling_is_deterministic_given_seed(tiny_unet, sampler):
    cond = {"context": torch.randn(4, 5, 24), "camera": torch.randn(4, 16)}
    uncond = {"context": torch.zeros(4, 5, 24), "camera": cond["camera"]}

    def run(seed):
        x_T = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(seed))
        return sample(tiny_unet, x_T, cond, uncond, num_frames=4, steps=3, guidance_scale=5.0, sampler=sampler)

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert torch.isfinite(a).all()


def test_cfg_scale_one_equals_conditional_model(tiny_unet):
    cond = {"context": torch.randn(4, 5, 24), "camera": torch.randn(4, 16)}
    uncond = {"context": torch.randn(4, 5, 24), "camera": cond["camera"]}
    x = torch.randn(4, 4, 8, 8)
    t = torch.full((4,), 700)
    with torch.no_grad():
        direct = tiny_unet(x, t, cond["context"], cond["camera"], 4)
        torch.testing.assert_close(cfg_denoiser(tiny_unet, cond, uncond, 4, 1.0)(x, t), direct)
        # guidance formula: uncond + s (cond - uncond)
        u = tiny_unet(x, t, uncond["context"], uncond["camera"], 4)
        torch.testing.assert_close(cfg_denoiser(tiny_unet, cond, uncond, 4, 3.0)(x, t), u + 3.0 * (direct - u),
                                   atol=1e-5, rtol=1e-5)
    x_T = torch.randn(4, 4, 8, 8)
    a = sample(tiny_unet, x_T, cond, uncond, 4, 3, 1.0)
    b = sample(tiny_unet, x_T, cond, None, 4, 3, 7.5)
    torch.testing.assert_close(a, b)


def test_cfg_conditioning_prepared_once_matches_direct_calls(tiny_unet):
    # one context per object (2 objects x 4 views): without autograd the denoiser stacks the halves and
    # prepares the cross-attention keys/values once per batch size; every call equals the plain UNet calls,
    # and equals the unprepared path taken with autograd on
    cond = {"context": torch.randn(2, 5, 24), "camera": torch.randn(4, 16)}
    uncond = {"context": torch.randn(1, 5, 24), "camera": cond["camera"]}
    den = cfg_denoiser(tiny_unet, cond, uncond, 4, 4.0)
    for n, seed in ((8, 0), (8, 1), (4, 2)):
        g = torch.Generator().manual_seed(seed)
        x, t = torch.randn(n, 4, 8, 8, generator=g), torch.full((n,), 300 + seed)
        cam = cond["camera"].repeat(n // 4, 1)
        ctx = cond["context"][: n // 4].repeat_interleave(4, dim=0)
        with torch.no_grad():
            c = tiny_unet(x, t, ctx, cam, 4)
            u = tiny_unet(x, t, uncond["context"].expand(n, -1, -1), cam, 4)
            if n == 4:  # a batch of one object gets the first object's context: build a denoiser for it
                den4 = cfg_denoiser(tiny_unet, {**cond, "context": cond["context"][:1]}, uncond, 4, 4.0)
                got = den4(x, t)
            else:
                got = den(x, t)
        # the batched call (2n rows) and the direct calls (n rows) round apart by <= 3e-6 (oneDNN picks kernels
        # by batch size); the guided output weighs that by |1 + s| + |s| = 9
        torch.testing.assert_close(got, u + 4.0 * (c - u), atol=5e-5, rtol=1e-4)
        if n == 8:  # guidance rescale on the prepared, batched path: per image, towards the conditional half
            with torch.no_grad():
                rescaled = cfg_denoiser(tiny_unet, cond, uncond, 4, 4.0, guidance_rescale=0.7)(x, t)
            torch.testing.assert_close(rescaled, rescale_guidance(u + 4.0 * (c - u), c, 0.7), atol=5e-5, rtol=1e-4)
            assert not torch.allclose(rescaled, got)
            with torch.enable_grad():  # rounding of the two paths (<= 1e-5 per call) scaled by the guidance
                torch.testing.assert_close(den(x, t).detach(), got, atol=5e-5, rtol=1e-4)


def test_camera_per_object_is_tiled(tiny_unet):
    cam = torch.randn(4, 16)
    cond = {"context": torch.randn(8, 5, 24), "camera": cam}
    x_T = torch.randn(8, 4, 8, 8)
    a = sample(tiny_unet, x_T, cond, None, 4, 2, 1.0)
    b = sample(tiny_unet, x_T, dict(cond, camera=cam.repeat(2, 1)), None, 4, 2, 1.0)
    torch.testing.assert_close(a, b)


def test_sample_bad_arguments(tiny_unet):
    cond = {"context": torch.randn(4, 5, 24), "camera": None}
    with pytest.raises(ValueError, match="unknown sampler"):
        sample(tiny_unet, torch.randn(4, 4, 8, 8), cond, None, 4, 2, 1.0, sampler="nope")
    with pytest.raises(ValueError, match="not divisible"):
        sample(tiny_unet, torch.randn(6, 4, 8, 8), cond, None, 4, 2, 1.0)
    with pytest.raises(ValueError, match="steps"):
        sample(tiny_unet, torch.randn(4, 4, 8, 8), cond, None, 4, 0, 1.0)
