"""The package's import structure: no import cycle between mvdream3d modules, no private name borrowed across
packages.

Every ``import`` / ``from ... import`` statement of every module under ``src/mvdream3d`` counts, at module
level and inside functions alike (a function-level import that only dodges a cycle is still a cycle of
ideas); only imports under ``if TYPE_CHECKING:`` are skipped, since they never run. ``from pkg import name``
where ``pkg.name`` is a module is an edge to that module. A string that names a module in full
(``"mvdream3d.webapp.cli"`` in the command registry, for ``importlib``) is an import too. A module's package
is the folder it lives in (``mvdream3d``, ``mvdream3d.models``, ``mvdream3d.training``, ...); a name starting
with one underscore (not a dunder) is private to its package.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import mvdream3d

PACKAGE = "mvdream3d"
SRC = Path(mvdream3d.__file__).resolve().parent


def package_modules(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under ``root`` (the folder of ``package``)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Import statements anywhere in ``tree`` except in ``if TYPE_CHECKING:`` blocks."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def module_imports(name: str, path: Path, modules: dict[str, Path], package: str
                   ) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for each import of a package module by ``name``.
    ``from a.b import c`` gives ("a.b", "c", line), or ("a.b.c", None, line) when a.b.c is a module; a string
    constant that names a package module in full (``importlib.import_module("pkg.x")``, a registry of commands)
    gives ("pkg.x", None, line)."""
    own_package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: list[tuple[str, str | None, int]] = []
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):  # a module named in full by a string: imported by name (importlib)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in modules:
            out.append((node.value, None, node.lineno))
    for node in _runtime_imports(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == package or alias.name.startswith(package + "."):
                    out.append((alias.name, None, node.lineno))
            continue
        if node.level:
            base = own_package.split(".")
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        if not (target == package or target.startswith(package + ".")):
            continue
        for alias in node.names:
            sub = f"{target}.{alias.name}"
            if sub in modules:  # `from pkg import module`: an edge to the module (its package is a parent)
                out.append((sub, None, node.lineno))
            else:
                out.append((target, alias.name, node.lineno))
    return out


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the package modules it imports (anywhere in its code)."""
    modules = package_modules(root, package)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for target, _, _ in module_imports(name, path, modules, package):
            # a module's own packages are imported before it anyway (`resources.files("mvdream3d")`)
            if target in modules and target != name and not name.startswith(target + "."):
                graph[name].add(target)
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))

    def strongconnect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return sorted(cycles)


def _package_of(module: str, modules: dict[str, Path]) -> str:
    return module if modules[module].name == "__init__.py" else module.rpartition(".")[0]


def private_imports_across_packages(root: Path, package: str) -> list[str]:
    """``module:line imports _name from other.module`` for each private name taken from another package."""
    modules = package_modules(root, package)
    found = []
    for name, path in modules.items():
        for target, imported, line in module_imports(name, path, modules, package):
            leaf = imported if imported is not None else target.rpartition(".")[2]
            private = leaf.startswith("_") and not (leaf.startswith("__") and leaf.endswith("__"))
            source = target if target in modules else None
            if private and source is not None and _package_of(source, modules) != _package_of(name, modules):
                found.append(f"{name}:{line} imports {leaf} from {source}")
    return found


def test_no_import_cycles():
    cycles = import_cycles(import_graph(SRC, PACKAGE))
    assert not cycles, "import cycles between mvdream3d modules (break them; a function-level import does " \
                       "not):\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_no_private_imports_across_packages():
    found = private_imports_across_packages(SRC, PACKAGE)
    assert not found, "private names imported from another package (make them public in a shared module):\n" + \
        "\n".join(found)


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / "pkg" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root / "pkg"


@pytest.mark.parametrize("files,cycle", [
    ({"__init__.py": "", "a.py": "from .b import f\n", "b.py": "def f():\n    from .a import g\n"}, ["pkg.a", "pkg.b"]),
    ({"__init__.py": "", "x/__init__.py": "", "x/a.py": "from ..y import b\n",
      "y/__init__.py": "", "y/b.py": "import pkg.x.a\n"}, ["pkg.x.a", "pkg.y.b"]),
    ({"__init__.py": "", "a.py": "COMMANDS = {'b': ('pkg.b', 'register')}\n", "b.py": "from .a import COMMANDS\n"},
     ["pkg.a", "pkg.b"]),
    ({"__init__.py": "", "a.py": "from . import b\n", "b.py": "from pkg.a import thing\n"}, ["pkg.a", "pkg.b"]),
])
def test_cycle_check_finds_cycles(tmp_path, files, cycle):
    """The checker itself: module-level, function-level, absolute, by-name and `from . import` cycles are found."""
    assert import_cycles(import_graph(_write(tmp_path, files), "pkg")) == [cycle]


def test_cycle_check_ignores_type_checking_and_one_way_imports(tmp_path):
    root = _write(tmp_path, {
        "__init__.py": "", "a.py": "from .b import f\n",
        "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import g\ndef f(): pass\n",
        "x/__init__.py": "from .m import f\n", "x/m.py": "from importlib import resources\nresources.files('pkg.x')\n",
    })
    assert import_graph(root, "pkg")["pkg.a"] == {"pkg.b"}
    assert import_graph(root, "pkg")["pkg.x.m"] == set()  # its own package is no import of its own
    assert import_cycles(import_graph(root, "pkg")) == []


def test_private_check_finds_borrowed_names(tmp_path):
    root = _write(tmp_path, {
        "__init__.py": "", "top.py": "from .sub.m import _hidden, public\nfrom .sib import _ok\n",
        "sib.py": "_ok = 1\n", "sub/__init__.py": "", "sub/m.py": "_hidden = public = 1\n",
        "sub/n.py": "def f():\n    from .m import _hidden\n    from ..top import __doc__\n",
        "other/__init__.py": "", "other/o.py": "def f():\n    from ..sub.m import _hidden\n",
    })
    assert private_imports_across_packages(root, "pkg") == [
        "pkg.other.o:2 imports _hidden from pkg.sub.m", "pkg.top:1 imports _hidden from pkg.sub.m"]
