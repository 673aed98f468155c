"A PostgreSQL sweep under faults: the tests' own server restarted mid-sweep, a worker paused past its heartbeat."
import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import psutil
import pytest
import test_sweep
from optuna.trial import TrialState
from test_sweep import MLKIT, notebook, runs, spec, sweep

COVERS = ("12_sweep", "12b_sweep_storage")
project, postgres = test_sweep.project, test_sweep.postgres  # the fixtures: a project folder, the tests' PostgreSQL

# each trial marks that it started, then waits for the test to open the gate: the test knows where every trial is
GATED = ("x = 0.5\ngate = ''",
         "import os, time\nfrom pathlib import Path\nfrom mlkit.run import record\n"
         "Path(gate, f'started-{os.getpid()}').touch()\n"
         "while not Path(gate, 'open').exists(): time.sleep(0.05)\n"
         "record('score', -(x - 0.3) ** 2)")


def _until(what, timeout=180.0, every=0.1):
    "Wait until `what()` is true (a bound, not a timed assertion: the test fails only if it never happens)."
    end = time.monotonic() + timeout
    while not what():
        if time.monotonic() > end: pytest.fail(f"waited {timeout} s for {what.__doc__ or what}")
        time.sleep(every)


def _server(url: str) -> psutil.Process:
    "The postmaster of the `postgres` fixture's server (a child of this process)."
    port = url.rsplit(":", 1)[1].split("/")[0]
    [pm] = [c for c in psutil.Process().children() if "postgres" in c.name() and port in c.cmdline()]
    return pm


def _restart(url: str, between, down_s: float = 4.0) -> subprocess.Popen:
    "Stop the server (fast shutdown: clients are cut off), call `between()`, wait `down_s`, start it again."
    pm = _server(url)
    cmd, uid, gid = pm.cmdline(), pm.uids().real, pm.gids().real
    pm.send_signal(signal.SIGINT)
    pm.wait(30)
    between()
    time.sleep(down_s)  # the database is away: every call now fails
    as_user = {"user": uid, "group": gid} if os.geteuid() == 0 else {}
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **as_user)


def _accepts(url: str) -> bool:
    import psycopg
    port = url.rsplit(":", 1)[1].split("/")[0]
    try: psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", connect_timeout=1).close()
    except psycopg.OperationalError: return False
    return True


def _study(url: str):
    from optuna.storages import RDBStorage
    return optuna.load_study(study_name="s", storage=RDBStorage(url))


def _honest(url: str) -> list:
    "Every trial of the sweep ended honestly: a finished one's run is finished, a failed one says why and its run did not."
    trials, by_trial = _study(url).trials, {r.meta["trial"]: r for r in runs("s")}
    for t in trials:
        run = by_trial.get(t.number)
        if t.state == TrialState.COMPLETE: assert run is not None and run.status == "finished", (t.number, run)
        else:
            assert t.state == TrialState.FAIL, t
            why = t.user_attrs.get("mlkit.error") or t.user_attrs.get("mlkit.died") or t.user_attrs.get("mlkit.interrupted")
            assert why, t.user_attrs
            assert run is None or run.status != "finished", (t.number, run.meta)
    return trials


def _no_traceback(*texts: str):
    logs = [p.read_text() for p in (Path(os.environ["MLKIT_RUNS_DIR"])/"sweeps"/"s").glob("worker-*.log")]
    for text in [*texts, *logs]: assert "Traceback" not in text and "Cannot tell" not in text, text[-3000:]


@pytest.mark.slow
def test_a_postgresql_restart_during_a_sweep_is_waited_for_and_every_trial_ends_honest(project, postgres, tmp_path):
    notebook(project, "gated.ipynb", *GATED)
    gate = tmp_path/"gate"
    gate.mkdir()
    path = spec(project, nb="gated.ipynb", fixed={"gate": str(gate)}, n_trials=4)
    p = subprocess.Popen([MLKIT, "sweep", str(path), "--workers", "2", "--storage", postgres], text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "MLKIT_SWEEP_STORAGE_WAIT": "120"})
    server = None
    try:
        def both_started(): "both workers' trials are running"; return len(list(gate.glob("started-*"))) >= 2
        _until(both_started)
        # the two trials end while the database is away: the workers must tell them once it is back
        server = _restart(postgres, between=lambda: (gate/"open").touch())
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, out + err
        assert "does not answer" in err and "answers again" in err, err  # the outage was met, and waited out
        assert len(err.splitlines()) <= 8, err  # a line when it went, a line when it came back, per process
        _no_traceback(out, err)
        trials = _honest(postgres)
        assert sum(t.state == TrialState.COMPLETE for t in trials) == 4
        again = sweep(path, "--storage", postgres)  # the same command afterwards: nothing left to do
        assert again.returncode == 0 and "4 of 4 trials done" in again.stdout, again.stdout + again.stderr
    finally:
        p.kill()
        if server is not None:
            server.send_signal(signal.SIGINT)
            server.wait(30)


@pytest.mark.slow
def test_a_worker_paused_past_its_heartbeat_has_its_trial_failed_and_its_run_says_so(project, postgres, tmp_path):
    "SIGSTOP a worker for longer than two beats: the other fails its trial (and retries it); on SIGCONT it says so, no crash."
    notebook(project, "gated.ipynb", *GATED)
    gate = tmp_path/"gate"
    gate.mkdir()
    path = spec(project, nb="gated.ipynb", fixed={"gate": str(gate)}, n_trials=3)
    p = subprocess.Popen([MLKIT, "sweep", str(path), "--workers", "2", "--storage", postgres], text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "MLKIT_SWEEP_HEARTBEAT": "1"})
    try:
        def both_started(): "both workers' trials are running"; return len(list(gate.glob("started-*"))) >= 2
        _until(both_started)
        def claimed(): "both running trials name their worker"; return len(
            [t for t in _study(postgres).get_trials(states=(TrialState.RUNNING,)) if "mlkit.worker" in t.user_attrs]) == 2
        _until(claimed)
        paused = min(_study(postgres).get_trials(states=(TrialState.RUNNING,)), key=lambda t: t.number)
        pid = paused.user_attrs["mlkit.worker"]["pid"]
        os.kill(pid, signal.SIGSTOP)
        def stale(): "Optuna's heartbeat judges it stale"; return paused._trial_id in _stale_ids(postgres)
        _until(stale)
        (gate/"open").touch()  # the other worker's trial ends; it finds the paused one's stale, fails it, retries it
        def failed(): "the paused worker's trial was failed"; return _study(postgres).trials[paused.number].state.name == "FAIL"
        _until(failed)
        os.kill(pid, signal.SIGCONT)
        out, err = p.communicate(timeout=300)
    finally:
        p.kill()
    assert p.returncode == 0, out + err
    _no_traceback(out, err)
    trials = _honest(postgres)
    lost = trials[paused.number]
    assert "the heartbeat failed it" in lost.user_attrs["mlkit.died"], lost.user_attrs
    [run] = [r for r in runs("s") if r.meta["trial"] == paused.number]
    assert run.status == "failed" and f"the heartbeat failed trial {paused.number}" in run.meta["error"], run.meta
    assert f"trial {paused.number} failed: the heartbeat failed trial {paused.number}" in out, out
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == paused.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == paused.params
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3


def _stale_ids(url: str) -> list:
    "The trials Optuna's heartbeat (1 s, two beats' grace, as the workers have it) finds stale now."
    from optuna.storages import RDBStorage
    storage = RDBStorage(url, heartbeat_interval=1, grace_period=2)
    return storage._get_stale_trial_ids(storage.get_study_id_from_name("s"))


@pytest.mark.slow
def test_a_database_away_longer_than_the_wait_ends_the_sweep_with_one_line_and_the_same_command_finishes_it(
        project, postgres, tmp_path):
    notebook(project, "gated.ipynb", *GATED)
    gate = tmp_path/"gate"
    gate.mkdir()
    path = spec(project, nb="gated.ipynb", fixed={"gate": str(gate)}, n_trials=2)
    p = subprocess.Popen([MLKIT, "sweep", str(path), "--storage", postgres], text=True, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env={**os.environ, "MLKIT_SWEEP_STORAGE_WAIT": "3"})
    server = None
    try:
        def started(): "the trial is running"; return len(list(gate.glob("started-*"))) >= 1
        _until(started)
        pm = _server(postgres)
        cmd, uid, gid = pm.cmdline(), pm.uids().real, pm.gids().real
        pm.send_signal(signal.SIGINT)  # away, and not back before the command has given up
        pm.wait(30)
        (gate/"open").touch()
        out, err = p.communicate(timeout=300)
        assert p.returncode == 1, out + err
        _no_traceback(out, err)
        assert all(line.startswith("mlkit sweep: ") for line in err.splitlines()), err  # each a line of its own
        assert "worker 0: the storage postgresql+psycopg://127.0.0.1" in err and "did not answer for 3 s" in err, err
        assert "hunter2" not in out + err
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  **({"user": uid, "group": gid} if os.geteuid() == 0 else {}))
        def accepting(): "the server is back"; return _accepts(postgres)
        _until(accepting)
        again = sweep(path, "--storage", postgres)  # the trial its worker could not tell is failed, retried, done
        assert again.returncode == 0 and "sweep s: 2 trials done" in again.stdout, again.stdout + again.stderr
        _no_traceback(again.stdout, again.stderr)
    finally:
        p.kill()
        if server is not None:
            server.send_signal(signal.SIGINT)
            server.wait(30)


def test_a_missed_heartbeat_does_not_shorten_a_later_wait(tmp_path, monkeypatch, capsys):
    "A beat missed long ago, the database back since: a later blip is waited for afresh, not judged over at once."
    from optuna.storages import RDBStorage
    from sqlalchemy.exc import OperationalError

    from mlkit.sweep import open_storage
    monkeypatch.setenv("MLKIT_SWEEP_STORAGE_WAIT", "2")
    storage = open_storage(f"sqlite:///{tmp_path/'o.db'}", tmp_path)
    study_id = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "s")
    trial_id = storage.create_new_trial(study_id)
    real_beat = RDBStorage.record_heartbeat
    def down(*a, **k): raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))
    monkeypatch.setattr(RDBStorage, "record_heartbeat", down)
    storage.record_heartbeat(trial_id)  # missed: noted, not raised
    monkeypatch.setattr(RDBStorage, "record_heartbeat", real_beat)
    storage.record_heartbeat(trial_id)  # the database is back
    time.sleep(2.5)  # longer than the wait, with the database answering all along
    calls = []
    def blip(self):
        calls.append(1)
        if len(calls) == 1: down()
        return "answered"
    assert storage._patiently(blip) == "answered"  # waited 0.5 s for it, not given up at once
    assert len(calls) == 2
    err = capsys.readouterr().err
    assert "answers again, after 0 s" in err or "answers again, after 1 s" in err, err  # not after the 3 s since the beat
