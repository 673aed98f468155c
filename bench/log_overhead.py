"""Cost of logging one scalar: mlkit's LocalTracker against TensorBoard and MLflow (issue: tracking).

Microseconds per `log_metrics` call of one scalar, flush and close included, for LocalTracker, TensorBoard's
`SummaryWriter.add_scalar`, and MLflow's `log_metric` on a local SQLite store, synchronous and with
`synchronous=False`. Each round times every logger on a fresh run, interleaved; medians over the rounds.
Target: LocalTracker <= 2 us per call.
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


def tensorboard(folder, n):
    from torch.utils.tensorboard import SummaryWriter
    writer = SummaryWriter(str(folder/"tb"/str(time.time_ns())))
    t0 = time.perf_counter()
    for i in range(n): writer.add_scalar("loss", 0.5, i)
    writer.close()
    return time.perf_counter() - t0


def mlflow(synchronous):
    def run(folder, n):
        import mlflow as mlf
        from mlflow.tracking import MlflowClient
        client = MlflowClient(f"sqlite:///{folder/'mlflow.db'}")
        exp = client.get_experiment_by_name("bench") or client.get_experiment(client.create_experiment("bench"))
        run_id = client.create_run(exp.experiment_id).info.run_id
        t0 = time.perf_counter()
        for i in range(n): client.log_metric(run_id, "loss", 0.5, step=i, synchronous=synchronous)
        if not synchronous: mlf.flush_async_logging()
        client.set_terminated(run_id)
        return time.perf_counter() - t0
    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    os.environ.setdefault("MLKIT_RUNS_DIR", tempfile.mkdtemp())
    loggers = {  # name: (function, calls per round)
        "mlkit LocalTracker": (local, 50_000),
        "TensorBoard add_scalar": (tensorboard, 5_000),
        "MLflow log_metric (SQLite, sync)": (mlflow(True), 100),
        "MLflow log_metric (SQLite, async)": (mlflow(False), 1_000),
    }
    folder = Path(tempfile.mkdtemp())
    for f, _ in loggers.values(): f(folder, 10)  # warm-up: imports, schema creation
    times = {k: [] for k in loggers}
    for _ in range(max(args.rounds, 5)):
        for k, (f, n) in loggers.items(): times[k].append(f(folder, n) / n * 1e6)
    print(f"{'':36s} {'us per call (median)':>21s}   ({max(args.rounds, 5)} rounds, close/flush included)")
    base = statistics.median(times["mlkit LocalTracker"])
    for k, ts in times.items():
        m = statistics.median(ts)
        print(f"{k:36s} {m:21.2f}   {m / base:8.1f}x LocalTracker")
    print("target: LocalTracker <= 2 us per call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
