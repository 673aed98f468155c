"""Processes competing for GPU locks (fake GPUs: run with MLKIT_FAKE_GPUS and MLKIT_LOCK_DIR set).

usage: lock_job.py compete OUT_DIR NAME HOLD_S   take 1 GPU, check nobody else holds it, log the interval
       lock_job.py hold N                        take N GPUs, print them, hold until killed
       lock_job.py wait TIMEOUT_S                take 1 GPU, print the time it was granted
"""
import os
import sys
import time
from pathlib import Path

from mlkit.gpu import gpu_lock

mode = sys.argv[1]
if mode == "compete":
    out, name, hold = Path(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    with gpu_lock(timeout=240, run_id=name) as ids:
        marker = out/f"gpu{ids[0]}.holding"
        try: os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))  # fails if another holder is inside
        except FileExistsError:
            with open(out/"violations", "a") as f: f.write(f"{name} gpu{ids[0]}\n")
            marker = None
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        start = time.time()
        time.sleep(hold)
        end = time.time()
        if marker: marker.unlink()
    with open(out/"log", "a") as f: f.write(f"{name} {ids[0]} {start:.6f} {end:.6f} {visible}\n")
elif mode == "hold":
    with gpu_lock(n=int(sys.argv[2]), run_id="holder") as ids:
        print("held", *ids, flush=True)
        time.sleep(3600)
elif mode == "wait":
    with gpu_lock(timeout=float(sys.argv[2]), run_id="waiter") as ids:
        print(f"{time.time():.6f}", *ids, flush=True)
