import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from mvdream3d import cameras
from mvdream3d.training.config import ConfigError, config_from_dict, load_config

# A pixel-space model (no VAE) with a tiny OpenCLIP-style text tower: cheap enough for CPU tests.
TINY_PIXEL_MODEL = {
    "model": {"params": {
        "linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000, "parameterization": "eps",
        "unet_config": {"params": {
            "in_channels": 3, "out_channels": 3, "model_channels": 32, "attention_resolutions": [2],
            "num_res_blocks": 1, "channel_mult": [1, 2], "num_head_channels": 16, "context_dim": 32,
            "use_linear_in_transformer": True, "camera_dim": 16}},
        "first_stage_config": {"target": "torch.nn.Identity"},
        "cond_stage_config": {"target": "FrozenOpenCLIPEmbedder",
                              "params": {"layer": "penultimate", "width": 32, "layers": 2, "heads": 2,
                                         "embed_dim": 32}},
    }}
}


def make_multiview_folder(root: Path, n_assets: int = 3, views: int = 8, size: int = 16) -> Path:
    rng = np.random.default_rng(0)
    for a in range(n_assets):
        d = root / f"asset{a}"
        d.mkdir(parents=True)
        colour = rng.integers(0, 255, 3)
        meta = {"asset": f"asset{a}", "caption": f"object number {a}", "size": size, "views": []}
        for v in range(views):
            az = 360.0 * v / views
            img = np.zeros((size, size, 4), np.uint8)
            img[4:12, 4:12, :3] = colour
            img[4:12, 4:12, 3] = 255
            img[4:12, 4 + v % 4, :3] = 255 - colour  # a view-dependent mark
            Image.fromarray(img, "RGBA").save(d / f"rgba_{v:03d}.png")
            c2w = cameras.orbit_c2w(torch.tensor([10.0]), torch.tensor([az]), 1.5)[0]
            meta["views"].append({"file": f"rgba_{v:03d}.png", "c2w": c2w.tolist(),
                                  "model_camera": cameras.c2w_to_model_camera(c2w)[0].tolist(),
                                  "elevation": 10.0, "azimuth": az, "distance": 1.5, "fov_deg": 40.0})
        (d / "meta.json").write_text(json.dumps(meta))
    return root


def make_image_text_folder(root: Path, n: int = 6, size: int = 16) -> Path:
    root.mkdir(parents=True)
    for i in range(n):
        arr = np.full((size, size, 3), 40 * i % 255, np.uint8)
        Image.fromarray(arr).save(root / f"img{i}.png")
        (root / f"img{i}.txt").write_text(f"a flat picture {i}")
    return root


@pytest.fixture
def data(tmp_path):
    return make_multiview_folder(tmp_path / "mv"), make_image_text_folder(tmp_path / "2d")


def _config(tmp_path, data, **train):
    mv, im = data
    raw = {
        "model": {"config": TINY_PIXEL_MODEL},
        "data": {"multiview": str(mv), "image_text": str(im), "num_views": 4, "image_size": 16, "p_2d": 0.5,
                 "batch_size": 2},
        "train": {"steps": 4, "lr": 1e-3, "seed": 0, **train},
        "output": {"dir": str(tmp_path / "run"), "checkpoint_every": 2, "log_every": 1, "sample_every": 0},
    }
    return raw


def _write(tmp_path, raw, name="cfg.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(raw))
    return p


def test_loss_decreases_on_a_repeated_batch():
    from mvdream3d.models.model import build_model
    from mvdream3d.training.trainer import _loss, step_generator

    cfg = config_from_dict({"model": {"config": TINY_PIXEL_MODEL}, "data": {"multiview": "x", "caption_dropout": 0}})
    torch.manual_seed(0)
    model = build_model(TINY_PIXEL_MODEL)
    batch = {"images": torch.rand(8, 3, 16, 16) * 2 - 1, "cameras": cameras.get_camera(4).repeat(2, 1),
             "captions": ["a", "b"], "num_frames": 4}
    opt = torch.optim.AdamW(model.unet.parameters(), lr=2e-3)
    losses = []
    for _ in range(8):
        loss = _loss(model, model.unet, model.noise_schedule, batch, cfg, step_generator(0, 0, 0), torch.device("cpu"))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_train_end_to_end_and_outputs(tmp_path, data):
    from mvdream3d.cli import main
    from mvdream3d.models.model import load_model

    raw = _config(tmp_path, data)
    raw["output"]["sample_every"] = 4
    raw["output"]["sample_steps"] = 2
    assert main(["train", str(_write(tmp_path, raw))]) == 0
    run = tmp_path / "run"
    model = load_model(None, run / "model.safetensors")
    assert model.unet.has_camera
    log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert (run / "samples" / "step_0000004.png").is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_0000002", "step_0000004"]
    assert list((run / "tensorboard").iterdir())
    # the last checkpoint, exported, is the final model (EMA weights when the run keeps an EMA)
    assert main(["export-checkpoint", str(run / "checkpoints" / "step_0000004"), str(tmp_path / "e.safetensors")]) == 0
    exported = load_model(None, tmp_path / "e.safetensors")
    for (k, a), b in zip(model.unet.state_dict().items(), exported.unet.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert main(["export-checkpoint", str(tmp_path), str(tmp_path / "x.safetensors")]) == 2
    # a second run into the same folder without --resume is refused
    assert main(["train", str(_write(tmp_path, raw))]) == 2


def test_resume_is_exact(tmp_path, data):
    from safetensors.torch import load_file

    from mvdream3d.training.config import config_from_dict
    from mvdream3d.training.trainer import train

    raw = _config(tmp_path, data)
    raw["output"]["dir"] = str(tmp_path / "a")
    train(config_from_dict(raw))
    raw["output"]["dir"] = str(tmp_path / "b")
    train(config_from_dict(raw), max_steps_this_run=2)
    assert not (tmp_path / "b" / "model.safetensors").exists()
    train(config_from_dict(raw), resume=True)
    a = load_file(tmp_path / "a" / "checkpoints" / "step_0000004" / "unet.safetensors")
    b = load_file(tmp_path / "b" / "checkpoints" / "step_0000004" / "unet.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


def _spawn_train(cfg_path, *extra):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "mvdream3d.cli", "train", str(cfg_path), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                            start_new_session=True)


def _wait_for(path_glob_dir: Path, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if path_glob_dir.is_dir() and any(p.name.startswith("step_") for p in path_glob_dir.iterdir()):
            return
        time.sleep(0.2)
    raise TimeoutError("no checkpoint appeared")


@pytest.mark.parametrize("sig,workers", [(signal.SIGKILL, 0), (signal.SIGTERM, 0), (signal.SIGINT, 1)])
def test_killed_run_resumes(tmp_path, data, sig, workers):
    raw = _config(tmp_path, data, steps=40)
    raw["output"]["checkpoint_every"] = 3
    raw["data"]["num_workers"] = workers
    cfg = _write(tmp_path, raw)
    proc = _spawn_train(cfg)
    _wait_for(tmp_path / "run" / "checkpoints")
    # SIGINT goes to the whole process group, data workers included, as Ctrl-C in a terminal does
    os.killpg(proc.pid, sig) if sig == signal.SIGINT else proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    if sig != signal.SIGKILL:
        assert proc.returncode == 0, out
        assert "stopped by signal" in out
    state = json.loads(sorted((tmp_path / "run" / "checkpoints").glob("step_*"))[-1].joinpath("state.json").read_text())
    assert 3 <= state["step"] < 40
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp*")) or sig == signal.SIGKILL
    # resume and run two more steps (a shorter total keeps the test quick)
    r = subprocess.run([sys.executable, "-m", "mvdream3d.cli", "train", str(cfg), "--resume",
                        "--set", f"train.steps={state['step'] + 2}"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resumed from" in r.stdout + r.stderr
    assert (tmp_path / "run" / "model.safetensors").is_file()


# A training run in a child process (conftest.run_until_killed) that hangs, to be killed -9, at an exact point:
# as step AT + 1 begins ("step"), or inside the write of the checkpoint of step AT, after optimizer.pt and
# before state.json ("checkpoint").
TRAIN_UNTIL_KILLED = """
import torch, yaml
from mvdream3d.training import trainer
from mvdream3d.training.config import config_from_dict

cfg_file, point, at, resume = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "resume"
if point == "step":
    real_generator = trainer.step_generator
    def step_generator(seed, step, rank):
        if step == at:
            hang()
        return real_generator(seed, step, rank)
    trainer.step_generator = step_generator
else:
    real_save = torch.save
    def save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        if Path(f).parent.name.startswith(f".tmp_step_{at:07d}"):
            hang()
    torch.save = save
trainer.train(config_from_dict(yaml.safe_load(open(cfg_file))), resume=resume)
"""


def _logged_steps(run: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (run / "train_log.jsonl").read_text().splitlines()]


def test_kill_9_during_a_step_and_a_checkpoint_write_then_resume_equals_an_uninterrupted_run(
        tmp_path, data, run_until_killed, capsys):
    from safetensors.torch import load_file

    from mvdream3d.training.trainer import train

    raw = _config(tmp_path, data, steps=8)
    raw["output"].update(checkpoint_every=3, log_every=2)  # a checkpoint's steps are logged with it
    raw["output"]["dir"] = str(tmp_path / "a")
    train(config_from_dict(raw))
    raw["output"]["dir"] = str(tmp_path / "b")
    cfg, run = _write(tmp_path, raw), tmp_path / "b"
    ckpts = run / "checkpoints"

    run_until_killed(TRAIN_UNTIL_KILLED, cfg, "step", 3, "new")  # killed in step 4
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_0000003"] and _logged_steps(run) == [1, 2, 3]

    out = run_until_killed(TRAIN_UNTIL_KILLED, cfg, "checkpoint", 6, "resume")  # killed writing checkpoint 6
    assert f"resumed from {ckpts / 'step_0000003'} at step 3\n" in out
    stale = [p for p in ckpts.iterdir() if p.name.startswith(".tmp_step_0000006")]
    assert len(stale) == 1 and (stale[0] / "optimizer.pt").is_file() and not (stale[0] / "state.json").exists()
    assert _logged_steps(run) == [1, 2, 3, 4, 5, 6]

    capsys.readouterr()
    train(config_from_dict(raw), resume=True)
    printed = capsys.readouterr().out
    assert f"removed {stale[0]}, left by an interrupted checkpoint write" in printed
    assert "at step 3 (train_log.jsonl: 3 rows after step 3 dropped)" in printed
    assert _logged_steps(run) == list(range(1, 9))  # every step logged once
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_0000006", "step_0000008"]  # no temporaries left
    for name in ("model.safetensors", "checkpoints/step_0000008/unet.safetensors"):
        a, b = load_file(tmp_path / "a" / name), load_file(run / name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)


def test_joint_training_draws_2d_batches_at_p_2d_with_one_view_and_no_camera(tmp_path, data, monkeypatch):
    """Each step is a 2D batch with probability data.p_2d, else a multi-view one; a 2D batch has one view per
    caption and no camera. Watched from outside: every batch the loss receives, and the log's kind column."""
    from mvdream3d.training import trainer

    steps, p_2d = 120, 0.3
    batches: list[dict] = []

    def loss(model, unet, schedule, batch, cfg, g, device, text_cache=None, step=0):
        cams = batch.get("cameras")
        batches.append({"step": step, "num_frames": batch["num_frames"], "captions": len(batch["captions"]),
                        "images": tuple(batch["images"].shape), "cameras": None if cams is None else tuple(cams.shape)})
        return sum(p.sum() for p in unet.parameters()) * 0.0  # the draw is under test, not the loss: keep it cheap

    monkeypatch.setattr(trainer, "_loss", loss)
    raw = _config(tmp_path, data, steps=steps, ema_decay=0)
    raw["data"]["p_2d"] = p_2d
    raw["output"].update(checkpoint_every=steps, log_every=steps)
    trainer.train(config_from_dict(raw))
    kinds = [json.loads(x)["kind"] for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [b["step"] for b in batches] == list(range(steps)) and len(kinds) == steps
    n_2d = sum(b["num_frames"] == 1 for b in batches)
    sigma = (steps * p_2d * (1 - p_2d)) ** 0.5
    assert abs(n_2d - steps * p_2d) <= 3 * sigma, (n_2d, steps * p_2d, sigma)
    for b, kind in zip(batches, kinds, strict=True):
        if kind == "2d":  # data.batch_size_2d defaults to batch_size * num_views images
            assert b["num_frames"] == 1 and b["cameras"] is None and b["images"] == (8, 3, 16, 16), b
            assert b["captions"] == 8, b
        else:
            assert kind == "mv" and b["num_frames"] == 4 and b["cameras"] == (8, 16), b
            assert b["images"] == (8, 3, 16, 16) and b["captions"] == 2, b


# Each rank of a torch.distributed run trains (the model caught as init_model returns it), then saves its own
# UNet weights: the test compares the ranks' weights from outside.
DDP_RANK = """
import os, sys
import yaml
from safetensors.torch import save_file
from mvdream3d.training import trainer
from mvdream3d.training.config import config_from_dict

models = []
real_init_model = trainer.init_model
def init_model(cfg):
    models.append(real_init_model(cfg))
    return models[-1]
trainer.init_model = init_model
trainer.train(config_from_dict(yaml.safe_load(open(sys.argv[1]))))
unet = {k: v.detach().cpu().contiguous() for k, v in models[0].unet.state_dict().items()}
save_file(unet, os.path.join(sys.argv[2], f"rank{os.environ['RANK']}.safetensors"))
"""


def test_two_process_gloo_run_keeps_ranks_in_sync(tmp_path, data):
    from safetensors.torch import load_file

    raw = _config(tmp_path, data, steps=3)
    cfg = _write(tmp_path, raw)
    script = tmp_path / "ddp_rank.py"
    script.write_text(DDP_RANK)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
                        str(script), str(cfg), str(tmp_path)], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ranks = [load_file(tmp_path / f"rank{i}.safetensors") for i in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys()
    for k in ranks[0]:
        assert torch.equal(ranks[0][k], ranks[1][k]), k
    # what the ranks hold is the trained UNet: rank 0 checkpointed it at the last step, and it moved from the start
    ckpt = load_file(tmp_path / "run" / "checkpoints" / "step_0000003" / "unet.safetensors")
    for k in ranks[0]:
        assert torch.equal(ckpt[k], ranks[0][k]), k
    from mvdream3d.training.trainer import init_model

    torch.manual_seed(raw["train"]["seed"])  # as train() seeds before building the model
    start = init_model(config_from_dict(raw)).unet.state_dict()
    assert any(not torch.equal(start[k], ranks[0][k]) for k in ranks[0])


def test_init_from_2d_checkpoint_equals_2d_model(tmp_path):
    from mvdream3d.checkpoints import write_checkpoint
    from mvdream3d.models.model import build_model
    from mvdream3d.training.trainer import init_model

    torch.manual_seed(1)
    m2d = build_model(TINY_PIXEL_MODEL)
    state = {k: v for k, v in m2d.ldm_state_dict().items() if ".camera_embed." not in k}
    path = write_checkpoint(tmp_path / "sd2d.safetensors", state)
    cfg = config_from_dict({"model": {"config": TINY_PIXEL_MODEL, "init": str(path)}, "data": {"multiview": "x"}})
    mv = init_model(cfg)
    x, t, ctx = torch.randn(4, 3, 16, 16), torch.full((4,), 300), torch.randn(4, 77, 32)
    with torch.no_grad():
        torch.testing.assert_close(mv.unet(x, t, ctx, cameras.get_camera(4), num_frames=1), m2d.unet(x, t, ctx))


@pytest.mark.parametrize(
    "patch,match",
    [
        ({"train": {"lr": -1}}, r"train.lr: must be > 0"),
        ({"train": {"lrr": 1}}, r"unknown key\(s\) \['lrr'\]"),
        ({"data": {"p_2d": 2}}, r"data.p_2d"),
        ({"train": {"steps": "many"}}, r"train.steps: must be an integer"),
        ({"optimiser": {}}, r"unknown top-level key"),
        ({"train": {"mixed_precision": "fp8"}}, r"mixed_precision"),
    ],
)
def test_bad_configs_name_the_key(tmp_path, data, patch, match):
    raw = _config(tmp_path, data)
    for k, v in patch.items():
        raw.setdefault(k, {}).update(v)
    with pytest.raises(ConfigError, match=match):
        load_config(_write(tmp_path, raw))


def test_empty_data_folder_fails_clearly(tmp_path, data):
    from mvdream3d.cli import main

    raw = _config(tmp_path, data)
    (tmp_path / "empty").mkdir()
    raw["data"]["multiview"] = str(tmp_path / "empty")
    rc = main(["train", str(_write(tmp_path, raw))])
    assert rc == 2


def test_bf16_autocast_grad_accumulation_and_checkpointing(tmp_path, data):
    from mvdream3d.training.config import config_from_dict
    from mvdream3d.training.trainer import train

    raw = _config(tmp_path, data, steps=2, mixed_precision="bf16", grad_accum=2, gradient_checkpointing=True)
    out = train(config_from_dict(raw))
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(np.isfinite(r["loss"]) for r in log)


def test_min_snr_weights_and_training_with_them(tmp_path, data):
    from mvdream3d import NoiseSchedule
    from mvdream3d.training.config import config_from_dict
    from mvdream3d.training.trainer import min_snr_weights, train

    t = torch.tensor([0, 500, 999])
    for pred in ("eps", "v"):
        s = NoiseSchedule(prediction_type=pred)
        a = s.alphas_cumprod[t].double()
        snr = a / (1 - a)
        expected = torch.minimum(snr, torch.full_like(snr, 5.0)) / (snr + (1 if pred == "v" else 0))
        torch.testing.assert_close(min_snr_weights(s, t, 5.0), expected.float())
    w = min_snr_weights(NoiseSchedule(), t, 5.0)
    assert w[0] < w[1] <= 1.0  # low-noise steps are down-weighted
    raw = _config(tmp_path, data, steps=2, min_snr_gamma=5.0)
    out = train(config_from_dict(raw))
    assert all(np.isfinite(json.loads(x)["loss"]) for x in (out / "train_log.jsonl").read_text().splitlines())


def test_mixed_precision_auto_and_bare_no(tmp_path, data, monkeypatch):
    from mvdream3d import devices

    assert devices.resolve_mixed_precision(False) == "no"  # YAML's reading of a bare `no`
    assert devices.resolve_mixed_precision("bf16") == "bf16"
    monkeypatch.setattr(devices, "_cpu_flags", lambda: frozenset({"avx2"}))
    assert not devices.has_native_bf16("cpu")
    assert devices.resolve_mixed_precision("auto", "cpu") == "no"  # emulated bf16 is far slower than fp32
    monkeypatch.setattr(devices, "_cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    assert devices.resolve_mixed_precision("auto", "cpu") == "bf16"
    raw = _config(tmp_path, data)
    raw["train"]["mixed_precision"] = False
    assert config_from_dict(raw).train.mixed_precision == "no"
    raw["train"]["mixed_precision"] = "auto"
    assert config_from_dict(raw).train.mixed_precision == "auto"


def test_init_from_the_shipped_model_and_into_a_config_without_camera(tmp_path, data):
    from mvdream3d.builtin import builtin_model
    from mvdream3d.models.model import resolve_config
    from mvdream3d.training.trainer import init_model

    shipped = builtin_model("mvdream3d-tiny")
    raw = _config(tmp_path, data)
    raw["model"] = {"config": "mvdream3d-tiny", "init": "mvdream3d-tiny"}
    raw["data"]["image_size"] = 32
    model = init_model(config_from_dict(raw))
    ref = shipped.unet.state_dict()
    for k, v in model.unet.state_dict().items():
        assert v.dtype == torch.float32  # fp16 file, fp32 training
        torch.testing.assert_close(v, ref[k].float())
    no_cam = resolve_config("mvdream3d-tiny")
    no_cam["model"]["params"]["unet_config"]["params"]["camera_dim"] = None
    raw["model"]["config"] = no_cam
    model = init_model(config_from_dict(raw))
    assert not model.unet.has_camera
    for k, v in model.unet.state_dict().items():
        torch.testing.assert_close(v, ref[k].float())


def test_lr_schedules(tmp_path, data):
    from mvdream3d.training.trainer import lr_factor, train

    raw = _config(tmp_path, data, steps=100, warmup_steps=10)
    constant = config_from_dict(raw).train
    assert lr_factor(constant, 0) == pytest.approx(0.1) and lr_factor(constant, 9) == 1.0
    assert lr_factor(constant, 99) == 1.0
    for kind, mid in (("linear", 0.5), ("cosine", 0.5)):
        raw["train"].update(lr_schedule=kind, min_lr_ratio=0.0)
        t = config_from_dict(raw).train
        assert lr_factor(t, 9) == 1.0 and lr_factor(t, 99) == pytest.approx(0.0, abs=1e-9)
        assert lr_factor(t, 54) == pytest.approx(mid, abs=0.01)
    raw["train"].update(lr_schedule="linear", min_lr_ratio=0.1)
    assert lr_factor(config_from_dict(raw).train, 99) == pytest.approx(0.1)
    # decay over the last 20 steps only: constant before, so a longer run of the recipe starts identically
    raw["train"].update(lr_schedule="cosine", min_lr_ratio=0.0, decay_steps=20)
    late = config_from_dict(raw).train
    assert lr_factor(late, 78) == 1.0 and lr_factor(late, 89) == pytest.approx(0.5, abs=0.01)
    assert lr_factor(late, 99) == pytest.approx(0.0, abs=1e-9)
    longer = config_from_dict({**raw, "train": {**raw["train"], "steps": 500}}).train
    assert [lr_factor(longer, s) for s in range(80)] == [lr_factor(late, s) for s in range(80)]
    raw["train"]["decay_steps"] = 0
    raw["train"]["lr_schedule"] = "step"
    with pytest.raises(ConfigError, match="lr_schedule"):
        config_from_dict(raw)
    raw = _config(tmp_path, data, steps=4, lr_schedule="linear")
    out = train(config_from_dict(raw))
    lrs = [json.loads(x)["lr"] for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert lrs[0] > lrs[-1] == pytest.approx(0.0, abs=1e-12)


def test_feature_loss_weight_weighs_masked_pixels_and_needs_masks(tmp_path, data):
    from mvdream3d.models.model import build_model
    from mvdream3d.training.trainer import _loss, step_generator, train

    raw = {"model": {"config": TINY_PIXEL_MODEL}, "data": {"multiview": "x", "caption_dropout": 0}}
    plain = config_from_dict(raw)
    weighted = config_from_dict({**raw, "train": {"feature_loss_weight": 9.0}})
    torch.manual_seed(0)
    model = build_model(TINY_PIXEL_MODEL)
    batch = {"images": torch.rand(8, 3, 16, 16) * 2 - 1, "cameras": cameras.get_camera(4).repeat(2, 1),
             "captions": ["a", "b"], "num_frames": 4}
    masks = torch.zeros(8, 16, 16)
    masks[0, 5:9, 5:9] = 1.0

    def loss(cfg, b):
        return _loss(model, model.unet, model.noise_schedule, b, cfg, step_generator(0, 0, 0), torch.device("cpu"))

    base = loss(plain, batch)
    torch.testing.assert_close(loss(weighted, batch), base)  # no masks in the batch: plain MSE
    torch.testing.assert_close(loss(plain, {**batch, "feature_weights": masks}), base)  # weight 0: plain
    zero = loss(weighted, {**batch, "feature_weights": torch.zeros(8, 16, 16)})
    torch.testing.assert_close(zero, base)
    assert loss(weighted, {**batch, "feature_weights": masks}) > base
    with pytest.raises(ConfigError, match="feature_loss_weight"):
        config_from_dict({**raw, "train": {"feature_loss_weight": -1}})
    # the training data has no feature masks: the run stops with the fix, before any step
    with pytest.raises(ValueError, match="feature_XXX.png"):
        train(config_from_dict(_config(tmp_path, data, steps=1, feature_loss_weight=5.0)))
    mv, _ = data
    for folder in Path(mv).iterdir():
        for v in range(8):
            m = np.zeros((16, 16), np.uint8)
            m[4:8, 4 + v % 4] = 255
            Image.fromarray(m, "L").save(folder / f"feature_{v:03d}.png")
    out = train(config_from_dict(_config(tmp_path, data, steps=2, feature_loss_weight=5.0)))
    assert all(np.isfinite(json.loads(x)["loss"]) for x in (out / "train_log.jsonl").read_text().splitlines())
