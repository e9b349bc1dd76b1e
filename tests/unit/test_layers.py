"""The layers of docs/architecture.md, enforced: an import never goes up a layer, every module has a layer,
and the lower layers import Esker's own modules at the top of the file only (no function-local imports, which
is how import loops hide)."""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "esker"

# Layer -> module patterns. The first matching pattern wins, so specific names come before wildcards.
LAYERS: list[tuple[int, str, list[str]]] = [
    (0, "units", ["esker", "esker.units", "esker.resources"]),
    (1, "core", ["esker.core", "esker.core.*", "esker.courses.model", "esker.courses.reservations",
                 "esker.courses.prewarm", "esker.courses.prestart", "esker.objectstore.errors", "esker.objectstore.names",
                 "esker.objectstore.cephconf"]),
    (2, "state and clients", ["esker.state", "esker.state.*", "esker.system", "esker.system.*",
                              "esker.objectstore.rgwadmin", "esker.objectstore.s3client",
                              "esker.objectstore.ceph", "esker.objectstore.cephbootstrap",
                              "esker.objectstore.cephprocs", "esker.objectstore.mounts", "esker.spark", "esker.spark.cluster", "esker.spark.archive", "esker.courses.acls",
                              "esker.hubapi", "esker.functions.broker"]),
    (3, "services and backends", ["esker.objectstore", "esker.objectstore.service", "esker.courses",
                                  "esker.courses.content", "esker.courses.roles", "esker.courses.seats",
                                  "esker.courses.jobs", "esker.courses.context", "esker.courses.hubsync",
                                  "esker.courses.handlers", "esker.courses.openapi", "esker.runtime",
                                  "esker.metrics", "esker.spawner", "esker.spawner.*", "esker.functions",
                                  "esker.functions.access", "esker.functions.store", "esker.functions.roles",
                                  "esker.functions.activator", "esker.functions.stats", "esker.functions.handlers"]),
    (4, "application", ["esker.app", "esker.app.*"]),
    (5, "entry points", ["esker.jupyterhub_config", "esker.cli", "esker.cli.*", "esker.courses.service",
                         "esker.functions.service",
                         "esker.objectstore.cephd", "esker.docs", "esker.devhub"]),
]
# Function-local imports of Esker's modules are allowed only here: the CLI imports a command's
# dependencies when the command runs, so `esker --help` stays fast.
LAZY_OK = 5


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(name: str) -> int | None:
    for level, _, patterns in LAYERS:
        if any(fnmatch.fnmatchcase(name, p) for p in patterns):
            return level
    return None


def esker_imports(path: Path, name: str):
    """(imported module, line, at top level?) for each import of an esker module in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    top = set(map(id, tree.body))
    # Imports guarded by `if TYPE_CHECKING:` at the top are annotations only: they never run.
    typing_only = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only |= {id(n) for n in ast.walk(node)}
            top |= {id(n) for n in node.body}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            # `from esker.core import config` imports esker.core.config
            targets = [f"{base}.{a.name}" if layer_of(f"{base}.{a.name}") is not None and
                       (PACKAGE.parent / f"{base}.{a.name}".replace(".", "/")).with_suffix(".py").exists()
                       or (PACKAGE.parent / f"{base}.{a.name}".replace(".", "/")).is_dir() else base
                       for a in node.names]
        for t in targets:
            if t == "esker" or t.startswith("esker."):
                yield t, node.lineno, id(node) in top


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    missing = [module_name(p) for p in MODULES if layer_of(module_name(p)) is None]
    assert not missing, f"give these modules a layer in tests/unit/test_layers.py: {missing}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_never_go_up(path):
    name = module_name(path)
    mine = layer_of(name)
    up = [f"line {line}: {t} (layer {layer_of(t)})" for t, line, _ in esker_imports(path, name)
          if layer_of(t) is not None and layer_of(t) > mine]
    assert not up, f"{name} (layer {mine}) imports from a higher layer: {up}"


@pytest.mark.parametrize("path", [p for p in MODULES if (layer_of(module_name(p)) or 0) < LAZY_OK],
                         ids=lambda p: module_name(p))
def test_no_function_local_imports_below_the_entry_points(path):
    name = module_name(path)
    local = [f"line {line}: {t}" for t, line, top in esker_imports(path, name) if not top]
    assert not local, f"{name} imports Esker modules inside functions: {local}"


def test_no_import_loops():
    graph = {module_name(p): {t for t, _, _ in esker_imports(p, module_name(p))} for p in MODULES}
    seen, stack, loops = set(), [], []

    def visit(n):
        if n in stack:
            loops.append(stack[stack.index(n):] + [n])
            return
        if n in seen or n not in graph:
            return
        seen.add(n)
        stack.append(n)
        for m in sorted(graph[n]):
            visit(m)
        stack.pop()

    for n in sorted(graph):
        visit(n)
    # A package __init__ importing its own submodules is the usual re-export, not a loop.
    loops = [loop for loop in loops if not all(m.startswith(loop[0]) or loop[0].startswith(m) for m in loop)]
    assert not loops, f"import loops: {loops}"


def test_the_guard_can_fail(tmp_path):
    """The checker itself: an upward import and a function-local one are both seen."""
    bad = PACKAGE / "core" / "_probe_tmp.py"
    try:
        bad.write_text("from esker.spawner import local\n\ndef f():\n    from esker.units import parse_size\n")
        found = list(esker_imports(bad, "esker.core._probe_tmp"))
        assert ("esker.spawner.local", 1, True) in found
        assert ("esker.units", 4, False) in found
        assert layer_of("esker.spawner.local") > layer_of("esker.core._probe_tmp")
    finally:
        bad.unlink()
