"""text-to-3D end to end on the tiny random model: files, Ctrl-C/resume, bad input (fast settings)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from mvdream3d.cli import main
from mvdream3d.threed.guidance import timestep_range

FAST = [
    "cameras.resolution_milestones=[[0,16,4]]", "guidance.render_size=64", "guidance.anneal_steps=4",
    "renderer.num_samples_per_ray=12", "material.ambient_only_steps=1", "export.mesh_resolution=24",
    "export.video_frames=3", "export.video_size=32", "export.view_size=32", "output.preview_steps=2",
    "output.progress_every=2", "output.checkpoint_every=2", "geometry.log2_hashmap_size=10",
    "geometry.n_levels=4", "geometry.max_resolution=32",
]


def _args(out, *extra):
    args = ["text-to-3d", "a red cube with a yellow nose", "--model", "tiny-random", "--config", "builtin",
            "--out", str(out)]
    for s in FAST:
        args += ["--set", s]
    return args + list(extra)


def test_cli_writes_every_output(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(out, "--steps", "3")) == 0
    for name in ("preview.png", "progress.png", "views.png", "mesh.glb", "mesh.obj", "turntable.mp4",
                 "turntable.gif", "curves.png", "summary.json", "config.yaml", "log.jsonl"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["steps_done"] == 3
    assert set(summary["timings_s"]) >= {"render", "guidance", "backward"}
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    # t follows the annealed range: (0.98, 0.98) at step 0 down to (0.02, 0.50) at anneal_steps = 4
    for r in rows:
        lo, hi = timestep_range(r["step"] - 1, (0.98, 0.98), (0.02, 0.50), 4)
        assert int(lo * 1000) <= r["t"] <= int(hi * 1000), (r, lo, hi)
    assert rows[0]["t"] == 980


def _field(out):
    return load_file(str(out / "checkpoints" / "latest" / "field.safetensors"))


def test_stop_and_resume_equal_an_uninterrupted_run(tmp_path):
    from mvdream3d.threed import text_to_3d
    from mvdream3d.threed.config import load_text_to_3d_config

    cfg = load_text_to_3d_config("builtin", FAST + ["output.preview=false", "optim.steps=4"])
    cfg_dict = cfg.to_dict()
    text_to_3d("a blue sphere", model="tiny-random", config=cfg_dict, out=tmp_path / "a", progress=False)
    calls = []

    def stop_after_two():
        calls.append(1)
        return len(calls) >= 2

    res = text_to_3d("a blue sphere", model="tiny-random", config=cfg_dict, out=tmp_path / "b",
                     should_stop=stop_after_two, progress=False)
    assert not res.finished and res.steps_done == 2 and (tmp_path / "b" / "views.png").is_file()
    assert not (tmp_path / "b" / "mesh.glb").exists()
    res = text_to_3d("a blue sphere", model="tiny-random", out=tmp_path / "b", resume=True, progress=False)
    assert res.finished and res.steps_done == 4
    a, b = _field(tmp_path / "a"), _field(tmp_path / "b")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    with pytest.raises(ValueError, match="holds a run for prompt"):
        text_to_3d("another prompt", model="tiny-random", out=tmp_path / "b", resume=True, progress=False)


@pytest.mark.parametrize("extra, message", [
    (["--steps", "0"], "steps must be >= 1"),
    (["--set", "optim.lr_mlp=-1"], "optim.lr_mlp"),
    (["--set", "cameras.resolution_milestones=[[0,16,3]]"], "multiple of n_view"),
    (["--config", "no-such-config"], "not found"),
])
def test_bad_input_is_one_clear_line(tmp_path, capsys, extra, message):
    assert main(_args(tmp_path / "x", *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_empty_prompt_and_unwritable_out(tmp_path, capsys):
    assert main(["text-to-3d", "  ", "--model", "tiny-random", "--out", str(tmp_path / "e")]) == 2
    assert "prompt is empty" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["text-to-3d", "a cube", "--model", "tiny-random", "--out", str(blocker / "sub")]) == 2
    assert "error:" in capsys.readouterr().err


def test_model_without_camera_needs_the_2d_baseline(tmp_path):
    from mvdream3d.models.model import build_model, resolve_config
    from mvdream3d.threed import text_to_3d

    cfg = resolve_config("tiny-random")
    cfg["model"]["params"]["unet_config"]["params"]["camera_dim"] = None
    model = build_model(cfg)
    with pytest.raises(ValueError, match="camera embedding"):
        text_to_3d("a cube", model=model, config="builtin", out=tmp_path / "o", progress=False)
    res = text_to_3d("a cube", model=model, config="builtin", out=tmp_path / "o2", steps=2, progress=False,
                     overrides=FAST + ["guidance.name=2d", "output.preview=false"])
    assert res.finished


# text-to-3D in a child process (conftest.run_until_killed) that hangs, to be killed -9, at an exact point: as
# step AT + 1 begins ("step"), or inside the write of the checkpoint of step AT, after field.safetensors and
# optimizer.pt, before state.json and the rename ("checkpoint").
TEXT_TO_3D_UNTIL_KILLED = """
import torch
from mvdream3d.threed import system

out, config, point, at, resume = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6] == "resume"
if point == "step":
    real_step = system.TextTo3D.train_step
    def train_step(self):
        if self.step == at:
            hang()
        return real_step(self)
    system.TextTo3D.train_step = train_step
else:
    real_checkpoint, real_save = system.TextTo3D.save_checkpoint, torch.save
    def save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        hang()
    def save_checkpoint(self):
        if self.step == at:
            torch.save = save
        return real_checkpoint(self)
    system.TextTo3D.save_checkpoint = save_checkpoint
system.text_to_3d("a blue sphere", model="tiny-random", config=None if resume else config, out=out, resume=resume,
                  progress=False)
"""


def test_kill_9_during_a_step_and_a_checkpoint_write_then_resume_equals_an_uninterrupted_run(
        tmp_path, run_until_killed, capsys):
    import yaml

    from mvdream3d.threed import text_to_3d
    from mvdream3d.threed.config import load_text_to_3d_config

    cfg = load_text_to_3d_config("builtin", FAST + ["output.preview=false", "optim.steps=6"]).to_dict()
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    text_to_3d("a blue sphere", model="tiny-random", config=cfg, out=tmp_path / "a", progress=False)
    run = tmp_path / "b"

    def logged() -> list[int]:
        return [json.loads(x)["step"] for x in (run / "log.jsonl").read_text().splitlines()]

    run_until_killed(TEXT_TO_3D_UNTIL_KILLED, run, tmp_path / "cfg.yaml", "step", 3, "new")  # killed in step 4
    assert logged() == [1, 2]  # checkpoint_every 2: the log goes with the checkpoint
    out = run_until_killed(TEXT_TO_3D_UNTIL_KILLED, run, "-", "checkpoint", 4, "resume")  # killed writing step 4's
    assert f"resumed from {run / 'checkpoints' / 'latest'} at step 2\n" in out
    stale = [p for p in (run / "checkpoints").iterdir() if p.name != "latest"]
    assert len(stale) == 1 and stale[0].name.startswith(".tmp_") and not (stale[0] / "state.json").exists()
    assert logged() == [1, 2, 3, 4]  # logged before the checkpoint is written: never a step missing

    capsys.readouterr()
    res = text_to_3d("a blue sphere", model="tiny-random", out=run, resume=True, progress=False)
    assert "at step 2 (log.jsonl: 2 rows after step 2 dropped)" in capsys.readouterr().out
    assert res.finished and logged() == [1, 2, 3, 4, 5, 6]  # every step once
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["latest"]  # no temporaries left
    a, b = _field(tmp_path / "a"), _field(run)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_default_recipe_follows_the_models_size():
    from mvdream3d.builtin import builtin_model
    from mvdream3d.threed.config import default_config_for

    assert default_config_for(builtin_model("mvdream3d-tiny")) == "builtin"  # the 64 px latent CPU model
    assert default_config_for(builtin_model("tiny-random")) == "mvdream-sd21"  # 256 px, like the published ones
