import copy
import os
import time

import pytest
import torch

from mvdream3d import load_model
from mvdream3d.builtin import builtin_model
from mvdream3d.checkpoints import CheckpointError, download_published, read_checkpoint, write_checkpoint
from mvdream3d.models.model import build_model, resolve_config


@pytest.fixture(scope="module")
def tiny():
    return builtin_model("tiny-random")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_round_trip_is_bit_exact(tiny, tmp_path, suffix):
    path = tiny.save(tmp_path / f"m{suffix}")
    loaded = load_model(None, path)  # config embedded in the file
    a, b = tiny.ldm_state_dict(), loaded.ldm_state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # also loadable with an explicit config and from an in-memory state dict
    load_model("tiny-random", path)
    load_model("tiny-random", read_checkpoint(path)[0])


def test_published_layout_keys(tiny):
    keys = tiny.ldm_state_dict().keys()
    assert any(k.startswith("model.diffusion_model.") for k in keys)
    assert any(k.startswith("first_stage_model.") for k in keys)
    assert any(k.startswith("cond_stage_model.model.") for k in keys)
    assert "alphas_cumprod" in keys and "betas" in keys


def _sd15_like_config():
    cfg = resolve_config("tiny-random")
    p = cfg["model"]["params"]
    p["unet_config"]["params"].update(context_dim=768, use_linear_in_transformer=False, num_heads=2)
    p["unet_config"]["params"].pop("num_head_channels")
    p["cond_stage_config"] = {
        "target": "mvdream.ldm.modules.encoders.modules.FrozenCLIPEmbedder",
        "params": {"hidden_size": 768, "intermediate_size": 64, "num_hidden_layers": 1,
                   "num_attention_heads": 2},
    }
    return cfg


def test_wrong_config_names_both(tmp_path):
    cfg = _sd15_like_config()
    m = build_model(cfg)
    path = write_checkpoint(tmp_path / "sd15ish.safetensors", m.ldm_state_dict())
    with pytest.raises(CheckpointError, match=r"tiny-random.*looks like 'sd-v1.5-4view'"):
        load_model("tiny-random", path)
    # position_ids present (old transformers) or absent: both load
    state = m.ldm_state_dict()
    key = "cond_stage_model.transformer.text_model.embeddings.position_ids"
    assert key in state
    load_model(cfg, state)
    state.pop(key)
    load_model(cfg, state)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_model("tiny-random", tmp_path / "nope.pt")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt or not a checkpoint"):
        load_model("tiny-random", bad)
    bad_pt = tmp_path / "bad.pt"
    bad_pt.write_bytes(os.urandom(100))
    with pytest.raises(CheckpointError, match="corrupt or not a checkpoint"):
        load_model("tiny-random", bad_pt)


def test_missing_keys_are_reported(tiny):
    state = tiny.ldm_state_dict()
    state.pop("model.diffusion_model.out.2.weight")
    with pytest.raises(CheckpointError, match="missing keys"):
        load_model("tiny-random", state)
    state = {k: v for k, v in tiny.ldm_state_dict().items() if not k.startswith("first_stage_model.")}
    with pytest.raises(CheckpointError, match="no first_stage_model"):
        load_model("tiny-random", state)


def test_unknown_config():
    with pytest.raises(FileNotFoundError, match="neither a known name"):
        load_model("sd-v9-nonexistent", {})


def test_offline_download_fails_fast_with_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match="pass it as a local file"):
        download_published("sd-v2.1-base-4view")
    assert time.perf_counter() - t0 < 10


def test_pixel_space_model_without_text_encoder():
    cfg = copy.deepcopy(resolve_config("tiny-random"))
    p = cfg["model"]["params"]
    p["first_stage_config"] = {"target": "torch.nn.Identity"}
    p["cond_stage_config"] = {"target": "torch.nn.Identity"}
    p["unet_config"]["params"]["in_channels"] = 3
    p["unet_config"]["params"]["out_channels"] = 3
    m = load_model(cfg, build_model(cfg).ldm_state_dict())
    assert m.vae is None and m.text_encoder is None and m.downsample_factor == 1
