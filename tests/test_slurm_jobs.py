"mlkit.slurm_jobs on a real Slurm cluster: runs whose jobs ended unsaid, `mlkit runs cancel`, `mlkit jobs`, no Slurm here."
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

COVERS = ("15a_slurm_jobs", "07b_cli_runs")  # the notebooks these tests cover: `make test NB=...` runs them

MLKIT = str(Path(sys.executable).parent/"mlkit")


def mlkit(*args, env:dict|None=None, timeout:int=120) -> subprocess.CompletedProcess:
    return subprocess.run([MLKIT, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def slurm_run(root:Path, name:str, job_id:str|None, status:str="queued") -> Path:
    "A run folder made by LocalTracker, its meta.json then edited as `mlkit run --slurm` leaves it at submission."
    from mlkit.track import LocalTracker
    with LocalTracker(root, name=name, capture=False) as t: path = t.path
    meta = json.loads((path/"meta.json").read_text())
    meta.update(status=status, end=None, duration_s=None, error=None)
    if job_id is not None:
        meta["slurm"] = {"job_id": job_id, "cluster": "mlkit-test", "options": {}, "folder": str(path/"slurm")}
    (path/"slurm").mkdir(exist_ok=True)
    (path/"meta.json").write_text(json.dumps(meta))
    return path


def meta(path:Path) -> dict: return json.loads((path/"meta.json").read_text())


def sbatch(slurm, *args:str) -> str:
    "Submit a job to the test cluster; its id. Its output goes to /dev/null unless -o says where (not slurm-N.out here)."
    out = () if "-o" in args else ("-o", os.devnull)
    return slurm.run("sbatch", "--parsable", *out, *args).stdout.strip().split(";")[0]


def wait_state(slurm, job_id:str, states:tuple, timeout:float=60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        r = slurm.run("squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T", check=False)
        if (state := r.stdout.strip()) in states: return state
        assert state in ("", "PENDING", "CONFIGURING", "RUNNING", "COMPLETING"), f"job {job_id} is {state}, not {states}"
        assert time.monotonic() < deadline, f"job {job_id} is {state!r}, not {states} after {timeout} s"
        time.sleep(0.3)


def in_squeue(slurm, job_id:str) -> bool:
    "Whether plain squeue (pending and running jobs) still lists the job."
    return job_id in slurm.run("squeue", "-h", "-o", "%i", check=False).stdout.split()


def rows(out:str) -> dict:
    "A table's rows by their first cell."
    return {(cells := re.split(r"\s{2,}", line.strip()))[0]: cells for line in out.splitlines()[1:] if line.strip()}


def test_a_job_that_fails_before_its_run_starts_leaves_the_run_failed_with_its_stderr(slurm, tmp_path):
    root = tmp_path/"runs"
    run = slurm_run(root, "boom", None)
    jid = sbatch(slurm, "-e", str(run/"slurm"/"%j_0_log.err"), "-o", str(run/"slurm"/"%j_0_log.out"),
                 "--wrap", "echo boom >&2; exit 3")
    m = meta(run)
    m["slurm"] = {"job_id": jid, "folder": str(run/"slurm")}
    (run/"meta.json").write_text(json.dumps(m))
    wait_state(slurm, jid, ("FAILED",))
    r = mlkit("runs", "ls", "--root", str(root), env=slurm.env)
    assert r.returncode == 0, r.stderr
    assert rows(r.stdout)[run.name][2] == "failed", r.stdout
    m = meta(run)
    assert (m["status"], m["slurm"]["state"]) == ("failed", "FAILED")
    assert m["error"] == f"Slurm job {jid} ended FAILED before the run recorded its end: boom", m["error"]
    assert m["end"]
    assert mlkit("runs", "ls", "--root", str(root), "--status", "queued", env=slurm.env).stdout.count("\n") == 1
    # runs show brings its run up to date too
    other = slurm_run(root, "oom", None)
    jid = sbatch(slurm, "-e", str(other/"slurm"/"%j_0_log.err"), "--wrap", "echo 'Killed: out of memory' >&2; exit 137")
    m = meta(other)
    m["slurm"] = {"job_id": jid, "folder": str(other/"slurm")}
    (other/"meta.json").write_text(json.dumps(m))
    wait_state(slurm, jid, ("FAILED",))
    r = mlkit("runs", "show", "oom", "--root", str(root), env=slurm.env)
    assert "status failed" in r.stdout and "Killed: out of memory" in r.stdout, r.stdout + r.stderr
    assert meta(other)["status"] == "failed"


def test_runs_cancel_ends_a_held_job_and_a_running_one(slurm, tmp_path):
    root = tmp_path/"runs"
    held = sbatch(slurm, "--hold", "--wrap", "sleep 300")
    running = sbatch(slurm, "--wrap", "sleep 300")
    wait_state(slurm, running, ("RUNNING",))
    for jid, status in ((held, "queued"), (running, "running")):
        run = slurm_run(root, f"job{jid}", jid, status)
        r = mlkit("runs", "cancel", run.name, "--root", str(root), env=slurm.env)
        assert r.returncode == 0, r.stderr
        assert f"Slurm job {jid} cancelled (CANCELLED); the run is interrupted" in r.stdout, r.stdout
        assert not in_squeue(slurm, jid)
        m = meta(run)
        assert (m["status"], m["error"]) == ("interrupted", f"cancelled with mlkit runs cancel (scancel {jid})"), m
        again = mlkit("runs", "cancel", run.name, "--root", str(root), env=slurm.env)
        assert (again.returncode, again.stderr.count("\n")) == (1, 1) and "has ended (interrupted)" in again.stderr


def test_mlkit_jobs_shows_state_node_and_elapsed(slurm, tmp_path):
    root = tmp_path/"runs"
    running = sbatch(slurm, "--wrap", "sleep 300")
    done = sbatch(slurm, "--wrap", "true")
    wait_state(slurm, running, ("RUNNING",))
    wait_state(slurm, done, ("COMPLETED",))
    on = slurm_run(root, "on", running, "running")
    ended = slurm_run(root, "ended", done, "finished")
    plain = slurm_run(root, "plain", None, "finished")
    try:
        time.sleep(1.1)
        r = mlkit("jobs", "--root", str(root), env=slurm.env)
        assert r.returncode == 0, r.stderr
        got = rows(r.stdout)
        assert list(got) == [on.name], r.stdout  # the default: queued and running runs only
        assert got[on.name][1:6] == ["on", running, "RUNNING", slurm.host, got[on.name][5]]
        assert re.fullmatch(r"0:00:0[1-9]|0:00:[1-5]\d", got[on.name][5]), got  # elapsed, H:MM:SS
        assert r.stdout.split("\n")[0].split() == ["run", "name", "job", "state", "node", "elapsed", "status"]
        got = rows(mlkit("jobs", "--all", "--root", str(root), env=slurm.env).stdout)
        assert sorted(got) == sorted([on.name, ended.name]) and plain.name not in got
        assert got[ended.name][3:5] == ["COMPLETED", slurm.host] and got[ended.name][-1] == "finished"
    finally: slurm.run("scancel", running, check=False)


def test_runs_ls_shows_a_requeued_interrupted_run_as_queued_without_writing_it(slurm, tmp_path):
    root = tmp_path/"runs"
    jid = sbatch(slurm, "--hold", "--wrap", "sleep 300")
    try:
        run = slurm_run(root, "again", jid, "interrupted")
        r = mlkit("runs", "ls", "--root", str(root), "--status", "queued", env=slurm.env)
        assert list(rows(r.stdout)) == [run.name], r.stdout + r.stderr
        assert meta(run)["status"] == "interrupted"
    finally: slurm.run("scancel", jid, check=False)
    wait_state(slurm, jid, ("CANCELLED",))
    mlkit("runs", "ls", "--root", str(root), env=slurm.env)
    assert (meta(run)["status"], meta(run)["slurm"]["state"]) == ("interrupted", "CANCELLED")  # asked no more


def fake_squeue(folder:Path, script:str) -> dict:
    "A PATH whose squeue (and scontrol, sacct, scancel) is `script`, with the commands it was asked noted in asked.txt."
    folder.mkdir()
    for name in ("squeue", "scontrol", "sacct", "scancel"):
        (folder/name).write_text(f"#!/bin/sh\necho {name} \"$@\" >> {folder}/asked.txt\n{script}\n")
        (folder/name).chmod(0o755)
    return {"PATH": f"{folder}:/usr/bin:/bin"}


def test_runs_ls_asks_slurm_nothing_when_no_run_has_a_live_job(tmp_path):
    root = tmp_path/"runs"
    for i in range(3): slurm_run(root, f"plain{i}", None, "finished")
    slurm_run(root, "over", "77", "failed")  # a job, but a record that has ended: nothing to ask
    env = fake_squeue(tmp_path/"bin", "exit 1")
    r = mlkit("runs", "ls", "--root", str(root), env=env)
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    assert not (tmp_path/"bin"/"asked.txt").exists()
    slurm_run(root, "waiting", "78", "queued")
    mlkit("runs", "ls", "--root", str(root), env=env)
    assert (tmp_path/"bin"/"asked.txt").read_text().startswith("squeue -h -r -t all -j 78 ")


def test_runs_ls_without_slurm_shows_records_as_recorded_with_one_note(tmp_path):
    root = tmp_path/"runs"
    a, b = slurm_run(root, "a", "101", "queued"), slurm_run(root, "b", "102", "running")
    bare = tmp_path/"bare"
    bare.mkdir()
    r = mlkit("runs", "ls", "--root", str(root), env={"PATH": str(bare)})
    assert r.returncode == 0, r.stderr
    assert r.stderr == ("mlkit: no Slurm here: squeue is not on PATH: the states of runs with Slurm jobs are as "
                        "recorded\n"), r.stderr
    assert rows(r.stdout)[a.name][2] == "queued" and meta(b)["status"] == "running"
    r = mlkit("jobs", "--root", str(root), env={"PATH": str(bare)})
    assert (r.returncode, r.stderr) == (1, "mlkit jobs: error: no Slurm here: squeue is not on PATH\n")


def test_a_controller_that_does_not_answer_leaves_records_as_recorded(tmp_path):
    root = tmp_path/"runs"
    run = slurm_run(root, "a", "101", "queued")
    down = "echo 'slurm_load_jobs error: Unable to contact slurm controller (connect failure)' >&2; exit 1"
    env = fake_squeue(tmp_path/"bin", down)
    r = mlkit("runs", "ls", "--root", str(root), env=env)
    assert r.returncode == 0 and rows(r.stdout)[run.name][2] == "queued"
    assert r.stderr == ("mlkit: Slurm does not answer: squeue: slurm_load_jobs error: Unable to contact slurm controller "
                        "(connect failure): the states of runs with Slurm jobs are as recorded\n"), r.stderr
    r = mlkit("runs", "cancel", "a", "--root", str(root), env=env)
    assert r.stderr == ("mlkit runs: error: Slurm does not answer: squeue: slurm_load_jobs error: Unable to contact slurm "
                        "controller (connect failure)\n") and r.returncode == 1, r.stderr
    assert "scancel" not in (tmp_path/"bin"/"asked.txt").read_text() and meta(run)["status"] == "queued"


def test_runs_cancel_of_a_run_without_a_job_is_one_line(tmp_path):
    root = tmp_path/"runs"
    run = slurm_run(root, "local", None, "running")
    r = mlkit("runs", "cancel", "local", "--root", str(root))
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == (f"mlkit runs: error: run {run.name} has no Slurm job to cancel (it was not started with mlkit "
                        "run --slurm)\n"), r.stderr


def test_runs_cancel_waits_for_the_job_to_record_its_own_interruption(slurm, tmp_path):
    "A running job's own process writes `interrupted` on SIGTERM, after a moment: the command waits, and that record stands."
    root = tmp_path/"runs"
    run = slurm_run(root, "self", None, "running")
    job = tmp_path/"job.py"
    job.write_text(f"""#!{sys.executable}
import json, signal, sys, time
def ended(signum, frame):
    time.sleep(2)  # the job's own end takes a moment
    m = json.load(open({str(run/"meta.json")!r}))
    m.update(status="interrupted", error="SIGTERM (the job said so)")
    json.dump(m, open({str(run/"meta.json")!r}, "w"))
    sys.exit(143)
signal.signal(signal.SIGTERM, ended)
time.sleep(300)
""")
    jid = sbatch(slurm, "-e", str(run/"slurm"/"%j_0_log.err"), str(job))
    m = meta(run)
    m["slurm"] = {"job_id": jid, "folder": str(run/"slurm")}
    (run/"meta.json").write_text(json.dumps(m))
    wait_state(slurm, jid, ("RUNNING",))
    time.sleep(0.5)  # the trap is set
    r = mlkit("runs", "cancel", "self", "--root", str(root), env=slurm.env)
    assert r.returncode == 0, r.stderr
    assert (meta(run)["status"], meta(run)["error"]) == ("interrupted", "SIGTERM (the job said so)")
    assert not in_squeue(slurm, jid)


@pytest.mark.slow
def test_runs_ls_with_the_real_controller_down_shows_records_as_recorded(tmp_path):
    "On a cluster of its own (the session's is shared): slurmctld stopped, `runs ls` still lists, saying why in one line."
    import tempfile

    from slurm_cluster import SlurmCluster, missing
    if (why := missing()) is not None: pytest.skip(f"no Slurm cluster: {why}")
    folder = tempfile.mkdtemp(prefix="mlkit-slurm-")
    cluster = SlurmCluster(folder).start()
    try:
        root = tmp_path/"runs"
        jid = cluster.run("sbatch", "--parsable", "--hold", "--wrap", "sleep 300").stdout.strip()
        run = slurm_run(root, "held", jid, "queued")
        cluster.stop_controller()
        r = mlkit("runs", "ls", "--root", str(root), env=cluster.env)
        assert r.returncode == 0 and rows(r.stdout)[run.name][2] == "queued", r.stdout + r.stderr
        assert r.stderr.startswith("mlkit: Slurm does not answer: squeue: ") and r.stderr.endswith(
            ": the states of runs with Slurm jobs are as recorded\n") and r.stderr.count("\n") == 1, r.stderr
        assert meta(run)["status"] == "queued"
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_jobs_and_runs_cancel_on_a_run_submitted_with_mlkit_run_slurm(slurm, tmp_path):
    "The whole way: `mlkit run --slurm` queues a notebook that runs long; `mlkit jobs` shows it; `mlkit runs cancel` ends it."
    nb = tmp_path/"long.ipynb"
    nb.write_text(json.dumps({"cells": [{"cell_type": "code", "execution_count": None, "id": "a1", "metadata": {},
                                         "outputs": [], "source": ["import time\n", "time.sleep(600)"]}],
                              "metadata": {"kernelspec": {"display_name": "mlkit", "language": "python", "name": "mlkit"}},
                              "nbformat": 4, "nbformat_minor": 5}))
    root = tmp_path/"runs"
    env = {**slurm.env, "MLKIT_RUNS_DIR": str(root)}
    repo = Path(__file__).resolve().parents[1]
    r = subprocess.run([MLKIT, "run", str(nb), "--slurm", "--name", "long"], capture_output=True, text=True, timeout=300,
                       cwd=repo, env={**os.environ, **env})
    assert r.returncode == 0, r.stderr[-3000:]
    [run] = [p for p in root.iterdir() if (p/"meta.json").is_file()]
    jid = meta(run)["slurm"]["job_id"]
    deadline = time.monotonic() + 180
    while meta(run)["status"] != "running":
        assert time.monotonic() < deadline and meta(run)["status"] == "queued", meta(run)
        time.sleep(0.5)
    time.sleep(3)  # the kernel is in its cell
    got = rows(mlkit("jobs", env=env).stdout)
    assert got[run.name][1:5] == ["long", jid, "RUNNING", slurm.host] and got[run.name][-1] == "running", got
    r = mlkit("runs", "cancel", "long", env=env)
    assert r.returncode == 0, r.stderr
    m = meta(run)
    assert m["status"] == "interrupted" and m["end"], m
    assert m["error"].startswith("SIGTERM"), m["error"]  # the job's own process said so: the command waited for it
    assert not in_squeue(slurm, jid)
