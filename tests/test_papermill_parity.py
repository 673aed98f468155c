"papermill's command line on `mlkit run`: each flag with papermill's meaning through the real CLI, or refused in one line."
import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import test_run
from test_run import meta, mlkit, notebook, runs

COVERS = ("07_cli", "11_run", "11a_params", "11c_execute")  # the notebooks these tests cover: `make test NB=...` runs them
project = test_run.project  # the fixture: a project folder with its runs folder in MLKIT_RUNS_DIR

REPO = Path(__file__).resolve().parents[1]
PAPERMILL = str(Path(sys.executable).parent/"papermill")
FLAG = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def params(run: Path) -> dict: return json.loads((run/"params.json").read_text())


def outputs(path: Path) -> str:
    "The text of every output of the notebook at `path`."
    nb = nbformat.read(path, as_version=4)
    return "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))


def test_cwd_is_the_kernels_folder(project):
    "A notebook reading a path relative to the project root fails from its own folder and works with --cwd ."
    (project/"data").mkdir()
    (project/"data"/"x.txt").write_text("rows 42")
    nb = notebook(project, "reads.ipynb", "import os\nprint(open('data/x.txt').read(), os.getcwd())")
    r = mlkit("run", nb)
    assert r.returncode == 1 and "FileNotFoundError" in r.stderr
    r = mlkit("run", nb, "--cwd", ".")
    assert r.returncode == 0, r.stderr
    failed, finished = runs(project)  # ids sort by time
    assert meta(failed)["kernel_cwd"] == str(project/"nbs"/"experiments")
    assert meta(finished)["kernel_cwd"] == str(project) and f"rows 42 {project}" in r.stdout


def test_kernel_flag_and_the_notebooks_kernelspec(project):
    "-k wins; else the notebook's kernelspec when installed; else the project's kernel, saying why; an unknown -k is refused."
    own = notebook(project, "own.ipynb", "import sys\nprint(sys.executable)")
    missing = project/"nbs"/"experiments"/"missing.ipynb"
    nb = nbformat.read(own, as_version=4)
    nb.metadata.kernelspec.name = "no-such-kernel"
    nbformat.write(nb, missing)
    for args in ([own], [missing, "-k", "python3"], [missing]):
        r = mlkit("run", *map(str, args))
        assert r.returncode == 0, r.stderr
    own_run, asked, fallback = (meta(run) for run in runs(project))
    assert (own_run["kernel"], own_run["kernel_from"]) == ("python3", "the notebook's kernelspec")
    assert (asked["kernel"], asked["kernel_from"]) == ("python3", "asked for (--kernel)")
    assert fallback["kernel"] in ("mlkit", "python3") and fallback["kernel_from"] == (
        "the project's kernel (the notebook's 'no-such-kernel' is not installed)")
    r = mlkit("run", own, "--kernel", "no-such-kernel")
    assert (r.returncode, r.stderr.count("\n")) == (1, 1) and "no kernel named 'no-such-kernel'" in r.stderr
    assert len(runs(project)) == 3


def test_prepare_only_executes_nothing(project):
    nb = notebook(project, "touch.ipynb", "open('touched', 'w').write('x')\nprint('ran')", params="n = 1")
    r = mlkit("run", nb, "--prepare-only", "-p", "n", "2")
    assert r.returncode == 0, r.stderr
    [run] = runs(project)
    assert meta(run)["status"] == "prepared" and "prepared, not executed" in r.stdout
    saved = nbformat.read(run/"notebook.ipynb", as_version=4)
    injected = [c for c in saved.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert [c.source.splitlines()[-1] for c in injected] == ["n = 2"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in saved.cells if c.cell_type == "code")
    assert not (project/"nbs"/"experiments"/"touched").exists() and not (project/"touched").exists()
    assert "ran" not in r.stdout


def test_output_notebook_by_flag_and_by_position(project):
    "-o and papermill's positional OUTPUT (after the options, as click allows) get the executed notebook, outputs in."
    nb = notebook(project, "hello.ipynb", "print('hello', n)", params="n = 1")
    r = mlkit("run", nb, "-o", "flag.ipynb", "-p", "n", "2")
    assert r.returncode == 0, r.stderr
    r = mlkit("run", nb, "-p", "n", "3", "positional.ipynb")
    assert r.returncode == 0, r.stderr
    by_flag, by_position = runs(project)
    assert "hello 2" in outputs(project/"flag.ipynb") and "hello 3" in outputs(project/"positional.ipynb")
    copy, kept = (nbformat.read(p, as_version=4) for p in (project/"flag.ipynb", by_flag/"notebook.ipynb"))
    assert copy.metadata.papermill.output_path == "flag.ipynb"  # as papermill names its output: as it was given
    copy.metadata.papermill.output_path = kept.metadata.papermill.output_path
    assert copy == kept  # the same notebook, outputs and all
    assert meta(by_position)["output"] == str(project/"positional.ipynb")
    r = mlkit("run", nb, "a.ipynb", "-o", "b.ipynb")
    assert (r.returncode, r.stderr.count("\n")) == (1, 1) and "two output notebooks" in r.stderr


def test_parameters_yaml_base64_raw_in_papermills_order(project):
    "-b, then -f, then -y, then -p, then -r, as papermill's cli.py applies them; -r's text is never parsed. papermill agrees."
    nb = notebook(project, "p.ipynb", "print(repr(tag), repr(n), epochs)",
                  params="lr = 0.1\nepochs = 3\ntag = 'base'\nn = None\n")
    (project/"p.yaml").write_text("lr: 5\nepochs: 9\ntag: from-f\n")
    b64 = base64.b64encode(b"epochs: 4\ntag: from-b\nlr: 7\n").decode()
    args = ["-f", "p.yaml", "-y", "{lr: 1, tag: from-y}", "-b", b64, "-r", "tag", "007", "-p", "tag", "5",
            "-r", "n", "010"]
    r = mlkit("run", nb, *args)
    assert r.returncode == 0, r.stderr
    [run] = runs(project)
    assert params(run) == {"lr": 1.0, "epochs": 9, "tag": "007", "n": "010"}  # -p n 010 would be the int 10
    assert "'007' '010' 9" in r.stdout
    pm = subprocess.run([PAPERMILL, nb, str(project/"pm.ipynb"), *args], capture_output=True, text=True, timeout=180)
    assert pm.returncode == 0, pm.stderr
    ran = nbformat.read(project/"pm.ipynb", as_version=4).metadata.papermill.parameters
    assert ran == {"lr": 1, "epochs": 9, "tag": "007", "n": "010"}
    r = mlkit("run", nb, "--parameters_yaml", "[1, 2]")
    assert (r.returncode, r.stderr.count("\n")) == (1, 1) and "-y must hold a YAML mapping" in r.stderr


def test_execution_timeout_is_the_cell_timeout(project):
    nb = notebook(project, "slow.ipynb", "print('ok')", "import time\ntime.sleep(60)")
    r = mlkit("run", nb, "--execution-timeout", "1")
    assert r.returncode == 1
    [run] = runs(project)
    assert (meta(run)["status"], meta(run)["cell_timeout"]) == ("failed", 1)
    assert "cell 2 ran over the cell timeout of 1 s" in r.stderr


def test_stdout_and_stderr_files(project):
    nb = notebook(project, "talks.ipynb", "import sys\nprint('out-marker')\nprint('err-marker', file=sys.stderr)")
    r = mlkit("run", nb, "--stdout-file", "out.txt", "--stderr-file", "err.txt")
    assert r.returncode == 0, r.stderr
    assert "out-marker" in (project/"out.txt").read_text() and "err-marker" in (project/"err.txt").read_text()
    assert "out-marker" not in r.stdout + r.stderr and "err-marker" not in r.stdout + r.stderr
    assert "finished" in r.stdout


@pytest.mark.parametrize("flag", ["--quiet", "--no-log-output"])
def test_quiet_leaves_the_summary_only(project, flag):
    nb = notebook(project, "talks.ipynb", "print('out-marker')", "from mlkit.run import record\nrecord('score', 3)")
    r = mlkit("run", nb, flag)
    assert r.returncode == 0, r.stderr
    [run] = runs(project)
    assert "out-marker" not in r.stdout + r.stderr and "-- cell" not in r.stderr and r.stderr == ""
    assert f"run {run.name} finished" in r.stdout and "score" in r.stdout
    assert "out-marker" in outputs(run/"notebook.ipynb")  # the run folder still has it all


@pytest.mark.parametrize("args, way", [
    (["--engine", "multiprocess"], "--nproc N"),
    (["-l", "python"], "-k/--kernel"),
    (["--language", "R"], "-k/--kernel"),
    (["--inject-paths"], "MLKIT_NOTEBOOK"),
    (["--inject-input-path"], "MLKIT_NOTEBOOK"),
    (["--inject-output-path"], "MLKIT_RUN_DIR"),
    (["--no-request-save-on-cell-execute"], "after each cell"),
    (["--autosave-cell-every", "5"], "after each cell"),
    (["--log-level", "DEBUG"], "kernel.log"),
    (["--help-notebook"], "mlkit run NOTEBOOK --help"),
    (["--version"], "pip show mlkit"),
    (["s3://bucket/out.ipynb"], "local notebooks only"),
    (["-o", "gs://bucket/out.ipynb"], "local notebooks only"),
])
def test_papermill_options_mlkit_does_without_are_one_line(project, args, way):
    nb = notebook(project, "hello.ipynb", "print('hello')")
    r = mlkit("run", nb, *args)
    assert (r.returncode, r.stdout, r.stderr.count("\n")) == (1, "", 1), (r.returncode, r.stdout, r.stderr)
    assert r.stderr.startswith("mlkit run: error: ") and way in r.stderr
    assert runs(project) == []


def help_flags(text: str, *, groups: tuple = ()) -> set[str]:
    "The option flags of a --help text (papermill's click or mlkit's argparse), only those of `groups` if given."
    found, group = set(), None
    for line in text.splitlines():
        if line and not line[0].isspace(): group = line.rstrip(":")
        elif line.startswith("  -") and (not groups or group in groups):  # an option, not a wrapped help line
            found.update(FLAG.findall(re.split(r"\s{2,}", line.strip())[0]))
    return found - {"-h", "--help"}


def readme_table() -> list[tuple[set, set]]:
    "The rows of the README's 'From papermill' table: (papermill's flags, mlkit's flags)."
    section = (REPO/"README.md").read_text().split("## From papermill", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip().strip("|").split(" | ") for line in section.splitlines() if line.startswith("| `")]
    flags = lambda cell: {f for code in re.findall(r"`([^`]*)`", cell) for f in FLAG.findall(code)}  # noqa: E731
    return [(flags(a), flags(b)) for a, b in rows]


def test_help_lists_papermills_flags_and_the_readme_table_matches():
    "Every papermill option is in `mlkit run --help` and in the README's table; the table names only flags mlkit has."
    env = {**os.environ, "COLUMNS": "200"}
    pm = subprocess.run([PAPERMILL, "--help"], capture_output=True, text=True, timeout=120, env=env)
    ours = subprocess.run([str(Path(sys.executable).parent/"mlkit"), "run", "--help"], capture_output=True, text=True,
                          timeout=120, env=env)
    assert pm.returncode == 0 and ours.returncode == 0, ours.stderr
    papermill_flags, mlkit_flags = help_flags(pm.stdout), help_flags(ours.stdout)
    assert len(papermill_flags) > 30 and {"--cwd", "--engine", "--parameters_raw"} <= papermill_flags
    assert papermill_flags <= mlkit_flags, sorted(papermill_flags - mlkit_flags)
    groups = help_flags(ours.stdout, groups=("papermill's options", "papermill's options mlkit answers another way"))
    table = readme_table()
    theirs, mine = set().union(*(a for a, _ in table)), set().union(*(b for _, b in table))
    assert theirs == papermill_flags, (sorted(theirs - papermill_flags), sorted(papermill_flags - theirs))
    assert mine - {"--help"} <= mlkit_flags, sorted(mine - mlkit_flags)
    assert groups <= theirs | mine, sorted(groups - theirs - mine)
    assert groups - {"-p", "-f"} and "papermill's options" in ours.stdout


def test_report_mode_hides_the_code_and_a_bad_start_timeout_is_refused(project):
    "--report-mode: every code cell's source hidden in the executed notebook, outputs kept; --start-timeout 0: one line."
    nb = notebook(project, "report.ipynb", "print('shown', n)", params="n = 1")
    r = mlkit("run", nb, "--report-mode", "-p", "n", "2")
    assert r.returncode == 0, r.stderr
    [run] = runs(project)
    executed = nbformat.read(run/"notebook.ipynb", as_version=4)
    code = [c for c in executed.cells if c.cell_type == "code"]
    assert len(code) == 3 and all(c.metadata.get("jupyter", {}).get("source_hidden") for c in code)
    assert "shown 2" in outputs(run/"notebook.ipynb")
    r = mlkit("run", nb, "--start-timeout", "0")
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "mlkit run: error: the start timeout must be a number of seconds above 0, got 0.0"]
    assert len(runs(project)) == 1  # nothing made


def test_stdout_file_in_a_folder_that_cannot_be_written_is_one_line_and_no_run(project):
    nb = notebook(project, "talks.ipynb", "print('x')")
    r = mlkit("run", nb, "--stdout-file", "nowhere/out.txt")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "cannot write nowhere/out.txt" in r.stderr
    assert runs(project) == []
