"Signals as a terminal sends them: to a whole process group, at random moments; and runs ended by an exit status."
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mlkit.runs import list_runs, open_run

COVERS = ("07_cli", "10_track", "11_run", "12_sweep")  # the notebooks these tests cover: `make test NB=...` runs them

MLKIT = str(Path(sys.executable).parent/"mlkit")

# --- a run still open when its program ends takes the program's exit status --------------------------------------

EXITS = """
import signal, sys, time
from mlkit.track import LocalTracker
run = LocalTracker(sys.argv[1], capture=False)
mode = sys.argv[2]
print(run.path, flush=True)
try:
    if mode in ("sigint", "sigterm"):
        print("ready", flush=True)
        time.sleep(120)
except KeyboardInterrupt:
    sys.exit(130)  # what a program that catches Ctrl-C reports, as a shell would
if mode == "exit1": sys.exit(1)
if mode == "argparse":
    import argparse
    argparse.ArgumentParser().parse_args(["--no-such-option"])  # exits 2
if mode == "exit0": sys.exit(0)
if mode == "with130":
    with LocalTracker(sys.argv[1], capture=False) as inner: raise SystemExit(130)
"""


@pytest.mark.parametrize("mode, signum, code, status, error", [
    ("sigint", signal.SIGINT, 130, "interrupted", "SIGINT (exit code 130)"),  # caught, then sys.exit(130)
    ("sigterm", signal.SIGTERM, -signal.SIGTERM, "interrupted", "SIGTERM"),
    ("exit1", None, 1, "failed", "exit code 1"),
    ("argparse", None, 2, "failed", "exit code 2"),
    ("exit0", None, 0, "finished", None),
    ("end", None, 0, "finished", None),
])
def test_a_run_open_at_exit_takes_the_programs_exit_status(tmp_path, mode, signum, code, status, error):
    p = subprocess.Popen([sys.executable, "-c", EXITS, str(tmp_path/"runs"), mode], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    path = p.stdout.readline().strip()
    if signum is not None:
        assert p.stdout.readline().strip() == "ready"
        os.killpg(p.pid, signum)  # the group, as a terminal signals its foreground job
    out, err = p.communicate(timeout=60)
    assert p.returncode == code, err
    run = open_run(path)
    assert (run.status, run.meta["error"]) == (status, error), run.meta
    assert "Traceback" not in err


def test_systemexit_130_leaving_a_with_block_ends_it_and_the_runs_open_at_exit_interrupted(tmp_path):
    r = subprocess.run([sys.executable, "-c", EXITS, str(tmp_path/"runs"), "with130"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 130, r.stderr
    assert [(x.status, x.meta["error"]) for x in list_runs(tmp_path/"runs")] == [("interrupted", "SIGINT (exit code 130)")] * 2
