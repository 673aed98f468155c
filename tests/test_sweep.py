"`mlkit sweep` as a user drives it: a temporary project, a spec, worker processes; pruning, GPUs, kills, resume, bad input."
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import optuna
import psutil
import pytest
from nbformat.v4 import new_code_cell, new_notebook
from optuna.trial import TrialState

COVERS = ("07_cli", "12_sweep", "12a_sweep_spec", "12b_sweep_storage", "12d_sweep_workers",
          "12e_sweep_report")  # the notebooks these tests cover (`make test NB=...`)

MLKIT = str(Path(sys.executable).parent/"mlkit")


def new_project(tmp_path, monkeypatch) -> Path:
    "A project folder (settings.ini) with its runs folder in MLKIT_RUNS_DIR, as the working folder."
    root = tmp_path/"proj"
    root.mkdir()
    (root/"settings.ini").write_text("[DEFAULT]\nlib_name = proj\n")
    monkeypatch.setenv("MLKIT_RUNS_DIR", str(tmp_path/"runs"))
    for k in ("MLKIT_RUN_DIR", "MLKIT_SWEEP_STORAGE", "MLKIT_SWEEP_TRIAL", "MLKIT_FAKE_GPUS"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def project(tmp_path, monkeypatch):
    "A project folder (settings.ini) with its runs folder in MLKIT_RUNS_DIR, as the working folder."
    return new_project(tmp_path, monkeypatch)


def notebook(root, name, params, *sources) -> str:
    nb = new_notebook(cells=[new_code_cell(params, metadata={"tags": ["parameters"]}), *map(new_code_cell, sources)],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, root/name)
    return name


def spec(root, name="s", nb="toy.ipynb", **over) -> Path:
    "Write NAME.yaml: a random search over x in [0, 1], 4 trials, no pruner, unless `over` says otherwise."
    text = {"name": name, "notebook": nb, "metric": {"name": "score", "goal": "maximize"}, "method": "random",
            "n_trials": 4, "params": {"x": {"type": "float", "low": 0.0, "high": 1.0}}, "seed": 0, **over}
    path = root/f"{name}.yaml"
    path.write_text(json.dumps(text))  # JSON is YAML
    return path


def sweep(*args, env=None, timeout=300):
    return subprocess.run([MLKIT, "sweep", *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def study(name="s"):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    path = Path(os.environ["MLKIT_RUNS_DIR"])/"sweeps"/name/"journal.log"
    return optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(path))))


def runs(sweep_name=None):
    from mlkit.runs import filter_runs, list_runs
    return filter_runs(list_runs(os.environ["MLKIT_RUNS_DIR"]), sweep=sweep_name)


TOY = ("x = 0.5\nnap = 0.0", "import time\nfrom mlkit.run import record\ntime.sleep(nap)\nrecord('score', -(x - 0.3) ** 2)")


def test_sweep_runs_trials_as_tracked_runs_and_reports_the_best(project):
    notebook(project, "toy.ipynb", *TOY)
    r = sweep(spec(project, fixed={"nap": 0.0}), "--workers", "2")
    assert r.returncode == 0, r.stderr
    s = study()
    done = s.get_trials(states=(TrialState.COMPLETE,))
    assert len(s.trials) == len(done) == 4
    assert len({t.params["x"] for t in done}) == 4  # two seeded workers do not draw the same values
    rs = runs("s")
    assert sorted(r.meta["trial"] for r in rs) == [0, 1, 2, 3] and {r.status for r in rs} == {"finished"}
    for t in done:  # each trial is the run it names, with its parameters and its value
        run = next(x for x in rs if x.id == t.user_attrs["mlkit.run"])
        assert run.meta["trial"] == t.number and run.params["x"] == t.params["x"] and run.params["nap"] == 0.0
        assert run.records["score"] == t.value and run.name == f"s-{t.number}"
    assert len({x.meta["pid"] for x in rs}) == 2  # two worker processes, not threads
    best = s.best_trial
    assert f"best trial {best.number}: score {best.value:.6g}" in r.stdout
    assert f"mlkit run toy.ipynb -p nap 0.0 -p x {best.params['x']!r}" in r.stdout
    st = sweep("status", "s")
    assert st.returncode == 0 and st.stdout.count("finished") == 4, st.stdout
    b = sweep("best", "s")
    assert b.returncode == 0 and b.stdout.splitlines()[-1] == f"mlkit run toy.ipynb -p nap 0.0 -p x {best.params['x']!r}"
    # the command `best` prints repeats the best trial
    again = subprocess.run(b.stdout.splitlines()[-1].replace("mlkit", MLKIT, 1), shell=True, capture_output=True, text=True)
    assert again.returncode == 0 and re.search(rf"score +{best.value:.4g}\n", again.stdout), again.stdout + again.stderr
    ls = subprocess.run([MLKIT, "runs", "ls", "--sweep", "s"], capture_output=True, text=True)
    assert len(ls.stdout.splitlines()) == 5, ls.stdout  # the header and the four trials, not the rerun
    from mlkit.runs import load_runs
    df = load_runs()
    assert sorted(df[df["sweep"] == "s"]["trial"]) == [0, 1, 2, 3]
    p = sweep("plot", "s", "-o", project/"plots")
    assert p.returncode == 0 and sorted(Path(x).name for x in p.stdout.split()) == [
        "s-history.png", "s-importance.png", "s-parallel.png"]


@pytest.mark.slow
def test_parallel_workers_never_run_more_trials_than_asked_and_concurrent_commands_draw_apart(project):
    "Trials of equal length end together: each worker then decides, under the lock, whether one more is needed."
    notebook(project, "toy.ipynb", *TOY)
    r = sweep(spec(project, fixed={"nap": 1.0}, n_trials=3), "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert [t.state for t in study().trials] == [TrialState.COMPLETE] * 3  # not 4: the second worker saw the third start
    # two commands at once on one seeded sweep (two shells, or two machines): no parameters drawn twice, none too many
    path = spec(project, name="twice", fixed={"nap": 0.5}, n_trials=6)
    both = [subprocess.Popen([MLKIT, "sweep", str(path), "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in both]
    assert [p.returncode for p in both] == [0, 0], outs
    trials = study("twice").trials
    assert len(trials) == 6 and len({t.params["x"] for t in trials}) == 6
    ls = subprocess.run([MLKIT, "runs", "ls"], capture_output=True, text=True)
    assert ls.returncode == 0 and "sweeps" not in ls.stdout and len(ls.stdout.splitlines()) == 1 + 3 + 6, ls.stdout


def test_workers_end_with_their_sweep_even_when_it_is_killed(project):
    notebook(project, "toy.ipynb", *TOY)
    p = subprocess.Popen([MLKIT, "sweep", str(spec(project, fixed={"nap": 30.0})), "--workers", "2"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    parent = psutil.Process(p.pid)
    while not (len(_workers(parent)) == 2 and len(runs("s")) >= 2): time.sleep(0.1)
    workers = _workers(parent)
    kernels = [c for w in workers for c in w.children(recursive=True)]
    parent.kill()
    p.communicate(timeout=30)
    gone, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, "workers outlived their sweep"
    assert sorted(x.status for x in runs("s")) == ["interrupted", "interrupted"]
    assert [t.state for t in study().trials] == [TrialState.FAIL] * 2
    psutil.wait_procs(kernels, timeout=10)
    assert not [k for k in kernels if k.is_running() and k.status() != psutil.STATUS_ZOMBIE], "orphaned kernels"


TRAIN = ("lr = 0.1\nepochs = 6", """
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from mlkit.run import record
from mlkit.track import TrackingCallback
from mlkit.train import Trainer
torch.manual_seed(0)
x = torch.randn(64, 4); y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 5.0
ds = TensorDataset(x, y[:, None])
trainer = Trainer(nn.Linear(4, 1), DataLoader(ds, batch_size=16), DataLoader(ds, batch_size=64), loss_fn=nn.MSELoss(),
                  opt_fn=torch.optim.SGD, lr=lr, seed=0, device="cpu", cbs=[TrackingCallback()], progress=False)
trainer.fit(epochs)""", "record('epochs_run', len(trainer.history))\nrecord('score', -trainer.history[-1]['valid_loss'])")


def test_a_bad_configuration_is_pruned_inside_the_notebook_and_a_good_one_is_not(project):
    "TrackingCallback reports valid_loss each epoch; a trial that learns nothing is stopped early, and its notebook ends."
    notebook(project, "train.ipynb", *TRAIN)
    path = spec(project, nb="train.ipynb", n_trials=3, params={"lr": {"type": "categorical", "choices": [0.1, 0.0]}},
                pruner={"type": "median", "metric": "valid_loss", "n_startup_trials": 2},
                start_with=[{"lr": 0.1}, {"lr": 0.1}, {"lr": 0.0}])  # good, good, then bad: the pruner has its median
    r = sweep(path)
    assert r.returncode == 0, r.stdout + r.stderr
    trials = study().trials
    assert [(t.params["lr"], t.state) for t in trials] == [
        (0.1, TrialState.COMPLETE), (0.1, TrialState.COMPLETE), (0.0, TrialState.PRUNED)]
    good, bad = (next(x for x in runs("s") if x.id == trials[i].user_attrs["mlkit.run"]) for i in (0, 2))
    assert good.status == "finished" and good.records["epochs_run"] == 6
    # stopped after the epoch it was judged on
    assert bad.status == "pruned" and bad.meta["pruned_at_step"] == 1 and bad.records["epochs_run"] == 1
    assert "score" in bad.records  # the notebook ran to its end after the fit stopped
    assert list(trials[2].intermediate_values) == [1]
    assert sorted(trials[0].intermediate_values) == [1, 2, 3, 4, 5, 6]
    assert "trial 2 pruned at step 1" in r.stdout


def test_report_prunes_a_notebook_without_the_trainer_and_a_minimized_metric_is_compared_the_right_way(project):
    notebook(project, "loop.ipynb", "x = 0.5", """
from mlkit.run import record, report
for epoch in range(1, 6):
    loss = abs(x - 0.3) + 1 / epoch  # lower is better; the sweep maximizes -loss
    if report(epoch, loss): break
record('epochs_run', epoch)
record('score', -loss)""")
    path = spec(project, nb="loop.ipynb", n_trials=3, pruner={"type": "median", "metric": "loss", "n_startup_trials": 2},
                start_with=[{"x": 0.3}, {"x": 0.31}, {"x": 0.9}])
    r = sweep(path)
    assert r.returncode == 0, r.stdout + r.stderr
    states = [t.state for t in study().trials]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED], r.stdout
    by_trial = {x.meta["trial"]: x for x in runs("s")}
    assert by_trial[2].records["epochs_run"] == 1 and by_trial[1].records["epochs_run"] == 5


@pytest.mark.slow
def test_each_trial_holds_its_own_gpus(project):
    notebook(project, "gpu.ipynb", "x = 0.5", "import os, time\nfrom mlkit.run import record\n"
             "record('seen', os.environ.get('CUDA_VISIBLE_DEVICES'))\nt0 = time.time(); time.sleep(3)\n"
             "record('window', [t0, time.time()])\nrecord('score', x)")
    env = {"MLKIT_FAKE_GPUS": "2", "MLKIT_LOCK_DIR": str(project/"locks")}
    r = sweep(spec(project, nb="gpu.ipynb"), "--workers", "2", "--gpus-per-trial", "1", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    rs = runs("s")
    assert len(rs) == 4 and all(x.records["seen"] == ",".join(map(str, x.meta["gpu_ids"])) for x in rs)
    assert all(len(x.meta["gpu_ids"]) == 1 for x in rs)
    overlapping = [(a, b) for i, a in enumerate(rs) for b in rs[i + 1:]
                   if a.records["window"][0] < b.records["window"][1] and b.records["window"][0] < a.records["window"][1]]
    assert overlapping, "the two workers never ran at once"
    assert all(a.meta["gpu_ids"] != b.meta["gpu_ids"] for a, b in overlapping)
    too_many = sweep(spec(project, name="s2", nb="gpu.ipynb"), "--gpus-per-trial", "3", env=env)
    assert too_many.returncode == 1 and too_many.stderr == "mlkit sweep: error: --gpus-per-trial 3: this machine shows 2 GPU(s)\n"


def _workers(parent: psutil.Process) -> list:
    return [p for p in parent.children() if "_worker_main" in " ".join(p.cmdline())]


@pytest.mark.slow
def test_a_killed_worker_s_trial_is_failed_and_retried_once_and_the_sweep_still_ends_with_all_its_trials(project):
    notebook(project, "toy.ipynb", *TOY)
    p = subprocess.Popen([MLKIT, "sweep", str(spec(project, fixed={"nap": 2.0})), "--workers", "2"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    parent = psutil.Process(p.pid)
    deadline = time.time() + 60
    while time.time() < deadline and not (len(_workers(parent)) == 2 and len(runs("s")) >= 2): time.sleep(0.1)
    time.sleep(0.5)  # both trials are in their nap
    victim = _workers(parent)[0]
    kernels = [c for c in victim.children(recursive=True)]
    victim.kill()
    out, err = p.communicate(timeout=240)
    assert p.returncode == 0, out + err
    trials = study().trials
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(done) == 4 and len(failed) == 1, [(t.number, t.state) for t in trials]
    assert "died" in failed[0].user_attrs["mlkit.died"]
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == failed[0].number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == failed[0].params
    finished = [x for x in runs("s") if x.status == "finished"]
    assert sorted(x.meta["trial"] for x in finished) == sorted(t.number for t in done)  # none recorded twice
    dead = [x for x in runs("s") if x.meta["trial"] == failed[0].number]
    assert [x.status for x in dead] == ["interrupted"]  # the killed worker's run says what happened to it
    time.sleep(2)
    assert not [k for k in kernels if k.is_running() and k.status() != psutil.STATUS_ZOMBIE], "orphaned kernels"


@pytest.mark.slow
def test_interrupt_then_the_same_command_resumes(project):
    notebook(project, "toy.ipynb", *TOY)
    path = spec(project, fixed={"nap": 1.0})
    first = sweep(path, "--n-trials", "2")
    assert first.returncode == 0, first.stderr
    kept = {t.number: (t.params, t.user_attrs["mlkit.run"]) for t in study().trials}
    p = subprocess.Popen([MLKIT, "sweep", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while len(runs("s")) < 3: time.sleep(0.1)
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "interrupted (SIGINT) with 2 of 4 trials done" in err, out + err
    assert [x.status for x in runs("s") if x.meta["trial"] == 2] == ["interrupted"]
    assert study().trials[2].state == TrialState.FAIL
    last = sweep(path)
    assert last.returncode == 0, last.stderr
    assert "2 of 4 trials done" in last.stdout
    trials = study().trials
    assert {t.number: (t.params, t.user_attrs["mlkit.run"]) for t in trials if t.number in kept} == kept  # kept as they were
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 4
    changed = spec(project, fixed={"nap": 0.5})
    r = sweep(changed)
    assert r.returncode == 1 and r.stderr == ("mlkit sweep: error: sweep s exists with a different fixed; its trials would "
                                              "not be comparable: name the new sweep differently\n")


def test_a_notebook_that_always_fails_stops_the_sweep(project):
    notebook(project, "bad.ipynb", "x = 0.5", "raise ValueError(f'no good: {x:.2f}')")
    r = sweep(spec(project, nb="bad.ipynb", n_trials=10), "--workers", "2")
    assert r.returncode == 1
    assert "trials failed and none finished; the last, trial" in r.stderr and "ValueError: no good" in r.stderr
    assert "Traceback" not in r.stderr
    assert 3 <= len(study().trials) <= 4  # three failures stop it (the other worker's trial may be under way)


@pytest.mark.parametrize("change, message", [
    ({"method": "bayes"}, "unknown method 'bayes' (one of grid, random, tpe)"),
    ({"params": {"y": {"type": "float", "low": 0, "high": 1}}}, "toy.ipynb has no parameter 'y'; its parameters are: x, nap"),
    ({"params": {"x": {"type": "float", "low": 1, "high": 0}}}, "params.x: the range is inverted (low 1, high 0)"),
    ({"fixed": {"nap": "long"}}, "parameter 'nap' takes a float (default 0.0), got 'long' (a str)"),
    ({"pruner": {"type": "asha"}}, "unknown pruner 'asha' (one of none, median, hyperband)"),
    ({"colour": "red"}, "unknown key 'colour'"),
    ({"method": "grid", "n_trials": 5, "params": {"x": {"type": "float", "low": 0, "high": 0.3, "step": 0.1}}},
     "n_trials is 5, and the grid has 4 points"),
])
def test_bad_specs_are_refused_before_anything_runs(project, change, message):
    notebook(project, "toy.ipynb", *TOY)
    path = spec(project, **change)
    r = sweep(path)
    assert r.returncode == 1 and r.stderr.startswith(f"mlkit sweep: error: {path}: ") and message in r.stderr, r.stderr
    assert len(r.stderr.splitlines()) == 1 and r.stdout == ""
    assert not Path(os.environ["MLKIT_RUNS_DIR"]).exists()  # nothing made


def test_bad_commands_get_one_line(project):
    notebook(project, "toy.ipynb", *TOY)
    for args, message in [(("status",), "which sweep? mlkit sweep status NAME"),
                          (("status", "nope"), "no sweep 'nope' in"),
                          ((spec(project), "--workers", "0"), "--workers takes a number of processes, 1 or more, got 0"),
                          ((project/"missing.yaml",), "cannot read the sweep spec"),
                          ((spec(project), "--storage", "postgresql+psycopg://me:hunter2@127.0.0.1:9/db"),
                           "cannot open the storage postgresql+psycopg://127.0.0.1:9/db")]:
        r = sweep(*args)
        assert r.returncode == 1 and message in r.stderr and len(r.stderr.splitlines()) == 1, (args, r.stderr)
        assert "hunter2" not in r.stderr


# --- PostgreSQL: workers on several machines share one database ---------------------------------------------------

def _postgres_bin() -> Path|None:
    import glob
    import shutil
    found = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)), None)
    return Path(found).parent if found else None


@pytest.fixture
def postgres(tmp_path_factory):
    "A PostgreSQL server on loopback in a temporary folder, run by an unprivileged user when we are root; its URL."
    import pwd
    import socket
    import tempfile
    bin_dir = _postgres_bin()
    if bin_dir is None: pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql; .ci/run does it)")
    user = None
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        try: user = pwd.getpwnam("nobody")
        except KeyError: pytest.skip("running as root and there is no 'nobody' user to run PostgreSQL as")
    folder = Path(tempfile.mkdtemp(prefix="mlkit-pg-"))
    folder.chmod(0o777)
    as_user = {"user": user.pw_uid, "group": user.pw_gid} if user else {}
    data = folder/"data"
    subprocess.run([bin_dir/"initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"], check=True,
                   capture_output=True, **as_user)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([bin_dir/"postgres", "-D", data, "-h", "127.0.0.1", "-p", str(port), "-k", folder],
                              stdout=subprocess.DEVNULL, stderr=open(folder/"server.log", "w"), **as_user)
    url = f"postgresql+psycopg://postgres:hunter2@127.0.0.1:{port}/postgres"  # trust auth ignores the password
    import psycopg
    for _ in range(100):
        try:
            psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", connect_timeout=1).close()
            break
        except psycopg.OperationalError: time.sleep(0.2)
    else: pytest.fail("PostgreSQL did not start: " + (folder/"server.log").read_text()[-2000:])
    yield url
    server.send_signal(signal.SIGINT)  # "fast" shutdown: SIGTERM would wait for every client to leave
    try: server.wait(30)
    except subprocess.TimeoutExpired: server.kill()
    import shutil
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_workers_on_several_machines_share_a_postgresql_sweep(project, postgres, tmp_path):
    "Two `mlkit sweep` commands with one --storage, each with its own runs folder (as two machines): one sweep."
    notebook(project, "toy.ipynb", *TOY)
    path = spec(project, fixed={"nap": 0.5}, n_trials=6)
    machines = [subprocess.Popen([MLKIT, "sweep", str(path), "--workers", "2", "--storage", postgres, "--runs-dir",
                                  tmp_path/f"machine{i}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for i in range(2)]
    outs = [m.communicate(timeout=240) for m in machines]
    assert [m.returncode for m in machines] == [0, 0], "\n".join(o + e for o, e in outs)
    from optuna.storages import RDBStorage
    s = optuna.load_study(study_name="s", storage=RDBStorage(postgres))
    done = s.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) >= 6 and len(done) <= 7  # across machines one more may start in the same instant (see README)
    assert len({t.params["x"] for t in done}) == len(done)  # the seeded workers of both machines drew apart
    assert all(t.state == TrialState.COMPLETE for t in s.trials)
    from mlkit.runs import list_runs
    ran = [r for i in range(2) for r in list_runs(tmp_path/f"machine{i}")]
    assert sorted(r.meta["trial"] for r in ran) == sorted(t.number for t in done)  # each trial ran once, somewhere
    assert all(len(list_runs(tmp_path/f"machine{i}")) >= 1 for i in range(2))  # both machines worked
    for out, err in outs: assert "hunter2" not in out + err
    for r in ran:
        for f in r.path.rglob("*"):
            if f.is_file(): assert b"hunter2" not in f.read_bytes(), f
    st = sweep("status", "s", "--storage", postgres)
    assert st.returncode == 0 and st.stdout.count("finished") == len(done)


@pytest.mark.slow
def test_a_trial_whose_machine_stopped_beating_is_failed_and_retried_once(project, postgres):
    "A RUNNING trial of a worker elsewhere whose heartbeat stopped: Optuna's heartbeat fails it, and it runs again."
    notebook(project, "toy.ipynb", *TOY)
    path = spec(project, n_trials=2)
    assert sweep(path, "--storage", postgres, "--n-trials", "1").returncode == 0
    from optuna.storages import RDBStorage
    storage = RDBStorage(postgres, heartbeat_interval=1, grace_period=2)
    s = optuna.load_study(study_name="s", storage=storage)
    lost = s.ask({"x": optuna.distributions.FloatDistribution(0.0, 1.0)})
    lost.set_user_attr("mlkit.worker", {"host": "elsewhere", "pid": 1})
    storage.record_heartbeat(lost._trial_id)
    time.sleep(3)
    r = sweep(path, "--storage", postgres, env={"MLKIT_SWEEP_HEARTBEAT": "1"})
    assert r.returncode == 0, r.stdout + r.stderr
    trials = optuna.load_study(study_name="s", storage=RDBStorage(postgres)).trials
    assert trials[lost.number].state == TrialState.FAIL
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == lost.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == {"x": lost.params["x"]}


def test_a_closed_terminal_sighup_to_the_sweeps_group_ends_it_as_sigterm_does(project):
    "SIGHUP to `mlkit sweep`'s process group (a closed terminal): the trial's run interrupted by SIGHUP, one line, 129."
    notebook(project, "toy.ipynb", *TOY)
    path = spec(project, fixed={"nap": 60.0}, n_trials=1)
    p = subprocess.Popen([MLKIT, "sweep", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)  # its own group: a closed terminal signals the whole of it
    try:
        folder = Path(os.environ["MLKIT_RUNS_DIR"])
        while not list(folder.glob("2*/kernel.log")): time.sleep(0.1)
        time.sleep(3)  # into the sleeping cell
        os.killpg(p.pid, signal.SIGHUP)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 129 and "interrupted (SIGHUP) with 0 of 1 trials done" in err, (p.returncode, out + err)
    assert "Traceback" not in err
    [run] = runs("s")
    assert run.status == "interrupted" and run.meta["error"].startswith("SIGHUP"), run.meta
