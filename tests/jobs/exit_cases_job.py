"""Programs that end in less common ways, with a LocalTracker open: prints the run's folder first.

usage: exit_cases_job.py ROOT MODE
  ignored   SIGTERM is ignored (as under nohup); logs until the file ROOT/stop appears, then exits normally
  graceful  the program's own SIGTERM handler asks the loop to stop; it logs 5 more steps, then exits normally
  fork      logs steps 0-4, forks a child that exits normally (atexit runs), then logs 5-9 and exits
"""
import os
import signal
import sys
import time
from pathlib import Path

from mlkit.track import LocalTracker

root, mode = Path(sys.argv[1]), sys.argv[2]
stop = []
if mode == "ignored": signal.signal(signal.SIGTERM, signal.SIG_IGN)
if mode == "graceful": signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
run = LocalTracker(root, capture=False)
print(run.path, flush=True)
if mode == "fork":
    for i in range(5): run.log_metrics({"value": float(i)}, step=i)
    pid = os.fork()
    if pid == 0: sys.exit(0)
    os.waitpid(pid, 0)
    for i in range(5, 10): run.log_metrics({"value": float(i)}, step=i)
    sys.exit(0)
i = 0
while not (root/"stop").exists() and not stop:
    run.log_metrics({"value": float(i)}, step=i)
    i += 1
    if i == 10: print("ready", flush=True)
    time.sleep(0.005)
for _ in range(5):  # a graceful stop still records what it does on the way out
    run.log_metrics({"value": float(i)}, step=i)
    i += 1
print(i, flush=True)
