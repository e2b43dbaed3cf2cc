"""Dependencies: everything imported is declared, optional packages fail with the extra to install, and the
light paths (``--help``, the MiniLM encoder) do not import what they do not use."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: import name -> distribution name, where they differ
DISTRIBUTION = {"PIL": "pillow", "yaml": "pyyaml", "skimage": "scikit-image", "gradio_client": "gradio_client"}


def _imported(folder: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    local = {p.stem for p in folder.glob("*.py")} | {"mvdream3d", "conftest"}
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for n in names:
                top = n.split(".")[0]
                if top not in sys.stdlib_module_names and top not in local:
                    found.setdefault(top, set()).add(path.name)
    return found


def _declared() -> dict[str, set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"required": project["dependencies"], **project["optional-dependencies"]}
    norm = lambda req: re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower().replace("_", "-")
    return {g: {norm(r) for r in reqs} for g, reqs in groups.items()}


@pytest.mark.parametrize("folder,groups", [("src/mvdream3d", ("required", "train", "ui")),
                                           ("benchmarks", ("required", "train", "ui", "dev", "bench")),
                                           ("tests", ("required", "train", "ui", "dev"))])
def test_every_imported_package_is_declared(folder, groups):
    declared = set().union(*(_declared()[g] for g in groups))
    missing = {}
    for module, files in _imported(ROOT / folder).items():
        dist = DISTRIBUTION.get(module, module).lower().replace("_", "-")
        if dist not in declared:
            missing[module] = sorted(files)
    assert not missing, f"imported but not declared in pyproject.toml ({'/'.join(groups)}): {missing}"


def test_training_and_test_tools_are_extras():
    declared = _declared()
    assert {"peft", "tensorboard"} <= declared["train"] and not {"peft", "tensorboard"} & declared["required"]
    assert {"selenium", "gradio-client", "pytest"} <= declared["dev"] and "gradio" in declared["ui"]
    assert "sentence-transformers" not in set().union(*declared.values())


def test_missing_peft_names_the_extra(tmp_path, monkeypatch, capsys):
    from mvdream3d.cli import main

    monkeypatch.setitem(sys.modules, "peft", None)  # as if not installed
    rc = main(["dreambooth", "--images", str(tmp_path), "--class-word", "toy", "--train", "lora",
               "--model", "tiny-random", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "pip install 'mvdream3d[train]'" in err and "Traceback" not in err


def test_minilm_encoder_loads_with_transformers_alone():
    code = ("import sys\nfrom mvdream3d.models.text_encoders import MiniLMTextEncoder\n"
            "enc = MiniLMTextEncoder(max_length=8)\nprint(tuple(enc.encode(['a red cube']).shape))\n"
            "print('ST', 'sentence_transformers' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "(1, 8, 384)" in res.stdout and "ST False" in res.stdout, res.stdout + res.stderr[-2000:]
