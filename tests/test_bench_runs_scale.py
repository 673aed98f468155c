"The run-store benchmark (bench/runs_scale.py): its runs are real tracker runs, copies are honest, every command is timed."
import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COVERS = ("09_runs", "10_track")  # the benchmark drives LocalTracker, record() and the runs commands
BENCH = [sys.executable, str(REPO/"bench"/"runs_scale.py")]
COMMANDS = ("cold mlkit runs ls (no summaries)", "ls -l", "mlkit runs ls", "mlkit runs ls --sort test_accuracy:max --limit 10",
            "mlkit runs show ID", "load_runs()")


def bench(*args, cwd):
    return subprocess.run([*BENCH, *args], capture_output=True, text=True, timeout=600, cwd=cwd)


def runs_in(root:Path) -> list[dict]:
    "Each run folder's meta, params, records and metric rows, read as files (not through mlkit's reader)."
    out = []
    for p in sorted(root.iterdir()):
        rows = (p/"metrics.csv").read_text().splitlines()
        out.append({"path": p, "meta": json.loads((p/"meta.json").read_text()),
                    "params": json.loads((p/"params.json").read_text()),
                    "records": json.loads((p/"records.json").read_text()), "rows": rows})
    return out


def test_runs_come_from_the_tracker_and_every_command_is_timed(tmp_path):
    r = bench("--runs", "4", "--steps", "30", "--rounds", "1", "--no-mlflow", "--data", str(tmp_path/"data"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    runs = runs_in(tmp_path/"data"/"n4-s30"/"runs")
    assert len(runs) == 4 and {x["meta"]["status"] for x in runs} == {"finished"}
    assert all(x["rows"][0] == "step,time_ms,name,value" and len(x["rows"]) == 1 + 30 * 2 for x in runs)
    assert {row.split(",")[2] for x in runs for row in x["rows"][1:]} == {"loss", "lr"}
    assert len({x["params"]["lr"] for x in runs}) > 1 and len({x["params"]["width"] for x in runs}) > 1
    assert all(0.6 <= x["records"]["test_accuracy"] < 1 for x in runs)
    for name in COMMANDS:  # a row per command, with a median time and a peak RSS
        assert re.search(rf"^\s+4\s+30\s+{re.escape(name)}\s+\d+\.\d+\s+1\s+\d+\s", r.stdout, re.M), (name, r.stdout)
    assert "load average at start" in r.stdout and "load average at end" in r.stdout
    assert not list((tmp_path/"data"/"n4-s30").glob("cold-*"))  # the cold copy is removed


def test_copies_hard_link_the_metrics_and_say_so_and_the_data_is_reused(tmp_path):
    data = tmp_path/"data"
    args = ("--runs", "4", "--steps", "30", "--max-rows", "60", "--rounds", "1", "--no-mlflow", "--data", str(data))
    r = bench(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "2 runs made by the tracker, 2 copies of them (metrics.csv hard-linked)" in r.stdout
    runs = runs_in(data/"n4-s30"/"runs")
    assert len({x["meta"]["id"] for x in runs}) == 4 and len({x["path"].name for x in runs}) == 4
    inodes = [os.stat(x["path"]/"metrics.csv").st_ino for x in runs]
    assert len(set(inodes)) == 2  # two curves on disk, each in two run folders
    assert len({x["params"]["seed"] for x in runs}) == 4 and len({x["records"]["test_accuracy"] for x in runs}) == 4
    again = bench(*args, cwd=tmp_path)
    assert again.returncode == 0 and "generated" not in again.stdout  # cached: nothing made a second time
    assert [os.stat(x["path"]/"metrics.csv").st_ino for x in runs_in(data/"n4-s30"/"runs")] == inodes


def test_bad_arguments_get_one_line_and_exit_2(tmp_path):
    for args, says in ((["--runs", "3"], "--runs and --steps go together"), (["--points", "12"], "not RUNSxSTEPS"),
                       (["--runs", "0", "--steps", "5"], "must be positive")):
        r = bench(*args, "--data", str(tmp_path/"data"), cwd=tmp_path)
        assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
        assert [line for line in r.stderr.splitlines() if "error:" in line] == [r.stderr.splitlines()[-1]]
