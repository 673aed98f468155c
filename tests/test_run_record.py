"`mlkit run`'s record is what ran: stale papermill cells, computed defaults, tracebacks, closed pipes, secrets (issue 21)."
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import test_run
from nbformat.v4 import new_code_cell
from test_run import MLKIT, meta, mlkit, notebook, runs

COVERS = ("07_cli", "11_run", "11a_params", "11b_distrun", "11c_execute")

PAPERMILL = str(Path(sys.executable).parent/"papermill")


@pytest.fixture
def project(tmp_path, monkeypatch):
    "test_run's project: a project folder (settings.ini, nbs/experiments/), its runs folder in MLKIT_RUNS_DIR."
    return test_run.project.__wrapped__(tmp_path, monkeypatch)


def params(run: Path) -> dict: return json.loads((run/"params.json").read_text())


def injected(nb) -> list: return [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]


def outputs(nb) -> str: return "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))


def new_run(project, before: list) -> Path:
    [run] = [p for p in runs(project) if p not in before]
    return run


def test_a_notebook_papermill_executed_runs_its_defaults_or_the_given_values(project):
    "papermill's injected cell (lr = 9) never runs again: no -p runs and records the defaults, -p lr 2 runs 2."
    notebook(project, "in.ipynb", "print('lr is', lr, type(lr).__name__)", "1 / 0 if fail else None",
             params="lr = 0.1\nfail = False")
    pm = subprocess.run([PAPERMILL, "nbs/experiments/in.ipynb", "out.ipynb", "-p", "lr", "9"], capture_output=True,
                        text=True, timeout=180)
    assert pm.returncode == 0, pm.stderr
    assert len(injected(nbformat.read(project/"out.ipynb", as_version=4))) == 1  # papermill left its cell

    r = mlkit("run", "out.ipynb")
    assert r.returncode == 0, r.stderr
    [run] = runs(project)
    assert "lr is 0.1 float\n" in r.stdout and "lr is 9" not in r.stdout
    assert params(run) == {"lr": 0.1, "fail": False} and meta(run)["notebook_params"] == {"lr": 0.1, "fail": False}
    executed = nbformat.read(run/"notebook.ipynb", as_version=4)
    assert injected(executed) == [] and "lr = 9" not in json.dumps(executed)
    assert executed.metadata.papermill.parameters == {}

    r = mlkit("run", "out.ipynb", "-p", "lr", "2")
    assert r.returncode == 0, r.stderr
    second = new_run(project, [run])
    assert "lr is 2.0 float\n" in r.stdout and "lr is 9" not in r.stdout
    assert params(second)["lr"] == 2.0 and meta(second)["notebook_params"]["lr"] == 2.0
    executed = nbformat.read(second/"notebook.ipynb", as_version=4)
    [cell] = injected(executed)
    assert cell.source == "# Parameters\nlr = 2.0\n" and executed.metadata.papermill.parameters == {"lr": 2.0}

    # two stale injected cells (source cells 2 and 4) around the parameters' first use; the failing cell is source cell 6
    stale = nbformat.read(project/"out.ipynb", as_version=4)
    stale.cells.insert(3, new_code_cell("lr = 7\nfail = False", metadata={"tags": ["injected-parameters"]}))
    stale.cells[1].source += "\nfail = False"
    assert [c.source.split("\n")[0] for c in stale.cells] == ["lr = 0.1", "# Parameters", "print('lr is', lr, type(lr).__name__)",
                                                              "lr = 7", "1 / 0 if fail else None"]
    stale.cells.insert(4, new_code_cell("print('second cell, lr', lr)"))
    nbformat.write(stale, project/"stale.ipynb")
    for extra, lr in ([], "0.1"), (["-p", "lr", "3"], "3.0"):
        before = runs(project)
        r = mlkit("run", "stale.ipynb", "-p", "fail", "true", *extra)
        assert r.returncode == 1
        failed = new_run(project, before)
        assert f"lr is {lr} float\n" in r.stdout and f"second cell, lr {lr}\n" in r.stdout, r.stdout
        assert meta(failed)["error"] == "cell 6: ZeroDivisionError: division by zero", meta(failed)["error"]
        assert meta(failed)["failed_cell"]["cell"] == 6
        assert "failed: cell 6: ZeroDivisionError" in r.stderr and "-- cell 6/6" in r.stderr
        assert len(injected(nbformat.read(failed/"notebook.ipynb", as_version=4))) == 1  # fail (and lr) given


def test_a_notebook_papermill_failed_on_records_what_ran(project):
    "papermill leaves two markdown cells in a notebook it failed on (one at the top): they must not shift the record."
    notebook(project, "in.ipynb", "lr = lr * 10  # scaled to the batch size", "assert lr < 5, lr", "1 / 0 if fail else None",
             params="lr = 0.1\nfail = False")
    pm = subprocess.run([PAPERMILL, "nbs/experiments/in.ipynb", "out.ipynb", "-p", "lr", "1"], capture_output=True,
                        text=True, timeout=180)
    assert pm.returncode == 1 and "AssertionError" in pm.stderr
    tags = [c.metadata.get("tags", []) for c in nbformat.read(project/"out.ipynb", as_version=4).cells]
    assert tags[0] == tags[4] == ["papermill-error-cell-tag"] and len(tags) == 7  # markers at the top, before cell 5
    r = mlkit("run", "out.ipynb", "-p", "lr", "0.3", "-p", "fail", "true")
    assert r.returncode == 1
    [run] = runs(project)
    assert params(run)["lr"] == 0.3 and meta(run)["notebook_params"]["lr"] == 0.3  # not 3.0, the value after cell 4
    # papermill's markers are not the notebook's cells (papermill drops them itself): cell 5 is the fifth of the user's
    assert meta(run)["error"] == "cell 5: ZeroDivisionError: division by zero", meta(run)["error"]


COMPUTED = """import os
from pathlib import Path
seed: int = int(os.environ.get("SEED", "0"))
data_dir = Path("data")
scale = 1e-3 * 2
shape = (16, 8)
obj = object()
epochs = 2
"""


def test_computed_defaults_are_recorded_as_they_ran_and_leave_no_trace_in_the_kernel(project, monkeypatch):
    nb = notebook(project, "computed.ipynb",
                  "print('seed', seed, type(data_dir).__name__, scale, shape)",
                  "print('names', sorted(k for k in globals() if 'mlkit' in k.lower() or 'ran_report' in k))\n"
                  "print('history', len(In), len(Out), repr(_))",
                  params=COMPUTED)
    monkeypatch.setenv("SEED", "5")
    r = mlkit("run", nb, "-p", "epochs", "3")
    assert r.returncode == 0, r.stderr
    [run] = runs(project)
    assert "seed 5 PosixPath 0.002 (16, 8)\n" in r.stdout
    p, m = params(run), meta(run)
    assert {k: p[k] for k in ("seed", "data_dir", "scale", "shape", "epochs")} == {
        "seed": 5, "data_dir": "data", "scale": 0.002, "shape": "(16, 8)", "epochs": 3}
    assert p["obj"].startswith("<object object at 0x")
    assert {k: m["notebook_params"][k] for k in p} == p  # meta says what params.json says
    assert m["param_reprs"] == {"shape": "tuple", "obj": "object"}
    executed = nbformat.read(run/"notebook.ipynb", as_version=4)
    code = [c for c in executed.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == [1, 2, 3, 4]  # parameters, injected, two cells: the report took none
    assert code[0].outputs == [] and code[1].outputs == []  # the report printed nothing under the parameters cells
    # no helper name, no Out[] entry, no `_`; In holds the four cells (and its empty first entry) only
    assert "names []\nhistory 5 0 ''\n" in outputs(executed), outputs(executed)


def test_no_parameters_reported_when_no_parameters_cell(project):
    "A notebook with no parameters cell runs, and records no parameters (the report has nothing to ask)."
    nb = notebook(project, "plain.ipynb", "x = 1\nprint('x', x)")
    r = mlkit("run", nb)
    assert r.returncode == 0, r.stderr
    [run] = runs(project)
    assert params(run) == {} and meta(run)["notebook_params"] == {}
    assert [c.execution_count for c in nbformat.read(run/"notebook.ipynb", as_version=4).cells] == [1]



def test_a_parameter_deleted_in_the_cell_leaves_the_record(project):
    "`del` in the parameters cell: a name that did not exist when the notebook ran is not recorded as if it had."
    nb = notebook(project, "dels.ipynb", "print('lr', lr)", params="tmp = 5\nlr = tmp * 0.1\nepochs = 3\ndel tmp, epochs")
    r = mlkit("run", nb)
    assert r.returncode == 0, r.stderr
    [run] = runs(project)
    assert params(run) == {"lr": 0.5} and meta(run)["notebook_params"] == {"lr": 0.5}
    assert meta(run)["params_missing"] == ["tmp", "epochs"]

CHATTY = ["import time\nfor i in range(50): print('line', i, flush=True)\ntime.sleep(0.3)",
          "import sys\nfor i in range(50, 100): print('line', i, flush=True); print('err', i, file=sys.stderr, flush=True)"
          "\ntime.sleep(0.3)",
          "for i in range(100, 150): print('line', i, flush=True)\ntime.sleep(0.3)",
          "for i in range(150, 200): print('line', i, flush=True)\nfrom mlkit.run import record\nrecord('done', True)"]



@pytest.mark.parametrize("shell, unbuffered", [
    ("{mlkit} run {nb} | head -n 1", "1"), ("{mlkit} run {nb} | head -n 2", "1"), ("{mlkit} run {nb} | head -n 100", "1"),
    # as a user's shell has it: no PYTHONUNBUFFERED, stdout block-buffered into the pipe
    pytest.param("{mlkit} run {nb} | head -n 1", None),
    pytest.param("{mlkit} run {nb} | head -n 2", None),
    pytest.param("{mlkit} run {nb} | head -n 100", None),
    # stderr (notes, progress, the cells' stderr) to a reader that goes away
    ("{mlkit} run {nb} 2>&1 >/dev/null | head -n 1", "1"),
    pytest.param("{mlkit} run {nb} 2>&1 >/dev/null | head -n 1", None),
    pytest.param("{mlkit} run {nb} 2>&- | head -n 1", "1"),  # stderr closed from the start
])
def test_a_reader_that_goes_away_never_fails_the_run(project, monkeypatch, shell, unbuffered):
    if unbuffered: monkeypatch.setenv("PYTHONUNBUFFERED", unbuffered)
    else: monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)
    nb = notebook(project, "chatty.ipynb", *CHATTY)
    r = subprocess.run(["bash", "-c", shell.format(mlkit=MLKIT, nb=nb) + "; exit ${PIPESTATUS[0]}"], capture_output=True,
                       text=True, timeout=180)
    assert r.returncode == 0, r.stderr  # mlkit's own status: the run finished, so 0 (not 141)
    [run] = runs(project)
    m = meta(run)
    assert (m["status"], m["error"]) == ("finished", None), m
    assert json.loads((run/"records.json").read_text()) == {"done": True}  # the last cell ran
    assert "line 199\n" in outputs(nbformat.read(run/"notebook.ipynb", as_version=4))


FAILS_IN_A_FUNCTION = ("def load_table(path):\n    rows = []\n    raise FileNotFoundError(f'no table at {path}')\n",
                       "print('before the failure')\nload_table('data/t.csv')", "print('never')")


def test_a_failing_cell_shows_its_traceback_then_the_summary(project):
    nb = notebook(project, "fails.ipynb", *FAILS_IN_A_FUNCTION, params="n = 1")
    r = mlkit("run", nb)
    assert r.returncode == 1
    [run] = runs(project)
    summary = "failed: cell 3: FileNotFoundError: no table at data/t.csv"
    assert meta(run)["error"] == "cell 3: FileNotFoundError: no table at data/t.csv"
    err = r.stderr
    assert err.index("Traceback") < err.index("load_table('data/t.csv')") < err.index("in load_table") \
        < err.index("raise FileNotFoundError(f'no table at {path}')") < err.index(summary), err
    assert err.rstrip("\n").splitlines()[-2].endswith(summary)  # then only the notebook's path
    assert "ipykernel" not in err and "\x1b[" not in err
    log = (run/"kernel.log").read_text()
    assert "in load_table" in log and "raise FileNotFoundError" in log
    assert "before the failure" in r.stdout and "never" not in r.stdout


def test_quiet_shows_the_summary_only(project):
    "run_notebook(quiet=True) (the CLI's --quiet to come): no cell output, no progress, no traceback; the summary stays."
    nb = notebook(project, "fails.ipynb", *FAILS_IN_A_FUNCTION, params="n = 1")
    code = ("import sys\nfrom mlkit.cli import _run_outcome\nfrom mlkit.run import run_notebook\n"
            "sys.exit(_run_outcome(run_notebook(sys.argv[1], quiet=True)))")
    r = subprocess.run([sys.executable, "-c", code, nb], capture_output=True, text=True, timeout=180)
    assert r.returncode == 1, r.stderr
    assert r.stdout == ""
    assert r.stderr.startswith("mlkit run: run ") and "failed: cell 3: FileNotFoundError: no table at data/t.csv" in r.stderr
    assert r.stderr.count("\n") == 2, r.stderr  # the summary and the notebook's path: no traceback, output, progress
    [run] = runs(project)
    assert "in load_table" in (run/"kernel.log").read_text()  # the log keeps the traceback


@pytest.mark.slow
def test_nproc_records_computed_defaults(project, monkeypatch):
    "--nproc runs a script, not a kernel: rank 0 reports the parameters as they ran (`_script_ran`, `take_ran`)."
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("SEED", "5")
    nb = notebook(project, "ddp.ipynb", "import os\nif os.environ['RANK'] == '0': print('seed', seed, 'scale', scale)",
                  params='import os\nseed: int = int(os.environ.get("SEED", "0"))\nscale = 1e-3 * 2\nshape = (1, 2)\n'
                         "n = 1")
    r = mlkit("run", nb, "--nproc", "2", "-p", "n", "4", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "seed 5 scale 0.002" in r.stdout
    [run] = runs(project)
    assert params(run) == {"seed": 5, "scale": 0.002, "shape": "(1, 2)", "n": 4}
    m = meta(run)
    assert m["notebook_params"] == params(run) and m["param_reprs"] == {"shape": "tuple"}
    assert not (run/".ran.json").exists()


def test_a_computed_secret_stays_out_of_the_run_folder(project, monkeypatch):
    "A secret-named parameter computed in the notebook, from a secret-named variable or from a file: redacted everywhere."
    monkeypatch.setenv("API_TOKEN", "tok-from-env-8812")
    (project/"nbs"/"experiments"/"key.txt").write_text("key-from-file-4471\n")
    nb = notebook(project, "secret.ipynb", "print('lengths', len(api_token), len(service_key))",
                  params='import os\napi_token = os.environ["API_TOKEN"]\nservice_key = open("key.txt").read().strip()\n'
                         "user = 'bob'")
    r = mlkit("run", nb)
    assert r.returncode == 0, r.stderr
    assert "lengths 17 18" in r.stdout
    [run] = runs(project)
    leaks = [p.name for p in run.rglob("*") if p.is_file() and (b"tok-from-env-8812" in p.read_bytes()
                                                                or b"key-from-file-4471" in p.read_bytes())]
    assert leaks == []
    p = params(run)
    assert p["user"] == "bob" and p["api_token"] == p["service_key"] != "bob"  # both the redaction mark
    assert meta(run)["notebook_params"] == p


def test_a_kernel_that_cannot_report_says_so_and_keeps_the_given_values(project):
    "The report cannot run (here `__import__` is shadowed in the notebook): one line, and the record keeps what it knew."
    nb = notebook(project, "shadow.ipynb", "print('ran', n)", params="n = 1\n__import__ = None  # shadows the builtin")
    r = mlkit("run", nb, "-p", "n", "2")
    assert r.returncode == 0, r.stderr
    [run] = runs(project)
    said = [line for line in r.stderr.splitlines() if "did not report" in line]
    assert said == ["mlkit run: the kernel did not report its parameters' values (TypeError); the record keeps the "
                    "values given and the literal defaults"], r.stderr
    assert meta(run)["params_reported"] is False and params(run) == {"n": 2, "__import__": None}
