"Shared fixtures: a throwaway copy of the repository, and `make` run in the current environment."
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A shell starts a background job (`make test &`) with SIGINT ignored, and every process it starts inherits that: the
# tests that send Ctrl-C to a job would hang. A Python handler here is reset to the default in the jobs we start.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN: signal.signal(signal.SIGINT, signal.default_int_handler)


def repo_files():
    "Files of the working tree that git would keep: tracked, plus untracked ones not ignored."
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    return [f for f in out.split("\0") if f and (REPO/f).is_file()]


@pytest.fixture
def repo_copy(tmp_path):
    "A copy of the repository (no .git, no environment) to break on purpose."
    dest = tmp_path/"repo"
    for f in repo_files():
        (dest/f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO/f, dest/f)
    return dest


def make(*args, cwd=REPO, timeout=300):
    "Run `make ARGS` with this interpreter's environment, installing nothing; return the finished process."
    cmd = ["make", "--no-print-directory", *args, "NO_INSTALL=1", f"ENV={sys.prefix}"]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


# --- jobs in forks of a process that has imported torch and mlkit once ------------------------------------------------
# A test job started as `python job.py` spends a second or two importing torch (and torch._dynamo, which the first
# optimizer imports) before it does anything. Jobs run by `run_job` are forked from multiprocessing's fork server,
# which imported them once; each still runs as a script's main code in a process of its own: its own pid, signals,
# stdout and stderr (block-buffered into files, as into a pipe, unless PYTHONUNBUFFERED), exit status, atexit handlers,
# thread shutdown, freshly seeded `random` and NumPy generators, the platform's multiprocessing start method.
# What a fork cannot give: a new hash seed (PYTHONHASHSEED is the server's), and settings read when torch or Python
# start (OMP_NUM_THREADS, PYTHONPATH...): run_job takes no environment, so that no test can believe it passed one.
# Tests whose jobs need those use subprocess, as test_ddp and test_track do.
JOB_PRELOAD = ["torch", "torch._dynamo", "torch.optim", "torch.utils.data", "mlkit.train", "mlkit.callbacks", "mlkit.track"]
_job_context = None


def _job_main(argv, env, out, err):
    import atexit
    import os
    import random
    import runpy
    import threading
    import traceback
    for fd, path in ((1, out), (2, err)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(f, fd)
        os.close(f)
    unbuffered = bool(env.get("PYTHONUNBUFFERED"))
    sys.stdout = open(1, "w", buffering=1 if unbuffered else -1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # Python's stderr is line-buffered
    os.environ.update(env)  # the test's environment now, over the server's (which keeps what imports set there)
    random.seed()  # a fresh interpreter's seeds, not the fork server's state
    import numpy
    numpy.random.seed()
    import multiprocessing
    multiprocessing.set_start_method(None, force=True)  # the platform's default, as in a fresh interpreter (not ours)
    sys.argv = list(argv)
    sys.path.insert(0, str(Path(argv[0]).parent))
    code, interrupted = 0, False
    try: runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int): code = e.code or 0
        else: code = print(e.code, file=sys.stderr) or 1
    except KeyboardInterrupt:
        traceback.print_exc()
        interrupted = True
    except BaseException:
        traceback.print_exc()
        code = 1
    # then what Python does at exit, which multiprocessing's children skip: wait for threads, run the atexit handlers
    threading._shutdown()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    if interrupted:  # an uncaught KeyboardInterrupt ends Python by SIGINT, after the exit handlers
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code)


def run_job(script, *args, timeout=300):
    "Run `python script args...` as a fork of the preloaded fork server; a CompletedProcess (text stdout and stderr)."
    import multiprocessing
    import os
    import tempfile
    global _job_context
    if _job_context is None:
        _job_context = multiprocessing.get_context("forkserver")
        _job_context.set_forkserver_preload(JOB_PRELOAD)
    argv = [str(script), *map(str, args)]
    with tempfile.TemporaryDirectory() as d:
        out, err = Path(d)/"stdout", Path(d)/"stderr"
        p = _job_context.Process(target=_job_main, args=(argv, dict(os.environ), str(out), str(err)))
        p.start()
        p.join(timeout)
        if p.exitcode is None:
            p.kill()
            p.join()
            raise subprocess.TimeoutExpired(argv, timeout, out.read_text(), err.read_text())
        return subprocess.CompletedProcess([sys.executable, *argv], p.exitcode, out.read_text(), err.read_text())


# `make test NB=05_train` (pytest's --nb option and the `covers` mark) comes from mlkit's pytest plugin,
# mlkit/pytest_plugin.py (nbs/14_pytest_plugin.ipynb), which setup.py registers: every project with mlkit has it.


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    "A private single-node Slurm cluster (tests/slurm_cluster.py) for this pytest process; skipped, saying why, if none can run."
    from slurm_cluster import SlurmCluster, missing
    if (why := missing()) is not None: pytest.skip(f"no Slurm cluster: {why}")
    # a short path: Slurm and munge refuse socket paths over ~100 characters, and pytest's tmp paths are long
    import tempfile
    folder = Path(tempfile.mkdtemp(prefix="mlkit-slurm-"))
    cluster = SlurmCluster(folder).start()
    yield cluster
    cluster.stop()
    shutil.rmtree(folder, ignore_errors=True)
