"`mlkit run --slurm` against a real single-node Slurm cluster started by the tests (tests/slurm_cluster.py)."
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from slurm_cluster import wait_for

REPO = Path(__file__).resolve().parents[1]
MLKIT = str(Path(sys.executable).with_name("mlkit"))
DIGITS = REPO/"nbs"/"experiments"/"train_digits.ipynb"
CURVES = ("train_loss_step", "lr", "train_loss", "valid_loss", "accuracy")  # not the timings: they differ run to run


def mlkit(*args, env=None, cwd=REPO, timeout=600, **kw):
    return subprocess.run([MLKIT, *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout, **kw)


def only_run(runs: Path) -> Path:
    found = [p for p in runs.iterdir() if (p/"meta.json").is_file()]
    assert len(found) == 1, found
    return found[0]


def the_run(runs: Path) -> Path | None:
    "The run folder in `runs` once there is one (not the `.tmp-` folder a run is assembled in)."
    return next((p.parent for p in runs.glob("*/meta.json") if not p.parent.name.startswith(".")), None)


def meta(run: Path) -> dict:
    return json.loads((run/"meta.json").read_text())


def curves(run: Path) -> list:
    "metrics.csv's training curves as (step, name, value), in order."
    with open(run/"metrics.csv") as f:
        return [(int(r["step"]), r["name"], float(r["value"])) for r in csv.DictReader(f) if r["name"] in CURVES]


def epochs_done(run: Path) -> int:
    try: return sum(1 for _, name, _ in curves(run) if name == "valid_loss")
    except (OSError, ValueError, KeyError): return 0


def release(slurm, job: str):
    "A requeued job waits ~2 minutes (Slurm's BeginTime) before it may start again: let it start now."
    def pending():
        return slurm.run("squeue", "-h", "-j", job, "-o", "%T %r", check=False).stdout.split()[:2] == ["PENDING", "BeginTime"]
    try: wait_for(pending, 120, what=f"job {job} pending after its requeue")
    except AssertionError as e:
        raise AssertionError(f"{e}: {slurm.run('scontrol', 'show', 'job', job, check=False).stdout}") from None
    slurm.run("scontrol", "update", f"JobId={job}", "StartTime=now")


@pytest.fixture
def env(slurm, tmp_path):
    return {**os.environ, **slurm.env, "MLKIT_RUNS_DIR": str(tmp_path/"runs")}


@pytest.fixture(scope="module")
def slow_digits(tmp_path_factory):
    "The digits notebook, each of whose epochs also sleeps $PAUSE_S (an environment variable: the same parameters)."
    nb = json.loads(DIGITS.read_text())
    old = 'Checkpoint(checkpoints, monitor="valid_loss")])'
    for c in nb["cells"]:
        s = "".join(c["source"])
        if old in s:
            s = s.replace(old, old[:-2] + ", Pause()])")
            c["source"] = ("import os\nimport time\n\nfrom mlkit.events import Callback\n\nclass Pause(Callback):\n"
                           "    def after_epoch(self): time.sleep(float(os.environ.get('PAUSE_S', '0')))\n" + s)
    path = tmp_path_factory.mktemp("notebooks")/"slow_digits.ipynb"  # not in nbs/: `make check` lints that
    path.write_text(json.dumps(nb))
    return path


@pytest.mark.slow
def test_run_slurm_wait_trains_digits_and_records_the_job(env, tmp_path, slurm):
    r = mlkit("run", DIGITS, "--slurm", "--wait", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    run = only_run(tmp_path/"runs")
    m = meta(run)
    assert m["status"] == "finished" and m["error"] is None, m
    job = m["slurm"]["job_id"]
    assert f"is Slurm job {job} on {slurm.name}, queued" in r.stdout, r.stdout
    assert m["slurm"]["cluster"] == slurm.name and m["started"]["job_id"] == job and not m.get("resumes")
    assert slurm.run("scontrol", "show", "job", job).stdout.count("JobState=COMPLETED") == 1
    assert "epoch 15/15" in r.stderr + r.stdout  # --wait follows the job's output
    records = json.loads((run/"records.json").read_text())
    assert records["test_accuracy"] >= 0.95, records
    assert f"run {run.name} finished" in r.stdout


def _baseline(slow_digits, env, tmp_path, params):
    "The same notebook and parameters, never requeued (also through Slurm: the same environment)."
    base_env = {**env, "MLKIT_RUNS_DIR": str(tmp_path/"baseline")}
    r = mlkit("run", slow_digits, "--slurm", "--wait", *params, env=base_env)
    assert r.returncode == 0, r.stderr[-3000:]
    return curves(only_run(tmp_path/"baseline"))


@pytest.mark.slow
def test_a_run_requeued_after_its_third_epoch_continues_its_folder_from_the_checkpoint(slow_digits, env, tmp_path, slurm):
    params = ("-p", "epochs", "6")
    waiting = subprocess.Popen([MLKIT, "run", slow_digits, "--slurm", "--wait", *params], cwd=REPO, text=True,
                               env={**env, "PAUSE_S": "1.5"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    runs = tmp_path/"runs"
    run = wait_for(lambda: the_run(runs), 60, what="the run folder")
    wait_for(lambda: epochs_done(run) >= 3, 240, what="three epochs")
    job = meta(run)["slurm"]["job_id"]  # written before the job could start
    slurm.run("scontrol", "requeue", job)
    release(slurm, job)
    out, err = waiting.communicate(timeout=400)
    assert waiting.returncode == 0, err[-3000:]
    m = meta(run)
    assert m["status"] == "finished" and only_run(runs) == run, m
    [resume] = m["resumes"]
    assert resume["job_id"] == job and resume["restart"] == 1 and resume["after_step"] % 19 == 0, resume
    assert 3 * 19 <= resume["after_step"] < 6 * 19, resume  # from the checkpoint of an epoch after the third
    assert curves(run) == _baseline(slow_digits, env, tmp_path, params)  # step for step, the run that never stopped


@pytest.mark.slow
def test_a_time_limit_reached_mid_training_requeues_and_finishes_the_same_run(slow_digits, env, tmp_path, slurm):
    params = ("-p", "epochs", "8")
    # a minute, and SIGUSR2 50 s before it: Slurm looks at time limits every ~30 s, so each start gets 10-40 s (a kernel
    # start takes ~10 of them) and trains an epoch or more of the 24 s the run needs; each start continues the last
    waiting = subprocess.Popen([MLKIT, "run", slow_digits, "--slurm", "--wait", "--time", "1", "--slurm-opt",
                                "signal=USR2@50", *params], cwd=REPO, text=True, env={**env, "PAUSE_S": "3"},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    runs = tmp_path/"runs"
    run = wait_for(lambda: the_run(runs), 60, what="the run folder")
    job = wait_for(lambda: (meta(run).get("slurm") or {}).get("job_id"), 60, what="the job's id in meta.json")
    for requeues in range(1, 10):
        def requeued_or_ended(n=requeues):
            return waiting.poll() is not None or meta(run)["slurm"].get("requeued", 0) >= n
        wait_for(requeued_or_ended, 200, what="a requeue or the end")
        if waiting.poll() is not None: break
        release(slurm, job)
    out, err = waiting.communicate(timeout=300)
    assert waiting.returncode == 0, (meta(run), err[-3000:])
    m = meta(run)
    assert m["status"] == "finished" and m["slurm"]["requeued"] >= 1 and len(m["resumes"]) == m["slurm"]["requeued"], m
    assert all(r["job_id"] == job for r in m["resumes"]) and any(r["after_step"] for r in m["resumes"]), m["resumes"]
    assert curves(run) == _baseline(slow_digits, env, tmp_path, params)


def test_bad_input_is_one_line_and_leaves_no_run_folder(slurm, tmp_path):
    nb = REPO/"tests"/"notebooks"/"train_tiny.ipynb"
    runs = tmp_path/"runs"
    env = {**os.environ, **slurm.env, "MLKIT_RUNS_DIR": str(runs)}
    no_slurm = {**env, "PATH": os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not Path(p, "sbatch").exists())}
    cases = [(("--partition", "nope"), env, "sbatch refused the job: Batch job submission failed: Invalid partition name"),
             (("--time", "1:xx"), env, "sbatch refused the job: Invalid --time specification"),
             ((), no_slurm, "no Slurm here: sbatch is not on PATH"),
             ((), {**env, "SLURM_CONF": str(tmp_path/"none.conf")}, f"SLURM_CONF={tmp_path/'none.conf'} cannot be read"),
             (("--gpus", "1"), env, "--gpus does not go with --slurm: ask Slurm for them with --gpus-per-node"),
             (("--nodes", "2"), env, "--nodes N needs --nproc M"),
             (("--slurm-opt", "output=x.log"), env, "--output is mlkit's to set"),
             (("--nodes", "x"), env, "--nodes must be a whole number of nodes (1, 2, ...), got 'x'"),
             (("--slurm-opt", "nodes=1-2"), env, "--nodes must be a whole number of nodes (1, 2, ...), got '1-2'"),
             (("--slurm-opt", "export=NONE"), env, "--export=NONE would keep mlkit's environment from the job")]
    for args, e, message in cases:
        r = mlkit("run", nb, "--slurm", *args, env=e)
        assert r.returncode == 1 and r.stderr.startswith(f"mlkit run: error: {message}"), (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
        assert "Traceback" not in r.stderr and (not runs.exists() or not any(runs.iterdir())), (args, r.stderr)
    r = mlkit("run", nb, "--time", "10", env=env)
    assert (r.returncode, r.stderr.strip()) == (1, "mlkit run: error: --time goes with --slurm (submit to Slurm); "
                                                   "without --slurm nothing is submitted"), r.stderr


def test_no_controller_is_one_line(tmp_path):
    from slurm_cluster import SlurmCluster, missing
    if (why := missing()) is not None: pytest.skip(f"no Slurm cluster: {why}")
    import tempfile
    cluster = SlurmCluster(tempfile.mkdtemp(prefix="mlkit-slurm-")).start()
    try:
        cluster.stop_controller()
        env = {**os.environ, **cluster.env, "MLKIT_RUNS_DIR": str(tmp_path/"runs")}
        r = mlkit("run", REPO/"tests"/"notebooks"/"train_tiny.ipynb", "--slurm", env=env)
        assert r.returncode == 1 and r.stderr.strip().startswith("mlkit run: error: Slurm's controller does not answer"), r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not (tmp_path/"runs").exists() or not any((tmp_path/"runs").iterdir())
    finally:
        cluster.stop()
        shutil.rmtree(cluster.folder, ignore_errors=True)


def test_a_job_that_fails_before_the_notebook_starts_fails_its_run_with_the_job_s_error(slurm, tmp_path):
    project = tmp_path/"project"
    (project/"nbs").mkdir(parents=True)
    (project/"settings.ini").write_text("[DEFAULT]\nlib_name = demo\n\n[slurm]\npython = /no/such/python\n")
    shutil.copy(REPO/"tests"/"notebooks"/"train_tiny.ipynb", project/"nbs")
    env = {**os.environ, **slurm.env, "MLKIT_RUNS_DIR": str(tmp_path/"runs")}
    r = mlkit("run", "nbs/train_tiny.ipynb", "--slurm", "--wait", env=env, cwd=project, timeout=180)
    run = only_run(tmp_path/"runs")
    m = meta(run)
    assert r.returncode == 1 and m["status"] == "failed", (r.stderr, m)
    assert m["error"].startswith(f"Slurm job {m['slurm']['job_id']} ended before the run recorded its end: ")
    assert "/no/such/python" in m["error"] and "No such file or directory" in m["error"], m["error"]
    assert m["error"] in r.stderr


def test_secret_parameters_reach_the_job_and_no_file(slurm, tmp_path):
    nb = tmp_path/"secret.ipynb"
    nb.write_text(json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "code", "id": "p", "metadata": {"tags": ["parameters"]}, "execution_count": None, "outputs": [],
         "source": "api_key = ''"},
        {"cell_type": "code", "id": "r", "metadata": {}, "execution_count": None, "outputs": [],
         "source": "from mlkit.track import record\nrecord('key_length', len(api_key))"}]}))
    secret = "1728-eulav-terc3s"[::-1]  # reversed: a dirty tree's git diff, which runs record, must not hold it
    env = {**os.environ, **slurm.env, "MLKIT_RUNS_DIR": str(tmp_path/"runs")}
    r = mlkit("run", nb, "--slurm", "--wait", "-p", "api_key", secret, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    run = only_run(tmp_path/"runs")
    assert json.loads((run/"records.json").read_text())["key_length"] == len(secret)
    leaks = [p for p in run.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert not leaks, leaks
    assert secret not in r.stdout + r.stderr


@pytest.mark.slow
def test_two_nodes_by_one_process_record_one_run_from_rank_0(tmp_path):
    "`--nodes 2 --nproc 1` on a two-node cluster: two slurmd on this host (`slurmd -N`), the nodes meet at node 0's NodeAddr."
    from slurm_cluster import SlurmCluster, missing
    if (why := missing()) is not None: pytest.skip(f"no Slurm cluster: {why}")
    import tempfile
    cluster = SlurmCluster(tempfile.mkdtemp(prefix="mlkit-slurm-"), nodes=2).start()
    try:
        env = {**os.environ, **cluster.env, "MLKIT_RUNS_DIR": str(tmp_path/"runs")}
        r = mlkit("run", DIGITS, "--slurm", "--wait", "--nodes", "2", "--nproc", "1", "-p", "epochs", "3", env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        run = only_run(tmp_path/"runs")  # node 1 wrote no run folder
        m = meta(run)
        assert (m["status"], m["nproc"], m["slurm"]["options"]["nodes"]) == ("finished", 1, "2"), m
        job = m["slurm"]["job_id"]
        assert "NumNodes=2" in cluster.run("scontrol", "show", "job", job).stdout
        node1 = (run/"slurm"/f"{job}_1_log.out").read_text()  # the second node's rank, in the same DDP job, records nothing
        accuracy = json.loads((run/"records.json").read_text())["test_accuracy"]
        assert f"test accuracy {accuracy:.4f}  (run None: None)" in node1, node1
    finally:
        cluster.stop()
        shutil.rmtree(cluster.folder, ignore_errors=True)


def test_ctrl_c_while_waiting_leaves_the_job_running_and_says_so(slurm, tmp_path):
    "A terminal's Ctrl-C signals the whole process group: --wait stops, the job goes on, one line says how to end it."
    import signal
    nb = tmp_path/"sleepy.ipynb"
    nb.write_text(json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "code", "id": "s", "metadata": {}, "execution_count": None, "outputs": [],
         "source": "import time\ntime.sleep(120)"}]}))
    env = {**os.environ, **slurm.env, "MLKIT_RUNS_DIR": str(tmp_path/"runs")}
    waiting = subprocess.Popen([MLKIT, "run", nb, "--slurm", "--wait"], cwd=tmp_path, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as a terminal's job
    run = wait_for(lambda: the_run(tmp_path/"runs"), 60, what="the run folder")
    wait_for(lambda: meta(run)["status"] == "running", 120, what="the run running on its node")
    os.killpg(waiting.pid, signal.SIGINT)
    out, err = waiting.communicate(timeout=60)
    job = meta(run)["slurm"]["job_id"]
    assert waiting.returncode == 130 and err.strip().splitlines()[-1] == (
        f"mlkit run: interrupted: stopped waiting; Slurm job {job} goes on ('mlkit runs cancel {run.name}' ends it)"), err
    assert slurm.run("squeue", "-h", "-j", job, "-o", "%T").stdout.strip() == "RUNNING"
    r = mlkit("runs", "cancel", run.name, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = meta(run)
    assert m["status"] == "interrupted" and not slurm.run("squeue", "-h", "-j", job).stdout.strip(), m


def test_run_help_shows_the_project_s_slurm_defaults_and_submission_uses_them(slurm, tmp_path):
    "The README: a [slurm] section holds the project's defaults, shown by `mlkit run --help`; `setup` runs first on the node."
    project = tmp_path/"project"
    (project/"nbs").mkdir(parents=True)
    (project/"settings.ini").write_text("[DEFAULT]\nlib_name = demo\n\n[slurm]\npartition = debug\n"
                                        "setup = echo set-up-ran >&2\n")
    shutil.copy(REPO/"tests"/"notebooks"/"train_tiny.ipynb", project/"nbs")
    env = {**os.environ, **slurm.env, "MLKIT_RUNS_DIR": str(tmp_path/"runs")}
    r = mlkit("run", "--help", env=env, cwd=project)
    assert "Slurm defaults (settings.ini [slurm]): partition=debug, setup=echo set-up-ran >&2" in r.stdout, r.stdout
    r = mlkit("run", "nbs/train_tiny.ipynb", "--slurm", "--wait", env=env, cwd=project, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    run = only_run(tmp_path/"runs")
    m = meta(run)
    assert m["slurm"]["options"]["partition"] == "debug", m["slurm"]
    assert "set-up-ran" in (run/"slurm"/f"{m['slurm']['job_id']}_0_log.err").read_text()
