"""All four trackers open, none in a `with` block; the program then ends one way or another.

usage: tracker_exit_job.py MODE      MODE: normal | exception | signal (loops until SIGTERM or SIGINT arrives)
Runs go under $MLKIT_RUNS_DIR. Prints one JSON line with the runs' ids first.
"""
import json
import sys
import time

from mlkit.track import LocalTracker, MLflowTracker, TensorBoardTracker, WandbTracker

mode = sys.argv[1]
local, tb = LocalTracker(name="exit"), TensorBoardTracker(name="exit")
mlf, wb = MLflowTracker(name="exit"), WandbTracker(project="mlkit-test", name="exit", mode="offline")
trackers = (local, tb, mlf, wb)
for t in trackers: t.log_params({"lr": 0.1})
print(json.dumps({"local": str(local.path), "tensorboard": str(tb.log_dir), "mlflow": mlf.run_id,
                  "mlflow_uri": mlf.tracking_uri, "wandb": wb.id}), flush=True)
step = 0
while True:
    for t in trackers: t.log_metrics({"loss": 1 / (step + 1)}, step=step)
    step += 1
    if mode == "normal" and step == 5: break
    if mode == "exception" and step == 5: raise ValueError("bad batch")
    if step == 5: print("ready", flush=True)
    time.sleep(0.01)
