"GPU locks across processes (on fake GPUs): no GPU is ever held twice, and a killed holder's GPU is free at once."
import os
import signal
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import pytest

COVERS = ("01_gpu",)  # the notebooks these tests cover: `make test NB=...` runs them

JOB = Path(__file__).parent/"jobs"/"lock_job.py"


@pytest.fixture
def env(tmp_path):
    e = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "MLKIT_GPU_LOCKS")}
    return {**e, "MLKIT_FAKE_GPUS": "2", "MLKIT_LOCK_DIR": str(tmp_path/"locks")}


def test_thirty_processes_never_share_a_gpu(tmp_path, env):
    procs = [subprocess.Popen([sys.executable, str(JOB), "compete", str(tmp_path), f"p{i}", "0.05"], env=env,
                              stderr=subprocess.PIPE, text=True) for i in range(30)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert not (tmp_path/"violations").exists(), (tmp_path/"violations").read_text()
    rows = [line.split() for line in (tmp_path/"log").read_text().splitlines()]
    assert len(rows) == 30
    for gpu in ("0", "1"):
        spans = sorted((float(s), float(e)) for _, g, s, e, _ in rows if g == gpu)
        assert all(prev[1] <= nxt[0] for prev, nxt in pairwise(spans)), f"overlapping holds on GPU {gpu}"
    assert {g for _, g, _, _, _ in rows} == {"0", "1"}  # both GPUs were used
    assert all(visible == g for _, g, _, _, visible in rows)  # each holder saw exactly its GPU


def test_killed_holder_releases_within_a_second(env):
    holder = subprocess.Popen([sys.executable, str(JOB), "hold", "2"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().split() == ["held", "0", "1"]
        waiter = subprocess.Popen([sys.executable, str(JOB), "wait", "60"], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)  # the waiter is polling by now
        assert waiter.poll() is None
        killed_at = time.time()
        holder.send_signal(signal.SIGKILL)
        out, err = waiter.communicate(timeout=60)
        assert waiter.returncode == 0, err
        granted_at, gpu = out.split()
        assert gpu in ("0", "1")
        assert float(granted_at) - killed_at < 1.0
    finally:
        holder.kill()
        holder.wait()


def test_timeout_names_the_holder(env):
    holder = subprocess.Popen([sys.executable, str(JOB), "hold", "2"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().startswith("held")
        r = subprocess.run([sys.executable, str(JOB), "wait", "0.5"], env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode != 0
        assert f"GPU 0 held by {os.environ.get('USER') or ''}".rstrip() in r.stderr
        assert f"(pid {holder.pid}, run holder)" in r.stderr
    finally:
        holder.kill()
        holder.wait()


def test_without_a_driver_no_torch_is_imported_to_find_no_gpu():
    "`mlkit gpus` on a machine without NVIDIA drivers: an answer at once, torch never imported (not even in a child)."
    code = ("import sys, mlkit.gpu as g\ng.NVIDIA_DRIVER = g.ROCM_DRIVER = g.Path('/nonexistent')\n"
            "g._nvml_gpus = lambda: None\ng._torch_query = lambda v: sys.exit('torch asked')\n"
            "print(g.gpus(), 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "[] False", r.stdout + r.stderr
