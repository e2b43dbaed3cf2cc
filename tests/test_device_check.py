"""benchmarks/device_check.py runs end to end at its reduced CPU size, so it is known to work before a GPU."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "device_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_device_check_small_runs_on_cpu(tmp_path, capsys):
    mod = _module()
    out = tmp_path / "rows.json"
    assert mod.main(["--small", "--official", str(tmp_path / "no-checkout"), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| check | settings | seconds | s/step | peak GPU MiB |" in text and "official: not available" in text
    rows = {r["check"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"UNet sampling, mvdream3d", "UNet sampling, official", "text-to-3D",
                         "text-to-3D, low-memory mode"}
    for name in ("UNet sampling, mvdream3d", "text-to-3D", "text-to-3D, low-memory mode"):
        assert rows[name]["seconds"] > 0 and rows[name]["per_step"] > 0 and rows[name]["peak_mib"] is None
    assert "DDIM 2" in rows["UNet sampling, mvdream3d"]["settings"]
    for line in text.splitlines():  # a well-formed table: 5 columns on every row
        if line.startswith("| "):
            assert line.count(" | ") == 4, line


def test_official_unet_loader_needs_a_checkout(tmp_path):
    mod = _module()
    try:
        mod.load_official_unet_class(tmp_path)
    except FileNotFoundError as e:
        assert "bytedance/MVDream" in str(e)
    else:
        raise AssertionError("an empty folder is no checkout")
