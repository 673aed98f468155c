"""Tracking in a child process, for the fault-injection and concurrency tests.

usage: track_job.py ROOT write N          log N metrics (one scalar each), finish
       track_job.py ROOT forever          log a metric every millisecond until killed; prints the run path first
"""
import sys
import time

from mlkit.track import LocalTracker

root, mode = sys.argv[1], sys.argv[2]
if mode == "write":
    with LocalTracker(root, capture=False) as run:
        for i in range(int(sys.argv[3])): run.log_metrics({"value": float(i)}, step=i)
elif mode == "forever":
    run = LocalTracker(root, capture=False)
    print(run.path, flush=True)
    i = 0
    while True:
        run.log_metrics({"value": float(i)}, step=i)
        i += 1
        if i % 10 == 0: print(i, time.time(), flush=True)
        time.sleep(0.001)
