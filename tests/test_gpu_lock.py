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


def isolate_locks(monkeypatch, tmp_path, fake:int|None=None, visible:str|None=None):
    "In-process lock tests: a lock folder of their own, no held GPUs inherited; `fake` GPUs, `visible` as given."
    monkeypatch.setenv("MLKIT_LOCK_DIR", str(tmp_path/"locks"))
    monkeypatch.delenv("MLKIT_GPU_LOCKS", raising=False)
    for key, value in (("MLKIT_FAKE_GPUS", fake), ("CUDA_VISIBLE_DEVICES", visible)):
        if value is None: monkeypatch.delenv(key, raising=False)
        else: monkeypatch.setenv(key, str(value))


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


def test_threads_never_share_a_gpu(tmp_path, monkeypatch):
    "Threads of one process (Optuna's n_jobs, say) each taking a GPU get different ones, with or without the env."
    import threading

    from mlkit.gpu import gpu_lock
    isolate_locks(monkeypatch, tmp_path, fake=2)
    for set_env in (True, False):
        got, first_holds, both_in = [], threading.Event(), threading.Barrier(2, timeout=30)
        def take(first, set_env=set_env, got=got, first_holds=first_holds, both_in=both_in):
            if not first: first_holds.wait(30)  # the second asks while the first holds (and has set the env)
            with gpu_lock(1, timeout=5, set_env=set_env) as ids:
                got.append(ids)
                first_holds.set()
                both_in.wait()  # both hold a GPU at once
                with gpu_lock(1) as inner: got.append(("nested", inner == ids))  # nesting in a thread: same GPU
        threads = [threading.Thread(target=take, args=(i == 0,)) for i in range(2)]
        for t in threads: t.start()
        for t in threads: t.join(60)
        held = sorted(tuple(g) for g in got if g and g[0] != "nested")
        assert held == [(0,), (1,)], (set_env, got)
        assert [g for g in got if g[0] == "nested"] == [("nested", True)] * 2
        assert "MLKIT_GPU_LOCKS" not in os.environ and "CUDA_VISIBLE_DEVICES" not in os.environ


def test_a_planted_link_in_the_lock_folder_clobbers_nothing(tmp_path, monkeypatch):
    from mlkit.core import MlkitError
    from mlkit.gpu import gpu_lock, gpus, lock_dir
    isolate_locks(monkeypatch, tmp_path, fake=1)
    victim = tmp_path/"someone-elses-notes.txt"
    victim.write_text("precious\n")
    lock = lock_dir()/f"{gpus()[0].uuid}.lock"
    for plant in (lambda: lock.symlink_to(victim), lambda: os.link(victim, lock)):
        lock.unlink(missing_ok=True)
        plant()
        with pytest.raises(MlkitError, match="GPU lock .* (symbolic link|not a plain file)"):
            with gpu_lock(1, timeout=1): pass
        assert victim.read_text() == "precious\n"


def test_without_nvml_the_lock_takes_the_gpus_cuda_visible_devices_names(tmp_path, monkeypatch):
    "No NVML but a driver: torch's indices are relative to CUDA_VISIBLE_DEVICES; the lock must hold physical ones."
    import mlkit.gpu as g
    monkeypatch.setattr(g, "_nvml_gpus", lambda: None)
    driver = tmp_path/"version"
    driver.write_text("NVRM version: fake\n")
    monkeypatch.setattr(g, "NVIDIA_DRIVER", driver)
    asked = []
    def torch_sees(visible):  # what a child process's torch reports: the GPUs CUDA_VISIBLE_DEVICES lets through
        asked.append(visible)
        return [[f"NVIDIA L4 #{t}", f"GPU-uuid-{t}", 24 * g.GIB, 20 * g.GIB, 8, 9] for t in visible.split(",")]
    monkeypatch.setattr(g, "_torch_query", torch_sees)
    isolate_locks(monkeypatch, tmp_path, visible="2,3")  # this job was given physical GPUs 2 and 3
    assert [(x.index, x.physical_index, x.uuid) for x in g.gpus()] == [(0, 2, "GPU-uuid-2"), (1, 3, "GPU-uuid-3")]
    with g.gpu_lock(1) as ids:
        assert ids == [2] and os.environ["CUDA_VISIBLE_DEVICES"] == "2"  # the GPU it locked, by its physical index
        assert g.lock_holder(g.gpus()[0])["pid"] == os.getpid()  # still named from the process's own view
    assert set(asked) == {"2,3"}  # torch was asked about the GPUs this process was given, in a child process


def test_without_a_driver_no_torch_is_imported_to_find_no_gpu():
    "`mlkit gpus` on a machine without NVIDIA drivers: an answer at once, torch never imported (not even in a child)."
    code = ("import sys, mlkit.gpu as g\ng.NVIDIA_DRIVER = g.ROCM_DRIVER = g.Path('/nonexistent')\n"
            "g._nvml_gpus = lambda: None\ng._torch_query = lambda v: sys.exit('torch asked')\n"
            "print(g.gpus(), 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "[] False", r.stdout + r.stderr


def test_leaving_a_lock_shows_the_locks_still_open(tmp_path, monkeypatch):
    "Nested in a thread, or overlapping across threads: CUDA_VISIBLE_DEVICES names GPUs someone still holds."
    import threading

    from mlkit.gpu import gpu_lock
    isolate_locks(monkeypatch, tmp_path, fake=2)
    with gpu_lock(2):
        with gpu_lock(1): assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
        assert os.environ["CUDA_VISIBLE_DEVICES"] == os.environ["MLKIT_GPU_LOCKS"] == "0,1"  # the outer block's again
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    with gpu_lock(1) as mine:
        other = gpu_lock(1)  # another thread takes GPU 1 and gives it back
        t = threading.Thread(target=lambda: (other.__enter__(), other.__exit__(None, None, None)))
        t.start(); t.join(30)
        assert os.environ["CUDA_VISIBLE_DEVICES"] == ",".join(map(str, mine))  # not the GPU nobody holds now
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_without_nvml_gpus_named_by_uuid_are_refused_not_mislocked(tmp_path, monkeypatch):
    import mlkit.gpu as g
    from mlkit.core import MlkitError
    monkeypatch.setattr(g, "_nvml_gpus", lambda: None)
    (tmp_path/"version").write_text("driver\n")
    monkeypatch.setattr(g, "NVIDIA_DRIVER", tmp_path/"version")
    monkeypatch.setattr(g, "_torch_query", lambda v: [["NVIDIA L4", "GPU-bbbb", 24 * g.GIB, 20 * g.GIB, 8, 9]])
    isolate_locks(monkeypatch, tmp_path, visible="GPU-bbbb")
    with pytest.raises(MlkitError, match="names GPUs by UUID"):
        with g.gpu_lock(1): pass
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "GPU-bbbb"
