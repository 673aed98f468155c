"`mlkit run`'s parameter types as a Python reader of the parameters cell expects them, driven through the real CLI."
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import test_run
from nbformat.v4 import new_code_cell, new_notebook

COVERS = ("11_run", "11a_params")  # notebook_parameters, convert: the annotations of the parameters cell
project = test_run.project  # the fixture: a project folder with its runs folder in MLKIT_RUNS_DIR

MLKIT = str(Path(sys.executable).parent/"mlkit")

PARAMS = '''from pathlib import Path
from typing import Literal, Optional
threshold: float = 1  # a float, though the default is written as an int
ratio: float = 1
device = None  # any value
depth: int | None = 4  # None: no limit
width: Optional[int] = 8
mode: Literal["fast", "slow"] = "fast"  # how hard to try
sizes: list[int] = [1, 2]
data_dir: Path = Path("data")
out: Path | None = None
tag = "base"
'''
# what the notebook sees, one line: each value's repr and type
SHOW = "print('saw', {k: (repr(v), type(v).__name__) for k, v in [(k, globals()[k]) for k in %r]})"


def notebook(project, *names, more="") -> str:
    "nbs/experiments/typed.ipynb: the typed parameters cell (and `more`), then a cell printing what it sees of `names`."
    nb = new_notebook(cells=[new_code_cell(PARAMS + more, metadata={"tags": ["parameters"]}), new_code_cell(SHOW % (names,))],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, project/"nbs"/"experiments"/"typed.ipynb")
    return "nbs/experiments/typed.ipynb"


def runs() -> list[Path]:
    folder = Path(os.environ["MLKIT_RUNS_DIR"])
    return sorted(folder.iterdir()) if folder.exists() else []


def mlkit(*args):
    return subprocess.run([MLKIT, *args], capture_output=True, text=True, timeout=180)


def run_ok(*args) -> tuple[dict, str]:
    "`mlkit run ARGS`, which must finish: (its params.json, its output)."
    before = set(runs())
    r = mlkit("run", *args)
    assert r.returncode == 0, r.stderr
    [run] = set(runs()) - before
    assert json.loads((run/"meta.json").read_text())["status"] == "finished"
    return json.loads((run/"params.json").read_text()), r.stdout + r.stderr


def refused(*args) -> str:
    "`mlkit run ARGS`, which must be refused: one line on stderr, exit 1, nothing on stdout, no run folder."
    before = runs()
    r = mlkit("run", *args)
    assert (r.returncode, r.stdout, r.stderr.count("\n")) == (1, "", 1), (r.returncode, r.stdout, r.stderr)
    assert r.stderr.startswith("mlkit run: error: ") and "Traceback" not in r.stderr
    assert runs() == before
    return r.stderr


def test_a_float_hint_takes_a_fraction_over_an_int_default(project):
    nb = notebook(project, "threshold", "ratio")
    params, out = run_ok(nb, "-p", "threshold", "0.5", "-p", "ratio", "2")
    assert params["threshold"] == 0.5 and params["depth"] == 4
    assert params["ratio"] == 2.0 and isinstance(params["ratio"], float)  # 2 becomes 2.0, as for an int default's float
    assert "'threshold': ('0.5', 'float'), 'ratio': ('2.0', 'float')" in out


@pytest.mark.parametrize("spelling", ["None", "null"])
def test_an_optional_int_takes_none_as_papermill_and_yaml_spell_it(project, spelling):
    nb = notebook(project, "depth", "width", "device")
    params, out = run_ok(nb, "-p", "depth", spelling, "-p", "width", spelling, "-p", "device", spelling)
    assert params["depth"] is None and params["width"] is None and params["device"] is None  # null in params.json
    assert "'depth': ('None', 'NoneType'), 'width': ('None', 'NoneType'), 'device': ('None', 'NoneType')" in out


def test_none_for_a_plain_int_is_refused_with_the_annotation_that_allows_it(project):
    nb = notebook(project, more="epochs = 4\n")
    assert ("parameter 'epochs' takes an int (default 4), got None; declare it `epochs: int | None = 4` to allow None"
            in refused(nb, "-p", "epochs", "None"))


def test_a_string_takes_none_as_the_text_typed(project):
    params, out = run_ok(notebook(project, "tag"), "-p", "tag", "None")
    assert params["tag"] == "None" and "'tag': (\"'None'\", 'str')" in out


def test_literal_choices_in_help_and_enforced(project):
    nb = notebook(project)
    r = mlkit("run", nb, "--help")
    assert r.returncode == 0, r.stderr
    table = {cols[0]: cols[1:] for line in r.stdout.splitlines() if len(cols := re.split(r"\s{2,}", line.strip())) > 2}
    assert table["mode"] == ["'fast' | 'slow'", "'fast'", "how hard to try"], r.stdout
    assert {k: table[k][0] for k in ("threshold", "depth", "width", "sizes", "data_dir", "tag")} == {
        "threshold": "float", "depth": "int | None", "width": "int | None", "sizes": "list[int]", "data_dir": "Path",
        "tag": "str"}, r.stdout
    assert runs() == []
    assert ("parameter 'mode' takes one of 'fast' | 'slow' (default 'fast'), got 'medium' (a str)"
            in refused(nb, "-p", "mode", "medium"))
    params, _ = run_ok(nb, "-p", "mode", "slow")
    assert params["mode"] == "slow"


def test_a_list_of_ints_is_checked_item_by_item(project):
    nb = notebook(project, "sizes")
    assert "got [1, 'a'] (a list): item 1, 'a', is not an int" in refused(nb, "-p", "sizes", '[1, "a"]')
    assert "item 0, 0.5, is not an int" in refused(nb, "-p", "sizes", "[0.5]")
    params, out = run_ok(nb, "-p", "sizes", "[3, 4]")
    assert params["sizes"] == [3, 4] and "'sizes': ('[3, 4]', 'list')" in out


def test_a_path_takes_a_string(project):
    "-p: the string typed (JSON holds no Path), even one YAML would read as a number; -f: a YAML string."
    nb = notebook(project, "data_dir", "out")
    (project/"p.yaml").write_text("out: out/x\n")
    params, out = run_ok(nb, "-p", "data_dir", "2024", "-f", "p.yaml")
    assert (params["data_dir"], params["out"]) == ("2024", "out/x")
    assert "'data_dir': (\"PosixPath('2024')\", 'PosixPath')" in out  # the notebook gets a Path, as its default is
    assert "'out': (\"PosixPath('out/x')\", 'PosixPath')" in out
