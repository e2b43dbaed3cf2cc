"""VAE: published key layout, LDM <-> diffusers conversion, published conventions, shapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import reference_json
from torch import nn

from mvdream3d.models.vae import AutoencoderKLWrapper, diffusers_to_ldm, ldm_to_diffusers, load_vae

PREFIX = "first_stage_model."
TINY = {
    "embed_dim": 4,
    "ddconfig": {
        "double_z": True,
        "z_channels": 4,
        "resolution": 64,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 32,
        "ch_mult": [1, 2, 2, 2],
        "num_res_blocks": 1,
        "attn_resolutions": [],
        "dropout": 0.0,
    },
}


def _perturbed(vae: AutoencoderKLWrapper, seed: int = 0) -> AutoencoderKLWrapper:
    """Random weights everywhere (GroupNorm affines, biases) so that no layer is trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return vae


@pytest.fixture
def tiny() -> AutoencoderKLWrapper:
    torch.manual_seed(0)
    return _perturbed(load_vae(TINY, None)).eval()


@pytest.mark.parametrize("name", ["full_keys_sd21.json", "full_keys_sd15.json"])
def test_full_keys_match_spec(name: str) -> None:
    spec = reference_json(name)
    params = spec["config"]["model"]["params"]["first_stage_config"]["params"]
    want = {k[len(PREFIX) :]: tuple(v["shape"]) for k, v in spec["keys"].items() if k.startswith(PREFIX)}
    with torch.device("meta"):
        vae = load_vae(params, None)
    assert {k: tuple(v.shape) for k, v in vae.state_dict().items()} == want
    assert vae.expected_ldm_shapes() == want
    # loading the published names works (meta tensors stand in for the checkpoint)
    with torch.device("meta"):
        state = {k: torch.empty(s) for k, s in want.items()}
    loaded = load_vae(params, state)
    assert next(loaded.parameters()).device.type == "meta"


def test_encode_decode_shapes(tiny: AutoencoderKLWrapper) -> None:
    x = torch.rand(2, 3, 16, 24) * 2 - 1
    with torch.no_grad():
        post = tiny.encode(x)
        assert post.mean.shape == post.logvar.shape == (2, 4, 2, 3)
        z1 = post.sample(generator=torch.Generator().manual_seed(5))
        z2 = post.sample(generator=torch.Generator().manual_seed(5))
        assert torch.equal(z1, z2) and not torch.equal(z1, post.mean)
        assert tiny.decode(z1).shape == (2, 3, 16, 24)
        rec, _ = tiny(x, sample_posterior=False)
        torch.testing.assert_close(rec, tiny.decode(post.mean))
    assert tiny.downsample_factor == 8


def test_ldm_state_dict_round_trip(tiny: AutoencoderKLWrapper) -> None:
    ldm = tiny.ldm_state_dict()
    assert ldm["encoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1)
    assert ldm["decoder.mid.attn_1.proj_out.weight"].shape == (64, 64, 1, 1)
    assert "decoder.up.3.upsample.conv.weight" in ldm and "decoder.up.0.upsample.conv.weight" not in ldm
    assert "encoder.down.1.block.0.nin_shortcut.weight" in ldm
    # our inverse and diffusers' converter agree both ways
    inner = tiny.vae.state_dict()
    back = ldm_to_diffusers(ldm, tiny.levels)
    assert set(back) == set(inner) and all(torch.equal(back[k], inner[k]) for k in inner)
    assert diffusers_to_ldm(back, tiny.levels).keys() == ldm.keys()
    # and through load_vae
    other = load_vae(TINY, ldm)
    again = other.ldm_state_dict()
    assert again.keys() == ldm.keys() and all(torch.equal(again[k], ldm[k]) for k in ldm)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(other.encode(x).mean, tiny.encode(x).mean, atol=0, rtol=0)
    assert not any(p.requires_grad for p in other.parameters())
    assert load_vae(TINY, ldm, freeze=False).vae.encoder.conv_in.weight.requires_grad


def test_nested_state_dict_uses_published_names(tiny: AutoencoderKLWrapper) -> None:
    outer = nn.Module()
    outer.first_stage_model = tiny
    state = outer.state_dict()
    assert set(state) == {PREFIX + k for k in tiny.ldm_state_dict()}
    fresh = nn.Module()
    fresh.first_stage_model = load_vae(TINY, None)
    fresh.load_state_dict(state, strict=True)
    assert all(torch.equal(a, b) for a, b in zip(fresh.parameters(), outer.parameters(), strict=True))
    with pytest.raises(RuntimeError, match="first_stage_model.encoder.bogus"):
        fresh.load_state_dict({**state, PREFIX + "encoder.bogus": torch.zeros(1)}, strict=True)


def test_bad_state_dicts_raise(tiny: AutoencoderKLWrapper) -> None:
    ldm = tiny.ldm_state_dict()
    missing = {k: v for k, v in ldm.items() if k != "encoder.conv_in.weight"}
    with pytest.raises(ValueError, match=r"1 missing.*encoder\.conv_in\.weight"):
        load_vae(TINY, missing)
    with pytest.raises(ValueError, match=r"1 unexpected.*encoder\.extra"):
        load_vae(TINY, {**ldm, "encoder.extra": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"wrong shapes.*quant_conv\.weight"):
        load_vae(TINY, {**ldm, "quant_conv.weight": torch.zeros(8, 8, 3, 3)})
    diffusers_named = {"vae." + k: v for k, v in tiny.vae.state_dict().items()}
    with pytest.raises(ValueError, match="first_stage_model"):
        load_vae(TINY, diffusers_named)


def test_unsupported_configs_raise() -> None:
    dd = TINY["ddconfig"]
    for bad in ({**dd, "attn_resolutions": [16]}, {**dd, "ch_mult": [2, 2]}, {**dd, "double_z": False}):
        with pytest.raises(ValueError):
            load_vae({"embed_dim": 4, "ddconfig": bad}, None)
    with pytest.raises(ValueError, match="embed_dim"):
        load_vae({"embed_dim": 3, "ddconfig": dd}, None)


def test_published_conventions(tiny: AutoencoderKLWrapper) -> None:
    """GroupNorm eps 1e-6, (0, 1, 0, 1) padding before stride-2 convs, one plain attention per mid block."""
    norms = [m for m in tiny.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(m.eps == 1e-6 and m.num_groups == 32 for m in norms)
    down = tiny.vae.encoder.down_blocks[0].downsamplers[0]
    x = torch.randn(1, 32, 9, 10)
    with torch.no_grad():
        expect = F.conv2d(F.pad(x, (0, 1, 0, 1)), down.conv.weight, down.conv.bias, stride=2)
        torch.testing.assert_close(down(x), expect, atol=1e-6, rtol=0)
    ldm = tiny.ldm_state_dict()
    for part in ("encoder", "decoder"):
        assert len(getattr(tiny.vae, part).mid_block.attentions) == 1
        # the LDM AttnBlock written out: GroupNorm, 1x1 convs, softmax(q k^T / sqrt(C)), 1x1 proj, residual
        w = {n: ldm[f"{part}.mid.attn_1.{n}.weight"] for n in ("q", "k", "v", "proj_out")}
        b = {n: ldm[f"{part}.mid.attn_1.{n}.bias"] for n in ("q", "k", "v", "proj_out")}
        h = torch.randn(2, 64, 3, 5)
        with torch.no_grad():
            hn = F.group_norm(h, 32, ldm[f"{part}.mid.attn_1.norm.weight"], ldm[f"{part}.mid.attn_1.norm.bias"], 1e-6)
            q, k, v = (F.conv2d(hn, w[n], b[n]).flatten(2) for n in ("q", "k", "v"))
            attn = torch.softmax(q.transpose(1, 2) @ k / 64**0.5, dim=-1)  # (N, HW, HW)
            out = (v @ attn.transpose(1, 2)).view_as(h)
            expect = h + F.conv2d(out, w["proj_out"], b["proj_out"])
            got = getattr(tiny.vae, part).mid_block.attentions[0](h)
        torch.testing.assert_close(got, expect, atol=1e-5, rtol=0)
