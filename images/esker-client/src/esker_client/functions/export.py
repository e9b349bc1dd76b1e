"""Snapshot the code of a function to publish, from a module file or a notebook, without running it.

A module is taken as it is. A notebook contributes its cells tagged ``esker-function`` (cell metadata
``tags``, as papermill's ``parameters``), joined in order; IPython magics (``%``, ``%%``) and shell escapes
(``!``) cannot run in the function server and are refused. The entry is found with ``ast``.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

TAG = "esker-function"
DECORATOR = "function"


class ExportError(ValueError):
    """The source cannot be published as it is; the message says why and what to do."""


@dataclass
class Snapshot:
    code: str
    source: str  # "module" | "notebook"
    origin: str
    entry: str
    options: Dict = field(default_factory=dict)  # the decorator's literal kwargs: name, timeout, concurrency


def _cell_source(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def notebook_code(path: Path) -> str:
    """The cells of ``path`` tagged ``esker-function``, joined in order; ExportError for magics or no cells."""
    text = path.read_text(encoding="utf-8")
    try:
        import nbformat

        nb = nbformat.reads(text, as_version=4)
        cells = nb.cells
    except ImportError:  # a bare environment: the format is plain JSON
        cells = json.loads(text).get("cells", [])
    except Exception as e:
        raise ExportError(f"{path}: not a readable notebook: {e}") from e
    parts: List[str] = []
    for i, cell in enumerate(cells):
        tags = (cell.get("metadata") or {}).get("tags") or []
        if cell.get("cell_type") != "code" or TAG not in tags:
            continue
        src = _cell_source(cell)
        for n, line in enumerate(src.splitlines(), 1):
            s = line.lstrip()
            if s.startswith(("%", "!")):
                raise ExportError(f"{path}: cell {i + 1}, line {n}: {s.split()[0]!r}: IPython magics and shell "
                                  f"escapes cannot run in a published function; remove the line from the "
                                  f"cells tagged {TAG!r} (or move it to an untagged cell)")
        parts.append(src.rstrip() + "\n")
    if not parts:
        raise ExportError(f"{path}: no code cell is tagged {TAG!r}: tag the cells that make up the function "
                          f"(View > Cell Toolbar > Tags, or the property inspector in JupyterLab)")
    return "\n\n".join(parts)


def _decorator_kwargs(dec: ast.expr) -> Optional[Dict]:
    """{} for ``@function``/``@esker_client.function``, the literal kwargs for ``@function(...)``, else None."""
    target = dec.func if isinstance(dec, ast.Call) else dec
    named = (isinstance(target, ast.Name) and target.id == DECORATOR) or \
            (isinstance(target, ast.Attribute) and target.attr == DECORATOR)
    if not named:
        return None
    out: Dict = {}
    if isinstance(dec, ast.Call):
        for kw in dec.keywords:
            if kw.arg in ("name", "timeout", "concurrency"):
                try:
                    out[kw.arg] = ast.literal_eval(kw.value)
                except ValueError:
                    raise ExportError(f"line {dec.lineno}: @function({kw.arg}=...) must be a literal value so it "
                                      f"can be read without running the code; pass --{kw.arg} instead")
    return out


def find_entry(code: str, entry: Optional[str] = None, origin: str = "<code>"):
    """(entry name, decorator options) of the ``@function`` def in ``code``, or of ``entry`` when given."""
    try:
        tree = ast.parse(code, filename=origin)
    except SyntaxError as e:
        raise ExportError(f"{origin}: line {e.lineno}: syntax error: {e.msg}") from e
    defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    marked = {}
    for name, node in defs.items():
        for dec in node.decorator_list:
            kw = _decorator_kwargs(dec)
            if kw is not None:
                marked[name] = kw
    if entry:
        if entry not in defs:
            raise ExportError(f"{origin}: --entry {entry!r}: no top-level function of that name; functions: "
                              f"{', '.join(defs) or '(none)'}")
        return entry, marked.get(entry, {})
    if len(marked) == 1:
        return next(iter(marked.items()))
    if not marked:
        raise ExportError(f"{origin}: no top-level function is decorated with @function (from esker_client import "
                          f"function); decorate one or pass --entry NAME")
    raise ExportError(f"{origin}: several functions are decorated with @function ({', '.join(marked)}): "
                      f"choose one with --entry NAME")


def export(path, entry: Optional[str] = None) -> Snapshot:
    """Snapshot ``path`` (a ``.py`` module or an ``.ipynb`` notebook) and find its entry."""
    p = Path(path)
    if not p.is_file():
        raise ExportError(f"{p}: no such file")
    if p.suffix == ".ipynb":
        code, source = notebook_code(p), "notebook"
    else:
        code, source = p.read_text(encoding="utf-8"), "module"
    name, options = find_entry(code, entry, str(p))
    return Snapshot(code=code, source=source, origin=str(p.resolve()), entry=name, options=options)


def packages() -> List[str]:
    """Sorted ``name==version`` of every distribution in this environment (the lock part of the version id)."""
    from importlib import metadata

    seen = set()
    for d in metadata.distributions():
        n = (d.metadata["Name"] or "").lower().replace("_", "-")
        if n:
            seen.add(f"{n}=={d.version}")
    return sorted(seen)
