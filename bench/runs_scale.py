"""How the run store scales (issue 20): `mlkit runs ls/show` and `load_runs()` against `ls -l` and MLflow's search_runs.

Runs of S steps logging 2 metrics per step (`loss`, `lr`), 3 varying parameters (lr, width, seed) and a recorded
`test_accuracy` are made through the real tracker (`LocalTracker.log_metrics` per step, `mlkit.run.record`, `finish`)
by a pool of processes, and cached under --data, keyed by S (the base runs) and by N and S (the measured folders).
Where a point needs more runs than --max-rows allows to write (5,000 x 50k, 1,000 x 500k), the base runs' metrics.csv
files (and the summary.json the tracker kept) are hard-linked into more run folders under new ids (with their own
meta.json, params.json and records.json):
the output says how many runs of each point are real and how many are copies.

Each command runs as a whole process (median of --rounds, peak RSS by GNU time), interleaved in every round with the
baselines: `ls -l` of the folder and `mlflow.search_runs()` over the same runs in an MLflow SQLite store. A "cold" call
(`mlkit runs ls` on a copy of the folder holding only the files an older mlkit wrote: no summaries) is measured once per
point, before the untimed warm-up calls. `python bench/runs_scale.py` (and `make bench`) runs the quick version;
`--full` runs the issue's six points. Targets are checked and printed as PASS/FAIL; nothing asserts.
"""
import argparse
import json
import math
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

BIN = Path(sys.executable).parent
GNU_TIME = "/usr/bin/time"
FULL_POINTS = [(100, 50_000), (1_000, 50_000), (5_000, 50_000), (1_000, 5_000), (1_000, 500_000)]
QUICK_POINT = (50, 2_000)
OLD_FILES = ("meta.json", "params.json", "metrics.csv", "records.json")  # what mlkit wrote before run summaries


# ---- the runs: parameters, curves and records are pure functions of the run's index, so MLflow gets the same values

def run_params(i:int) -> dict:
    "The parameters of run `i`: three that vary."
    return {"lr": [1e-1, 3e-2, 1e-2, 3e-3, 1e-3][i % 5], "width": [64, 128, 256, 512][i % 4], "seed": i}

def run_record(i:int) -> float:
    "The test_accuracy run `i` records."
    return round(0.6 + 0.39 * random.Random(f"acc{i}").random(), 4)

def curve(i:int, steps:int):
    "loss(step), lr(step) of base run `i`: a decaying loss with noise, a cosine learning-rate schedule (pure: any step)."
    rng, lr0 = random.Random(i), run_params(i)["lr"]
    a, k = 1.5 + rng.random(), 3 + 2 * rng.random()
    def at(step):
        t = step / steps
        noise = (step * 2654435761 + i * 40503) % 1000 / 20000
        return a * math.exp(-k * t) + noise, lr0 * 0.5 * (1 + math.cos(math.pi * t))
    return at

def make_run(job):
    "Log base run `i` of `steps` steps into `root` through LocalTracker, record its test_accuracy, finish it."
    root, i, steps = job
    from mlkit.run import record
    from mlkit.track import LocalTracker
    run = LocalTracker(root, name=f"bench-{i}", capture=False)
    run.log_params(run_params(i))
    at = curve(i, steps)
    log = run.log_metrics
    for step in range(steps):
        loss, lr = at(step)
        log({"loss": loss, "lr": lr}, step=step)
    record("test_accuracy", run_record(i), run=run)
    run.finish()
    return run.id


def base_runs(data:Path, steps:int, count:int, workers:int) -> list[Path]:
    "At least `count` runs of `steps` steps made through the tracker under data/base-s{steps}, oldest first."
    root = data/f"base-s{steps}"/"runs"
    root.mkdir(parents=True, exist_ok=True)
    have = _runs(root)
    if len(have) < count:
        t0 = time.perf_counter()
        jobs = [(root, i, steps) for i in range(len(have), count)]
        with Pool(workers) as pool:
            for n, _ in enumerate(pool.imap_unordered(make_run, jobs), 1):
                if len(jobs) >= 200 and n % (len(jobs) // 10) == 0:
                    print(f"  made {len(have) + n}/{count} runs", flush=True)
        took = time.perf_counter() - t0
        print(f"  generated {count - len(have)} runs x {steps:,} steps through LocalTracker in {took:.1f} s "
              f"({workers} processes); {_du(root)} on disk", flush=True)
        have = _runs(root)
    return have[:count]

def _runs(root:Path) -> list[Path]:
    "The finished run folders under `root`, ordered by the index in their name (bench-I)."
    out = []
    for p in root.iterdir():
        try: meta = json.loads((p/"meta.json").read_text())
        except (OSError, ValueError): continue
        if meta.get("status") == "finished": out.append((int(meta["name"].split("-")[1]), p))
    return [p for _, p in sorted(out)]

def _du(path:Path) -> str:
    "Disk use of `path` (hard links counted once), as du says it."
    return subprocess.run(["du", "-sh", str(path)], capture_output=True, text=True).stdout.split("\t")[0] or "?"

def point_runs(data:Path, n:int, steps:int, max_rows:int, workers:int) -> tuple[Path, int]:
    "The runs folder of point (n, steps) and how many of its runs are real (the rest hard-link their metrics.csv)."
    folder = data/f"n{n}-s{steps}"
    root, real = folder/"runs", min(n, max(1, max_rows // steps))
    done = folder/"done.json"
    if done.exists(): return root, json.loads(done.read_text())["real"]
    bases = base_runs(data, steps, real, workers)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    from mlkit.track import new_run_id
    for i in range(n):
        src = bases[i % real]
        if i < real:  # one of the runs made by the tracker: hard links of its files
            dst = root/src.name
            dst.mkdir()
            for f in (*OLD_FILES, "summary.json"):  # the summary the tracker kept as it logged
                if (src/f).exists(): os.link(src/f, dst/f)
        else:  # a copy: its own id, name, parameters and record; the base run's metric curves
            meta = json.loads((src/"meta.json").read_text())
            meta.update(id=new_run_id() + f"{i:06d}", name=f"bench-{i}")
            dst = root/meta["id"]
            dst.mkdir()
            os.link(src/"metrics.csv", dst/"metrics.csv")
            if (src/"summary.json").exists(): os.link(src/"summary.json", dst/"summary.json")  # as `cp -a` would carry it
            (dst/"meta.json").write_text(json.dumps(meta, indent=1))
            (dst/"params.json").write_text(json.dumps(run_params(i), indent=1))
            (dst/"records.json").write_text(json.dumps({"test_accuracy": run_record(i)}, indent=1))
        (dst/"artifacts").mkdir(exist_ok=True)
    done.write_text(json.dumps({"real": real}))
    return root, real

def mlflow_store(data:Path, n:int, steps:int, real:int, points:int) -> Path|None:
    "The same runs in an MLflow SQLite store: params, test_accuracy, `points` of each curve and its last step (cached)."
    try:
        from mlflow.entities import Metric, Param
    except ImportError: return None
    db = data/f"n{n}-s{steps}"/f"mlflow-p{points}.db"
    if db.exists(): return db
    from mlflow.tracking import MlflowClient
    t0 = time.perf_counter()
    shm = Path("/dev/shm")  # built where SQLite's fsyncs cost nothing, then moved into place
    tmp = Path(tempfile.mkdtemp(dir=shm if shm.is_dir() else db.parent))/db.name
    client = MlflowClient(f"sqlite:///{tmp}")
    exp = client.create_experiment("bench")
    every = max(1, steps // points) if points else steps
    logged = sorted({*range(0, steps, every), steps - 1}) if points else [steps - 1]
    now = int(time.time() * 1000)
    for i in range(n):
        at = curve(i % real, steps)
        values = {step: at(step) for step in logged}
        run = client.create_run(exp, run_name=f"bench-{i}")
        metrics = [Metric(k, v, now, s) for s, (loss, lr) in values.items() for k, v in (("loss", loss), ("lr", lr))]
        metrics.append(Metric("test_accuracy", run_record(i), now, 0))
        params = [Param(k, str(v)) for k, v in run_params(i).items()]
        for j in range(0, len(metrics), 1000): client.log_batch(run.info.run_id, metrics=metrics[j:j + 1000],
                                                               params=params if j == 0 else [])
        client.set_terminated(run.info.run_id)
    shutil.move(tmp, db)
    shutil.rmtree(tmp.parent, ignore_errors=True)
    print(f"  logged {n} runs to MLflow ({len(logged)} points per metric + test_accuracy + 3 params each) "
          f"in {time.perf_counter() - t0:.1f} s", flush=True)
    return db


# ---- measuring

def measure(cmd:list[str], env:dict, timeout:float, mem_cap_mb:int) -> tuple[float|None, float|None, str]:
    "(wall seconds, peak RSS MB, error) of `cmd` run as a whole process under GNU time (or getrusage)."
    def limit():
        if mem_cap_mb: resource.setrlimit(resource.RLIMIT_AS, (mem_cap_mb << 20, mem_cap_mb << 20))
    with tempfile.NamedTemporaryFile("r") as out:
        full = [GNU_TIME, "-f", "%M", "-o", out.name, *cmd] if Path(GNU_TIME).exists() else cmd
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t0 = time.perf_counter()
        p = subprocess.Popen(full, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             preexec_fn=limit, start_new_session=True)  # its own group: a timeout ends it whole
        try: _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
            return None, None, f"over {timeout:.0f} s (killed)"
        took = time.perf_counter() - t0
        if p.returncode: return None, None, f"exit {p.returncode}: " + (err.strip().splitlines() or ["?"])[-1][:80]
        if full is cmd:  # the children's largest RSS so far: only right while it grows
            rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            return took, (rss if rss > before else float("nan")) / 1024, ""
        return took, int(out.read().strip().splitlines()[-1]) / 1024, ""

def commands(root:Path, db:Path|None, run_id:str) -> dict[str, list[str]]:
    "The measured commands and the baselines."
    py, mlkit = sys.executable, str(BIN/"mlkit")
    out = {"ls -l": ["ls", "-l", str(root)],
           "mlkit runs ls": [mlkit, "runs", "ls"],
           "mlkit runs ls --sort test_accuracy:max --limit 10": [mlkit, "runs", "ls", "--sort", "test_accuracy:max",
                                                                 "--limit", "10"],
           "mlkit runs show ID": [mlkit, "runs", "show", run_id],
           "load_runs()": [py, "-c", f"from mlkit.runs import load_runs; load_runs({str(root)!r})"]}
    if db is not None:
        out["mlflow.search_runs()"] = [py, "-c", f"import mlflow; mlflow.set_tracking_uri('sqlite:///{db}'); "
                                                 "mlflow.search_runs(search_all_experiments=True)"]
    return out

def cold_copy(root:Path) -> Path:
    "A copy of `root` (hard links) holding only the files an older mlkit wrote: no summaries, no caches."
    cold = Path(tempfile.mkdtemp(prefix="cold-", dir=root.parent))/"runs"
    cold.mkdir()
    for run in root.iterdir():
        if not run.is_dir(): continue
        (cold/run.name/"artifacts").mkdir(parents=True)
        for f in OLD_FILES:
            if (run/f).exists(): os.link(run/f, cold/run.name/f)
    return cold

def bench_point(n, steps, args) -> dict:
    "Generate (or reuse) point (n, steps) and measure every command on it; the results by command."
    print(f"== {n:,} runs x {steps:,} steps x 2 metrics", flush=True)
    root, real = point_runs(args.data, n, steps, args.max_rows, args.workers)
    db = None if args.no_mlflow else mlflow_store(args.data, n, steps, real, args.mlflow_points)
    print(f"  {root}: {real:,} runs made by the tracker" + (f", {n - real:,} copies of them (metrics.csv hard-linked)"
          if n > real else "") + f"; {_du(args.data/f'base-s{steps}')} of metrics on disk", flush=True)
    env = {**os.environ, "MLKIT_RUNS_DIR": str(root)}
    env.pop("MLFLOW_TRACKING_URI", None)
    run_id = sorted(p.name for p in root.iterdir())[n // 2]
    cmds = commands(root, db, run_id)
    cold = cold_copy(root)
    try: results = {"cold mlkit runs ls (no summaries)": [measure([str(BIN/"mlkit"), "runs", "ls"],
                                                                  {**env, "MLKIT_RUNS_DIR": str(cold)},
                                                                  args.timeout, args.mem_cap)]}
    finally: shutil.rmtree(cold.parent)
    results.update({k: [] for k in cmds})
    # warm-up, untimed: the page cache, and the summaries an mlkit caches on its first read of older runs (however long
    # that takes); after a cold call over --slow, only `runs ls` (an mlkit that caches nothing gains nothing from more)
    cold_s = results["cold mlkit runs ls (no summaries)"][0][0]
    warm = {"mlkit runs ls": args.timeout * 10} if cold_s is None or cold_s > args.slow else dict.fromkeys(cmds, args.timeout)
    for name, limit in warm.items():
        t0 = time.perf_counter()
        if (m := measure(cmds[name], env, limit, args.mem_cap))[0] is None: results[name].append(m)  # not retried
        elif name == "mlkit runs ls": print(f"  warm-up {name}: {time.perf_counter() - t0:.1f} s", flush=True)
    names = list(cmds)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:  # interleaved, the order rotated each round
            done = results[name]
            if done and (done[0][0] is None or done[0][0] > args.slow): continue  # failed, or too slow to repeat
            done.append(measure(cmds[name], env, args.timeout, args.mem_cap))
    return results

def summarize(results:dict) -> dict:
    "Median seconds, rounds, largest peak MB and error of each command."
    out = {}
    for name, ms in results.items():
        ok = [m for m in ms if m[0] is not None]
        out[name] = {"s": statistics.median(m[0] for m in ok) if ok else None, "n": len(ok),
                     "mb": max(m[1] for m in ok) if ok else None, "error": next((m[2] for m in ms if m[2]), "")}
    return out

def table(point:tuple, rows:dict) -> list[str]:
    "The report's lines for one point."
    n, steps = point
    base, anchor = rows["ls -l"]["s"], rows.get("mlflow.search_runs()", {}).get("s")
    lines = []
    for name, r in rows.items():
        if r["s"] is None:
            lines.append(f"{n:>6,} {steps:>8,}  {name:50s} {'-':>8s} {r['n']:>2d} {'-':>8s}  {r['error']}")
            continue
        x_ls = f"{r['s'] / base:8.1f}" if base else f"{'-':>8s}"
        x_mf = f"{r['s'] / anchor:8.2f}" if anchor else f"{'-':>8s}"
        lines.append(f"{n:>6,} {steps:>8,}  {name:50s} {r['s']:8.3f} {r['n']:>2d} {r['mb']:8.0f} {x_ls} {x_mf}")
    return lines

def targets(summary:dict) -> list[str]:
    "PASS/FAIL lines for the issue's targets, over the points measured."
    out = []
    def check(ok, text): out.append(f"{'PASS' if ok else 'FAIL'}  {text}")
    for (n, steps), rows in summary.items():
        ls, lr, mf = rows["mlkit runs ls"], rows["load_runs()"], rows.get("mlflow.search_runs()")
        if n == 1000:
            check(ls["s"] is not None and ls["s"] < 1, f"runs ls < 1 s at 1,000 x {steps:,}: {_s(ls)}")
            check(ls["mb"] is not None and ls["mb"] < 300, f"runs ls < 300 MB at 1,000 x {steps:,}: {_mb(ls)}")
            check(lr["s"] is not None and lr["s"] < 2, f"load_runs() < 2 s at 1,000 x {steps:,}: {_s(lr)}")
        if mf and mf["s"] is not None:
            for name, r in (("runs ls", ls), ("load_runs()", lr)):
                check(r["s"] is not None and r["s"] < mf["s"],
                      f"{name} faster than mlflow.search_runs at {n:,} x {steps:,}: {_s(r)} vs {_s(mf)}")
    by_len = sorted((steps, rows["mlkit runs ls"]["s"]) for (n, steps), rows in summary.items() if n == 1000)
    if len(by_len) > 1 and all(s is not None for _, s in by_len):
        (s0, t0), (s1, t1) = by_len[0], by_len[-1]
        check(t1 / t0 < 1.5, f"runs ls grows with the number of runs, not their length: 1,000 runs x {s1:,} steps "
              f"takes {t1 / t0:.2f}x the time of x {s0:,} steps ({s1 // s0}x the rows; target < 1.5x)")
    by_n = sorted((n, rows["mlkit runs ls"]["s"]) for (n, steps), rows in summary.items() if steps == 50_000)
    if len(by_n) > 1 and all(s is not None for _, s in by_n):
        (n0, t0), (n1, t1) = by_n[0], by_n[-1]
        out.append(f"info  runs ls at {n1:,} runs takes {t1 / t0:.1f}x the time at {n0:,} runs (x 50,000 steps)")
    return out

def _s(r): return f"{r['s']:.3f} s" if r["s"] is not None else r["error"] or "not measured"
def _mb(r): return f"{r['mb']:.0f} MB" if r["mb"] is not None else r["error"] or "not measured"

def _points(text:str) -> list[tuple[int, int]]:
    "'1000x50000,100x50000' -> [(1000, 50000), (100, 50000)]."
    try: points = [tuple(int(v.replace("_", "")) for v in p.lower().split("x")) for p in text.split(",") if p]
    except ValueError: points = []
    if not points or any(len(p) != 2 or min(p) < 1 for p in points):
        raise argparse.ArgumentTypeError(f"not RUNSxSTEPS[,RUNSxSTEPS...] of positive numbers: {text!r}")
    return points


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help=f"{QUICK_POINT[0]} runs x {QUICK_POINT[1]:,} steps, 3 rounds (the default: make bench)")
    ap.add_argument("--full", action="store_true", help="the issue's points: 100, 1,000, 5,000 runs x 50k steps; "
                    "1,000 runs x 5k and 500k steps")
    ap.add_argument("--points", type=_points, metavar="NxS[,NxS...]", help="these points, e.g. 1000x50000")
    ap.add_argument("--runs", type=int, help="one point: this many runs (with --steps)")
    ap.add_argument("--steps", type=int, help="one point: this many steps per run (with --runs)")
    ap.add_argument("--rounds", type=int, help="timed rounds per command (default 5; 3 with --quick)")
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir())/"mlkit-bench-runs",
                    help="where the generated runs and MLflow stores are kept between calls (default: %(default)s)")
    ap.add_argument("--max-rows", type=int, default=50_000_000, help="steps the tracker writes per point at most "
                    "(runs x steps); more runs are copies (default: %(default)s, 1,000 runs x 50k steps)")
    ap.add_argument("--workers", type=int, default=2, help="processes generating runs (default: %(default)s)")
    ap.add_argument("--mlflow-points", type=int, default=100, help="points of each metric's curve logged to MLflow, "
                    "evenly spaced, besides its last step; 0: the last step only (default: %(default)s)")
    ap.add_argument("--no-mlflow", action="store_true", help="leave out the mlflow.search_runs baseline")
    ap.add_argument("--slow", type=float, default=60, help="a command taking longer than this many seconds in its "
                    "first round is not repeated (default: %(default)s)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds a call may take (default: %(default)s)")
    ap.add_argument("--mem-cap", type=int, default=8000, help="address-space limit of each call in MB, so that a "
                    "command reading every metric cannot exhaust the machine; 0: none (default: %(default)s)")
    args = ap.parse_args(argv)
    if (args.runs is None) != (args.steps is None): ap.error("--runs and --steps go together")
    if args.runs is not None and (args.runs < 1 or args.steps < 1): ap.error("--runs and --steps must be positive")
    points = args.points or ([(args.runs, args.steps)] if args.runs else FULL_POINTS if args.full else [QUICK_POINT])
    quick = points == [QUICK_POINT] and not args.full
    args.rounds = args.rounds or (3 if quick else 5)
    if args.rounds < 1: ap.error("--rounds must be at least 1")
    try: args.data.mkdir(parents=True, exist_ok=True)
    except OSError as e: ap.error(f"cannot use --data {args.data}: {e.strerror or e}")
    if not Path(GNU_TIME).exists(): print(f"no {GNU_TIME} (apt-get install time): peak RSS from getrusage instead")
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; {os.cpu_count()} CPUs; "
          f"data under {args.data}; {args.rounds} rounds" + (" (quick)" if quick else ""), flush=True)
    summary = {}
    for n, steps in points: summary[(n, steps)] = summarize(bench_point(n, steps, args))
    print(f"\n{'runs':>6s} {'steps':>8s}  {'command':50s} {'median s':>8s} {'n':>2s} {'peak MB':>8s} "
          f"{'x ls -l':>8s} {'x mlflow':>8s}")
    for point, rows in summary.items(): print("\n".join(table(point, rows)))
    print(f"(n: rounds measured; a command over --slow={args.slow:g} s in its first round is not repeated. "
          f"MLflow holds each run's 3 params, test_accuracy, and {args.mlflow_points} evenly spaced points of each "
          "metric plus its last step: search_runs reads only the runs, params, tags and latest_metrics tables.)")
    for line in targets(summary): print(line)
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
