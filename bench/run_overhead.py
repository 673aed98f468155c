"""Wall time of `mlkit run` on a trivial notebook against the `papermill` command on the same notebook (issue: runs).

The notebook has one parameter and one print. Each round runs both commands as a user would (fresh processes),
interleaved, the order rotated; medians over the rounds and the difference are printed, and the time of
`mlkit run NOTEBOOK --help` (which must not import torch or papermill). Target: mlkit run <= papermill + 0.3 s;
`mlkit run --help` < 0.3 s. Runs go to a temporary folder.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

BIN = Path(sys.executable).parent


def trivial_notebook(folder:Path) -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("greeting = 'hello'  # what to print")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("print(greeting)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = folder/"trivial.ipynb"
    nbformat.write(nb, path)
    return path


def timed(cmd:list[str], env:dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds (at least 5)")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp())
    nb = trivial_notebook(folder)
    env = {**os.environ, "MLKIT_RUNS_DIR": str(folder/"runs")}
    commands = {"papermill": [str(BIN/"papermill"), "-k", "python3", str(nb), str(folder/"out.ipynb")],
                "mlkit run": [str(BIN/"mlkit"), "run", str(nb)],
                "mlkit run --help": [str(BIN/"mlkit"), "run", str(nb), "--help"]}
    for cmd in commands.values(): timed(cmd, env)  # warm-up: caches, kernel spec lookups
    times = {k: [] for k in commands}
    order = list(commands.items())
    rounds = max(args.rounds, 5)
    for r in range(rounds):
        for k, cmd in order[r % len(order):] + order[:r % len(order)]: times[k].append(timed(cmd, env))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{'':18s} {'s (median)':>11s}   ({rounds} rounds, interleaved)")
    for k, m in med.items(): print(f"{k:18s} {m:11.3f}")
    print(f"mlkit run - papermill: {med['mlkit run'] - med['papermill']:+.3f} s   "
          f"(target <= +0.3 s; mlkit run --help < 0.3 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
