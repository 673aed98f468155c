"""Trials per minute of `mlkit sweep` with 2 workers against a sequential loop of the `papermill` command (issue: sweeps).

12 trials of a notebook that sleeps 2 s (a stand-in for a GPU-bound trial): `mlkit sweep` searches a grid of 12
values with `--workers 2`; the baseline runs `papermill` once per value, one after the other, as a shell loop would.
Both run as a user would (fresh processes), in the same run, alternating, the order rotated each round; medians
over the rounds are printed with their ratio (target: >= 1.7x on 2 cores), and the per-trial bookkeeping of the
sweep beyond `mlkit run` (the `mlkit.overhead_s` each worker records: telling the last trial's end, choosing and
creating the next, reading the run's result; target <= 0.2 s), and apart from it each worker's start-up: from the
`mlkit sweep` command's launch to the start of that worker's first trial (the command's and the worker's Python
start, imports, opening the storage). Runs go to a temporary folder.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import nbformat

BIN = Path(sys.executable).parent
TRIALS, NAP = 12, 2.0


def sleepy_notebook(folder:Path) -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(f"i = 0  # which trial\nnap = {NAP}  # seconds of 'training'")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("import time\ntime.sleep(nap)\nscore = -abs(i - 5)"),
                nbformat.v4.new_code_cell("from mlkit.run import record\nrecord('score', score)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = folder/"sleepy.ipynb"
    nbformat.write(nb, path)
    return path


def papermill_loop(nb:Path, folder:Path, env:dict) -> float:
    "Seconds for the 12 trials run one after the other with the papermill command."
    t0 = time.perf_counter()
    for i in range(TRIALS):
        subprocess.run([str(BIN/"papermill"), "-k", "python3", "-p", "i", str(i), str(nb), str(folder/f"out-{i}.ipynb")],
                       check=True, capture_output=True, env=env)
    return time.perf_counter() - t0


def mlkit_sweep(nb:Path, folder:Path, env:dict, name:str) -> tuple[float, list[float], list[float]]:
    "Seconds for the 12 trials as a sweep with 2 workers, each trial's bookkeeping beyond its run, each worker's start-up."
    spec = folder/f"{name}.yaml"
    spec.write_text(json.dumps({"name": name, "notebook": str(nb), "metric": {"name": "score", "goal": "maximize"},
                                "method": "grid", "n_trials": TRIALS,
                                "params": {"i": {"type": "int", "low": 0, "high": TRIALS - 1}}}))
    launched, t0 = datetime.now(), time.perf_counter()  # Optuna's datetime_start is local time too
    subprocess.run([str(BIN/"mlkit"), "sweep", str(spec), "--workers", "2"], check=True, capture_output=True, env=env)
    elapsed = time.perf_counter() - t0
    from mlkit.sweep import OVERHEAD_ATTR, WORKER_ATTR, load_sweep
    study, _ = load_sweep(name, runs_dir=env["MLKIT_RUNS_DIR"])
    assert len(study.trials) == TRIALS and all(t.state.name == "COMPLETE" for t in study.trials), study.trials
    first = {}  # each worker's first trial's start
    for t in study.trials: first.setdefault(t.user_attrs[WORKER_ATTR]["pid"], t.datetime_start)
    return (elapsed, [t.user_attrs[OVERHEAD_ATTR] for t in study.trials],
            [(start - launched).total_seconds() for start in first.values()])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2, help="timed rounds (each runs both: about 80 s a round)")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp())
    nb = sleepy_notebook(folder)
    env = {**os.environ, "MLKIT_RUNS_DIR": str(folder/"runs")}
    loop, swept, overheads, startups = [], [], [], []
    for r in range(max(args.rounds, 1)):
        steps = [lambda: loop.append(papermill_loop(nb, folder, env)),
                 lambda r=r: (lambda s: (swept.append(s[0]), overheads.extend(s[1]), startups.extend(s[2])))(
                     mlkit_sweep(nb, folder, env, f"b{r}"))]
        for step in (steps if r % 2 == 0 else steps[::-1]): step()
    per_min = lambda s: TRIALS / s * 60  # noqa: E731
    lm, sm = statistics.median(loop), statistics.median(swept)
    print(f"{TRIALS} trials of a notebook sleeping {NAP:g} s, {len(loop)} round(s), interleaved; {os.cpu_count()} cores")
    print(f"{'':34s} {'s (median)':>11s} {'trials/min':>11s}")
    print(f"{'papermill, sequential loop':34s} {lm:11.1f} {per_min(lm):11.1f}")
    print(f"{'mlkit sweep --workers 2':34s} {sm:11.1f} {per_min(sm):11.1f}")
    print(f"speed-up: {lm / sm:.2f}x  (target >= 1.7x)")
    print(f"sweep bookkeeping per trial, beyond mlkit run: median {statistics.median(overheads):.3f} s, "
          f"max {max(overheads):.3f} s  (target <= 0.2 s)")
    print(f"each worker's start-up, launch to its first trial: median {statistics.median(startups):.2f} s, "
          f"max {max(startups):.2f} s  ({len(startups)} workers; paid once per worker, not per trial)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
