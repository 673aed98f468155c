"`mlkit sweep SPEC --slurm --workers N` against a real single-node Slurm cluster started by the tests (tests/slurm_cluster.py)."
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import optuna
import pytest
from nbformat.v4 import new_code_cell, new_notebook
from slurm_cluster import wait_for

COVERS = ("15b_slurm_sweep", "07c_cli_slurm", "12d_sweep_workers")  # the notebooks these tests cover

MLKIT = str(Path(sys.executable).with_name("mlkit"))
TOY = ("x = 0.5\nnap = 0.0\napi_key = ''",
       "import time\nfrom mlkit.run import record\ntime.sleep(nap)\nrecord('score', -(x - 0.3) ** 2)\n"
       "record('key_length', len(api_key))")


@pytest.fixture
def project(tmp_path, slurm, monkeypatch):
    "A project folder with a toy notebook, its runs in MLKIT_RUNS_DIR, Slurm's SLURM_CONF in the environment."
    root = tmp_path/"proj"
    root.mkdir()
    (root/"settings.ini").write_text("[DEFAULT]\nlib_name = proj\n")
    nb = new_notebook(cells=[new_code_cell(TOY[0], metadata={"tags": ["parameters"]}), new_code_cell(TOY[1])],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, root/"toy.ipynb")
    monkeypatch.setenv("MLKIT_RUNS_DIR", str(tmp_path/"runs"))
    for k, v in slurm.env.items(): monkeypatch.setenv(k, v)
    for k in ("MLKIT_RUN_DIR", "MLKIT_SWEEP_STORAGE", "MLKIT_SWEEP_TRIAL", "MLKIT_FAKE_GPUS"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.chdir(root)
    return root


def spec(root, name="s", **over) -> Path:
    text = {"name": name, "notebook": "toy.ipynb", "metric": {"name": "score", "goal": "maximize"}, "method": "random",
            "n_trials": 4, "params": {"x": {"type": "float", "low": 0.0, "high": 1.0}}, "seed": 0, **over}
    (root/f"{name}.yaml").write_text(json.dumps(text))
    return root/f"{name}.yaml"


def mlkit(*args, timeout=600):
    return subprocess.run([MLKIT, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def study(name="s"):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    path = Path(os.environ["MLKIT_RUNS_DIR"])/"sweeps"/name/"journal.log"
    return optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(path))))


def array_job(out: str) -> str:
    return re.search(r"Slurm array job (\d+)", out)[1]


@pytest.mark.slow
def test_a_two_task_array_finishes_n_trials_on_the_journal_and_status_shows_its_tasks(project, slurm):
    r = mlkit("sweep", spec(project, fixed={"nap": 1.0}), "--slurm", "--workers", "2", "--wait")
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    job = array_job(r.stdout)
    assert "sweep s: 4 trials done" in r.stdout, r.stdout
    trials = study().get_trials()
    assert sum(t.state.name == "COMPLETE" for t in trials) == 4, [t.state for t in trials]
    workers = {t.user_attrs["mlkit.worker"]["job_id"] for t in trials}
    assert workers == {f"{job}_0", f"{job}_1"}, workers  # both tasks ran trials, against the one journal
    status = mlkit("sweep", "status", "s")
    assert status.returncode == 0, status.stderr
    assert f"Slurm array job {job}" in status.stdout and f"worker {job}_0: COMPLETED" in status.stdout, status.stdout
    assert f"worker {job}_1: COMPLETED" in status.stdout, status.stdout


@pytest.mark.slow
def test_an_array_task_cancelled_mid_trial_has_its_trial_run_again_by_the_other(project, slurm):
    r = mlkit("sweep", spec(project, fixed={"nap": 8.0}, n_trials=3), "--slurm", "--workers", "2")
    assert r.returncode == 0, r.stderr
    job = array_job(r.stdout)
    victim = f"{job}_1"
    wait_for(running_trial_of(victim), 120, what=f"task {victim} running a trial")
    time.sleep(2)
    slurm.run("scancel", victim)
    wait_for(lambda: not slurm.run("squeue", "-h", "-j", job, check=False).stdout.strip(), 240, 1, what="the array's end")
    trials = study().get_trials()
    assert sum(t.state.name == "COMPLETE" for t in trials) == 3, [(t.number, t.state, t.user_attrs) for t in trials]
    lost = [t for t in trials if t.state.name == "FAIL"]
    assert len(lost) == 1 and lost[0].user_attrs["mlkit.worker"]["job_id"] == victim, [t.user_attrs for t in lost]
    why = lost[0].user_attrs.get("mlkit.interrupted") or lost[0].user_attrs.get("mlkit.died")
    assert why, lost[0].user_attrs
    again = [t for t in trials if lost[0].number in t.system_attrs.get("retry_history", [])]
    assert again and again[0].state.name == "COMPLETE" and again[0].params == lost[0].params, again
    assert again[0].user_attrs["mlkit.worker"]["job_id"] == f"{job}_0"


def running_trial_of(task: str):
    "A waiter: the runs of `task`'s running trials once they execute the notebook (not while they start)."
    def runs():
        from mlkit.runs import list_runs
        try: mine = {f"s-{t.number}" for t in study().get_trials() if t.state.name == "RUNNING"
                     and (t.user_attrs.get("mlkit.worker") or {}).get("job_id") == task}
        except Exception: return []
        return [r for r in list_runs(os.environ["MLKIT_RUNS_DIR"]) if r.name in mine and r.status == "running"]
    return runs


@pytest.mark.slow
def test_an_array_task_requeued_mid_trial_carries_on_and_its_trial_runs_again(project, slurm):
    r = mlkit("sweep", spec(project, fixed={"nap": 8.0}, n_trials=4), "--slurm", "--workers", "2")
    assert r.returncode == 0, r.stderr
    job = array_job(r.stdout)
    victim = f"{job}_1"
    wait_for(running_trial_of(victim), 120, what=f"task {victim} running a trial")
    time.sleep(2)
    slurm.run("scontrol", "requeue", victim)
    wait_for(lambda: slurm.run("squeue", "-h", "-j", victim, "-o", "%T %r", check=False).stdout.split()[:2]
             == ["PENDING", "BeginTime"], 120, what=f"{victim} pending after its requeue")
    slurm.run("scontrol", "update", f"JobId={victim}", "StartTime=now")
    wait_for(lambda: not slurm.run("squeue", "-h", "-j", job, check=False).stdout.strip(), 300, 1, what="the array's end")
    trials = study().get_trials()
    assert sum(t.state.name == "COMPLETE" for t in trials) == 4, [(t.number, t.state, t.user_attrs) for t in trials]
    lost = [t for t in trials if t.state.name == "FAIL"]
    assert len(lost) == 1 and lost[0].user_attrs["mlkit.worker"]["job_id"] == victim, [t.user_attrs for t in lost]
    assert any(lost[0].number in t.system_attrs.get("retry_history", []) and t.state.name == "COMPLETE" for t in trials)
    log = (Path(os.environ["MLKIT_RUNS_DIR"])/"sweeps"/"s"/"slurm"/f"{victim}_0_log.out").read_text()
    assert log.count("Starting with JobEnvironment") == 2, log  # it ran again after its requeue


@pytest.mark.slow
def test_a_task_near_its_time_limit_requeues_itself_and_the_sweep_finishes(project, slurm):
    # one minute, and SIGUSR2 50 s before it: Slurm checks time limits every ~30 s, so the signal comes 10-40 s in
    waiting = subprocess.Popen([MLKIT, "sweep", spec(project, fixed={"nap": 6.0}, n_trials=5), "--slurm", "--wait",
                                "--time", "1", "--slurm-opt", "signal=USR2@50"], text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    log = Path(os.environ["MLKIT_RUNS_DIR"])/"sweeps"/"s"/"slurm"
    job = wait_for(lambda: next((p.name.split("_")[0] for p in log.glob("*_submission.sh")), None), 60, what="the job")
    def state(): return slurm.run("squeue", "-h", "-j", job, "-o", "%T %r", check=False).stdout.split()[:2]
    for _ in range(8):  # each start goes on with the sweep; each near its limit requeues itself
        wait_for(lambda: waiting.poll() is not None or state() == ["PENDING", "BeginTime"], 200, what="a requeue or the end")
        if waiting.poll() is not None: break
        slurm.run("scontrol", "update", f"JobId={job}", "StartTime=now")
        wait_for(lambda: waiting.poll() is not None or state() != ["PENDING", "BeginTime"], 60, what="its start again")
    out, err = waiting.communicate(timeout=300)
    assert waiting.returncode == 0, out + err[-3000:]
    trials = study().get_trials()
    assert sum(t.state.name == "COMPLETE" for t in trials) == 5, [(t.number, t.state, t.user_attrs) for t in trials]
    lost = [t for t in trials if t.state.name == "FAIL"]  # a trial the signal met inside the notebook: interrupted by it
    assert all("SIGUSR2" in t.user_attrs.get("mlkit.interrupted", "SIGUSR2") for t in lost), [t.user_attrs for t in lost]
    done = {json.dumps(t.params) for t in trials if t.state.name == "COMPLETE"}
    assert all(json.dumps(t.params) in done for t in lost)  # and ran again
    assert (log/f"{job}_0_log.out").read_text().count("Starting with JobEnvironment") >= 2  # it ran again


def test_a_worker_whose_slurm_job_is_gone_is_judged_dead_on_any_host(project, slurm):
    from mlkit.slurm_sweep import worker_alive
    from mlkit.sweep_workers import fail_dead_workers
    live = slurm.run("sbatch", "--parsable", "--wrap", "sleep 60").stdout.strip()
    done = slurm.run("sbatch", "--parsable", "--wrap", "true").stdout.strip()
    try:
        wait_for(lambda: slurm.run("squeue", "-h", "-j", live, "-o", "%T", check=False).stdout.strip() == "RUNNING", 60)
        wait_for(lambda: slurm.run("squeue", "-h", "-j", done, "-o", "%T", check=False).stdout.strip() in ("", "COMPLETED"), 60)
        s = optuna.create_study()
        for job in (live, done):
            t = s.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
            t.set_user_attr("mlkit.worker", {"host": "another-node", "pid": 1, "index": 0, "job_id": job})
        test = fail_dead_workers(s, s._storage, alive=lambda w: worker_alive(w, me="0"))
        assert test == [1], test  # the ended job's trial; the running job's stays running on its other host
        assert "Slurm job " + done in s.trials[1].user_attrs["mlkit.died"], s.trials[1].user_attrs
        assert fail_dead_workers(s, s._storage) == []  # without the judge: another host's trials are not this one's to fail
    finally: slurm.run("scancel", live, check=False)


@pytest.mark.slow
def test_a_secret_reaches_the_trials_and_no_file_of_the_sweep_runs_or_slurm_folder(project, slurm, tmp_path):
    secret = "1728-eulav-terc3s"[::-1]  # reversed: nothing in the repository holds it
    r = mlkit("sweep", spec(project, n_trials=2), "--slurm", "--workers", "2", "--wait", "-p", "api_key", secret)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    from mlkit.runs import list_runs
    runs = list_runs(tmp_path/"runs")
    assert len(runs) == 2 and all(run.records["key_length"] == len(secret) for run in runs), [r.records for r in runs]
    assert (tmp_path/"runs"/"sweeps"/"s"/"slurm").is_dir()  # submitit's pickles, sbatch script, logs: searched too
    leaks = [p for p in (tmp_path/"runs").rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert not leaks, leaks
    assert secret not in r.stdout + r.stderr


@pytest.mark.parametrize("args, message", [
    (("--partition", "nosuch"), "sbatch refused the sweep's array: "),
    (("--time", "bogus"), "sbatch refused the sweep's array: "),
    (("--nodes", "2"), "one task on one node"),
    (("--gpus-per-trial", "1", "--gpus-per-node", "2"), "--gpus-per-trial K is each task's --gpus-per-node K"),
])
def test_bad_input_is_one_line_and_leaves_no_sweep(project, args, message, tmp_path):
    r = mlkit("sweep", spec(project), "--slurm", "--workers", "2", *args)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
    assert not (tmp_path/"runs"/"sweeps"/"s").exists()


def test_no_slurm_is_one_line_and_leaves_no_sweep(project, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))
    r = mlkit("sweep", spec(project), "--slurm", "--workers", "2")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "no Slurm here" in r.stderr, r.stderr
    assert not (tmp_path/"runs"/"sweeps").exists()
    r = mlkit("sweep", spec(project), "--time", "10")
    assert r.returncode == 1 and "--time goes with --slurm" in r.stderr, r.stderr
