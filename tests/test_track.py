"Tracking against the real libraries, under concurrency, kills and signals, and with secrets around."
import json
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlkit.runs import list_runs, open_run
from mlkit.track import LocalTracker, MLflowTracker, MultiTracker, TensorBoardTracker, WandbTracker

JOB = Path(__file__).parent/"jobs"/"track_job.py"


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


@pytest.mark.parametrize("synchronous", [True, False])
def test_mlflow_sqlite(runs_root, synchronous):
    from mlflow.tracking import MlflowClient
    with MLflowTracker(name="mf", synchronous=synchronous) as run:
        run.log_params({"lr": 0.1, "opt": {"name": "sgd"}, "api_token": "tok-123456"})
        for i in range(4): run.log_metrics({"loss": 1.0 / (i + 1)}, step=i)
    assert run.tracking_uri.startswith("sqlite:///") and (runs_root/"_mlflow"/"mlflow.db").is_file()
    client = MlflowClient(run.tracking_uri)
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED"
    assert got.data.params == {"lr": "0.1", "opt.name": "sgd", "api_token": "***"}
    assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, "loss")] == [(i, 1 / (i + 1)) for i in range(4)]


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
    with WandbTracker(project="mlkit-test", name="wb", mode="offline") as run:
        run.log_params({"lr": 0.1, "password": "hunter2-pass"})
        for i in range(3): run.log_metrics({"loss": 1.0 / (i + 1)}, step=i)
    files = list((runs_root/"_wandb").rglob("run-*.wandb"))
    assert len(files) == 1
    records = _wandb_records(files[0])
    history = [{_item_key(i): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    assert [h["loss"] for h in history] == [1.0, 0.5, 1 / 3]
    config = {_item_key(i): json.loads(i.value_json)
              for r in records if r.WhichOneof("record_type") == "config" for i in r.config.update}
    assert config["lr"] == 0.1 and config["password"] == "***"


SECRETS = {"FOO_API_KEY": "foo-secret-value-1", "WANDB_API_KEY": "wandb-secret-value-2",
           "AWS_SECRET_ACCESS_KEY": "aws-secret-value-3"}


def test_no_secret_reaches_the_runs_folder(runs_root, monkeypatch):
    for k, v in SECRETS.items(): monkeypatch.setenv(k, v)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://alice:mlflow-pass-4@mlflow.example.com")
    monkeypatch.setattr(sys, "argv", ["train.py", "--wandb-key", SECRETS["WANDB_API_KEY"], "--lr", "0.1"])
    local = LocalTracker(name="secrets")
    tracker = MultiTracker(local, TensorBoardTracker(name="secrets"),
                           MLflowTracker(tracking_uri=f"sqlite:///{runs_root/'_mlflow'/'mlflow.db'}"),
                           WandbTracker(project="mlkit-test", mode="offline"))
    (runs_root/"_mlflow").mkdir(exist_ok=True)
    with tracker as run:
        run.log_params({"api_token": "param-token-5", "tracking_uri": "postgresql://bob:db-pass-6@db/mlflow", "lr": 0.1})
        run.log_metrics({"loss": 0.5}, step=0)
    values = [*SECRETS.values(), "mlflow-pass-4", "param-token-5", "db-pass-6"]
    leaks = [(str(p), v) for p in runs_root.rglob("*") if p.is_file() for v in values if v.encode() in p.read_bytes()]
    assert leaks == []
    meta = open_run(local.path).meta
    assert meta["env"]["MLFLOW_TRACKING_URI"] == "https://mlflow.example.com"
    assert meta["command"] == ["train.py", "--wandb-key", "***", "--lr", "0.1"]


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
