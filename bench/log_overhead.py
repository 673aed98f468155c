"""Cost of logging one scalar: mlkit's trackers against TensorBoard's and MLflow's own calls (issue: tracking).

Microseconds per `log_metrics` call of one scalar, flush and close included: mlkit's LocalTracker and MLflowTracker
(buffered; MLflow's writes happen in a helper process), TensorBoard's `SummaryWriter.add_scalar`, and MLflow's
`MlflowClient.log_metric` on a local SQLite store. Each round times every logger on a fresh run, interleaved;
medians over the rounds. Target: LocalTracker <= 2 us per call. Nothing is written outside a temporary folder.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def local(folder, n):
    from mlkit.track import LocalTracker
    run = LocalTracker(folder/"runs", capture=False)
    t0 = time.perf_counter()
    for i in range(n): run.log_metrics({"loss": 0.5}, step=i)
    run.finish()
    return time.perf_counter() - t0


def mlkit_mlflow(folder, n):
    from mlkit.track import MLflowTracker
    run = MLflowTracker(tracking_uri=f"sqlite:///{folder/'mlkit-mlflow.db'}")
    t0 = time.perf_counter()
    for i in range(n): run.log_metrics({"loss": 0.5}, step=i)
    run.finish()  # waits until MLflow has every value
    return time.perf_counter() - t0


def tensorboard(folder, n):
    from torch.utils.tensorboard import SummaryWriter
    writer = SummaryWriter(str(folder/"tb"/str(time.time_ns())))
    t0 = time.perf_counter()
    for i in range(n): writer.add_scalar("loss", 0.5, i)
    writer.close()
    return time.perf_counter() - t0


def mlflow(folder, n):
    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{folder/'mlflow.db'}")
    exp = client.get_experiment_by_name("bench") or client.get_experiment(client.create_experiment("bench"))
    run_id = client.create_run(exp.experiment_id).info.run_id
    t0 = time.perf_counter()
    for i in range(n): client.log_metric(run_id, "loss", 0.5, step=i)
    client.set_terminated(run_id)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds (at least 5, unless --quick)")
    ap.add_argument("--quick", action="store_true", help="one small round: checks that it runs, measures nothing")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp())
    os.environ["MLKIT_RUNS_DIR"] = str(folder/"runs")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    scale, rounds = (0.01, 1) if args.quick else (1, max(args.rounds, 5))
    loggers = {  # name: (function, calls per round)
        "mlkit LocalTracker": (local, 50_000),
        "mlkit MLflowTracker (SQLite)": (mlkit_mlflow, 20_000),
        "TensorBoard add_scalar": (tensorboard, 5_000),
        "MLflow log_metric (SQLite)": (mlflow, 100),
    }
    for f, _ in loggers.values(): f(folder, 10)  # warm-up: imports, schema creation
    times = {k: [] for k in loggers}
    for _ in range(rounds):
        for k, (f, n) in loggers.items():
            n = max(int(n * scale), 10)
            times[k].append(f(folder, n) / n * 1e6)
    print(f"{'':36s} {'us per call (median)':>21s}   ({rounds} rounds, close/flush included)")
    base = statistics.median(times["mlkit LocalTracker"])
    for k, ts in times.items():
        m = statistics.median(ts)
        print(f"{k:36s} {m:21.2f}   {m / base:8.1f}x LocalTracker")
    print("target: LocalTracker <= 2 us per call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
