"""Multi-view DreamBooth: training modes, the preservation loss, LoRA files, resume, bad inputs, CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from conftest import REQUIRE_GL, skip_unless_required
from PIL import Image
from test_training import TINY_PIXEL_MODEL

from mvdream3d.cli import main
from mvdream3d.files import backup_path
from mvdream3d.models.model import build_model
from mvdream3d.pipeline import resolve_model
from mvdream3d.training import dreambooth_inputs
from mvdream3d.training.dreambooth import DreamBoothWarning, dreambooth, preservation_loss
from mvdream3d.training.dreambooth_inputs import (
    MemoryEstimateError,
    check_memory,
    check_token,
    estimate_memory,
    load_subject_images,
)
from mvdream3d.training.lora import add_lora, lora_state_dict, merge_lora, read_lora_metadata, remove_lora

FAST = dict(image_size=16, sample_steps=1, progress=False)


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory):
    """The tiny pixel model with its zero-initialised layers made random (so every layer matters), as a file."""
    torch.manual_seed(0)
    model = build_model(TINY_PIXEL_MODEL)
    with torch.no_grad():
        for p in model.unet.parameters():
            if p.ndim > 1 and p.abs().sum() == 0:
                p.normal_(0, 0.02)
    return str(model.save(tmp_path_factory.mktemp("base") / "base.safetensors"))


def _write_subject(folder, n=4, sizes=None):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        s = sizes[i] if sizes else 16
        a = np.zeros((s, s, 4), np.uint8)  # transparent background
        a[s // 4:3 * s // 4, s // 4:3 * s // 4] = (220, 40 + 30 * i, 40, 255)
        Image.fromarray(a, "RGBA").save(folder / f"photo{i}.png")
    return folder


@pytest.fixture
def subject(tmp_path):
    return _write_subject(tmp_path / "photos")


def _prediction(model, prompt: str) -> torch.Tensor:
    """The UNet's output for ``prompt`` on fixed noisy inputs (2D, no camera)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 16, 16, generator=g)
    with torch.no_grad():
        return model.unet(x, torch.tensor([300, 700]), context=model.encode_text([prompt] * 2), num_frames=1)


def test_preservation_loss_is_mean_absolute_change():
    a = [torch.zeros(3), torch.ones(2, 2)]
    assert preservation_loss(a, [t.clone() for t in a]).item() == 0.0
    moved = [a[0] + torch.tensor([1.0, -2.0, 0.0]), a[1]]
    assert preservation_loss(moved, a).item() == pytest.approx(3.0 / 7)
    with pytest.raises(ValueError):
        preservation_loss(a, a[:1])


def test_full_finetune_changes_subject_output_and_preservation_grows(base_ckpt, subject, tmp_path):
    before = _prediction(resolve_model(base_ckpt), "a sks toy")
    res = dreambooth(subject, "sks", "toy", model=base_ckpt, out=tmp_path / "out", steps=4, lr=1e-3, **FAST)
    pres = [h["preservation"] for h in res.history]
    assert pres[0] == 0.0  # computed at theta_0, before the first update
    assert 0 < pres[1] < pres[-1]
    assert (_prediction(res.model, "a sks toy") - before).abs().mean() > 1e-3
    assert res.finished and res.steps_done == 4
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"model.safetensors", "grid.png", "loss.png",
                                                              "summary.json"}
    assert Image.open(tmp_path / "out" / "grid.png").size == (4 * 16, 16)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["finished"] and len(summary["history"]) == 4 and summary["config"]["train"] == "full"
    reloaded = resolve_model(str(tmp_path / "out"))  # the folder works as --model, as for text-to-3d
    torch.testing.assert_close(_prediction(reloaded, "a sks toy"), _prediction(res.model, "a sks toy"))


def test_large_lambda_bounds_the_change_of_unrelated_prompts(base_ckpt, subject, tmp_path):
    before = _prediction(resolve_model(base_ckpt), "a blue sphere")
    scale = before.abs().mean()
    change = {}
    for lam in (0.0, 1e6):
        res = dreambooth(subject, "sks", "toy", model=base_ckpt, out=tmp_path / f"l{lam:g}", steps=6, lr=2e-4,
                         lambda_preservation=lam, flip=False, **FAST)
        change[lam] = (_prediction(res.model, "a blue sphere") - before).abs().mean()
    assert change[1e6] < 0.25 * scale < change[0.0]
    assert change[1e6] < 0.5 * change[0.0]


def test_attention_mode_leaves_other_weights_bit_identical(base_ckpt, subject, tmp_path):
    base = resolve_model(base_ckpt).unet.state_dict()
    res = dreambooth(subject, "sks", "toy", model=base_ckpt, out=tmp_path / "out", steps=3, lr=1e-3,
                     train="attention", **FAST)
    tuned = res.model.unet.state_dict()
    is_attention = [k for k in base if ".attn1." in k or ".attn2." in k]
    assert is_attention
    for k, v in base.items():
        if k not in is_attention:
            assert torch.equal(v, tuned[k]), k
    assert any(not torch.equal(base[k], tuned[k]) for k in is_attention)


def test_lora_merge_equals_adapted_forward():
    torch.manual_seed(0)
    model = build_model(TINY_PIXEL_MODEL)
    add_lora(model.unet, rank=2, alpha=4)
    with torch.no_grad():
        for n, p in model.unet.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.1)
    adapted = _prediction(model, "a sks toy")
    state = lora_state_dict(model.unet)
    remove_lora(model.unet)
    merge_lora(model.unet, state, scale=4 / 2)
    torch.testing.assert_close(_prediction(model, "a sks toy"), adapted, atol=1e-5, rtol=1e-4)


def test_lora_file_is_small_loads_and_differs_from_base(base_ckpt, subject, tmp_path):
    base = resolve_model(base_ckpt)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model.safetensors").write_bytes(b"an earlier full run")
    with pytest.warns(DreamBoothWarning, match="removed model.safetensors"):
        res = dreambooth(subject, "sks", "toy", model=base_ckpt, out=tmp_path / "out", steps=3, lr=1e-2,
                         train="lora", lora_rank=2, **FAST)
    path = tmp_path / "out" / "lora.safetensors"
    assert res.model_path == path and not (tmp_path / "out" / "model.safetensors").exists()
    assert path.stat().st_size < 0.05 * os.path.getsize(base_ckpt)  # adapters only, vs a complete model file
    meta = read_lora_metadata(path)
    assert meta["rank"] == 2 and meta["base_model"] == base_ckpt and "to_q" in meta["target_modules"]
    loaded = resolve_model(str(path))
    torch.testing.assert_close(_prediction(loaded, "a sks toy"), _prediction(res.model, "a sks toy"))
    assert (_prediction(loaded, "a sks toy") - _prediction(base, "a sks toy")).abs().max() > 1e-4
    assert resolve_model(str(tmp_path / "out")) is not None  # the output folder as --model


def test_stop_and_resume_match_an_uninterrupted_run(base_ckpt, subject, tmp_path, capsys):
    whole = dreambooth(subject, "sks", "toy", model=base_ckpt, out=tmp_path / "whole", steps=4, lr=1e-3, **FAST)
    calls = []
    part = dreambooth(subject, "sks", "toy", model=base_ckpt, out=tmp_path / "run", steps=4, lr=1e-3,
                      should_stop=lambda: calls.append(1) or len(calls) >= 2, **FAST)
    assert not part.finished and part.steps_done == 2 and (tmp_path / "run" / "checkpoint" / "state.json").is_file()
    with pytest.raises(ValueError, match="--resume"):
        dreambooth(subject, "sks", "toy", model=base_ckpt, out=tmp_path / "run", steps=4, **FAST)
    with pytest.raises(ValueError, match="lambda_preservation"):
        dreambooth(subject, "sks", "toy", model=base_ckpt, out=tmp_path / "run", steps=4, lr=1e-3,
                   lambda_preservation=2, resume=True, **FAST)
    # as a kill -9 between the two renames of a checkpoint swap leaves it: the checkpoint at its backup name,
    # the next one half written
    ckpt = tmp_path / "run" / "checkpoint"
    ckpt.rename(backup_path(ckpt))
    (tmp_path / "run" / ".checkpoint.tmp").mkdir()
    (tmp_path / "run" / ".checkpoint.tmp" / "trained.safetensors").write_bytes(b"half")
    capsys.readouterr()
    done = dreambooth(subject, "sks", "toy", model=base_ckpt, out=tmp_path / "run", steps=4, lr=1e-3, resume=True,
                      **FAST)
    assert f"resumed from {ckpt} at step 2" in capsys.readouterr().out
    assert done.finished and len(done.history) == 4 and not ckpt.exists()
    assert not [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".checkpoint")]
    torch.testing.assert_close(_prediction(done.model, "a sks toy"), _prediction(whole.model, "a sks toy"))


# -- bad inputs ---------------------------------------------------------------------------------------


def test_subject_images_rules(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no photos here")
    with pytest.raises(ValueError, match=r"no images in .*empty.*\.png"):
        load_subject_images(empty)
    bad = _write_subject(tmp_path / "bad", n=2)
    (bad / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="broken.jpg"):
        load_subject_images(bad)
    mixed = _write_subject(tmp_path / "mixed", n=3, sizes=[16, 24, 32])
    images, warns = load_subject_images(mixed, size=16)
    assert images.shape == (3, 3, 16, 16) and any("different sizes" in w for w in warns)
    assert images[0, :, 0, 0].tolist() == [1.0, 1.0, 1.0]  # transparency composited on white
    assert images.min() >= -1 and images.max() <= 1


def test_mixed_sizes_train_with_a_warning(base_ckpt, tmp_path):
    mixed = _write_subject(tmp_path / "mixed", n=3, sizes=[16, 20, 32])
    with pytest.warns(DreamBoothWarning, match="different sizes"):
        res = dreambooth(mixed, "sks", "toy", model=base_ckpt, out=tmp_path / "out", steps=1, **FAST)
    assert res.finished


def test_token_warnings():
    assert check_token("dog") and check_token("cube")  # a common word, a concept of the world
    assert check_token("toy", "toy")
    assert check_token("sks", "toy") == []

    class WordPiece:
        all_special_tokens = ["[UNK]"]

        def tokenize(self, word):
            return [word] if word == "zebra" else [word[:2], "##" + word[2:]]

    encoder = type("Encoder", (), {"hf_tokenizer": WordPiece()})()
    assert check_token("zebra", "toy", encoder) and check_token("sks", "toy", encoder) == []
    with pytest.raises(ValueError):
        check_token("two words")


def test_memory_estimate_and_refusal(monkeypatch):
    from mvdream3d.training.dreambooth import DreamBoothConfig

    model = build_model(TINY_PIXEL_MODEL)
    small, big = DreamBoothConfig(class_word="toy", image_size=16), DreamBoothConfig(class_word="toy", image_size=32)
    assert 0 < estimate_memory(model, small) < estimate_memory(model, big)
    lora = DreamBoothConfig(class_word="toy", image_size=16, train="lora")
    assert estimate_memory(model, lora) < estimate_memory(model, small)
    monkeypatch.setattr(dreambooth_inputs, "available_memory", lambda device: 1000)
    with pytest.raises(MemoryEstimateError, match="GiB"):
        check_memory(model, small, torch.device("cpu"))


def _cli_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_cli_bad_inputs_end_in_one_error_line(base_ckpt, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = ["dreambooth", "--class-word", "toy", "--model", base_ckpt, "--no-progress"]
    assert "no images" in _cli_error(capsys, [*args, "--images", str(empty), "--out", str(tmp_path / "o")])
    bad = _write_subject(tmp_path / "bad", n=1)
    (bad / "x.png").write_bytes(b"\x89PNG broken")
    assert "x.png" in _cli_error(capsys, [*args, "--images", str(bad), "--out", str(tmp_path / "o")])
    blocker = tmp_path / "file"
    blocker.write_text("")
    good = _write_subject(tmp_path / "good", n=3)
    assert "output directory" in _cli_error(capsys, [*args, "--images", str(good), "--out", str(blocker / "sub")])
    assert "token" in _cli_error(capsys, [*args, "--images", str(good), "--out", str(tmp_path / "o"),
                                          "--token", "s-k"])


def test_cli_lora_run_with_common_word_warning(base_ckpt, subject, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["dreambooth", "--images", str(subject), "--token", "dog", "--class-word", "toy", "--model", base_ckpt,
               "--train", "lora", "--steps", "2", "--size", "16", "--sample-steps", "1", "--out", str(out),
               "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "warning: the token 'dog' is a common word" in captured.err
    assert json.loads(captured.out)["finished"] is True
    assert (out / "lora.safetensors").is_file() and (out / "grid.png").is_file()


# -- where --images finds the photos ------------------------------------------------------------------


def test_images_from_a_render_output_folder(tmp_path):
    """`mvdream3d render --out R` writes R/<asset>/rgba_XXX.png: `--images R` must find them."""
    import trimesh

    from mvdream3d.data import render as R

    try:
        R.Renderer(32).release()
    except RuntimeError as e:  # no EGL / Mesa on this machine
        skip_unless_required(REQUIRE_GL, f"no headless OpenGL: {e}")
    mesh = tmp_path / "toy.obj"
    trimesh.creation.box(extents=(1.0, 0.6, 0.4)).export(mesh)
    assert main(["render", str(mesh), "--out", str(tmp_path / "r"), "--views", "3", "--size", "32"]) == 0
    assert not list((tmp_path / "r").glob("*.png"))  # the views sit in the subfolder, as the issue reports
    images, warns = load_subject_images(tmp_path / "r")
    assert images.shape == (3, 3, 32, 32) and not [w for w in warns if "subfolders" in w]


def test_images_from_subfolders_and_list_files(tmp_path):
    from mvdream3d.training.dreambooth_inputs import find_subject_images

    _write_subject(tmp_path / "runs" / "a", n=2)
    _write_subject(tmp_path / "runs" / "b", n=1)
    (tmp_path / "runs" / "notes.txt").write_text("x")
    files, warns = find_subject_images(tmp_path / "runs")
    assert [f"{p.parent.name}/{p.name}" for p in files] == ["a/photo0.png", "a/photo1.png", "b/photo0.png"]
    assert any("2 subfolders" in w for w in warns)
    _write_subject(tmp_path / "runs", n=1)  # images in the folder itself win over its subfolders
    assert [p.name for p in find_subject_images(tmp_path / "runs")[0]] == ["photo0.png"]

    listing = tmp_path / "list.txt"
    listing.write_text(f"# my photos\nruns/a/photo1.png\n\n{tmp_path / 'runs' / 'b' / 'photo0.png'}\n")
    images, _ = load_subject_images(listing, size=16)
    assert images.shape == (2, 3, 16, 16)
    listing.write_text("runs/a/photo1.png\nruns/a/missing.png\n")
    with pytest.raises(FileNotFoundError, match=r"line 2.*missing\.png"):
        find_subject_images(listing)
    listing.write_text("# nothing\n")
    with pytest.raises(ValueError, match="no images in the list file"):
        find_subject_images(listing)


def test_a_folder_without_images_names_what_was_looked_for(tmp_path, capsys):
    empty = tmp_path / "renders"
    (empty / "asset").mkdir(parents=True)
    (empty / "asset" / "meta.json").write_text("{}")
    (empty / "readme.md").write_text("x")
    rc = main(["dreambooth", "--images", str(empty), "--class-word", "toy", "--model", "tiny-random",
               "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    for part in ("no images in", ".png .jpg .jpeg .webp .bmp", "subfolders", "readme.md", "list file"):
        assert part in err, (part, err)
