"""Shared fixtures: tiny random configs, the published-model reference data and the location of ../shared."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import NoReturn

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SPEC = SHARED / "spec"
# copies of the small files of SPEC, always present (tests/fixtures/README.md)
FIXTURE_SPEC = Path(__file__).resolve().parent / "fixtures" / "spec"

# A tiny SD-1.5-shaped multi-view UNet: 2 levels, attention at both, 4 heads.
TINY_UNET = dict(
    in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[2, 1], num_res_blocks=1,
    channel_mult=[1, 2], num_heads=4, use_spatial_transformer=True, transformer_depth=1, context_dim=24,
    camera_dim=16, legacy=False,
)


@pytest.fixture(scope="session", autouse=True)
def _trace_cache_in_a_temporary_folder(tmp_path_factory):
    """The trace cache (:mod:`mvdream3d.models.traced_cache`) of the test session, child processes included: a
    temporary folder, never the user's."""
    old = os.environ.get("MVDREAM3D_CACHE_DIR")
    os.environ["MVDREAM3D_CACHE_DIR"] = str(tmp_path_factory.mktemp("trace-cache"))
    yield
    if old is None:
        os.environ.pop("MVDREAM3D_CACHE_DIR", None)
    else:
        os.environ["MVDREAM3D_CACHE_DIR"] = old


def perturb(module: torch.nn.Module, std: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Add noise to every parameter so zero-initialised layers do not hide bugs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return module


@pytest.fixture
def tiny_unet():
    from mvdream3d import MultiViewUNet

    torch.manual_seed(0)
    return perturb(MultiViewUNet.from_config(TINY_UNET)).eval()


# Set to 1 by .ci/run, which installs the system packages: a renderer (EGL / Mesa) or browser (Chromium,
# chromedriver, selenium, gradio) test that would skip for want of them fails instead.
REQUIRE_GL = "MVDREAM3D_REQUIRE_GL"
REQUIRE_BROWSER = "MVDREAM3D_REQUIRE_BROWSER"


def skip_unless_required(flag: str, reason: str) -> NoReturn:
    """Skip the test for ``reason`` (something it needs is missing), or fail it when the environment
    variable ``flag`` is 1: the machine is meant to have what is missing."""
    if os.environ.get(flag) == "1":
        pytest.fail(f"{reason}; {flag}=1 says this machine has it (.ci/run installs it), so this fails, not skips")
    pytest.skip(reason)


def reference_json(name: str) -> dict:
    """A published-model reference file (``cameras.json``, ``full_keys_sd21.json``, ``full_keys_sd15.json``)
    from the copies in tests/fixtures/spec."""
    with gzip.open(FIXTURE_SPEC / f"{name}.gz", "rt", encoding="utf-8") as f:
        return json.load(f)


def spec_or_skip(name: str) -> Path:
    p = SPEC / name
    if not p.exists():
        pytest.skip(f"{p} not available")
    return p



def _run_code(code: str, argv: list[str], log: str, threads: int) -> None:
    """The body of a :func:`run_until_killed` child: output to ``log``, then ``code`` as ``__main__``."""
    import os
    import sys
    import time
    from pathlib import Path

    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = sys.stderr = open(1, "w", buffering=1, closefd=False)
    sys.argv = argv
    torch.set_num_threads(threads)  # as in the test process: results compared with an in-process run match

    def hang() -> None:
        Path(argv[1]).touch()  # the test kills -9 this process now
        time.sleep(600)

    exec(compile(code, "<run_until_killed>", "exec"), {"__name__": "__main__", "hang": hang, "sys": sys, "Path": Path})


@pytest.fixture(scope="session")
def _preloaded_processes():
    """A multiprocessing context whose children start from a server process that has already imported the
    package (forkserver): a child is a fresh process, without the seconds that importing torch, accelerate
    and the models take."""
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["mvdream3d.training.trainer", "mvdream3d.threed.system", "accelerate",
                                "diffusers.training_utils", "safetensors.torch", "yaml"])
    return ctx


@pytest.fixture
def run_until_killed(tmp_path, _preloaded_processes):
    """``run(code, *args)``: run the Python ``code`` in a child process (``sys.argv[1]``: a marker file,
    ``sys.argv[2:]``: ``args``; ``hang()``, ``sys`` and ``Path`` defined) and kill -9 it once it calls
    ``hang()``, so that a test can kill a run at an exact point, e.g. inside a checkpoint write. Returns the
    child's output. Fails if the child ends by itself or does not reach ``hang()`` within ``timeout`` s."""
    import signal
    import time

    def run(code: str, *args: object, timeout: float = 180) -> str:
        marker = tmp_path / f"killed-{time.monotonic_ns()}"
        log = marker.with_suffix(".log")
        argv = ["run_until_killed", str(marker), *map(str, args)]
        proc = _preloaded_processes.Process(target=_run_code, args=(code, argv, str(log), torch.get_num_threads()))
        proc.start()
        try:
            deadline = time.monotonic() + timeout
            while not marker.exists():
                if not proc.is_alive():
                    pytest.fail(f"the child ended ({proc.exitcode}) before the kill point:\n{log.read_text()}")
                if time.monotonic() > deadline:
                    pytest.fail(f"the child did not reach the kill point in {timeout} s:\n{log.read_text()}")
                time.sleep(0.05)
            proc.kill()  # SIGKILL
            proc.join(30)
            assert proc.exitcode == -signal.SIGKILL
        finally:
            if proc.is_alive():
                proc.kill()
                proc.join(30)
        return log.read_text()

    return run
