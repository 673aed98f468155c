"Honest statuses wherever a notebook runs (plain papermill, SIGHUP, a full disk), record() keeping the rules, one run one folder."
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

# the notebooks these tests cover: `make test NB=...` runs them
COVERS = ("10_track", "10b_tracker", "10c_local_tracker", "11_run", "07_cli")

BIN = Path(sys.executable).parent
MLKIT, PAPERMILL = str(BIN/"mlkit"), str(BIN/"papermill")
KERNEL = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}


@pytest.fixture
def runs_root(tmp_path, monkeypatch):
    "A runs folder in MLKIT_RUNS_DIR, no MLKIT_RUN_DIR inherited, the cwd in a project folder."
    (tmp_path/"proj").mkdir()
    (tmp_path/"proj"/"settings.ini").write_text("[DEFAULT]\nlib_name = proj\n")
    monkeypatch.setenv("MLKIT_RUNS_DIR", str(tmp_path/"runs"))
    monkeypatch.delenv("MLKIT_RUN_DIR", raising=False)
    monkeypatch.chdir(tmp_path/"proj")
    return tmp_path/"runs"


def write_nb(path: Path, *sources) -> str:
    nbformat.write(new_notebook(cells=[new_code_cell(s) for s in sources], metadata=KERNEL), path)
    return str(path)


def folders(root: Path) -> list[Path]: return sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []
def meta(run: Path) -> dict: return json.loads((run/"meta.json").read_text())


def every_json_parses(folder: Path):
    for f in list(folder.rglob("*.json")) + list(folder.rglob("*.ipynb")):
        try: json.loads(f.read_text())
        except ValueError as e: raise AssertionError(f"{f}: {e}") from None


def test_a_failing_cell_under_plain_papermill_marks_the_run_failed(runs_root, tmp_path):
    nb = write_nb(tmp_path/"nb.ipynb", "x = 1", "from mlkit.run import record\nrecord('x', x)",
                  "raise ValueError('boom in cell 3')")
    r = subprocess.run([PAPERMILL, nb, str(tmp_path/"out.ipynb")], capture_output=True, text=True, timeout=180)
    assert r.returncode != 0
    [run] = folders(runs_root)
    m = meta(run)
    assert (m["status"], m["error"]) == ("failed", "ValueError: boom in cell 3")  # the kernel's exit did not finish it
    assert json.loads((run/"records.json").read_text()) == {"x": 1}


def test_a_fixed_cell_run_again_records_into_a_new_run(runs_root, tmp_path):
    "JupyterLab's loop, in one kernel (nbclient with allow_errors): fail, fix, run again."
    from nbclient import NotebookClient
    nb = new_notebook(cells=[new_code_cell(s) for s in (
        "from mlkit.run import record\nrecord('a', 1)", "1/0", "record('a', 2)")], metadata=KERNEL)
    NotebookClient(nb, kernel_name="python3", allow_errors=True, timeout=120).execute()
    runs = sorted(folders(runs_root), key=lambda r: meta(r)["start"])
    assert [(meta(r)["status"], meta(r)["error"]) for r in runs] == [("failed", "ZeroDivisionError: division by zero"),
                                                                      ("finished", None)]
    assert [json.loads((r/"records.json").read_text()) for r in runs] == [{"a": 1}, {"a": 2}]


def test_sighup_to_mlkit_runs_process_group_gives_interrupted_129(runs_root, tmp_path):
    nb = write_nb(tmp_path/"long.ipynb", "print('before the signal', flush=True)", "import time\ntime.sleep(120)")
    p = subprocess.Popen([MLKIT, "run", nb], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)  # its own group: a closed terminal signals the whole of it
    try:
        assert p.stdout.readline() == "before the signal\n"
        while not any((r/"kernel.log").exists() for r in folders(runs_root)): pass
        [run] = folders(runs_root)
        while '"status"' not in (run/"meta.json").read_text(): pass
        import time
        time.sleep(1)  # into the sleeping cell
        os.killpg(p.pid, signal.SIGHUP)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 129, err
    m = meta(run)
    assert m["status"] == "interrupted" and m["error"].startswith("SIGHUP"), m
    executed = json.loads((run/"notebook.ipynb").read_text())
    assert executed["cells"][0]["outputs"][0]["text"] == ["before the signal\n"]
    assert "Traceback" not in err


def test_sighup_ends_a_plain_scripts_localtracker_interrupted(runs_root, tmp_path):
    script = tmp_path/"train.py"
    script.write_text(textwrap.dedent("""
        import time
        from mlkit.track import LocalTracker
        run = LocalTracker(name="script", capture=False)
        run.log_metrics({"loss": 1.0}, step=0)
        print(run.path, flush=True)
        time.sleep(120)
    """))
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        path = Path(p.stdout.readline().strip())
        p.send_signal(signal.SIGHUP)
        p.wait(timeout=60)
    finally:
        p.kill()
    assert p.returncode == -signal.SIGHUP  # it still dies of the signal
    m = meta(path)
    assert (m["status"], m["error"]) == ("interrupted", "SIGHUP")
    assert "loss" in (path/"metrics.csv").read_text()  # what was logged before the signal was written


SITE = '''
import builtins, errno, os
_budget = [int(os.environ["FULL_DISK_AFTER"])]
_folder = os.environ["FULL_DISK_FOLDER"]
_open = builtins.open
class _Full:
    def __init__(self, f): self._f = f
    def write(self, data):
        if len(data) > _budget[0]: raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._f.name)
        _budget[0] -= len(data)  # a nearly full disk: small writes (meta.json) still fit, a notebook does not
        return self._f.write(data)
    def __enter__(self): return self
    def __exit__(self, *a): return self._f.__exit__(*a)
    def __getattr__(self, k): return getattr(self._f, k)
    def __iter__(self): return iter(self._f)
def _patched(file, mode="r", *a, **k):
    f = _open(file, mode, *a, **k)
    if any(c in mode for c in "wax") and str(file).startswith(_folder): return _Full(f)
    return f
builtins.open = _patched
'''


@pytest.mark.parametrize("after", [20_000, 200_000])
def test_a_full_disk_patched_writer_ends_the_run_with_one_line(runs_root, tmp_path, after):
    "Every write under the runs folder counts against a budget, in mlkit run and in its kernel; then ENOSPC."
    (tmp_path/"site").mkdir()
    (tmp_path/"site"/"sitecustomize.py").write_text(SITE)
    nb = write_nb(tmp_path/"big.ipynb", "print('x' * 30_000)", "from mlkit.run import record\nrecord('n', 1)",
                  "print('y' * 300_000)")
    env = {**os.environ, "PYTHONPATH": str(tmp_path/"site"), "FULL_DISK_AFTER": str(after),
           "FULL_DISK_FOLDER": str(runs_root)}
    r = subprocess.run([MLKIT, "run", nb], capture_output=True, text=True, timeout=180, env=env)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert [line for line in r.stderr.splitlines() if "no space left on device" in line], r.stderr
    for run in folders(runs_root):
        every_json_parses(run)
        assert meta(run)["status"] == "failed" and "no space left on device" in meta(run)["error"], meta(run)


def test_a_full_tmpfs_ends_the_run_with_one_line(tmp_path, monkeypatch):
    disk = tmp_path/"disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        monkeypatch.setenv("MLKIT_RUNS_DIR", str(disk/"runs"))
        monkeypatch.delenv("MLKIT_RUN_DIR", raising=False)
        (tmp_path/"settings.ini").write_text("[DEFAULT]\nlib_name = proj\n")
        monkeypatch.chdir(tmp_path)
        nb = write_nb(tmp_path/"big.ipynb", "print('x' * 1000)", "for i in range(60): print(str(i) * 10_000)")
        r = subprocess.run([MLKIT, "run", nb], capture_output=True, text=True, timeout=180)
        assert r.returncode == 1, r.stderr
        assert "Traceback" not in r.stderr
        assert [line for line in r.stderr.splitlines() if "no space left on device" in line], r.stderr
        [run] = folders(disk/"runs")
        every_json_parses(run)
        assert meta(run)["status"] == "failed" and "no space left on device" in meta(run)["error"]
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_mlkit_run_prints_recorded_values_redacted(runs_root, tmp_path):
    nb = write_nb(tmp_path/"nb.ipynb", "from mlkit.run import record\nrecord('creds', {'secret': 'hunter2-xyz', 'user': 'me'})")
    r = subprocess.run([MLKIT, "run", nb], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert "creds" in r.stdout and "me" in r.stdout and "hunter2-xyz" not in r.stdout + r.stderr


def _ten_records(args):
    path, k = args
    from mlkit.run import record
    from mlkit.track import LocalTracker
    run = LocalTracker.attach(path)
    for i in range(10): record(f"p{k}-{i}", i, run=run)
    run.finish()


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_four_processes_recording_keep_every_value(runs_root, method):
    from mlkit.track import LocalTracker
    run = LocalTracker(runs_root, capture=False)
    with multiprocessing.get_context(method).Pool(4) as pool:  # a worker killed from outside fails the test, never hangs it
        pool.map_async(_ten_records, [(str(run.path), k) for k in range(4)]).get(timeout=120)
    run.finish()
    records = json.loads((run.path/"records.json").read_text())
    assert records == {f"p{k}-{i}": i for k in range(4) for i in range(10)}


def test_a_localtracker_opened_in_a_mlkit_run_notebook_writes_into_that_run(runs_root, tmp_path):
    nb = write_nb(tmp_path/"readme.ipynb", textwrap.dedent("""
        from mlkit.track import LocalTracker
        with LocalTracker(name="x") as run:
            run.log_params({"lr": 0.01})
            for step in range(3): run.log_metrics({"loss": 1 / (step + 1)}, step=step)
        """), "print('after the with block')")
    r = subprocess.run([MLKIT, "run", nb], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    [run] = folders(runs_root)
    m = meta(run)
    assert (m["status"], m["name"]) == ("finished", "x")
    assert json.loads((run/"params.json").read_text()) == {"lr": 0.01}
    assert "loss" in (run/"metrics.csv").read_text()
    executed = json.loads((run/"notebook.ipynb").read_text())
    assert executed["cells"][1]["outputs"][0]["text"] == ["after the with block\n"]
    assert not (run/".name.json").exists()


@pytest.fixture
def full_disk(tmp_path):
    "A 200k tmpfs filled to the last byte (skipped where mounting is not permitted)."
    disk = tmp_path/"disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        (disk/"runs").mkdir()
        with open(disk/"filler", "wb", buffering=0) as f:
            try:
                while f.write(b"x" * 512): pass
            except OSError: pass
        yield disk
    finally: subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_run_that_cannot_even_be_created_on_a_full_disk_is_one_line(full_disk, runs_root, tmp_path, monkeypatch):
    monkeypatch.setenv("MLKIT_RUNS_DIR", str(full_disk/"runs"))
    nb = write_nb(tmp_path/"nb.ipynb", "print(1)")
    r = subprocess.run([MLKIT, "run", nb], capture_output=True, text=True, timeout=180)
    assert (r.returncode, r.stdout) == (1, ""), r.stderr
    assert r.stderr.startswith("mlkit run: error: no space left on device") and r.stderr.count("\n") == 1, r.stderr
    assert [p.name for p in (full_disk/"runs").iterdir()] == []  # nothing half-made left behind


def test_a_script_whose_metrics_meet_a_full_disk_says_so_once_and_ends(full_disk, tmp_path):
    code = textwrap.dedent(f"""
        import time
        from mlkit.track import LocalTracker
        from pathlib import Path
        Path({str(full_disk/"filler")!r}).unlink()  # room for the run folder, then fill it again
        run = LocalTracker({str(full_disk/"runs")!r}, capture=False, flush_every=0.05)
        with open({str(full_disk/"filler")!r}, "wb", buffering=0) as f:
            try:
                while f.write(b"x" * 512): pass
            except OSError: pass
        for s in range(20000):
            run.log_metrics({{"loss": 1.0}}, s)
            if s % 1000 == 0: time.sleep(0.06)
        Path({str(full_disk/"filler")!r}).unlink()  # room again, for the end
        run.finish()
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert "Traceback" not in r.stderr, r.stderr
    lines = [line for line in r.stderr.splitlines() if "no space left on device" in line.lower()]
    assert len(lines) == 1 and len(r.stderr.splitlines()) == 1, r.stderr  # said once
    [run] = folders(full_disk/"runs")
    every_json_parses(run)
    m = meta(run)
    assert m["status"] == "failed" and m["error"].startswith("No space left on device writing"), m


def test_two_trackers_attached_in_one_notebook_keep_each_others_params(runs_root, tmp_path):
    "current_run() (opened by record()) and a LocalTracker(...) in one mlkit run notebook: params from both, and the -p one."
    nb = write_nb(tmp_path/"two.ipynb", "from mlkit.run import record\nrecord('a', 1)",
                  "from mlkit.track import LocalTracker\nrun = LocalTracker(name='n')\nrun.log_params({'lr': 0.1})",
                  "from mlkit.track import current_run\ncurrent_run().log_params({'bs': 32})\nrun.log_params({'wd': 0.5})")
    nbformat.write(nbformat.v4.new_notebook(cells=[new_code_cell("width = 8", metadata={"tags": ["parameters"]}),
                                                   *nbformat.read(nb, as_version=4).cells], metadata=KERNEL), nb)
    r = subprocess.run([MLKIT, "run", nb, "-p", "width", "16"], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    [run] = folders(runs_root)
    assert json.loads((run/"params.json").read_text()) == {"width": 16, "lr": 0.1, "bs": 32, "wd": 0.5}


def test_nohup_mlkit_run_survives_a_closed_terminal(runs_root, tmp_path):
    "`nohup mlkit run`: SIGHUP ignored on purpose stays ignored; the run goes on to its end, as before SIGHUP was handled."
    nb = write_nb(tmp_path/"long.ipynb", "print('before the signal', flush=True)", "import time\ntime.sleep(6)",
                  "print('after the signal')")
    p = subprocess.Popen(["nohup", MLKIT, "run", nb], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    try:
        while "before the signal" not in p.stdout.readline(): pass
        os.killpg(p.pid, signal.SIGHUP)
        out, _ = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 0, out
    [run] = folders(runs_root)
    assert meta(run)["status"] == "finished", meta(run)
