"Signals as a terminal sends them: to a whole process group, at random moments; and runs ended by an exit status."
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from test_sweep import new_project, notebook

from mlkit.runs import list_runs, open_run

COVERS = ("07_cli", "10_track", "11_run", "12_sweep", "12d_sweep_workers")  # make test NB=... runs them

MLKIT = str(Path(sys.executable).parent/"mlkit")

# --- a run still open when its program ends takes the program's exit status --------------------------------------

EXITS = """
import signal, sys, time
from mlkit.track import LocalTracker
run = LocalTracker(sys.argv[1], capture=False)
mode = sys.argv[2]
print(run.path, flush=True)
try:
    if mode in ("sigint", "sigterm"):
        print("ready", flush=True)
        time.sleep(120)
except KeyboardInterrupt:
    sys.exit(130)  # what a program that catches Ctrl-C reports, as a shell would
if mode == "exit1": sys.exit(1)
if mode == "argparse":
    import argparse
    argparse.ArgumentParser().parse_args(["--no-such-option"])  # exits 2
if mode == "exit0": sys.exit(0)
if mode == "with130":
    with LocalTracker(sys.argv[1], capture=False) as inner: raise SystemExit(130)
"""


@pytest.mark.parametrize("mode, signum, code, status, error", [
    ("sigint", signal.SIGINT, 130, "interrupted", "SIGINT (exit code 130)"),  # caught, then sys.exit(130)
    ("sigterm", signal.SIGTERM, -signal.SIGTERM, "interrupted", "SIGTERM"),
    ("exit1", None, 1, "failed", "exit code 1"),
    ("argparse", None, 2, "failed", "exit code 2"),
    ("exit0", None, 0, "finished", None),
    ("end", None, 0, "finished", None),
])
def test_a_run_open_at_exit_takes_the_programs_exit_status(tmp_path, mode, signum, code, status, error):
    p = subprocess.Popen([sys.executable, "-c", EXITS, str(tmp_path/"runs"), mode], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    path = p.stdout.readline().strip()
    if signum is not None:
        assert p.stdout.readline().strip() == "ready"
        os.killpg(p.pid, signum)  # the group, as a terminal signals its foreground job
    out, err = p.communicate(timeout=60)
    assert p.returncode == code, err
    run = open_run(path)
    assert (run.status, run.meta["error"]) == (status, error), run.meta
    assert "Traceback" not in err


def test_systemexit_130_leaving_a_with_block_ends_it_and_the_runs_open_at_exit_interrupted(tmp_path):
    r = subprocess.run([sys.executable, "-c", EXITS, str(tmp_path/"runs"), "with130"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 130, r.stderr
    assert [(x.status, x.meta["error"]) for x in list_runs(tmp_path/"runs")] == [("interrupted", "SIGINT (exit code 130)")] * 2


# --- a terminal's Ctrl-C: SIGINT to the whole foreground process group, at random moments ----------------------------

TOY = ("x = 0.5\nnap = 1.0", "import time\ntime.sleep(nap)",
       "import os, pathlib\nfrom mlkit.run import record\nrecord('score', -(x - 0.3) ** 2)\n"
       "pathlib.Path(os.environ['MLKIT_RUN_DIR'], 'last_cell_ran').write_text('yes')  # every cell ran")
EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}


@pytest.fixture
def project(tmp_path, monkeypatch):
    "A project folder with the toy notebook and a sweep spec over it; its runs folder in MLKIT_RUNS_DIR."
    root = new_project(tmp_path, monkeypatch)
    notebook(root, "toy.ipynb", *TOY)
    (root/"s.yaml").write_text(json.dumps({"name": "s", "notebook": "toy.ipynb", "method": "random", "n_trials": 3,
                                           "metric": {"name": "score", "goal": "maximize"}, "seed": 0,
                                           "params": {"x": {"type": "float", "low": 0.0, "high": 1.0}}}))
    return root


def _in_its_own_group(*args) -> subprocess.Popen:
    "`mlkit ARGS` as a terminal starts a job: its own process group, which a Ctrl-C signals whole."
    return subprocess.Popen([MLKIT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _signal_group(p, signum):
    try: os.killpg(p.pid, signum)
    except ProcessLookupError: pass  # it had ended already


def _runs():
    folder = Path(os.environ["MLKIT_RUNS_DIR"])
    return list_runs(folder) if folder.exists() else []


def _check_honest(p, out, err, signum=signal.SIGINT, sweep=False):
    "No traceback, one line, the signal's status; no run `finished` unless its last cell ran; no trial left running."
    text = out + err
    assert "Traceback" not in text and "Fatal Python error" not in text, text
    assert p.returncode in (0, EXIT[signum]), (p.returncode, text)
    if p.returncode:  # `mlkit sweep` says so in one line; `mlkit run`, once its run exists, in its summary
        assert "interrupted" in err and (not sweep or len(err.strip().splitlines()) == 1), err
    for run in _runs():
        assert run.status in ("finished", "interrupted"), (run.status, run.meta.get("error"))
        ran = (run.path/"last_cell_ran").exists()  # written as the last cell's last statement
        if run.status == "finished": assert ran, run.id  # never finished unless every cell ran
        else: assert not ran or run.meta["error"].endswith("in cell 3"), (run.id, run.meta["error"])  # cut off after it
    if sweep and (Path(os.environ["MLKIT_RUNS_DIR"])/"sweeps"/"s"/"journal.log").exists():
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend
        journal = JournalFileBackend(str(Path(os.environ["MLKIT_RUNS_DIR"])/"sweeps"/"s"/"journal.log"))
        trials = optuna.load_study(study_name="s", storage=JournalStorage(journal)).trials
        by_id = {r.id: r for r in _runs()}
        for t in trials:
            assert t.state != TrialState.RUNNING, t.number
            if t.state == TrialState.COMPLETE: assert by_id[t.user_attrs["mlkit.run"]].status == "finished"


def _wait_for_runs(n):
    while len([r for r in _runs() if (r.path/"kernel.log").exists()]) < n: time.sleep(0.05)


def _wait_for_cell(n, workers):
    "Until `workers` worker logs show cell `n` started (their trials are past the kernel's start)."
    folder = Path(os.environ["MLKIT_RUNS_DIR"])/"sweeps"/"s"
    while sum(f"-- cell {n}/" in f.read_text() for f in folder.glob("worker-*.log")) < workers: time.sleep(0.05)


@pytest.mark.parametrize("signum, times", [(signal.SIGINT, 1), (signal.SIGINT, 6), (signal.SIGTERM, 1), (signal.SIGHUP, 1)])
def test_a_group_signal_mid_trial_interrupts_every_trial_once(project, signum, times):
    "A terminal's Ctrl-C (again and again) reaches each worker once, through `mlkit sweep`: runs interrupted in the cell."
    spec = json.loads((project/"s.yaml").read_text())
    (project/"long.yaml").write_text(json.dumps({**spec, "fixed": {"nap": 60.0}}))  # no trial ends before the signal
    p = _in_its_own_group("sweep", "long.yaml", "--workers", "2")
    _wait_for_cell(2, workers=2)
    for _ in range(times):  # more Ctrl-Cs while the workers end their trials: they must not break that off
        _signal_group(p, signum)
        time.sleep(0.1)
    out, err = p.communicate(timeout=120)
    assert p.returncode == EXIT[signum], out + err
    assert f"s interrupted ({signal.Signals(signum).name}) with 0 of 3 trials done" in err
    _check_honest(p, out, err, signum, sweep=True)
    name = signal.Signals(signum).name
    assert sorted((r.status, r.meta["error"]) for r in _runs()) == [("interrupted", f"{name} in cell 2")] * 2


@pytest.mark.slow
def test_group_ctrl_c_at_random_moments_never_leaves_a_finished_run_that_did_not_run(project):
    "24 Ctrl-Cs to the group, at seeded random moments from launch to mid-trial (half within 1.5 s: kernels starting)."
    rng = random.Random(22)
    for i in range(24):
        command = ("run", "toy.ipynb", "-p", "nap", "0.5") if i % 2 else ("sweep", "s.yaml", "--workers", "2")
        delay = rng.uniform(0.3, 1.5) if i % 4 < 2 else rng.uniform(1.5, 5.0)
        before = {r.id for r in _runs()}
        p = _in_its_own_group(*command)
        time.sleep(delay)
        _signal_group(p, signal.SIGINT)
        out, err = p.communicate(timeout=180)
        _check_honest(p, out, err, sweep=command[0] == "sweep")
        new = [r for r in _runs() if r.id not in before]
        assert p.returncode == 130 or all(r.status == "finished" for r in new), (i, delay, p.returncode)


def test_a_ctrl_c_while_the_command_starts_is_one_line_and_130(project):
    "Group SIGINTs a few ms after launch: no traceback from mlkit's code; the sweep's workers never start a trial."
    rng = random.Random(10)
    for delay in sorted(rng.uniform(0.005, 0.6) for _ in range(6)):
        p = _in_its_own_group("sweep", "s.yaml", "--workers", "2")
        time.sleep(delay)
        _signal_group(p, signal.SIGINT)
        out, err = p.communicate(timeout=120)
        text = out + err
        if "Fatal Python error: init_import_site" in text or text.endswith("from mlkit.cli import main\nKeyboardInterrupt\n"):
            continue  # inside CPython's own start-up (site, the editable finder), before any of mlkit's code
        if p.returncode == -signal.SIGINT:  # before Python set its handler: killed, as without Python
            assert text == "", text
            continue
        assert p.returncode == 130 and "Traceback" not in text and "Fatal" not in text, (delay, p.returncode, text)
        assert len(err.splitlines()) == 1 and "interrupted" in err, err
    assert [r.status for r in _runs() if r.status == "finished"] == []
