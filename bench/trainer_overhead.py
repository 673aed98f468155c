"""Trainer overhead against a hand-written PyTorch loop (issue: training loop).

A tiny MLP (64 -> 128 -> 10), batch 64, 8,192 synthetic samples, SGD, one CPU thread. Each round times one epoch
of the raw loop, of the Trainer with the progress bar off, and of the Trainer with its default callbacks on,
interleaved so that machine noise hits all three alike; the medians over the rounds and the ratios to the raw
loop are printed. Targets: <= 1.05x (bar off), <= 1.10x (defaults). A fourth contender, the Trainer with the bar off
and a TrackingCallback logging to a LocalTracker, is compared with the bar-off Trainer (target: <= 2 % more).
Three more log through the external hooks as well — MultiTracker(LocalTracker, X) for X = MLflow (local SQLite),
TensorBoard, W&B (offline) — and are compared with the LocalTracker alone (target for MLflow: <= 1.05x).
It also checks parity: with the same seed, the raw loop and the Trainer compute the same loss sequence.
"""
import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mlkit.track import LocalTracker, MLflowTracker, MultiTracker, TensorBoardTracker, TrackingCallback, WandbTracker
from mlkit.train import Callback, Trainer


def data(n=8192, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 64, generator=g), torch.randint(0, 10, (n,), generator=g))


def model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def raw_epoch(net, dl, opt, losses=None):
    "The loop people write by hand: forward, backward, step, and the epoch's mean loss."
    net.train()
    total, count = 0.0, 0
    for x, y in dl:
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        value = loss.item()
        total += value * len(y)
        count += len(y)
        if losses is not None: losses.append(value)
    return total / count


class LossLog(Callback):
    def __init__(self): self.losses = []
    def after_loss(self): self.losses.append(self.trainer.loss.item())


def parity(epochs=2):
    "Same seed, same data: the raw loop's and the Trainer's per-batch losses, compared exactly."
    raw_losses, net = [], model()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    torch.manual_seed(1)
    dl = DataLoader(data(), batch_size=64, shuffle=True)
    for _ in range(epochs): raw_epoch(net, dl, opt, raw_losses)
    log, net = LossLog(), model()
    torch.manual_seed(1)
    Trainer(net, DataLoader(data(), batch_size=64, shuffle=True), opt_fn=torch.optim.SGD, lr=0.05, cbs=[log],
            progress=False).fit(epochs)
    return raw_losses, log.losses


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=21, help="timed rounds (medians over these; at least 5)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp())
    os.environ["MLKIT_RUNS_DIR"] = str(folder/"runs")  # every store under a temporary folder
    os.environ.pop("MLFLOW_TRACKING_URI", None)

    raw_losses, trainer_losses = parity()
    same = raw_losses == trainer_losses
    print(f"parity: {'identical' if same else 'DIFFERENT'} loss sequences over {len(raw_losses)} batches (2 epochs)")

    raw_net = model()
    raw_opt = torch.optim.SGD(raw_net.parameters(), lr=0.05)
    raw_dl = DataLoader(data(), batch_size=64, shuffle=True)
    bare = Trainer(model(), DataLoader(data(), batch_size=64, shuffle=True), opt_fn=torch.optim.SGD, lr=0.05, progress=False)
    defaults = Trainer(model(), DataLoader(data(), batch_size=64, shuffle=True), opt_fn=torch.optim.SGD, lr=0.05)
    def tracked(*extra):
        run = MultiTracker(LocalTracker(capture=False), *extra)
        trackers.append(run)
        t = Trainer(model(), DataLoader(data(), batch_size=64, shuffle=True), opt_fn=torch.optim.SGD, lr=0.05,
                    progress=False, cbs=[TrackingCallback(run)])
        return lambda: t.fit(1)
    trackers = []
    runs = {"raw loop": lambda: raw_epoch(raw_net, raw_dl, raw_opt),
            "Trainer (progress off)": lambda: bare.fit(1),
            "Trainer + TrackingCallback": tracked(),
            "Trainer (defaults on)": lambda: defaults.fit(1),
            "  + MLflow (SQLite)": tracked(MLflowTracker()),
            "  + TensorBoard": tracked(TensorBoardTracker()),
            "  + W&B (offline)": tracked(WandbTracker(project="mlkit-bench", mode="offline"))}
    times = {k: [] for k in runs}
    sink = io.StringIO()  # the default ProgressBar prints lines (output is captured here); keep the table readable
    for f in runs.values():
        with redirect_stdout(sink): f()  # warm-up
    order = list(runs.items())
    for r in range(max(args.rounds, 5)):
        for k, f in order[r % len(order):] + order[:r % len(order)]:  # rotate who goes first
            with redirect_stdout(sink):
                t0 = time.perf_counter(); f(); times[k].append(time.perf_counter() - t0)
    base = statistics.median(times["raw loop"])
    print(f"{'':28s} {'ms/epoch (median)':>18s} {'ratio':>7s}   (torch {torch.__version__}, 1 thread, "
          f"{len(times['raw loop'])} rounds, {os.cpu_count()} cores)")
    for k, ts in times.items():
        m = statistics.median(ts)
        print(f"{k:28s} {m * 1e3:18.1f} {m / base:7.3f}x")
    # paired: the two epochs of the same round ran back to back, so their ratio cancels most of the machine's drift
    paired = [a / b for a, b in zip(times["Trainer + TrackingCallback"], times["Trainer (progress off)"], strict=True)]
    print(f"TrackingCallback adds {100 * (statistics.median(paired) - 1):+.1f} % to the bar-off Trainer's epoch "
          f"(median of per-round ratios)")
    for k in [k for k in runs if k.startswith("  + ")]:
        paired = [a / b for a, b in zip(times[k], times["Trainer + TrackingCallback"], strict=True)]
        print(f"LocalTracker {k.strip():22s} {statistics.median(paired):.3f}x the epoch with LocalTracker alone "
              f"(median of per-round ratios)")
    print("targets: Trainer <= 1.05x with the progress bar off, <= 1.10x with defaults on; TrackingCallback <= +2 %; "
          "with MLflow <= 1.05x LocalTracker alone")
    for run in trackers: run.finish()
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
