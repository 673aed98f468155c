"The mlkit command: fast to start, one line for user errors, quiet into a closed pipe."
import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

COVERS = ("07_cli", "09_runs", "09a_tables")  # the notebooks these tests cover: `make test NB=...` runs them

MLKIT = str(Path(sys.executable).parent/"mlkit")


def run(*args, **env):
    return subprocess.run([MLKIT, *args], capture_output=True, text=True, timeout=120, env={**os.environ, **env})


def test_help_does_not_import_torch():
    code = "import sys; from mlkit.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass\nprint('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip().endswith("False"), r.stdout + r.stderr
    r = run("--help")
    assert r.returncode == 0 and "gpus" in r.stdout


def test_gpus_without_gpus():
    env = {k: v for k, v in os.environ.items() if k != "MLKIT_FAKE_GPUS"}
    r = subprocess.run([MLKIT, "gpus"], capture_output=True, text=True, timeout=120, env={**env, "CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "no GPUs visible (no NVIDIA driver, or CUDA_VISIBLE_DEVICES hides them)"


def test_gpus_with_fake_gpus(tmp_path):
    r = run("gpus", MLKIT_FAKE_GPUS="3", MLKIT_LOCK_DIR=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 4


def test_user_error_is_one_line():
    r = run("gpus", MLKIT_FAKE_GPUS="lots")
    assert r.returncode == 1
    assert r.stderr == "mlkit gpus: error: MLKIT_FAKE_GPUS must be a number of GPUs, got 'lots'\n"
    r = run("nonsense")
    assert r.returncode == 2 and "invalid choice" in r.stderr


def fake_runs(root, n, name_width=0):
    "`n` small finished runs written directly as files: run i has lr i, epoch_time_s 10+i and valid_acc i/n."
    for i in range(n):
        d = root/f"20260101-{i:06d}-aaaaaa"
        d.mkdir(parents=True)
        meta = {"id": d.name, "name": f"run{i}".ljust(name_width, "x"), "status": "finished", "start": d.name, "host": "x"}
        (d/"meta.json").write_text(json.dumps(meta))
        (d/"params.json").write_text(json.dumps({"lr": i}))
        (d/"metrics.csv").write_text(f"step,time_ms,name,value\n0,0,epoch,0\n0,0,epoch_time_s,{10 + i}\n0,0,valid_acc,{i / n}\n")
    return root


BUFFERED = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout as users have it


def test_runs_ls_into_a_pipe_closed_early_is_quiet(tmp_path):
    root = fake_runs(tmp_path/"runs", 1000, name_width=200)  # about 117 kB of table: more than a pipe (64 kB) holds
    subprocess.run([MLKIT, "runs", "ls", "--root", str(root)], capture_output=True, check=True)  # summaries cached: no note
    p = subprocess.Popen([MLKIT, "runs", "ls", "--root", str(root)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=BUFFERED)
    assert p.stdout.readline().startswith(b"id ")
    p.stdout.close()  # as `head -1` does
    rc, err = p.wait(timeout=120), p.stderr.read().decode()
    assert (rc, err) == (141, ""), err


@pytest.mark.parametrize("unbuffered", ["", "1"])
def test_runs_show_into_a_pipe_already_closed_is_quiet(tmp_path, unbuffered):
    root = fake_runs(tmp_path/"runs", 3)
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the first write; buffered, a small output fails only at the last flush
    p = subprocess.Popen([MLKIT, "runs", "show", "run1", "--root", str(root)], stdout=w, stderr=subprocess.PIPE,
                         env={**BUFFERED, **({"PYTHONUNBUFFERED": "1"} if unbuffered else {})})
    os.close(w)
    rc, err = p.wait(timeout=120), p.stderr.read().decode()
    assert (rc, err) == (141, ""), err


def names(stdout):
    return [line.split()[1] for line in stdout.splitlines()[1:]]


def test_runs_ls_sort_knows_or_asks_which_way_is_best(tmp_path):
    root = str(fake_runs(tmp_path/"runs", 4))
    r = run("runs", "ls", "--root", root, "--sort", "epoch_time_s")
    assert r.returncode == 0 and names(r.stdout) == ["run0", "run1", "run2", "run3"], r.stdout + r.stderr  # fastest first
    assert names(run("runs", "ls", "--root", root, "--sort", "valid_acc").stdout) == ["run3", "run2", "run1", "run0"]
    assert names(run("runs", "ls", "--root", root, "--sort", "valid_acc:min").stdout) == ["run0", "run1", "run2", "run3"]
    assert names(run("runs", "ls", "--root", root, "--sort", "epoch_time_s:max", "--limit", "2").stdout) == ["run3", "run2"]
    r = run("runs", "ls", "--root", root, "--sort", "epoch")
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == ("mlkit runs: error: is a lower or a higher 'epoch' better? "
                        "say which: --sort epoch:min or --sort epoch:max\n")
    r = run("runs", "ls", "--root", root, "--sort", "valid_acc:highest")
    assert (r.returncode, r.stderr) == (
        1, "mlkit runs: error: --sort takes NAME, NAME:min or NAME:max, got 'valid_acc:highest'\n")


def test_runs_compare_and_show_best_by_goal(tmp_path):
    root = fake_runs(tmp_path/"runs", 2)
    (root/"20260101-000000-aaaaaa"/"metrics.csv").write_text(
        "step,time_ms,name,value\n0,0,epoch,0\n0,0,epoch_time_s,12\n1,0,epoch,1\n1,0,epoch_time_s,9\n")
    r = run("runs", "compare", "run0", "run1", "--root", str(root))
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines()}
    assert rows["epoch_time_s"] == ["epoch_time_s", "min", "9", "/", "9", "11", "/", "11"]  # the fastest epoch is the best
    assert rows["epoch"] == ["epoch", "-", "1", "0"]  # no best: just the last value
    r = run("runs", "compare", "run0", "run1", "--root", str(root), "--goal", "epoch:max", "--goal", "epoch_time_s:max")
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines()}
    assert rows["epoch"] == ["epoch", "max", "1", "/", "1", "0", "/", "0"] and rows["epoch_time_s"][2:5] == ["9", "/", "12"]
    r = run("runs", "show", "run0", "--root", str(root))
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines()}
    assert rows["epoch_time_s"] == ["epoch_time_s", "min", "9", "9", "1", "2"]
    assert rows["epoch"] == ["epoch", "-", "1", "-", "-", "2"]


def test_runs_ls_unknown_status_is_an_error(tmp_path):
    r = run("runs", "ls", "--root", str(fake_runs(tmp_path/"runs", 2)), "--status", "bogus")
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == ("mlkit runs: error: unknown status 'bogus'; "
                        "a run is queued, running, finished, failed, interrupted, pruned, prepared, stale or broken\n")


@pytest.mark.parametrize("args, message", [
    (["ls", "--limit", "-1"], "--limit takes a number of runs, 1 or more, got -1"),
    (["ls", "--param", "lr"], "--param takes NAME=VALUE, got 'lr'"),
    (["plot", "run0", "--metric", "valid_acc", "-o", "/no/such/dir/acc.png"],
     "cannot write /no/such/dir/acc.png: No such file or directory"),
    (["plot", "run0", "--metric", "valid_acc", "--root", "/no/such/dir"],
     "no runs folder at /no/such/dir (nothing has been tracked there yet)"),
])
def test_runs_user_mistakes_are_one_line(tmp_path, args, message):
    root = fake_runs(tmp_path/"runs", 2)
    r = run("runs", *args, *([] if "--root" in args else ["--root", str(root)]))
    assert (r.returncode, r.stdout, r.stderr) == (1, "", f"mlkit runs: error: {message}\n")


def test_runs_plot_default_file_name_of_a_metric_with_a_slash(tmp_path):
    root = tmp_path/"runs"
    fake_runs(root, 1)
    (root/"20260101-000000-aaaaaa"/"metrics.csv").write_text("step,time_ms,name,value\n0,0,valid/loss,1\n1,0,valid/loss,0.5\n")
    r = subprocess.run([MLKIT, "runs", "plot", "run0", "--metric", "valid/loss", "--root", str(root)],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    png = root/"_plots"/"valid_loss-aaaaaa.png"  # under the runs folder, named by the metric and the runs' short ids
    assert (r.returncode, r.stdout, r.stderr) == (0, f"{png}\n", "")
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in tmp_path.iterdir()] == ["runs"]  # nothing left in the working folder
    r = run("runs", "ls", "--root", str(root))
    assert r.stdout.count("\n") == 2, r.stdout  # and _plots/ is not a run


def test_unreadable_run_folder_is_listed_as_broken(tmp_path):
    root = fake_runs(tmp_path/"runs", 3)
    bad = root/"20260101-000001-aaaaaa"/"metrics.csv"
    bad.unlink()
    bad.mkdir()  # cannot be read, even by root (chmod 000 would not stop root)
    r = run("runs", "ls", "--root", str(root), "--sort", "valid_acc")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert [line.split()[1:3] for line in r.stdout.splitlines()[1:]] == [
        ["run2", "finished"], ["run0", "finished"], ["(unreadable", "metrics.csv:"]]
    r = run("runs", "show", "run1", "--root", str(root))
    assert r.returncode == 0 and "broken: unreadable metrics.csv: Is a directory" in r.stdout, r.stdout + r.stderr


def test_unreadable_runs_folder_is_one_line(tmp_path, capsys):
    from mlkit.cli import main
    root = fake_runs(tmp_path/"runs", 1)
    with mock.patch("mlkit.runs.os.scandir", side_effect=PermissionError(13, "Permission denied")):
        assert main(["runs", "ls", "--root", str(root)]) == 1
    assert capsys.readouterr().err == f"mlkit runs: error: cannot read the runs folder {root}: Permission denied\n"
