"""Test infrastructure: the published-model reference copies in tests/fixtures/spec equal the shared spec they
were copied from, and a test that would skip for want of GL or a browser fails where CI installed them."""

import json

import pytest
from conftest import FIXTURE_SPEC, REQUIRE_GL, SPEC, reference_json, skip_unless_required


@pytest.mark.parametrize("name", ["cameras.json", "full_keys_sd21.json", "full_keys_sd15.json"])
def test_fixture_copies_equal_the_shared_spec(name):
    copy = reference_json(name)
    assert copy  # present and readable in a bare clone
    original = SPEC / name
    if not original.is_file():
        pytest.skip(f"{original} not available: nothing to compare the copy {FIXTURE_SPEC / name}.gz with")
    assert copy == json.loads(original.read_text())


def test_a_required_fixture_fails_instead_of_skipping(monkeypatch):
    monkeypatch.setenv(REQUIRE_GL, "1")
    with pytest.raises(pytest.fail.Exception, match="no headless OpenGL: .*MVDREAM3D_REQUIRE_GL=1"):
        skip_unless_required(REQUIRE_GL, "no headless OpenGL: test")
    monkeypatch.setenv(REQUIRE_GL, "0")
    with pytest.raises(pytest.skip.Exception, match="no headless OpenGL"):
        skip_unless_required(REQUIRE_GL, "no headless OpenGL: test")


def test_ci_requires_gl_and_browser_where_it_installs_them():
    from pathlib import Path

    run = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    installs = run.index("apt-get install")
    assert "libegl1" in run[:installs + 200] and "chromium-driver" in run
    required = run.index("export MVDREAM3D_REQUIRE_GL=1 MVDREAM3D_REQUIRE_BROWSER=1")
    assert installs < required < run.index("python -m pytest")
