"The run store at scale: per-run summaries, recorded values as first-class as metrics, statuses a reader can trust."
import json
import math
import os
import random
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mlkit.run import record
from mlkit.runs import METRICS, SUMMARY, MetricsSummary, list_runs, open_run, read_metrics
from mlkit.track import LocalTracker

COVERS = ("09_runs", "09b_summary", "07_cli", "10_track", "10c_local_tracker")

MLKIT = str(Path(sys.executable).parent/"mlkit")


def mlkit(*args):
    return subprocess.run([MLKIT, *args], capture_output=True, text=True, timeout=120)


def ids(out:str) -> list[str]:
    return [line.split()[0] for line in out.splitlines()[1:]]


def make_run(root, name, params, metrics=(), records=None):
    "A run made through the real tracker: params, metrics [(step, {name: value})], records."
    with LocalTracker(root, name=name, capture=False) as run:
        run.log_params(params)
        for step, values in metrics: run.log_metrics(values, step)
        for k, v in (records or {}).items(): record(k, v, run=run)
    return run.path


@pytest.fixture
def season(tmp_path):
    "Three runs whose recorded test_accuracy ranks them differently from their last valid_loss."
    root = tmp_path/"runs"
    made = []
    for i, (acc, loss) in enumerate([(0.9697, 0.30), (0.7138, 0.10), (0.85, 0.20)]):
        made.append(make_run(root, "train_digits", {"lr": 10.0 ** -i, "width": 64 * (i + 1)},
                             [(s, {"valid_loss": loss + 1 / (s + 1)}) for s in range(5)], {"test_accuracy": acc}))
        time.sleep(0.01)
    return root, [p.name for p in made]


def test_sort_by_a_recorded_value_both_ways(season):
    root, (a, b, c) = season
    r = mlkit("runs", "ls", "--root", str(root), "--sort", "test_accuracy:min", "--limit", "1")
    assert (r.returncode, ids(r.stdout)) == (0, [b]), r.stdout + r.stderr
    assert "0.7138" in r.stdout
    r = mlkit("runs", "ls", "--root", str(root), "--sort", "test_accuracy")  # an accuracy: higher is better
    assert ids(r.stdout) == [a, c, b]
    r = mlkit("runs", "ls", "--root", str(root), "--where", "test_accuracy>0.8", "--sort", "test_accuracy:min")
    assert ids(r.stdout) == [c, a]


def test_a_recorded_value_wins_over_a_metric_of_the_same_name(tmp_path):
    root = tmp_path/"runs"
    p = make_run(root, "x", {}, [(0, {"score": 1.0}), (1, {"score": 5.0})], {"score": 2.0})
    q = make_run(root, "y", {}, [(0, {"score": 3.0})])
    r = mlkit("runs", "ls", "--root", str(root), "--sort", "score:max")
    assert ids(r.stdout) == [q.name, p.name], r.stdout  # 2.0 (recorded) < 3.0, though x's metric ended at 5.0
    assert "recorded value wins" in " ".join(mlkit("runs", "ls", "--help").stdout.split())


def test_an_unknown_sort_key_is_one_line_naming_the_closest(season):
    root, _ = season
    r = mlkit("runs", "ls", "--root", str(root), "--sort", "typo_metric:max")
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr.count("\n") == 1 and "'typo_metric'" in r.stderr and "test_accuracy" in r.stderr
    r = mlkit("runs", "ls", "--root", str(root), "--sort", "test_acuracy:max")
    assert r.stderr == ("mlkit runs: error: no run has a metric or recorded value 'test_acuracy'; "
                        "they have: test_accuracy, valid_loss\n")


def test_limit_without_sort_keeps_the_newest(season):
    root, made = season
    r = mlkit("runs", "ls", "--root", str(root), "--limit", "2")
    assert ids(r.stdout) == made[::-1][:2]
    assert ids(mlkit("runs", "ls", "--root", str(root)).stdout) == made[::-1]


def test_every_varying_parameter_is_a_column_and_long_values_are_cut(tmp_path):
    root = tmp_path/"runs"
    names = ["alpha", "batch", "depth", "lr", "width", "zeta"]
    for i in range(2):
        make_run(root, "r", {**{k: i for k in names}, "same": 1, "note": "x" * 80 * (i + 1)})
    r = mlkit("runs", "ls", "--root", str(root))
    head = r.stdout.splitlines()[0].split()
    assert head[5:] == [*names, "note"], head  # in the order they were logged
    assert "same" not in head
    assert max(len(line) for line in r.stdout.splitlines()) < 300 and "…" in r.stdout
    r = mlkit("runs", "ls", "--root", str(root), "--columns", "width,same")
    assert r.stdout.splitlines()[0].split()[5:] == ["width", "same"]


def test_a_run_without_summary_is_summarized_once_and_cached(tmp_path):
    root = tmp_path/"runs"
    rng = random.Random(0)
    rows = [(s, {"loss": rng.random(), "lr": 0.1, "a,b": float("nan") if s % 7 == 0 else s}) for s in range(3000)]
    p = make_run(root, "r", {}, rows)
    kept = json.loads((p/SUMMARY).read_text())
    (p/SUMMARY).unlink()  # an older mlkit's run
    r = mlkit("runs", "show", p.name, "--root", str(root))
    assert r.returncode == 0, r.stderr
    again = json.loads((p/SUMMARY).read_text())
    assert again["metrics"].keys() == kept["metrics"].keys() and again["metrics_bytes"] == os.path.getsize(p/METRICS)
    assert json.dumps(again["metrics"], sort_keys=True) == json.dumps(kept["metrics"], sort_keys=True)
    # and it agrees with the whole file, read the slow way
    full, _ = read_metrics(p/METRICS)
    for name, values in full.items():
        s = again["metrics"][name]
        finite = [v for _, _, v in values if not math.isnan(v)]
        assert (s["count"], s["last_step"], s["min"], s["max"]) == (len(values), values[-1][0], min(finite), max(finite))


def test_the_tracker_keeps_the_summary_and_readers_catch_up_with_a_live_run(tmp_path):
    root = tmp_path/"runs"
    code = textwrap.dedent(f"""
        import sys, time
        from mlkit.track import LocalTracker
        run = LocalTracker({str(root)!r}, name="live", capture=False)
        for s in range(100): run.log_metrics({{"loss": 1 / (s + 1)}}, s)
        run.flush()
        print(run.path, flush=True)
        sys.stdin.readline()
        for s in range(100, 200): run.log_metrics({{"loss": 1 / (s + 1)}}, s)
        run.flush()
        print("more", flush=True)
        sys.stdin.readline()
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        path = Path(p.stdout.readline().strip())
        assert json.loads((path/SUMMARY).read_text())["heartbeat"] is not None  # written at creation
        [run] = list_runs(root)
        assert (run.status, run.stats["loss"]["count"]) == ("running", 100)
        p.stdin.write("\n"); p.stdin.flush(); p.stdout.readline()
        [run] = list_runs(root)  # the summary on disk may lag (written every few seconds): the tail is read
        assert (run.stats["loss"]["count"], run.stats["loss"]["last_step"]) == (200, 199)
        p.stdin.write("\n"); p.stdin.flush()
        assert p.wait(30) == 0
    finally:
        p.kill()
    doc = json.loads((path/SUMMARY).read_text())
    assert (doc["metrics"]["loss"]["count"], doc["heartbeat"]) == (200, None)  # final: complete, no heartbeat
    assert doc["metrics_bytes"] == os.path.getsize(path/METRICS)


def test_a_killed_run_reads_interrupted_here_and_stale_elsewhere(tmp_path):
    root = tmp_path/"runs"
    code = (f"from mlkit.track import LocalTracker; import time; r = LocalTracker({str(root)!r}, capture=False); "
            "print(r.path, flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    path = Path(p.stdout.readline().strip())
    assert open_run(path).status == "running"
    p.kill(); p.wait()
    assert open_run(path).status == "interrupted"
    copy = tmp_path/"copied"/path.name  # the same folder, brought over from a cluster node
    shutil.copytree(path, copy)
    meta = json.loads((copy/"meta.json").read_text())
    (copy/"meta.json").write_text(json.dumps({**meta, "host": "gpu-node-17"}))
    r = mlkit("runs", "ls", "--root", str(copy.parent))
    assert r.stdout.splitlines()[1].split()[2] == "running"  # heard from a moment ago: may well be alive there
    doc = json.loads((copy/SUMMARY).read_text())
    (copy/SUMMARY).write_text(json.dumps({**doc, "heartbeat": time.time() - 3600}))
    r = mlkit("runs", "ls", "--root", str(copy.parent), "--status", "stale")
    assert ids(r.stdout) == [copy.name], r.stdout + r.stderr
    r = mlkit("runs", "show", copy.name, "--root", str(copy.parent))
    assert "gpu-node-17" in r.stdout and "last heard from 1:00:" in r.stdout, r.stdout


def test_show_and_compare_display_records_and_tell_same_named_runs_apart(season):
    root, (a, b, c) = season
    r = mlkit("runs", "show", a, "--root", str(root))
    assert "recorded" in r.stdout and "test_accuracy" in r.stdout and "0.9697" in r.stdout
    r = mlkit("runs", "compare", a, b, "--root", str(root))
    head = r.stdout.splitlines()[0]
    assert f"{a[-6:]} train_digits" in head and f"{b[-6:]} train_digits" in head, r.stdout
    assert any(line.split()[:3] == ["test_accuracy", "0.9697", "0.7138"] for line in r.stdout.splitlines()), r.stdout
    r = mlkit("runs", "show", b[-6:], "--root", str(root))  # the short id finds the run
    assert r.returncode == 0 and b in r.stdout.splitlines()[0]


def test_plot_draws_a_one_point_run_and_labels_runs_by_short_id(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    from mlkit.runs import find_run, plot_runs
    root = tmp_path/"runs"
    one = make_run(root, "same", {}, [(0, {"valid_loss": 0.5})])
    many = make_run(root, "same", {}, [(s, {"valid_loss": 1 / (s + 1)}) for s in range(5)])
    ax = plot_runs([find_run(one.name, root), find_run(many.name, root)], "valid_loss")
    lines = ax.get_lines()
    assert [ln.get_label() for ln in lines] == [f"{one.name[-6:]} same", f"{many.name[-6:]} same"]
    assert lines[0].get_marker() == "o" and len(lines[0].get_xdata()) == 1


def test_the_runs_folder_flag_has_one_name_everywhere():
    for cmd in (["runs", "ls"], ["runs", "show"], ["runs", "compare"], ["runs", "plot"], ["run"], ["rerun"], ["sweep"]):
        assert "--runs-dir" in mlkit(*cmd, "--help").stdout, cmd


def test_a_mlkit_run_leaves_a_complete_summary_of_what_its_kernel_logged(tmp_path, monkeypatch):
    "The kernel appends to metrics.csv; the `mlkit run` process that owns the run keeps the summary and the heartbeat."
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook
    monkeypatch.setenv("MLKIT_RUNS_DIR", str(tmp_path/"runs"))
    monkeypatch.delenv("MLKIT_RUN_DIR", raising=False)
    nb = tmp_path/"train.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell(
        "from mlkit.track import current_run\nfrom mlkit.run import record\nrun = current_run()\n"
        "for s in range(500): run.log_metrics({'loss': 1 / (s + 1)}, s)\nrecord('test_accuracy', 0.5)")],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}), nb)
    r = subprocess.run([MLKIT, "run", str(nb)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    [path] = [p for p in (tmp_path/"runs").iterdir()]
    doc = json.loads((path/SUMMARY).read_text())
    assert (doc["metrics"]["loss"]["count"], doc["metrics"]["loss"]["min"], doc["heartbeat"]) == (500, 1 / 500, None)
    assert doc["metrics_bytes"] == os.path.getsize(path/METRICS)
    r = mlkit("runs", "ls", "--root", str(tmp_path/"runs"), "--sort", "test_accuracy")
    assert r.stdout.splitlines()[1].split()[2] == "finished" and "0.5" in r.stdout


def test_plot_show_opens_the_png_where_there_is_a_display_and_says_why_not_elsewhere(season, tmp_path):
    root, (a, b, _) = season
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    r = subprocess.run([MLKIT, "runs", "plot", a, b, "--metric", "valid_loss", "--root", str(root), "--show"],
                       capture_output=True, text=True, timeout=120, env=env)
    png = Path(r.stdout.strip())
    assert r.returncode == 0 and png.parent == root/"_plots" and png.read_bytes()[:4] == b"\x89PNG", r.stderr
    assert r.stderr == "mlkit runs plot: not opened: no display here (DISPLAY is not set)\n"
    bin_ = tmp_path/"bin"
    bin_.mkdir()
    opened = tmp_path/"opened"
    (bin_/"xdg-open").write_text(f"#!/bin/sh\necho \"$1\" > {opened}\n")
    (bin_/"xdg-open").chmod(0o755)
    r = subprocess.run([MLKIT, "runs", "plot", a, "--metric", "valid_loss", "--root", str(root), "--show"],
                       capture_output=True, text=True, timeout=120,
                       env={**env, "DISPLAY": ":0", "PATH": f"{bin_}:{env['PATH']}"})
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    for _ in range(100):  # the viewer is started, not waited for
        if opened.exists() and opened.read_text(): break
        time.sleep(0.05)
    assert opened.read_text().strip() == r.stdout.strip()


def test_a_big_catch_up_through_pandas_agrees_with_the_line_reader(tmp_path, monkeypatch):
    "Over _FRAME_BYTES to read, pandas' C reader parses it (a run from an older mlkit): the same statistics, exactly."
    import mlkit.summary
    rng = random.Random(3)
    f = tmp_path/METRICS
    special = ["nan", "inf", "-inf", repr(-1e300), repr(5e-324)]
    f.write_text("step,time_ms,name,value\n" + "".join(
        f"{s},{s},{rng.choice(['loss', 'nan', 'NA', 'acc'])},{rng.choice([repr(rng.random() * 1e6), *special])}\n"
        for s in range(50_000)) + "1,2,loss,not-a-number\n3,4,loss,0.5\n7,8,lo")
    slow = MetricsSummary()
    slow.catch_up(f)
    monkeypatch.setattr(mlkit.summary, "_FRAME_BYTES", 1 << 14)
    framed, feed_frame = [], MetricsSummary._feed_frame
    monkeypatch.setattr(MetricsSummary, "_feed_frame", lambda self, text: framed.append(1) or feed_frame(self, text))
    fast = MetricsSummary()
    fast.catch_up(f, block=1 << 14)
    assert len(framed) > 10 and fast.metrics.keys() == slow.metrics.keys()
    assert json.dumps(fast.metrics, sort_keys=True) == json.dumps(slow.metrics, sort_keys=True)
    assert (fast.offset, fast.bad, fast.mark) == (slow.offset, slow.bad, slow.mark) and slow.bad == 1


def test_listing_many_runs_without_summaries_says_so_once(tmp_path):
    root = tmp_path/"runs"
    for i in range(25):
        d = root/f"20250101-{i:06d}-{i:06x}"
        d.mkdir(parents=True)
        (d/"meta.json").write_text(json.dumps({"id": d.name, "status": "finished", "start": d.name, "host": "old"}))
        (d/METRICS).write_text("step,time_ms,name,value\n0,0,loss,1.5\n1,0,loss,0.5\n")
    r = mlkit("runs", "ls", "--root", str(root))
    assert r.returncode == 0 and r.stderr.startswith("mlkit runs: summarizing 25 runs that have no summary.json yet")
    assert r.stdout.count("0.5") == 25 and len(list(root.glob(f"*/{SUMMARY}"))) == 25
    r = mlkit("runs", "ls", "--root", str(root))
    assert (r.returncode, r.stderr) == (0, "")


def test_sorting_by_a_value_that_is_never_a_number_is_one_line(tmp_path):
    "A recorded text (or flag) sorts nothing: an error naming the numbers there are, not the oldest runs as 'best'."
    root = tmp_path/"runs"
    for i, note in enumerate(["abc", "zzz", "mmm"]):
        make_run(root, "n", {"lr": i}, [(0, {"loss": i})], {"note": note, "flag": bool(i)})
    for key in ("note:max", "flag:max"):
        r = mlkit("runs", "ls", "--root", str(root), "--sort", key, "--limit", "1")
        assert r.returncode != 0 and r.stdout == "" and len(r.stderr.splitlines()) == 1, r.stdout + r.stderr
        assert f"no run has a number for '{key[:-4]}'" in r.stderr and "loss" in r.stderr, r.stderr


def test_load_metrics_drops_a_torn_last_line_and_skips_broken_runs(tmp_path):
    "A write cut short (a live run mid-flush, a kill) is not a value; a run that cannot be read is skipped, not a traceback."
    from mlkit.runs import load_metrics
    root = tmp_path/"runs"
    good = make_run(root, "good", {}, [(s, {"loss": 0.123456789}) for s in range(5)])
    broken = make_run(root, "broken", {}, [(0, {"loss": 1.0})])
    with open(good/METRICS, "ab") as f: f.write(b"5,1700000000000,loss,0.1")  # "0.123..." cut short
    (broken/METRICS).unlink(); (broken/METRICS).mkdir()
    df = load_metrics(root)
    assert set(df["run"]) == {good.name}
    assert df["step"].tolist() == [0, 1, 2, 3, 4] and (df["value"] == 0.123456789).all()


def test_a_metrics_file_edited_in_place_is_summarized_again(tmp_path):
    "Same size, touched since the summary: recounted, never trusted (a hand edit, a bad copy)."
    root = tmp_path/"runs"
    p = make_run(root, "r", {}, [(s, {"loss": 1 + s / 1000}) for s in range(100)])
    assert open_run(p).stats["loss"]["min"] == 1.0
    text = (p/METRICS).read_text().replace("3,", "3,", 1)
    (p/METRICS).write_text(text.replace(",loss,1.003\n", ",loss,0.503\n"))  # the same length
    assert open_run(p).stats["loss"]["min"] == 0.503
    assert json.loads((p/SUMMARY).read_text())["metrics"]["loss"]["min"] == 0.503  # and the cache says so now


def test_a_listed_run_whose_summary_is_current_opens_no_metrics_file(tmp_path, monkeypatch):
    import builtins
    root = tmp_path/"runs"
    make_run(root, "r", {"lr": 1}, [(s, {"loss": 1 / (s + 1)}) for s in range(50)])
    list_runs(root)[0].stats  # noqa: B018 (the first reader may stamp the summary)
    opened, real_open = [], builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: opened.append(str(f)) or real_open(f, *a, **k))
    assert list_runs(root)[0].stats["loss"]["count"] == 50
    assert not [f for f in opened if f.endswith(METRICS)], opened


def test_an_idle_live_run_keeps_its_heartbeat_fresh(tmp_path):
    root = tmp_path/"runs"
    code = textwrap.dedent(f"""
        import time, mlkit.local_tracker
        mlkit.local_tracker.HEARTBEAT_S = 0.3  # where LocalTracker.flush reads it
        run = mlkit.local_tracker.LocalTracker({str(root)!r}, capture=False, flush_every=0.1)
        print(run.path, flush=True)
        time.sleep(30)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        path = Path(p.stdout.readline().strip())
        first = json.loads((path/SUMMARY).read_text())["heartbeat"]
        for _ in range(100):
            time.sleep(0.1)
            try: now = json.loads((path/SUMMARY).read_text())["heartbeat"]
            except ValueError: continue
            if now > first: break
        assert now > first  # no metrics logged, and still heard from
    finally:
        p.kill()


def test_records_named_like_columns_do_not_overwrite_them_and_where_reads_flags(tmp_path):
    from mlkit.runs import load_runs
    root = tmp_path/"runs"
    make_run(root, "a", {}, records={"status": "great", "id": 7, "flag": True, "tags": ["x", "y"]})
    make_run(root, "b", {}, records={"flag": False})
    df = load_runs(root)
    assert list(df["status"]) == ["finished", "finished"] and list(df["value.status"])[0] == "great"
    assert df["id"].str.len().min() > 10
    for where, names in [("flag=true", ["a"]), ("flag=false", ["b"]), ('tags=["x", "y"]', ["a"])]:
        r = mlkit("runs", "ls", "--root", str(root), "--where", where)
        assert [line.split()[1] for line in r.stdout.splitlines()[1:]] == names, (where, r.stdout, r.stderr)


def test_columns_that_no_run_has_are_one_line(season):
    root, _ = season
    r = mlkit("runs", "ls", "--root", str(root), "--columns", "lr,widht")
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == ("mlkit runs: error: --columns: no run has a parameter, metric or recorded value 'widht'; "
                        "they have: width, lr, test_accuracy, valid_loss\n"), r.stderr
