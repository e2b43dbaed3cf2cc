"""models/loading.py: one resolver for every kind of model reference, config detection, each file read once."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from mvdream3d.builtin import DEFAULT_MODEL, builtin_model, builtin_weights_path
from mvdream3d.checkpoints import CheckpointError, write_checkpoint
from mvdream3d.models.loading import (
    checkpoint_path,
    detect_config,
    load_checkpoint_model,
    resolve_model,
    sidecar_config,
)
from mvdream3d.models.lora import save_lora
from mvdream3d.pipeline import MultiViewPipeline


@pytest.fixture(scope="module")
def tiny():
    return builtin_model("tiny-random")


@pytest.fixture
def torch_loads(monkeypatch):
    """The paths torch.load reads (every .pt checkpoint read goes through it)."""
    calls: list[str] = []
    real = torch.load

    def counting(f, *args, **kwargs):
        calls.append(str(f))
        return real(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting)
    return calls


def _same_weights(a, b) -> bool:
    sa, sb = a.ldm_state_dict(), b.ldm_state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_checkpoint_with_its_config_embedded_is_read_once(tiny, tmp_path, torch_loads):
    path = tiny.save(tmp_path / "m.pt")
    assert sidecar_config(path) is None
    model = resolve_model(str(path))
    assert torch_loads == [str(path)] and _same_weights(model, tiny)
    torch_loads.clear()
    MultiViewPipeline.from_checkpoint(path)  # `generate --model m.pt` without --config
    assert torch_loads == [str(path)]


def test_a_checkpoint_with_a_yaml_beside_it_is_read_once_with_that_config(tiny, tmp_path, torch_loads):
    path = write_checkpoint(tmp_path / "bare.pt", tiny.ldm_state_dict())  # no config inside
    with pytest.raises(CheckpointError, match="carries no config"):
        resolve_model(str(path))
    (tmp_path / "bare.yaml").write_text(yaml.safe_dump(tiny.config))
    assert sidecar_config(path) == str(tmp_path / "bare.yaml")
    torch_loads.clear()
    assert _same_weights(resolve_model(path), tiny) and torch_loads == [str(path)]
    torch_loads.clear()
    assert _same_weights(load_checkpoint_model(path, "tiny-random"), tiny) and torch_loads == [str(path)]


def test_config_detection_order_and_the_published_guess(tmp_path):
    state = {  # the two UNet keys the guess reads: SD 1.5's cross-attention width and convolutional proj_in
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(320, 768),
        "model.diffusion_model.input_blocks.1.1.proj_in.weight": torch.zeros(320, 320, 1, 1),
    }
    ckpt = tmp_path / "x.pt"
    assert detect_config(ckpt, state, None) == "sd-v1.5-4view"
    assert detect_config(ckpt, state, {"model": {}}) == {"model": {}}  # embedded beats the guess
    (tmp_path / "config.yaml").write_text("model: {}\n")
    assert detect_config(ckpt, state, {"model": {}}) == str(tmp_path / "config.yaml")  # a YAML beside beats both
    (tmp_path / "x.yaml").write_text("model: {}\n")
    assert detect_config(ckpt, state, None) == str(tmp_path / "x.yaml")  # NAME.yaml beats config.yaml
    with pytest.raises(CheckpointError, match="put its YAML beside it"):
        detect_config(tmp_path / "sub" / "y.pt", {"model.diffusion_model.a": torch.zeros(1)}, None)


def test_output_folders_and_names_resolve(tiny, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    tiny.save(run / "model.safetensors")
    assert _same_weights(resolve_model(str(run)), tiny)
    assert checkpoint_path(run) == run / "model.safetensors"
    assert checkpoint_path(run / "model.safetensors") == run / "model.safetensors"
    assert resolve_model(tiny) is tiny
    with pytest.raises(FileNotFoundError, match="not a checkpoint file nor a known model"):
        resolve_model("no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="exactly one of"):
        resolve_model(str(tmp_path / "empty"))


def test_checkpoint_path_names_the_shipped_file_and_refuses_lora_files(tmp_path):
    shipped = builtin_weights_path(DEFAULT_MODEL)
    if shipped is not None:
        assert checkpoint_path(DEFAULT_MODEL) == Path(str(shipped))
    lora = save_lora(tmp_path / "lora.safetensors", {"a.lora_A.weight": torch.zeros(2, 4),
                                                     "a.lora_B.weight": torch.zeros(4, 2)},
                     {"base_model": "tiny-random", "rank": 2, "alpha": 2})
    for ref in (lora, tmp_path):  # the file, or the folder whose model file it is
        with pytest.raises(ValueError, match="is a LoRA file"):
            checkpoint_path(ref)
