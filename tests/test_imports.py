"""Module boundaries: no import cycles among flanx modules, `python -m` entry points that import
themselves once, `models/` + `train/` free of TensorFlow and seqio (even through lazy imports), and
what the launchers import free of jax."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from helpers import random_params, run_python

SRC = Path(__file__).resolve().parents[1] / "src"
FORBIDDEN_IN_CORE = ("tensorflow", "seqio")  # what models/ and train/ must never reach


def _module_files() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "flanx").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _module_files()


def _imports(name: str, path: Path) -> tuple[set[str], set[str]]:
    """(flanx modules, top-level third-party packages) that `name` imports anywhere in its file.

    Function-level (lazy) imports count: they run sooner or later, and a lazy cycle is what
    made a `python -m` entry point import itself twice.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    local, external = set(), set()

    def add(target: str) -> None:
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        if target:
            local.add(target)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "flanx":
                    add(alias.name)
                else:
                    external.add(alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            if base.split(".")[0] != "flanx":
                external.add(base.split(".")[0])
                continue
            for alias in node.names:  # `from flanx import io` names a module, `from flanx.io import X` a member
                add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    local.discard(name)
    return local, external


GRAPH, EXTERNAL = {}, {}
for _name, _path in MODULES.items():
    GRAPH[_name], EXTERNAL[_name] = _imports(_name, _path)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _reachable(start: str) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in GRAPH[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_the_analysis_sees_lazy_imports_and_cycles():
    # The checks below mean something only if the parser finds function-level imports and the
    # cycle finder reports a cycle it is shown.
    assert "flanx.models.network" in GRAPH["flanx.models.lora"]  # imported inside add_lora
    assert "flanx.io" in GRAPH["flanx.train.writers"] and "flanx.mesh" in GRAPH["flanx.partitioning"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_among_flanx_modules():
    cycles = _cycles(GRAPH)
    described = ["; ".join(f"{m} -> {sorted(GRAPH[m] & set(c))}" for m in c) for c in cycles]
    assert not cycles, "import cycles (lazy imports included):\n" + "\n".join(described)


def test_entry_points_are_not_imported_by_other_modules():
    """`python -m X` runs X's code as `__main__`; a module importing X (or X.__main__) runs it twice."""
    runnable = [name for name, path in MODULES.items()
                if path.name == "__main__.py" or 'if __name__ == "__main__"' in path.read_text()]
    assert {"flanx.train.__main__", "flanx.eval.__main__", "flanx.infer.__main__",
            "flanx.distributed.__main__", "flanx.convert", "flanx.cli"} <= set(runnable)
    for name in runnable:
        if name.endswith(".__main__"):
            importers = sorted(m for m in GRAPH if name in GRAPH[m])
            assert not importers, f"{name} is imported by {importers}"
        else:
            assert all(name not in _reachable(dep) for dep in GRAPH[name]), f"{name} imports itself again"
    # The gin entry points are packages, so `python -m flanx.infer` runs infer/__main__.py once.
    for package in ("flanx.train", "flanx.eval", "flanx.infer", "flanx.distributed"):
        assert MODULES[package].name == "__init__.py" and f"{package}.__main__" in MODULES


ARCHITECTURE = SRC.parent / "docs" / "architecture.md"
# Lazy reads that sit above their row, named in docs/architecture.md's module map.
ALLOWED_UPWARD = {("flanx.checkpoints.hf_files", "flanx.data.vocab"), ("flanx.checkpoints.hf_files", "flanx.gin_utils")}


def _documented_rows() -> list[list[str]]:
    """The module map of docs/architecture.md, top row first: each row's modules as flanx prefixes."""
    text = ARCHITECTURE.read_text()
    table = text[text.index("| module | owns |"):].split("\n\n", 1)[0].splitlines()[2:]
    rows = []
    for line in table:
        cell = line.split(" | ")[0]
        names = []
        for path in re.findall(r"`([^`]+)`", cell):
            parts = path.rstrip("/").removesuffix(".py").split("/")
            names.append(".".join(["flanx", *[p for p in parts if p != "__init__"]]))
        rows.append(names)
    return rows


def _row_of(module: str, rows: list[list[str]]) -> int | None:
    best = None
    for i, row in enumerate(rows):
        for prefix in row:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (i, len(prefix))
    if best is None and MODULES[module].name == "__init__.py" and GRAPH[module]:  # an unlisted package's
        below = [_row_of(m, rows) for m in GRAPH[module]]                          # __init__: as low as what it
        return max(r for r in below if r is not None)                             # imports
    return None if best is None else best[0]


def test_imports_point_down_the_documented_module_map():
    rows = _documented_rows()
    assert ["flanx.cli"] in rows and ["flanx.paths", "flanx.registry"] in rows, rows  # the table was read
    unlisted = sorted(m for m in MODULES if _row_of(m, rows) is None and GRAPH[m])
    assert not unlisted, f"modules missing from docs/architecture.md's module map: {unlisted}"
    upward = sorted((m, d) for m in MODULES for d in GRAPH[m]
                    if _row_of(m, rows) is not None and _row_of(d, rows) < _row_of(m, rows))
    assert set(upward) <= ALLOWED_UPWARD, f"imports pointing up the module map: {sorted(set(upward) - ALLOWED_UPWARD)}"


@pytest.mark.parametrize("package", ["flanx.models", "flanx.train"])
def test_core_packages_never_reach_tensorflow_or_seqio(package):
    # `flanx/train/__main__.py` is only the name `python -m flanx.train`: it hands over to the gin
    # entry point (flanx.entrypoints), which reads seqio data by design.
    members = [m for m in MODULES if (m == package or m.startswith(package + ".")) and not m.endswith(".__main__")]
    for module in members:
        reach = _reachable(module)
        bad = sorted((m, sorted(EXTERNAL[m] & set(FORBIDDEN_IN_CORE))) for m in reach
                     if EXTERNAL[m] & set(FORBIDDEN_IN_CORE))
        assert not bad, f"{module} reaches TensorFlow/seqio through {bad}"


def test_every_module_imports_and_the_core_loads_no_tensorflow(tmp_path):
    """One fresh interpreter, in three phases: what the launchers import loads without jax; models/, train/,
    partitioning, checkpoints and convert load, and read a checkpoint, without TensorFlow or seqio; then
    every other module (not `__main__` ones, which run) imports."""
    from flanx import checkpoints as C
    from flanx.models import get_config

    checkpoint = C.save_params(tmp_path / "ck", random_params(get_config("tiny")), get_config("tiny"))
    launcher_side = ["flanx.distributed", "flanx.io", "flanx.mesh"]
    core = [m for m in MODULES if m.startswith(("flanx.models", "flanx.train")) and not m.endswith("__main__")]
    core += ["flanx.partitioning", "flanx.checkpoints", "flanx.convert"]
    rest = [m for m in MODULES if m not in core + launcher_side and not m.endswith("__main__")]
    code = (
        "import importlib, sys\n"
        f"for m in {launcher_side!r}: importlib.import_module(m)\n"
        "assert 'jax' not in sys.modules and 'tensorflow' not in sys.modules, 'the launchers reach jax'\n"
        f"for m in {core!r}: importlib.import_module(m)\n"
        f"importlib.import_module('flanx.checkpoints').load_params({str(checkpoint)!r}, scan_layers=True)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN_IN_CORE!r})\n"
        "assert not bad, bad\n"
        f"for m in {rest!r}: importlib.import_module(m)\n")
    proc = run_python("-c", code, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
