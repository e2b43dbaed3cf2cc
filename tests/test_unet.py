import json

import pytest
import torch
from conftest import TINY_UNET, perturb, reference_json, spec_or_skip

from mvdream3d import MultiViewUNet
from mvdream3d.models.attention import PreparedContext, naive_attention, sdpa_attention, set_attention_backend


def _inputs(n=8, seed=1, hw=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, hw, hw, generator=g)
    t = torch.tensor([500] * n)
    ctx = torch.randn(n, 5, 24, generator=g)
    cam = torch.randn(n, 16, generator=g)
    return x, t, ctx, cam


@torch.no_grad()
def test_views_are_coupled_only_with_num_frames(tiny_unet):
    x, t, ctx, cam = _inputs()
    base = tiny_unet(x, t, ctx, cam, num_frames=4)
    x2 = x.clone()
    x2[2] += 1.0  # change view 2 of object 0
    out = tiny_unet(x2, t, ctx, cam, num_frames=4)
    for v in (0, 1, 3):
        assert (out[v] - base[v]).abs().max() > 1e-4, f"view {v} did not see view 2"
    assert torch.allclose(out[4:], base[4:]), "object 1 must not see object 0"
    base1 = tiny_unet(x, t, ctx, cam, num_frames=1)
    out1 = tiny_unet(x2, t, ctx, cam, num_frames=1)
    assert torch.allclose(out1[[0, 1, 3]], base1[[0, 1, 3]], atol=1e-6)


@torch.no_grad()
def test_camera_changes_output_and_none_works(tiny_unet):
    x, t, ctx, cam = _inputs()
    a = tiny_unet(x, t, ctx, cam, num_frames=4)
    b = tiny_unet(x, t, ctx, cam + 1, num_frames=4)
    c = tiny_unet(x, t, ctx, None, num_frames=4)
    assert (a - b).abs().max() > 1e-4
    assert (a - c).abs().max() > 1e-4
    assert torch.isfinite(c).all()
    assert torch.allclose(tiny_unet(x, t, ctx, cam.view(8, 4, 4), num_frames=4), a)


@torch.no_grad()
def test_per_view_context_broadcast_and_timestep_forms(tiny_unet):
    x, t, ctx, cam = _inputs()
    per_obj = ctx[::4]
    full = per_obj.repeat_interleave(4, dim=0)
    a = tiny_unet(x, t, full, cam, num_frames=4)
    assert torch.allclose(tiny_unet(x, t, per_obj, cam, num_frames=4), a)
    assert torch.allclose(tiny_unet(x, 500, full, cam, num_frames=4), a)


@torch.no_grad()
def test_sdpa_matches_naive_attention(tiny_unet):
    x, t, ctx, cam = _inputs()
    a = tiny_unet(x, t, ctx, cam, num_frames=4)
    set_attention_backend(tiny_unet, "naive")
    b = tiny_unet(x, t, ctx, cam, num_frames=4)
    assert torch.allclose(a, b, atol=1e-5)
    q, k, v = torch.randn(3, 2, 4, 10, 8).unbind(0)
    ref = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, -1) @ v
    assert torch.allclose(naive_attention(q, k, v), ref, atol=1e-6)


@pytest.mark.parametrize("d", [8, 16, 40])
def test_sdpa_attention_pads_narrow_heads_exactly(d):
    # heads narrower than 16 go through the CPU kernel zero-padded to 16, with the true width's scale
    q, k, v = torch.randn(3, 2, 4, 50, d).unbind(0)
    k = k[:, :, :30]
    v = v[:, :, :30]
    out = sdpa_attention(q, k, v)
    assert out.shape == q.shape
    torch.testing.assert_close(out, naive_attention(q, k, v), atol=1e-6, rtol=1e-5)


def test_inference_path_matches_autograd_path(tiny_unet):
    # without autograd the blocks add in place and split GEGLU's product; with it they run out of place
    x, t, ctx, cam = _inputs()
    with torch.no_grad():
        fast = tiny_unet(x, t, ctx, cam, num_frames=4)
    slow = tiny_unet(x, t, ctx, cam, num_frames=4)
    assert slow.requires_grad
    torch.testing.assert_close(fast, slow.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x, _inputs()[0], atol=0, rtol=0)  # inputs untouched by the in-place path


@torch.no_grad()
def test_memory_formats_agree_and_output_is_contiguous(tiny_unet):
    x, t, ctx, cam = _inputs()
    outs = {}
    for fmt in ("contiguous", "channels_last", "auto"):
        tiny_unet.memory_format = fmt
        outs[fmt] = tiny_unet(x, t, ctx, cam, num_frames=4)
        assert outs[fmt].is_contiguous()
    tiny_unet.memory_format = "auto"
    torch.testing.assert_close(outs["channels_last"], outs["contiguous"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs["auto"], outs["contiguous"], atol=1e-5, rtol=1e-5)


def test_auto_layout_is_channels_last_where_activations_outweigh_weights(tiny_unet):
    # "auto" on CPU: NHWC for feature maps with N*H*W >= 9*C (fast convolutions, free token views), the default
    # layout where a 3x3 convolution's weights are larger (an NHWC input would copy them on every call)
    cl = torch.channels_last
    assert tiny_unet._to_layout(torch.randn(16, 32, 32, 32)).is_contiguous(memory_format=cl)
    small = torch.randn(8, 64, 4, 4).contiguous(memory_format=cl)
    assert tiny_unet._to_layout(small).is_contiguous() and not small.is_contiguous()
    tiny_unet.memory_format = "channels_last"
    assert tiny_unet._to_layout(small) is small
    tiny_unet.memory_format = "auto"


@torch.no_grad()
def test_prepared_context_gives_the_same_output(tiny_unet):
    x, t, ctx, cam = _inputs()
    prepared = tiny_unet.prepare_context(ctx)
    assert isinstance(prepared, PreparedContext) and prepared.shape == ctx.shape
    n_cross = sum(1 for m in tiny_unet.modules() if hasattr(m, "attn2"))
    assert len(prepared.kv) == n_cross > 0
    torch.testing.assert_close(tiny_unet(x, t, prepared, cam, num_frames=4), tiny_unet(x, t, ctx, cam, num_frames=4),
                               atol=0, rtol=0)
    # another context gives another output: the prepared keys and values are really used
    other = tiny_unet.prepare_context(ctx + 1)
    assert (tiny_unet(x, t, other, cam, num_frames=4) - tiny_unet(x, t, ctx, cam, num_frames=4)).abs().max() > 1e-4
    with pytest.raises(ValueError, match="prepared context has 4 rows"):
        tiny_unet(x, t, tiny_unet.prepare_context(ctx[:4]), cam, num_frames=4)
    with pytest.raises(ValueError, match="context must be"):
        tiny_unet.prepare_context(ctx[0])


def test_prepared_context_keeps_gradients(tiny_unet):
    # made with autograd on, the keys and values stay differentiable: to_k / to_v get gradients
    x, t, ctx, cam = _inputs()
    tiny_unet.requires_grad_(True)
    tiny_unet(x, t, tiny_unet.prepare_context(ctx), cam, num_frames=4).square().mean().backward()
    attn2 = next(m.attn2 for m in tiny_unet.modules() if hasattr(m, "attn2"))
    assert attn2.to_k.weight.grad is not None and attn2.to_k.weight.grad.abs().sum() > 0


@torch.no_grad()
def test_per_view_attention_ablation_decouples_views():
    cfg = dict(TINY_UNET, multiview_attention=False)
    m = perturb(MultiViewUNet.from_config(cfg)).eval()
    x, t, ctx, cam = _inputs()
    x2 = x.clone()
    x2[2] += 1.0
    assert torch.allclose(m(x, t, ctx, cam, 4)[[0, 1, 3]], m(x2, t, ctx, cam, 4)[[0, 1, 3]], atol=1e-6)


def test_2d_unet_without_camera_input():
    cfg = dict(TINY_UNET, camera_dim=None)
    m = MultiViewUNet.from_config(cfg)
    assert not hasattr(m, "camera_embed")
    x, t, ctx, cam = _inputs(2)
    assert m(x, t, ctx).shape == x.shape
    with pytest.raises(ValueError, match="no camera input"):
        m(x, t, ctx, cam)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_frames=3), "not divisible by num_frames=3"),
        (dict(camera=torch.zeros(8, 12)), "camera must be"),
        (dict(camera=torch.zeros(4, 16)), "camera must be"),
        (dict(context=torch.zeros(8, 5, 7)), "context must be"),
        (dict(context=None), "pass context"),
        (dict(num_frames=0), "positive int"),
    ],
)
def test_bad_inputs_give_clear_errors(tiny_unet, kwargs, match):
    x, t, ctx, cam = _inputs()
    args = dict(context=ctx, camera=cam, num_frames=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        tiny_unet(x, t, **args)


def test_bad_shapes_of_x(tiny_unet):
    with pytest.raises(ValueError, match="divisible by 2"):
        tiny_unet(torch.zeros(4, 4, 7, 7), 1, torch.zeros(4, 5, 24), num_frames=4)
    with pytest.raises(ValueError, match=r"x must be"):
        tiny_unet(torch.zeros(4, 3, 8, 8), 1, torch.zeros(4, 5, 24), num_frames=4)


def test_unknown_config_key_is_named():
    with pytest.raises(ValueError, match="model_chanels"):
        MultiViewUNet.from_config(dict(TINY_UNET, model_chanels=3))


@pytest.mark.parametrize("name", ["sd21", "sd15"])
def test_full_configs_match_published_keys(name):
    spec = reference_json(f"full_keys_{name}.json")
    params = spec["config"]["model"]["params"]["unet_config"]["params"]
    with torch.device("meta"):
        m = MultiViewUNet.from_config(params)
    ours = {k: list(v.shape) for k, v in m.state_dict().items()}
    prefix = "model.diffusion_model."
    ref = {k[len(prefix):]: v["shape"] for k, v in spec["keys"].items() if k.startswith(prefix)}
    assert ours == ref


@torch.no_grad()
def test_reproduces_published_outputs_on_tiny_config():
    from safetensors.torch import load_file

    meta = json.loads(spec_or_skip("unet_tiny_sd15.json").read_text())
    d = load_file(spec_or_skip("unet_tiny_sd15.safetensors"))
    weights = {k: v for k, v in d.items() if not k.startswith(("input.", "output."))}
    m = MultiViewUNet.from_config(meta["config"]).eval()
    m.load_state_dict(weights, strict=True)
    x, t, ctx, cam = d["input.x"], d["input.t"], d["input.context"], d["input.camera"]
    cases = {"eps": (cam, 4), "eps_camera_none": (None, 4), "eps_num_frames_1": (cam, 1)}
    for name, (camera, f) in cases.items():
        out = m(x, t, context=ctx, camera=camera, num_frames=f)
        torch.testing.assert_close(out, d[f"output.{name}"], atol=1e-5, rtol=1e-4)


def test_gradient_checkpointing_gives_same_gradients(tiny_unet):
    x, t, ctx, cam = _inputs()
    tiny_unet.train()
    tiny_unet(x, t, ctx, cam, 4).square().mean().backward()
    g1 = [p.grad.clone() for p in tiny_unet.parameters()]
    tiny_unet.zero_grad()
    tiny_unet.enable_gradient_checkpointing()
    tiny_unet(x, t, ctx, cam, 4).square().mean().backward()
    for a, p in zip(g1, tiny_unet.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad, atol=1e-6, rtol=1e-5)
