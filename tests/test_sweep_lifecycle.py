"A sweep's life as a user lives it: grids that complete after faults, seeds that repeat, resume/add/stop/ls, paths, workers."
import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import optuna
import psutil
import pytest
import test_sweep
from optuna.trial import TrialState
from test_sweep import MLKIT, TOY, notebook, runs, spec, study, sweep

project, postgres = test_sweep.project, test_sweep.postgres  # the fixtures: a project folder; a PostgreSQL server's URL

COVERS = ("07_cli", "12_sweep", "12d_sweep_workers", "12e_sweep_report")

# a grid over i = 0..5 whose score is i (the optimum is i=5); point i=`flaky` raises the first `fails` times it runs
FLAKY = ("i = 0\nnap = 0.0\nmarks = ''\nflaky = -1\nfails = 0", """
import pathlib, time
from mlkit.run import record
time.sleep(nap)
mark = pathlib.Path(marks)/f'ran-{i}'
n = int(mark.read_text()) if mark.exists() else 0
mark.write_text(str(n + 1))
if i == flaky and n < fails: raise RuntimeError(f'flaky point {i}, try {n + 1}')
record('score', float(i))""")


def grid(root, name="g", **fixed):
    notebook(root, "grid.ipynb", *FLAKY)
    (root/"marks").mkdir(exist_ok=True)
    return spec(root, name=name, nb="grid.ipynb", method="grid", n_trials=6,
                params={"i": {"type": "int", "low": 0, "high": 5}}, fixed={"marks": str(root/"marks"), **fixed})


def _workers(parent: psutil.Process) -> list:
    "The sweep's live worker processes (a killed one, not yet reaped, is left out)."
    found = []
    try: children = parent.children()
    except psutil.Error: return found  # the sweep has ended
    for p in children:
        try:
            if "_worker_main" in " ".join(p.cmdline()): found.append(p)
        except psutil.Error: continue
    return found


def started(name="s") -> int:
    "How many runs the sweep has begun (0 before its runs folder exists)."
    return len(runs(name)) if Path(os.environ["MLKIT_RUNS_DIR"]).is_dir() else 0


def finished_points(name):
    "Each grid point's finished trials, by point."
    out = {}
    for t in study(name).get_trials(states=(TrialState.COMPLETE,)): out.setdefault(t.params["i"], []).append(t.number)
    return out


@pytest.mark.slow
def test_a_grid_point_that_keeps_failing_is_listed_missing_and_the_same_command_completes_the_grid(project):
    path = grid(project, flaky=2, fails=2)  # fails, fails again on its retry, then works
    first = sweep(path, "--workers", "2")
    assert first.returncode == 1, first.stdout + first.stderr
    assert "ended with 5 of 6 grid points done; missing: i=2 (" in first.stderr, first.stderr
    assert "the same command retries them" in first.stderr and "Traceback" not in first.stderr
    assert len(first.stderr.strip().splitlines()) == 1 and "best trial" not in first.stdout
    failed = study("g").get_trials(states=(TrialState.FAIL,))
    assert [t.params["i"] for t in failed] == [2, 2]  # retried once, with its point
    st = sweep("status", "g")
    assert st.returncode == 0 and "5 point(s) done" in st.stdout and "failed, not yet done: i=2" in st.stdout, st.stdout
    assert st.stdout.count("RuntimeError: flaky point 2") == 2, st.stdout  # why each failure failed: cell and error
    again = sweep(path, "--workers", "2")
    assert again.returncode == 0, again.stdout + again.stderr
    assert {i: len(ts) for i, ts in finished_points("g").items()} == {i: 1 for i in range(6)}  # each point once
    assert study("g").best_trial.params == {"i": 5}
    assert "best trial" in again.stdout and "-p i 5" in again.stdout.splitlines()[-1]
    assert (project/"marks"/"ran-5").read_text() == "1"  # no point ran twice


@pytest.mark.slow
def test_a_grid_ctrl_c_d_mid_way_finishes_every_point_once_after_the_same_command(project):
    path = grid(project, nap=1.5)
    p = subprocess.Popen([MLKIT, "sweep", str(path), "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)  # its own group: what a terminal's Ctrl-C reaches
    try:
        while started("g") < 3 and p.poll() is None: time.sleep(0.1)
        time.sleep(1.0)
        os.killpg(p.pid, signal.SIGINT)
        out, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 130 and "Traceback" not in err, out + err
    assert len(finished_points("g")) < 6  # it stopped mid-way
    again = sweep(path, "--workers", "2")
    assert again.returncode == 0, again.stdout + again.stderr
    assert {i: len(ts) for i, ts in finished_points("g").items()} == {i: 1 for i in range(6)}
    assert study("g").best_trial.params == {"i": 5}
    ran = {x.meta["trial"]: x for x in runs("g")}
    for t in study("g").get_trials(states=(TrialState.COMPLETE,)):
        assert ran[t.number].status == "finished" and ran[t.number].params["i"] == t.params["i"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["random", "tpe"])
def test_two_fresh_one_worker_sweeps_with_the_same_seed_draw_the_same_values(project, tmp_path, method):
    notebook(project, "toy.ipynb", *TOY)
    path = spec(project, method=method, seed=7, n_trials=3)
    drawn = []
    for i in range(2):
        r = sweep(path, "--runs-dir", tmp_path/f"fresh{i}")
        assert r.returncode == 0, r.stdout + r.stderr
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend
        s = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(
            str(tmp_path/f"fresh{i}"/"sweeps"/"s"/"journal.log"))))
        drawn.append([t.params["x"] for t in s.trials])
    assert drawn[0] == drawn[1] and len(set(drawn[0])) == 3, drawn


@pytest.mark.slow
def test_start_with_added_later_and_added_trials_run_on_resume_and_stop_lets_the_running_trial_finish(project):
    notebook(project, "toy.ipynb", *TOY)
    path = spec(project, n_trials=1, fixed={"nap": 2.0}, start_with=[{"x": 0.1}])
    assert sweep(path).returncode == 0
    spec(project, n_trials=2, fixed={"nap": 2.0}, start_with=[{"x": 0.1}, {"x": 0.9}])  # an entry added to the spec
    for args, message in [(("-p", "y", "1"), "sweep s searches x; not y"),
                          (("-p", "x", "2"), "x 2.0 is outside its range 0.0..1.0"),
                          (("-p", "x", "abc"), "parameter 'x' takes a float"),
                          ((), "which parameters?")]:
        bad = sweep("add", "s", *args)
        assert bad.returncode == 1 and message in bad.stderr and len(bad.stderr.splitlines()) == 1, (args, bad.stderr)
    add = sweep("add", "s", "-p", "x", "0.5")
    assert add.returncode == 0 and "queued a trial with x=0.5" in add.stdout, add.stdout + add.stderr
    r = sweep(path)
    assert r.returncode == 0, r.stdout + r.stderr
    xs = sorted(t.params["x"] for t in study().get_trials(states=(TrialState.COMPLETE,)))
    assert xs == [0.1, 0.5, 0.9], xs  # each once (0.1 is not queued again); the added one beyond n_trials
    # stop: the running trial finishes, no new one starts, and the same command resumes
    p = subprocess.Popen([MLKIT, "sweep", str(path), "--n-trials", "6"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        while started() < 4 and p.poll() is None: time.sleep(0.1)
        stop = sweep("stop", "s")
        out, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert stop.returncode == 0 and "stopping" in stop.stdout
    assert p.returncode == 1 and "stopped (mlkit sweep stop) with 4 of 6 trials done; the same command resumes it" in err, \
        out + err
    assert [t.state for t in study().trials] == [TrialState.COMPLETE] * 4  # the running one finished; none began after
    ls = sweep("ls")
    assert ls.returncode == 0 and re.search(r"\ns +4/6 +-?0\.\d+ +\d{4}-\d\d-\d\d \d\d:\d\d", ls.stdout), ls.stdout
    r = sweep(path, "--n-trials", "5")
    assert r.returncode == 0 and len(study().get_trials(states=(TrialState.COMPLETE,))) == 5, r.stdout + r.stderr


@pytest.mark.slow
def test_a_spec_runs_from_any_folder_and_best_prints_a_command_for_the_project_root(project, monkeypatch, tmp_path):
    monkeypatch.delenv("MLKIT_RUNS_DIR")  # the project's own runs/, found from the spec wherever we are
    (project/"nbs").mkdir()
    (project/"sweeps").mkdir()
    (project/"sub").mkdir()
    notebook(project/"nbs", "toy.ipynb", *TOY)
    path = spec(project, nb="nbs/toy.ipynb", n_trials=1)  # relative to the project's root
    path = path.rename(project/"sweeps"/path.name)
    r = subprocess.run([MLKIT, "sweep", "../sweeps/s.yaml"], cwd=project/"sub", capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([MLKIT, "sweep", str(path), "--n-trials", "2"], cwd="/tmp", capture_output=True, text=True)
    assert r.returncode == 0 and "1 of 2 trials done" in r.stdout, r.stdout + r.stderr
    assert not (project/"sub"/"runs").exists() and len(list((project/"runs").glob("2*"))) == 2
    b = subprocess.run([MLKIT, "sweep", "best", "s", "--runs-dir", project/"runs"], cwd=tmp_path, capture_output=True,
                       text=True)
    lines = b.stdout.splitlines()
    assert b.returncode == 0 and lines[-2] == "repeat it from the project's root with:", b.stdout + b.stderr
    assert lines[-1].startswith("mlkit run nbs/toy.ipynb -p x ")
    again = subprocess.run(lines[-1].replace("mlkit", MLKIT, 1), shell=True, cwd=project, capture_output=True, text=True)
    assert again.returncode == 0, again.stdout + again.stderr
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    s = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(
        str(project/"runs"/"sweeps"/"s"/"journal.log"))))
    assert s.user_attrs["mlkit.spec"]["notebook_path"] == "nbs/toy.ipynb"


@pytest.mark.slow
def test_a_killed_worker_is_reported_and_replaced_and_workers_argv_hold_no_spec_values(project):
    notebook(project, "toy.ipynb", "x = 0.5\nnap = 0.0\ntag = ''", TOY[1])
    path = spec(project, fixed={"nap": 3.0, "tag": "SPEC-VALUE-7"}, n_trials=4)
    p = subprocess.Popen([MLKIT, "sweep", str(path), "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        parent = psutil.Process(p.pid)
        while not (len(_workers(parent)) == 2 and started() >= 2) and p.poll() is None: time.sleep(0.1)
        workers = _workers(parent)
        for w in workers:  # what `ps` shows of each worker: no spec, no fixed value, no parameter name
            argv = Path(f"/proc/{w.pid}/cmdline").read_bytes().decode().rstrip("\0").split("\0")
            assert not [a for a in argv if re.search("SPEC-VALUE|nap|toy|score|\\{", a)], argv
            assert (Path(argv[-2]).stat().st_mode & 0o777) == 0o600  # the arguments' file: the user's alone
        victim = min(workers, key=lambda w: w.pid)
        victim_index = int(victim.cmdline()[-1])
        victim.kill()
        while p.poll() is None and {w.pid for w in _workers(parent)} & {victim.pid}: time.sleep(0.1)
        deadline = time.time() + 60  # replaced: two workers again
        while p.poll() is None and len(_workers(parent)) < 2 and time.time() < deadline: time.sleep(0.1)
        replaced = len(_workers(parent)) == 2 or p.poll() is not None
        out, err = p.communicate(timeout=240)
    finally:
        p.kill()
    assert replaced and p.returncode == 0, out + err
    assert err.count(f"worker {victim_index} (pid {victim.pid}) died (SIGKILL); started another in its place "
                     "(1 of at most 6)") == 1, err
    trials = study().trials
    [dead] = [t for t in trials if "mlkit.died" in t.user_attrs]
    assert dead.user_attrs["mlkit.died"] == f"its worker {victim_index} (pid {victim.pid}) died"
    assert dead.user_attrs["mlkit.run"] in {x.id for x in runs("s")}  # its run column: the folder it left
    [retry] = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
    assert retry.state == TrialState.COMPLETE and "mlkit.died" not in retry.user_attrs  # the note is on the right trial
    st = sweep("status", "s")
    assert f"its worker {victim_index} (pid {victim.pid}) died" in st.stdout and f"retry of trial {dead.number}" in st.stdout
    logs = sorted(x.name for x in (Path(os.environ["MLKIT_RUNS_DIR"])/"sweeps"/"s").glob("worker-*.log"))
    assert logs == [f"worker-{socket.gethostname()}-{i}.log" for i in (0, 1)], logs
    assert not list((Path(os.environ["MLKIT_RUNS_DIR"])/"sweeps"/"s").glob(".worker-args-*"))  # removed at the end
    for f in (Path(os.environ["MLKIT_RUNS_DIR"])/"sweeps"/"s").glob("worker-*.log"):
        assert "ExperimentalWarning" not in f.read_text()


@pytest.mark.slow
def test_a_postgresql_sweep_prints_no_optuna_experimental_warning(project, postgres):
    notebook(project, "toy.ipynb", *TOY)
    r = sweep(spec(project, n_trials=2), "--workers", "2", "--storage", postgres, env={"MLKIT_SWEEP_HEARTBEAT": "1"})
    assert r.returncode == 0, r.stdout + r.stderr
    logs = "".join(f.read_text() for f in (Path(os.environ["MLKIT_RUNS_DIR"])/"sweeps"/"s").glob("worker-*.log"))
    assert "ExperimentalWarning" not in r.stdout + r.stderr + logs and "experimental" not in r.stdout + r.stderr + logs
    assert len([x for x in r.stdout.splitlines() if x.startswith("trial ")]) == 2  # one line per trial
    ls = sweep("ls", "--storage", postgres)
    assert ls.returncode == 0 and re.search(r"\ns +2/2 ", ls.stdout) and "hunter2" not in ls.stdout, ls.stdout


def test_a_grid_point_queued_but_never_run_is_not_yet_tried_not_failed_and_a_timeout_says_so(project):
    "A grid ended by its timeout leaves its next point queued (waiting): it never ran, so it is not a failed point."
    notebook(project, "toy.ipynb", "i = 0\nnap = 0.0", "import time\nfrom mlkit.run import record\ntime.sleep(nap)\n"
             "record('score', i)")
    path = spec(project, method="grid", fixed={"nap": 2.0}, timeout=3, n_trials=None,
                params={"i": {"type": "int", "low": 0, "high": 3}})
    text = json.loads(path.read_text())
    del text["n_trials"]
    path.write_text(json.dumps(text))
    r = sweep(path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "reached its timeout" in r.stderr and "missing:" not in r.stderr, r.stderr
    st = sweep("status", "s").stdout
    assert "failed, not yet done" not in st and "not yet tried" in st, st


def test_status_of_a_finished_grid_over_list_and_mapping_choices_lists_no_point_as_missing(project):
    "Optuna keeps a list or mapping choice as its JSON text: status must compare the grid's points the same way."
    notebook(project, "toy.ipynb", "layers = [4]\ncfg = {'a': 1}",
             "from mlkit.run import record\nrecord('score', sum(layers) + cfg['a'])")
    path = spec(project, method="grid", n_trials=2, params={
        "layers": {"type": "categorical", "choices": [[16, 8], [4]]}, "cfg": {"type": "categorical", "choices": [{"a": 1}]}})
    r = sweep(path)
    assert r.returncode == 0, r.stdout + r.stderr
    st = sweep("status", "s").stdout
    assert "2 point(s) done" in st and "not yet tried" not in st and "failed, not yet done" not in st, st
