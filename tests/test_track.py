"Tracking against the real libraries, under concurrency, kills and signals, and with secrets around."
import json
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mlkit.runs import list_runs, open_run, read_metrics
from mlkit.track import LocalTracker, MLflowTracker, MultiTracker, TensorBoardTracker, TrackingCallback, WandbTracker

# the notebooks these tests cover: `make test NB=...` runs them
COVERS = ("09_runs", "10_track", "10b_tracker", "10c_local_tracker", "10d_trackers", "10a_mlflow_writer")

JOBS = Path(__file__).parent/"jobs"
JOB = JOBS/"track_job.py"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def untouched_working_directory(tmp_path_factory, monkeypatch):
    "Every test here runs in an empty working directory, and must leave it empty (MLflow once wrote ./mlflow.db)."
    cwd = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("MLKIT_PROJECT_ROOT", str(REPO))
    yield
    assert sorted(p.name for p in cwd.iterdir()) == []


@pytest.fixture
def runs_root(tmp_path, monkeypatch):
    root = tmp_path/"runs"
    monkeypatch.setenv("MLKIT_RUNS_DIR", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return root


def test_tensorboard_event_files_read_by_tensorboard(runs_root):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    with TensorBoardTracker(name="tb") as run:
        run.log_params({"lr": 0.1})
        for i in range(5): run.log_metrics({"loss": 1.0 / (i + 1)}, step=i)
    acc = EventAccumulator(str(runs_root/"_tensorboard"/"tb"))
    acc.Reload()
    assert [(e.step, round(e.value, 6)) for e in acc.Scalars("loss")] == [(i, round(1 / (i + 1), 6)) for i in range(5)]
    assert "params" in acc.Tags()["tensors"] or "params/text_summary" in acc.Tags()["tensors"]


def test_mlflow_sqlite(runs_root):
    from mlflow.tracking import MlflowClient
    with MLflowTracker(name="mf") as run:
        run.log_params({"lr": 0.1, "opt": {"name": "sgd"}, "api_token": "tok-123456"})
        for i in range(4): run.log_metrics({"loss": 1.0 / (i + 1)}, step=i)
        run.flush()  # waits until MLflow has them
        client = MlflowClient(run.tracking_uri)
        assert [m.step for m in client.get_metric_history(run.run_id, "loss")] == [0, 1, 2, 3]
        run.log_params({"lr": 0.2})  # parameters cannot change in MLflow: kept as a tag, no error
        for i in range(4, 2500): run.log_metrics({"loss": 1.0 / (i + 1)}, step=i)  # more than MLflow takes at once
    assert run.tracking_uri.startswith("sqlite:///") and (runs_root/"_mlflow"/"mlflow.db").is_file()
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED"
    assert got.data.params == {"lr": "0.1", "opt.name": "sgd", "api_token": "***"}
    assert got.data.tags["mlkit.changed.lr"] == "0.2"
    assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, "loss")] == [(i, 1 / (i + 1)) for i in range(2500)]


def test_mlflow_unreachable_server_is_one_line(runs_root, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(Exception) as e:
        MLflowTracker(tracking_uri="http://127.0.0.1:9", timeout=30)  # port 9: nothing listens
    assert type(e.value).__name__ == "MlkitError" and "\n" not in str(e.value)


def _item_key(item): return item.key or "/".join(item.nested_key)


def _wandb_records(path):
    "Parse W&B's offline run file: a LevelDB-style log of protobuf Records."
    from wandb.proto import wandb_internal_pb2 as pb
    data, block, records, frag = Path(path).read_bytes(), 32768, [], b""
    pos = 7  # file header ':W&B', magic, version
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        frag += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            r = pb.Record()
            r.ParseFromString(frag)
            records.append(r)
            frag = b""
    return records


def test_wandb_offline(runs_root):
    import wandb
    with WandbTracker(project="mlkit-test", name="wb", mode="offline") as run:
        run.log_params({"lr": 0.1, "password": "hunter2-pass"})
        for i in range(3): run.log_metrics({"loss": 1.0 / (i + 1)}, step=i)
    wandb.teardown()  # W&B's own wait for its service to write everything (not a sleep)
    files = list((runs_root/"_wandb").rglob("run-*.wandb"))
    assert len(files) == 1
    records = _wandb_records(files[0])
    history = [{_item_key(i): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    assert [h["loss"] for h in history] == [1.0, 0.5, 1 / 3]
    config = {_item_key(i): json.loads(i.value_json)
              for r in records if r.WhichOneof("record_type") == "config" for i in r.config.update}
    assert config["lr"] == 0.1 and config["password"] == "***"


def test_concurrent_writers_and_a_lister(runs_root):
    runs_root.mkdir(parents=True)
    writers = [subprocess.Popen([sys.executable, str(JOB), str(runs_root), "write", "10000"]) for _ in range(4)]
    listings = 0
    while any(w.poll() is None for w in writers):
        for r in list_runs(runs_root):
            assert r.status in ("running", "finished")
            values = [v for _, _, v in r.metrics.get("value", [])]
            assert values == [float(i) for i in range(len(values))]  # a prefix, never a torn or lost line
        listings += 1
    assert all(w.returncode == 0 for w in writers) and listings > 0
    runs = list_runs(runs_root)
    assert len(runs) == 4
    for r in runs:
        assert r.status == "finished"
        assert [v for _, _, v in r.metrics["value"]] == [float(i) for i in range(10000)]


def _start_forever(root):
    p = subprocess.Popen([sys.executable, str(JOB), str(root), "forever"], stdout=subprocess.PIPE, text=True)
    path = Path(p.stdout.readline().strip())
    for line in p.stdout:
        if int(line.split()[0]) >= 1500: break  # it has been logging for a while
    return p, path


def test_sigkill_loses_at_most_a_second(runs_root):
    p, path = _start_forever(runs_root)
    last_logged = 0
    deadline = time.time() + 0.3
    for line in p.stdout:
        last_logged = int(line.split()[0])
        if time.time() > deadline: break
    killed_at = time.time()
    p.send_signal(signal.SIGKILL)
    p.wait()
    run = open_run(path)
    assert run.status == "interrupted"  # still marked running, but its process is gone
    rows = run.metrics["value"]
    assert [v for _, _, v in rows] == [float(i) for i in range(len(rows))]
    assert len(rows) >= last_logged - 1000 * 1.0 * 1.5  # ~1 ms per metric: at most about a second lost
    assert killed_at * 1000 - rows[-1][1] < 1500


def test_sigterm_flushes_and_marks_interrupted(runs_root):
    p, path = _start_forever(runs_root)
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=30)
    last_printed = int(out.split("\n")[-2].split()[0]) if out.strip() else 0
    assert p.returncode == -signal.SIGTERM
    run = open_run(path)
    assert run.meta["status"] == "interrupted" and run.meta["error"] == "SIGTERM"
    assert len(run.metrics["value"]) >= last_printed  # everything logged before the signal was written


def test_signals_at_random_moments_never_hang(runs_root):
    "20 SIGTERMs and 20 SIGINTs into loops that flush on the main thread: each exits within 2 s, marked interrupted."
    runs_root.mkdir(parents=True)
    r = subprocess.run([sys.executable, str(JOBS/"signal_job.py"), str(runs_root), "20", "1"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    tries = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(tries) == 40
    hung = [t for t in tries if t["exit"] is None]
    assert hung == [], f"{len(hung)} of 40 processes did not exit within 2 s"
    for t in tries:
        assert t["exit"] == (-signal.SIGTERM if t["signal"] == "SIGTERM" else 130), t
        run = open_run(t["path"])
        assert (run.meta["status"], run.meta["error"]) == ("interrupted", t["signal"] if t["signal"] == "SIGTERM"
                                                           else "KeyboardInterrupt"), t
        rows, bad = read_metrics(Path(t["path"])/"metrics.csv")
        assert bad == 0
        values = [v for _, _, v in rows.get("value", [])]
        assert values == [float(i) for i in range(len(values))]  # whole, in order, nothing twice


def _tb_status(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(log_dir)
    acc.Reload()
    return acc.Tensors("status/text_summary")[-1].tensor_proto.string_val[0].decode()


def _wandb_status(root, run_id):
    records = _wandb_records(next(Path(root).rglob(f"run-{run_id}.wandb")))
    summary = {_item_key(i): json.loads(i.value_json) for r in records if r.WhichOneof("record_type") == "summary"
               for i in r.summary.update}
    exits = [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"]
    return summary.get("mlkit_status"), exits


@pytest.mark.slow
@pytest.mark.parametrize("mode, signum, status", [("normal", None, "finished"), ("exception", None, "failed"),
                                                   ("signal", signal.SIGTERM, "interrupted"),
                                                   ("signal", signal.SIGINT, "interrupted")])
def test_every_tracker_ends_with_the_right_status(runs_root, mode, signum, status):
    from mlflow.tracking import MlflowClient
    p = subprocess.Popen([sys.executable, str(JOBS/"tracker_exit_job.py"), mode], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    ids = json.loads(p.stdout.readline())
    if signum is not None:
        assert p.stdout.readline().strip() == "ready"
        p.send_signal(signum)
    out, err = p.communicate(timeout=120)
    assert p.returncode == {"normal": 0, "exception": 1}.get(mode, -signum if signum == signal.SIGTERM else 1), err
    assert open_run(ids["local"]).meta["status"] == status
    assert _tb_status(ids["tensorboard"]).startswith(status)
    mlflow_status = {"finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}[status]
    assert MlflowClient(ids["mlflow_uri"]).get_run(ids["mlflow"]).info.status == mlflow_status
    assert _wandb_status(runs_root/"_wandb", ids["wandb"]) == (status, [0 if status == "finished" else 1])


def _threads_log_and_flush(root, n=5000, writers=4):
    "Threads log into one tracker while the flusher runs and two more threads and this one flush; returns its run."
    run = LocalTracker(root, capture=False, flush_every=0.001)
    def log(k):
        for i in range(n): run.log_metrics({f"t{k}": float(i)}, step=i)
    loggers = [threading.Thread(target=log, args=(k,)) for k in range(writers)]
    def flush():
        while any(t.is_alive() for t in loggers): run.flush()
    flushers = [threading.Thread(target=flush) for _ in range(2)]
    for t in loggers + flushers: t.start()
    flush()
    for t in flushers: t.join()
    run.finish()
    return run


def test_threads_log_into_one_tracker_while_it_flushes(runs_root):
    "Every metric arrives once, whole, in the order logged (readers take a name's last line as its latest value)."
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, to expose races
    try:
        for _ in range(5):
            run = _threads_log_and_flush(runs_root)
            rows, bad = read_metrics(run.path/"metrics.csv")
            assert bad == 0
            for k in range(4): assert [(s, v) for s, _, v in rows[f"t{k}"]] == [(i, float(i)) for i in range(5000)]
    finally: sys.setswitchinterval(switch)


def test_mlflow_second_fit_with_another_setup(runs_root):
    "A second fit() with more epochs: no MLflow error, the change kept in both stores."
    import torch
    from mlflow.tracking import MlflowClient
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from mlkit.train import Trainer
    ds = TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,)))
    with MultiTracker(LocalTracker(name="twice"), MLflowTracker(name="twice")) as run:
        trainer = Trainer(nn.Linear(4, 2), DataLoader(ds, batch_size=16), progress=False, cbs=[TrackingCallback(run)])
        trainer.fit(1)
        trainer.fit(3)
    local, mlf = run.trackers
    assert open_run(local.path).params["trainer"]["epochs"] == 3
    assert open_run(local.path).meta["param_changes"][0]["changed"] == {"trainer.epochs": [1, 3]}
    got = MlflowClient(mlf.tracking_uri).get_run(mlf.run_id)
    assert (got.info.status, got.data.params["trainer.epochs"], got.data.tags["mlkit.changed.trainer.epochs"]) == \
        ("FINISHED", "1", "3")


@pytest.mark.slow  # a smoke run of `make bench`'s benchmark, importing every tracker library: 11 s
def test_log_overhead_benchmark_leaves_the_working_directory_alone():
    r = subprocess.run([sys.executable, str(REPO/"bench"/"log_overhead.py"), "--quick"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr  # and the autouse fixture checks the working directory stayed empty


def test_the_code_of_a_run_is_kept(tmp_path, monkeypatch):
    "An untracked train.py and an uncommitted change are kept with the run, as artifacts, not in meta.json."
    repo = tmp_path/"project"
    repo.mkdir()
    git = lambda *a: subprocess.run(["git", *a], cwd=repo, capture_output=True, check=True)  # noqa: E731
    (repo/"settings.ini").write_text("[DEFAULT]\nlib_name = demo\n")
    (repo/"model.py").write_text("WIDTH = 8\n")
    git("init", "-q", "-b", "main"); git("add", "."); git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    (repo/"model.py").write_text("WIDTH = 16\n")
    (repo/"train.py").write_text("print('training')\n")
    monkeypatch.setenv("MLKIT_PROJECT_ROOT", str(repo))
    monkeypatch.chdir(repo)
    with LocalTracker(tmp_path/"runs", name="code") as run: pass
    meta = open_run(run.path).meta
    assert (run.path/"artifacts"/"untracked"/"train.py").read_text() == "print('training')\n"
    assert "+WIDTH = 16" in (run.path/"artifacts"/"git.diff").read_text()
    assert meta["git"]["dirty"] is True and "untracked" not in meta["git"] and "diff" not in meta["git"]
    assert (meta["git"]["untracked_artifact"], meta["git"]["diff_artifact"]) == ("artifacts/untracked", "artifacts/git.diff")


def _exit_case(root, mode, signum=None):
    p = subprocess.Popen([sys.executable, str(JOBS/"exit_cases_job.py"), str(root), mode], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    path = Path(p.stdout.readline().strip())
    if signum is not None:
        assert p.stdout.readline().strip() == "ready"
        p.send_signal(signum)
        time.sleep(0.3)
        (root/"stop").touch()
    out, err = p.communicate(timeout=60)
    return p.returncode, path, out, err


def test_an_ignored_sigterm_stays_ignored(runs_root):
    code, path, _, err = _exit_case(runs_root, "ignored", signal.SIGTERM)
    assert code == 0, err
    assert open_run(path).meta["status"] == "finished"


def test_a_graceful_sigterm_handler_of_the_program_decides(runs_root):
    code, path, out, err = _exit_case(runs_root, "graceful", signal.SIGTERM)
    assert code == 0, err
    run = open_run(path)
    assert (run.meta["status"], run.meta["error"]) == ("interrupted", "SIGTERM")
    logged = int(out.split()[-1])
    assert [v for _, _, v in run.metrics["value"]] == [float(i) for i in range(logged)]  # the last 5 too


def test_a_forked_child_does_not_end_its_parents_run(runs_root):
    code, path, _, err = _exit_case(runs_root, "fork")
    assert code == 0, err
    run = open_run(path)
    assert run.meta["status"] == "finished"
    assert [v for _, _, v in run.metrics["value"]] == [float(i) for i in range(10)]  # each once


def test_mlflow_tracking_server_with_credentials(runs_root, tmp_path, monkeypatch, capfd):
    "Against a (stand-in) tracking server with a password in its URI: no error, and the password shows nowhere."
    import urllib.request
    server = subprocess.Popen([sys.executable, str(JOBS/"fake_mlflow_server.py"), str(tmp_path/"port")])
    try:
        while not (tmp_path/"port").exists() or not (tmp_path/"port").read_text(): time.sleep(0.05)
        port = (tmp_path/"port").read_text()
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:pw-sekret-31@127.0.0.1:{port}")
        with MultiTracker(LocalTracker(capture=False), MLflowTracker(name="http", timeout=30)) as run:
            run.log_params({"lr": 0.1})
            for i in range(50): run.log_metrics({"loss": 1 / (i + 1)}, step=i)
            run.flush()
            run.log_params({"lr": 0.2})
        mlf = run.trackers[1]
        status = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/status").read())[mlf.run_id]
    finally: server.kill()
    assert (status["status"], status["metrics"]["loss"], status["params"], status["tags"]["mlkit.changed.lr"]) == \
        ("FINISHED", list(range(50)), {"lr": "0.1"}, "0.2")
    assert mlf.tracking_uri == f"http://127.0.0.1:{port}"
    out, err = capfd.readouterr()
    assert "pw-sekret-31" not in out + err
    assert not any(b"pw-sekret-31" in p.read_bytes() for p in runs_root.rglob("*") if p.is_file())


def test_mlflow_refuses_a_metric_name_and_only_that_one_is_lost(runs_root, capfd):
    from mlflow.tracking import MlflowClient
    with MLflowTracker() as run:
        for i in range(5): run.log_metrics({"ok": float(i), "acc@1": 0.5}, step=i)
        run.flush()
        for i in range(5, 8): run.log_metrics({"ok": float(i), "acc@1": 0.5}, step=i)
    client = MlflowClient(run.tracking_uri)
    assert [m.step for m in client.get_metric_history(run.run_id, "ok")] == list(range(8))
    assert capfd.readouterr().err.count("metric 'acc@1' not recorded") == 1


def test_a_dead_mlflow_writer_costs_one_line_not_the_training(runs_root, tmp_path, capfd):
    (tmp_path/"weights.pt").write_bytes(b"w")
    with MultiTracker(LocalTracker(capture=False), MLflowTracker(flush_every=0.05)) as run:
        run.log_metrics({"loss": 1.0}, step=0)
        run.flush()
        run.trackers[1]._proc.kill()
        for i in range(1, 40):
            run.log_metrics({"loss": 1.0}, step=i)
            time.sleep(0.01)
        run.log_params({"lr": 0.1})
        run.log_artifact(tmp_path/"weights.pt")
        run.flush()
    local = open_run(run.trackers[0].path)
    assert local.meta["status"] == "finished" and len(local.metrics["loss"]) == 40 and local.params == {"lr": 0.1}
    err = capfd.readouterr().err
    assert err.count("mlkit: MLflowTracker: its writer process") == 1, err


def test_continuing_a_run_that_is_gone_trains_on(runs_root, capfd):
    from mlflow.tracking import MlflowClient
    with MultiTracker(LocalTracker(capture=False), MLflowTracker()) as run:
        fresh = run.run_ids()
        run.resume_run({"LocalTracker": "20200101-000000-abcdef", "MLflowTracker": "0123456789abcdef"}, step=3)
        assert run.run_ids() == fresh
        run.log_metrics({"loss": 0.5}, step=4)
    err = capfd.readouterr().err
    assert "cannot be continued" in err and err.count("\n") == 2, err
    client = MlflowClient(run.trackers[1].tracking_uri)
    assert [m.step for m in client.get_metric_history(fresh["MLflowTracker"], "loss")] == [4]
    assert open_run(run.trackers[0].path).metrics["loss"][0][0] == 4


def test_mlflow_default_store_keeps_artifacts_under_the_runs_folder(runs_root, tmp_path):
    (tmp_path/"model.pt").write_bytes(b"weights")
    with MLflowTracker() as run: run.log_artifact(tmp_path/"model.pt", "checkpoints/model.pt")
    assert [p.name for p in (runs_root/"_mlflow"/"artifacts").rglob("model.pt")] == ["model.pt"]
    # and the autouse fixture checks that the working directory stayed empty


def test_a_relative_tracking_uri_of_yours_is_read_from_your_directory(runs_root, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    work = tmp_path/"work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///rel.db")
    with MLflowTracker() as run: run.log_metrics({"loss": 0.5}, step=0)
    assert (work/"rel.db").is_file() and not (runs_root/"_mlflow").exists()
    assert MlflowClient("sqlite:///rel.db").get_run(run.run_id).info.status == "FINISHED"
