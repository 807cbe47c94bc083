"""The package's shape, checked: no import cycle, layers by folder, the import rules of pyproject.toml
([tool.importlinter], run by lint-imports), lazy heavy imports, and tests that mirror the package.
docs/architecture.md explains the rules."""
from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "edgeq"
TESTS = ROOT / "tests"

TOP_LEVEL_MODULES = {"__init__", "__main__", "cli", "api"}
MAX_MODULES_PER_PACKAGE = 15
# test folders that test the whole tool rather than one package
WHOLE_TOOL_TEST_DIRS = {"e2e", "reliability"}
# what `edgeq --help` must not import: the ML frameworks, runtimes and converters (seconds each)
HEAVY = {"tensorflow", "tf_keras", "tensorflow_model_optimization", "torch", "onnxruntime", "onnx", "onnx2tf",
         "tf2onnx", "ai_edge_litert", "litert_quantizer", "openvino"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _import_graph() -> dict[str, set[str]]:
    """edgeq module -> the edgeq modules it imports anywhere in its file (module level, in functions, under
    TYPE_CHECKING): every arrow, hidden or not."""
    modules = _modules()

    def owner(name: str) -> str | None:  # `edgeq.a.b.name` -> the module that defines it
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            targets |= {o for n in names if n.split(".")[0] == "edgeq" and (o := owner(n)) and o != mod}
        graph[mod] = targets
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_scan_finds_imports_inside_functions_and_relative_ones():
    graph = _import_graph()
    assert "edgeq.core.errors" in graph["edgeq.cli"]
    assert "edgeq.ondevice.agent" in graph["edgeq.core.sysinfo"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_between_edgeq_modules():
    cycle = _cycle(_import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_top_level_module_but_the_entry_points():
    extra = sorted(p.name for p in PACKAGE.glob("*.py") if p.stem not in TOP_LEVEL_MODULES)
    assert not extra, f"edgeq/{extra}: put each module in the package of its layer (docs/architecture.md)"


def test_no_package_holds_more_than_15_modules():
    crowded = {str(d.relative_to(ROOT)): n for d in PACKAGE.rglob("*") if d.is_dir() and d.name != "__pycache__"
               if (n := sum(1 for p in d.glob("*.py") if p.name != "__init__.py")) > MAX_MODULES_PER_PACKAGE}
    assert not crowded, f"split these packages by what their modules are: {crowded}"


def test_every_package_folder_is_a_package():
    loose = [str(d.relative_to(ROOT)) for d in PACKAGE.rglob("*")
             if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py")) and not (d / "__init__.py").exists()]
    assert not loose, f"folders of modules without __init__.py: {loose}"


def _lint_imports() -> str | None:
    exe = Path(sys.executable).with_name("lint-imports")
    return str(exe) if exe.exists() else shutil.which("lint-imports")


def test_import_contracts_hold():
    exe = _lint_imports()
    if exe is None:
        pytest.skip("lint-imports not installed (pip install -e '.[dev]' installs import-linter)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([exe, "--no-cache", "--no-logo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]


def test_edgeq_help_imports_no_framework():
    code = ("import json, sys\nfrom edgeq.cli import main\nsys.argv = ['edgeq', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    loaded = set(json.loads(r.stdout.strip().splitlines()[-1]))
    assert "argparse" in loaded  # the help really ran
    assert not loaded & HEAVY, f"edgeq --help imported {sorted(loaded & HEAVY)}; import them inside the function " \
                               f"that needs them"


def _test_files() -> list[Path]:
    return sorted(p for p in TESTS.rglob("test_*.py") if "data" not in p.relative_to(TESTS).parts)


def test_test_files_sit_in_the_folder_of_the_package_they_test():
    misplaced = []
    for p in _test_files():
        folder = p.parent.relative_to(TESTS).parts
        if folder and folder[0] in WHOLE_TOOL_TEST_DIRS:
            continue
        if not folder:  # tests/test_<entry point>.py, and this file
            if p.stem[len("test_"):] not in TOP_LEVEL_MODULES | {"architecture", "docs"}:
                misplaced.append(f"{p.relative_to(ROOT)}: not an entry point; move it to tests/<layer>/")
            continue
        if not (PACKAGE.joinpath(*folder) / "__init__.py").exists():
            misplaced.append(f"{p.relative_to(ROOT)}: edgeq/{'/'.join(folder)} is no package")
    assert not misplaced, "\n".join(misplaced)


def test_a_test_named_after_a_module_sits_with_that_module():
    """tests/<layer>/test_<module>.py tests edgeq/<layer>/<module>.py: a test named after an edgeq module sits
    in that module's package (names that several packages use may sit with any of them)."""
    where: dict[str, set[tuple[str, ...]]] = {}
    for p in PACKAGE.rglob("*.py"):
        if p.stem != "__init__":
            where.setdefault(p.stem, set()).add(p.parent.relative_to(PACKAGE).parts)
    misplaced = []
    for p in _test_files():
        folder = p.parent.relative_to(TESTS).parts
        homes = where.get(p.stem[len("test_"):])
        if homes and folder and folder[0] not in WHOLE_TOOL_TEST_DIRS and folder not in homes:
            misplaced.append(f"{p.relative_to(ROOT)} -> tests/{'/'.join(sorted(homes)[0]) or '.'}/{p.name}")
    assert not misplaced, "\n".join(misplaced)


def test_test_file_names_are_unique_across_the_tree():
    """pytest imports test files by basename (tests/ has no packages): two test_x.py in different folders collide."""
    from collections import Counter

    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert not [n for n, k in names.items() if k > 1], "rename one of each: test_<module>.py, or test_<framework>_<module>.py"


def test_tests_import_their_helpers_by_module_name():
    """tf2onnx installs a top-level `tests` package: `from tests.x import` would load its files, not ours."""
    bad = [str(p.relative_to(ROOT)) for p in TESTS.rglob("*.py")
           if any(line.lstrip().startswith(("from tests.", "import tests")) for line in p.read_text().splitlines())]
    assert not bad, f"use `from conftest import ...` (tests/ is on sys.path): {bad}"


def test_every_edgeq_import_resolves_including_those_inside_functions():
    """A name moved or removed is found here, not when a user reaches the function that imports it."""
    import importlib

    bad = []
    for p in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("edgeq.")):
                continue
            try:
                m = importlib.import_module(node.module)
            except ImportError as e:
                if "edgeq" in str(e):
                    bad.append(f"{p.relative_to(ROOT)}:{node.lineno}: {e}")
                continue  # an optional third-party package this machine lacks
            for a in node.names:
                if not hasattr(m, a.name) and importlib.util.find_spec(f"{node.module}.{a.name}") is None:
                    bad.append(f"{p.relative_to(ROOT)}:{node.lineno}: {node.module} has no {a.name}")
    assert not bad, "\n".join(bad)
