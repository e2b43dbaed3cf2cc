import numpy as np
import pytest
import torch

from mvdream3d import MultiViewPipeline, cameras


@pytest.fixture(scope="module")
def pipe():
    return MultiViewPipeline.from_pretrained("tiny-random")


def _run(pipe, **kw):
    args = dict(num_inference_steps=2, height=64, width=64, seed=0)
    args.update(kw)
    return pipe("a red cube", **args)


def test_four_views_images_cameras_latents(pipe):
    out = _run(pipe)
    assert len(out.images) == 4 and out.images[0].size == (64, 64)
    assert out.latents.shape == (4, 4, 8, 8)
    assert out.cameras["c2w"].shape == (4, 4, 4)
    torch.testing.assert_close(out.cameras["model_camera"], cameras.get_camera(4, 15, 0))
    assert out.cameras["intrinsics"].shape == (3, 3)
    assert out.grid().size == (256, 64)
    arr = np.asarray(out.images[0])
    assert arr.std() > 0  # not blank


def test_deterministic_given_seed_and_seed_matters(pipe):
    a, b, c = _run(pipe), _run(pipe), _run(pipe, seed=1)
    assert torch.equal(a.latents, b.latents)
    assert not torch.equal(a.latents, c.latents)


@pytest.mark.parametrize("views", [1, 6])
def test_any_number_of_views(pipe, views):
    out = _run(pipe, num_views=views)
    assert len(out.images) == views
    assert len(out.cameras["azimuth"]) == views


def test_explicit_cameras_equal_orbit(pipe):
    c2w = cameras.orbit_c2w(torch.full((4,), 15.0), torch.tensor([0.0, 90, 180, 270]))
    a = _run(pipe, cameras=c2w)
    b = _run(pipe)
    torch.testing.assert_close(a.latents, b.latents)
    c = _run(pipe, cameras=cameras.get_camera(4, 15, 0))
    torch.testing.assert_close(c.latents, b.latents)
    torch.testing.assert_close(c.cameras["c2w"], b.cameras["c2w"], atol=1e-6, rtol=0)


def test_several_prompts_and_objects(pipe):
    out = pipe(["a red cube", "a blue ball"], num_objects=2, num_views=2, num_inference_steps=1,
               height=64, width=64, seed=0)
    assert len(out.images) == 8 and out.latents.shape[0] == 8
    assert out.grid(rows=4).size == (128, 256)


def test_other_sampler_and_bf16(pipe):
    out = _run(pipe, sampler="dpmpp_2m")
    assert len(out.images) == 4
    p16 = MultiViewPipeline.from_pretrained("tiny-random", dtype="bf16")
    assert len(_run(p16, num_inference_steps=1).images) == 4


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(prompt=[]), "prompt list is empty"),
        (dict(prompt="  "), "non-empty"),
        (dict(num_views=0), "num_views must be"),
        (dict(height=60), "multiples of 16"),
        (dict(sampler="plms"), "unknown sampler"),
        (dict(cameras=torch.zeros(4, 3, 3)), "cameras must be"),
        (dict(num_inference_steps=0), "num_inference_steps"),
        (dict(guidance_rescale=1.5), "guidance_rescale must be in"),
    ],
)
def test_bad_inputs(pipe, kw, match):
    args = dict(prompt="a red cube", num_inference_steps=1, height=64, width=64)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        pipe(**args)


def test_guidance_rescale_matches_conditional_spread():
    from mvdream3d.diffusion.sampling import rescale_guidance

    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(6, 4, 8, 8, generator=g), torch.randn(6, 4, 8, 8, generator=g)
    guided = uncond + 7.5 * (cond - uncond)
    torch.testing.assert_close(rescale_guidance(guided, cond, 0.0), guided)
    full = rescale_guidance(guided, cond, 1.0)
    torch.testing.assert_close(full.std(dim=(1, 2, 3)), cond.std(dim=(1, 2, 3)))  # per image, not per batch
    torch.testing.assert_close(rescale_guidance(guided, cond, 0.7), 0.7 * full + 0.3 * guided)


def test_guidance_rescale_changes_samples_and_is_a_model_default(pipe):
    plain, rescaled = _run(pipe, guidance_scale=7.5), _run(pipe, guidance_scale=7.5, guidance_rescale=0.7)
    assert not torch.allclose(plain.latents, rescaled.latents)
    # without guidance there is nothing to rescale
    torch.testing.assert_close(_run(pipe, guidance_scale=1.0).latents,
                               _run(pipe, guidance_scale=1.0, guidance_rescale=0.7).latents)
    assert pipe.model.sampling_defaults["guidance_rescale"] == 0.0  # the published models' CFG
