"""SIGTERM and SIGINT at random moments into processes that log and flush on the main thread.

usage: signal_job.py ROOT N SEED     prints one JSON line per child: signal, exit status, seconds to exit, run path

Torch and mlkit are imported once, here; each child is a fork that runs the loop as a script's main code would
(uncaught exceptions go to sys.excepthook, then the atexit handlers run), so forty tries take seconds, not minutes.
Half the children use the tracker as a context manager, half leave it to mlkit's exit and signal handlers.
"""
import atexit
import json
import os
import random
import signal
import sys
import time

from mlkit.track import LocalTracker

root, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)


def loop(run, ready):
    os.write(ready, (str(run.path) + "\n").encode())
    i = 0
    while True:
        run.log_metrics({"value": float(i), "other": 0.5}, step=i)
        i += 1
        run.flush()  # what TrackingCallback.after_epoch does, here as often as possible


def child(ready, with_block):
    code = 0
    try:
        if with_block:
            with LocalTracker(root, capture=False, flush_every=0.01) as run: loop(run, ready)
        else: loop(LocalTracker(root, capture=False, flush_every=0.01), ready)
    except SystemExit as e: code = e.code or 0
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 130
    atexit._run_exitfuncs()
    os._exit(code)


for k in range(2 * n):
    sig = (signal.SIGTERM, signal.SIGINT)[k % 2]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        sys.stderr = open(os.devnull, "w")  # KeyboardInterrupt tracebacks: expected, not interesting
        child(w, with_block=k % 4 >= 2)
    os.close(w)
    path = os.read(r, 4096).decode().strip()
    time.sleep(rng.uniform(0.0, 0.05))
    os.kill(pid, sig)
    sent, status = time.monotonic(), None
    while time.monotonic() - sent < 2.0:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done: break
        time.sleep(0.005)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        status = None
    print(json.dumps({"signal": sig.name, "path": path, "seconds": round(time.monotonic() - sent, 3),
                      "exit": None if status is None else (-os.WTERMSIG(status) if os.WIFSIGNALED(status)
                                                           else os.WEXITSTATUS(status))}), flush=True)
