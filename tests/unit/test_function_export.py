"""esker_client.functions.export and declare: real modules and notebooks (nbformat) in tmp dirs."""

import sys
from pathlib import Path

import nbformat
import pytest

try:
    import esker_client  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "images" / "esker-client" / "src"))

import esker_client  # noqa: E402
from esker_client.functions.export import ExportError, export, packages  # noqa: E402

MODULE = '''\
from esker_client import function

def helper(x):
    return x * 2

@function(timeout=30, concurrency=4, name="double")
def predict(x: int) -> int:
    return helper(x)
'''


def notebook(path, cells):
    nb = nbformat.v4.new_notebook()
    for src, tags in cells:
        c = nbformat.v4.new_code_cell(src)
        if tags:
            c.metadata["tags"] = tags
        nb.cells.append(c)
    nb.cells.append(nbformat.v4.new_markdown_cell("# notes"))
    nbformat.write(nb, str(path))
    return path


def test_decorator_bare_and_with_options():
    @esker_client.function
    def f(x):
        return x + 1

    @esker_client.function(timeout=5, concurrency=2)
    def g(x):
        return x

    assert f(1) == 2 and g(3) == 3  # unchanged functions
    assert f.__esker_function__ == {"name": None, "timeout": None, "concurrency": None}
    assert g.__esker_function__ == {"name": None, "timeout": 5, "concurrency": 2}
    with pytest.raises(ValueError, match="concurrency"):
        esker_client.function(concurrency=0)
    with pytest.raises(ValueError, match="timeout"):
        esker_client.function(timeout=-1)


def test_module_entry_and_literal_options(tmp_path):
    p = tmp_path / "m.py"
    p.write_text(MODULE)
    s = export(p)
    assert s.source == "module" and s.code == MODULE and s.entry == "predict"
    assert s.options == {"timeout": 30, "concurrency": 4, "name": "double"}
    assert s.origin == str(p.resolve())
    assert export(p, entry="helper").entry == "helper"


def test_module_is_not_executed(tmp_path):
    marker = tmp_path / "ran"
    p = tmp_path / "m.py"
    p.write_text(f"open({str(marker)!r}, 'w').write('x')\nfrom esker_client import function\n"
                 "@function\ndef f():\n    return 1\n")
    assert export(p).entry == "f"
    assert not marker.exists()


def test_entry_errors(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("from esker_client import function\n@function\ndef a(): pass\n@function\ndef b(): pass\n")
    with pytest.raises(ExportError, match=r"several.*a, b.*--entry"):
        export(p)
    assert export(p, entry="b").entry == "b"
    with pytest.raises(ExportError, match="'zz'.*a, b"):
        export(p, entry="zz")
    p.write_text("def a(): pass\n")
    with pytest.raises(ExportError, match="@function"):
        export(p)
    p.write_text("def a(:\n")
    with pytest.raises(ExportError, match="syntax"):
        export(p)
    p.write_text("import esker_client\nT = 3\n@esker_client.function(timeout=T)\ndef a(): pass\n")
    with pytest.raises(ExportError, match="literal.*--timeout"):
        export(p)
    with pytest.raises(ExportError, match="no such file"):
        export(tmp_path / "missing.py")


def test_notebook_tagged_cells_in_order(tmp_path):
    p = notebook(tmp_path / "n.ipynb", [
        ("import pandas as pd\ndf = pd.read_csv('big.csv')  # training, not published", None),
        ("from esker_client import function\nW = 3", ["esker-function"]),
        ("%matplotlib inline", ["other"]),
        ("@function\ndef predict(x: float) -> float:\n    return W * x", ["parameters", "esker-function"]),
    ])
    s = export(p)
    assert s.source == "notebook" and s.entry == "predict"
    assert "read_csv" not in s.code and "matplotlib" not in s.code
    assert s.code.index("W = 3") < s.code.index("def predict")
    ns = {}
    exec(compile(s.code, "code.py", "exec"), ns)  # the snapshot is runnable Python
    assert ns["predict"](2) == 6


def test_notebook_errors(tmp_path):
    p = notebook(tmp_path / "n.ipynb", [("x = 1", None)])
    with pytest.raises(ExportError, match="esker-function"):
        export(p)
    p = notebook(tmp_path / "m.ipynb", [("from esker_client import function\n!pip install x\n@function\n"
                                         "def f(): pass", ["esker-function"])])
    with pytest.raises(ExportError, match=r"cell 1, line 2.*'!pip'"):
        export(p)
    bad = tmp_path / "bad.ipynb"
    bad.write_text("{not json")
    with pytest.raises(ExportError, match="notebook"):
        export(bad)


def test_packages_lock():
    pk = packages()
    assert pk == sorted(pk) and all("==" in p for p in pk)
    assert any(p.startswith("pytest==") for p in pk)
