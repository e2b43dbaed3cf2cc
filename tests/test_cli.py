import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from mvdream3d.cli import main


def test_generate_writes_grid_views_and_cameras(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["generate", "a red cube", "--model", "tiny-random", "--steps", "2", "--size", "64",
               "--views", "4", "--out", str(out)])
    assert rc == 0
    assert Image.open(out / "grid.png").size == (256, 64)
    views = sorted(p.name for p in out.glob("view_*.png"))
    assert views == [f"view_00_{i:02d}.png" for i in range(4)]
    cams = json.loads((out / "cameras.json").read_text())
    assert len(cams["c2w"]) == 4 and len(cams["model_camera"][0]) == 16
    assert cams["azimuth"] == [0.0, 90.0, 180.0, 270.0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere; checked via a file in the way")
def test_unwritable_out_dir_unprivileged(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    rc = main(["generate", "x", "--model", "tiny-random", "--out", str(ro / "sub")])
    assert rc == 2 and "cannot write" in capsys.readouterr().err


def test_out_dir_blocked_by_file(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc = main(["generate", "x", "--model", "tiny-random", "--out", str(blocker / "sub")])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot write to output directory" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv,match",
    [
        (["generate", "x", "--model", "tiny-random", "--views", "0"], "--views must be >= 1"),
        (["generate", "x", "--model", "/nonexistent/model.pt"], "not a checkpoint file nor a known model"),
        (["generate", "", "--model", "tiny-random", "--steps", "1", "--size", "64"], "non-empty"),
    ],
)
def test_user_errors_are_one_line(tmp_path, capsys, argv, match):
    rc = main(argv + ["--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and match in err and "Traceback" not in err


def test_info_and_convert(tmp_path, capsys):
    assert main(["info", "tiny-random"]) == 0
    out = capsys.readouterr().out
    assert "unet_config" in out and "total" in out
    from mvdream3d.builtin import builtin_model

    src = builtin_model("tiny-random").save(tmp_path / "m.pt")
    assert main(["convert", str(src), str(tmp_path / "m.safetensors")]) == 0
    assert (tmp_path / "m.safetensors").stat().st_size > 0
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    assert main(["convert", str(bad), str(tmp_path / "x.safetensors")]) == 2
    assert "corrupt" in capsys.readouterr().err


def test_console_script_entry_point():
    r = subprocess.run([sys.executable, "-m", "mvdream3d.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "generate" in r.stdout


def test_help_imports_the_command_line_and_its_errors_only():
    """``mvdream3d --help`` stays fast: no config machinery (yaml), no model, no training module."""
    code = ("import sys\nfrom mvdream3d.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('MODULES', sorted(m for m in sys.modules if m.startswith('mvdream3d')), 'yaml' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    line = next(x for x in r.stdout.splitlines() if x.startswith("MODULES"))
    assert line == "MODULES ['mvdream3d', 'mvdream3d.cli', 'mvdream3d.errors', 'mvdream3d.files'] False", line


def test_convert_to_fp16_halves_the_file_and_loads(tmp_path):
    import torch

    from mvdream3d import load_model
    from mvdream3d.builtin import builtin_model

    src = builtin_model("tiny-random").save(tmp_path / "m.safetensors")
    assert main(["convert", str(src), str(tmp_path / "h.safetensors"), "--dtype", "fp16"]) == 0
    assert (tmp_path / "h.safetensors").stat().st_size < 0.6 * src.stat().st_size
    a, b = load_model(None, src), load_model(None, tmp_path / "h.safetensors")
    w = "out.2.weight"
    assert b.unet.state_dict()[w].dtype == torch.float32  # cast back on load
    torch.testing.assert_close(a.unet.state_dict()[w], b.unet.state_dict()[w], atol=1e-3, rtol=1e-3)


def test_convert_records_the_sampling_defaults_a_sweep_chose(tmp_path, capsys):
    """``convert --sampling`` writes the settings into the model's config; the weights are unchanged."""
    import torch

    from mvdream3d import load_model
    from mvdream3d.builtin import builtin_model

    src = builtin_model("tiny-random").save(tmp_path / "m.safetensors")
    out = tmp_path / "s.safetensors"
    assert main(["convert", str(src), str(out), "--sampling", "unipc:9:2.5:0.3"]) == 0
    a, b = load_model(None, src), load_model(None, out)
    assert b.sampling_defaults == {"sampler": "unipc", "steps": 9, "guidance_scale": 2.5, "guidance_rescale": 0.3}
    assert a.sampling_defaults["steps"] == 50
    assert all(torch.equal(v, b.unet.state_dict()[k]) for k, v in a.unet.state_dict().items())
    capsys.readouterr()
    for bad in ("ddim:8:1.5", "plms:8:1.5:0", "ddim:x:1.5:0", "ddim:0:1.5:0", "ddim:8:1.5:2"):
        assert main(["convert", str(src), str(tmp_path / "x.safetensors"), "--sampling", bad]) == 2
        err = capsys.readouterr().err
        assert "SAMPLER:STEPS:GUIDANCE:RESCALE" in err or "RESCALE in [0, 1]" in err, err
        assert "Traceback" not in err
    assert not (tmp_path / "x.safetensors").exists()


def test_generate_uses_the_models_sampling_defaults(tmp_path):
    """Settings left out on the command line come from the checkpoint's ``sampling`` section."""
    import copy

    from mvdream3d.builtin import builtin_model
    from mvdream3d.checkpoints import write_checkpoint

    model = builtin_model("tiny-random")
    assert model.sampling_defaults == {"sampler": "ddim", "steps": 50, "guidance_scale": 7.5, "guidance_rescale": 0.0}
    cfg = copy.deepcopy(model.config)
    cfg["model"]["params"]["sampling"] = {"sampler": "dpmpp_2m", "steps": 3, "guidance_scale": 2.0,
                                          "guidance_rescale": 0.5}
    write_checkpoint(tmp_path / "m.safetensors", model.ldm_state_dict(), cfg)
    out = tmp_path / "out"
    assert main(["generate", "a red cube", "--model", str(tmp_path / "m.safetensors"), "--size", "32",
                 "--out", str(out)]) == 0
    cams = json.loads((out / "cameras.json").read_text())
    assert (cams["sampler"], cams["steps"], cams["guidance"], cams["guidance_rescale"]) == ("dpmpp_2m", 3, 2.0, 0.5)
    assert main(["generate", "a red cube", "--model", str(tmp_path / "m.safetensors"), "--size", "32",
                 "--steps", "2", "--guidance", "0", "--out", str(out)]) == 0
    cams = json.loads((out / "cameras.json").read_text())
    assert (cams["sampler"], cams["steps"], cams["guidance"]) == ("dpmpp_2m", 2, 0.0)
