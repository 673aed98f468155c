"""How fast the mlkit command starts (issue: tracking): `mlkit --help` and `mlkit runs ls` against `papermill --help`.

Each round runs every command once as a fresh process, interleaved; medians of the wall times are printed.
Target: `mlkit --help` <= 0.3 s; neither mlkit command imports torch.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp())/"runs"
    env = {**os.environ, "MLKIT_RUNS_DIR": str(root)}
    from mlkit.track import LocalTracker
    for i in range(20):  # a runs folder worth listing
        with LocalTracker(root, name=f"run-{i}", capture=False) as run:
            run.log_params({"lr": 10 ** -(i % 4), "width": 64 * (1 + i % 3)})
            for s in range(100): run.log_metrics({"train_loss": 1 / (s + 1), "valid_loss": 1.1 / (s + 1)}, step=s)
    commands = {"mlkit --help": [str(BIN/"mlkit"), "--help"], "mlkit runs ls (20 runs)": [str(BIN/"mlkit"), "runs", "ls"],
                "papermill --help": [str(BIN/"papermill"), "--help"]}
    times = {k: [] for k in commands}
    for _ in range(max(args.rounds, 5)):
        for k, cmd in commands.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=True)
            times[k].append(time.perf_counter() - t0)
    code = "import sys; from mlkit.cli import main; main(['runs', 'ls']); print('torch' in sys.modules, file=sys.stderr)"
    torch_loaded = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stderr.strip()
    print(f"{'':26s} {'seconds (median)':>17s}   ({max(args.rounds, 5)} rounds)")
    for k, ts in times.items(): print(f"{k:26s} {statistics.median(ts):17.3f}")
    print(f"torch imported by 'mlkit runs ls': {torch_loaded}")
    print("target: mlkit --help <= 0.3 s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
