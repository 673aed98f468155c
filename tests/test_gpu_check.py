"scripts/gpu_check.py can fail: each of its checks, fed a bad result, turns its row into FAIL and the exit status to 1."
import subprocess
import sys
import types
from pathlib import Path

import pytest

COVERS = ("01_gpu",)  # the notebooks these tests cover: `make test NB=...` runs them

sys.path.insert(0, str(Path(__file__).parents[1]/"scripts"))
import gpu_check  # noqa: E402


@pytest.fixture
def fast(monkeypatch):
    "The timings and measurements faked (a CPU run takes a while and proves nothing about speed)."
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--allow-cpu", "--rounds", "1"])
    monkeypatch.setattr(gpu_check, "raw_samples_per_s", lambda *a: 100.0)
    monkeypatch.setattr(gpu_check, "trainer_samples_per_s", lambda *a: 99.0)
    monkeypatch.setattr(gpu_check, "throughput", lambda *a, **k: types.SimpleNamespace(tflops=1.0, mfu=None, peak_memory=0))
    return monkeypatch


def test_passes_when_every_check_passes(fast, capsys):
    assert gpu_check.main() == 0
    out = capsys.readouterr().out
    assert "gpu_lock(1) + CUDA_VISIBLE_DEVICES  locked [0] visible 0" in out and "FAIL" not in out


def test_a_lock_that_points_elsewhere_fails(fast, capsys):
    real_run = subprocess.run
    def child_sees_another_gpu(cmd, **kw):
        done = real_run(cmd, **kw)
        return subprocess.CompletedProcess(cmd, 0, done.stdout.replace("visible 0", "visible 1"), done.stderr)
    fast.setattr(gpu_check.subprocess, "run", child_sees_another_gpu)
    assert gpu_check.main() == 1
    captured = capsys.readouterr()
    assert "FAIL  locked [0] visible 1" in captured.out and "1 check(s) failed: gpu_lock(1)" in captured.err


def test_a_slow_trainer_or_a_wrong_precision_fails_on_a_gpu(fast, capsys):
    "As if on an A100: bf16 expected; a Trainer at 0.9x the hand-written loop is too slow."
    import torch
    fast.setattr(gpu_check, "pick_device", lambda: torch.device("cuda", 0))
    fast.setattr(gpu_check, "auto_precision", lambda d: "fp16")
    fast.setattr(torch.cuda, "get_device_capability", lambda d=None: (8, 0))
    fast.setattr(torch.cuda, "is_available", lambda: True)
    fast.setattr(gpu_check, "trainer_samples_per_s", lambda *a: 90.0)
    fast.setattr(gpu_check, "find_batch_size", lambda *a, **k: 512)
    fast.setattr(gpu_check, "Batches", lambda *a: None)
    fast.setattr(gpu_check, "DataLoader", lambda *a, **k: types.SimpleNamespace(dataset=[None]))
    fast.setattr(gpu_check, "TinyTransformer", lambda: types.SimpleNamespace(to=lambda d: None))
    assert gpu_check.main() == 1
    err = capsys.readouterr().err
    assert "pick_device / auto_precision" in err and "train fp32" in err and "train fp16" in err
