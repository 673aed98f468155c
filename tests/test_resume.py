"Kill a training run with SIGKILL anywhere, resume from the latest checkpoint: the result is bit-identical."
import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mlkit.checkpoint import list_checkpoints, load_checkpoint
from mlkit.core import TMP_PREFIX

JOB = Path(__file__).parent/"jobs"/"resume_job.py"
STEPS = 3 * 8  # 3 epochs of 16 batches with grad_accum=2


def job(out, ckpt, *flags):
    return subprocess.run([sys.executable, str(JOB), str(out), str(ckpt), *flags], capture_output=True, text=True, timeout=300)


def result(out):
    return torch.load(out/"final.pt", weights_only=True), json.loads((out/"history.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("reference")
    r = job(d/"out", d/"ckpt")
    assert r.returncode == 0, r.stderr
    return result(d/"out")


def assert_identical(got, ref):
    (weights, history), (ref_weights, ref_history) = got, ref
    assert weights.keys() == ref_weights.keys()
    for k in weights: assert torch.equal(weights[k], ref_weights[k]), k
    assert history == ref_history  # train and valid losses, accuracy: exactly equal floats


def kill_then_resume(tmp_path, *kill_flags):
    killed = job(tmp_path/"out", tmp_path/"ckpt", *kill_flags)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (tmp_path/"out").exists()
    resumed = job(tmp_path/"out", tmp_path/"ckpt", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    return result(tmp_path/"out")


@pytest.mark.parametrize("step, event", [(s, e) for s, e in zip(random.Random(7).sample(range(1, STEPS), 3),
                                                                   ["after_step", "after_batch", "after_step"], strict=True)]
                         + [(STEPS // 3, "after_batch")])  # the end of the first epoch
def test_sigkill_and_resume_is_bit_identical(tmp_path, reference, step, event):
    assert_identical(kill_then_resume(tmp_path, "--kill-at", str(step), "--kill-event", event), reference)


def test_killed_twice(tmp_path, reference):
    assert job(tmp_path/"out", tmp_path/"ckpt", "--kill-at", "5").returncode == -signal.SIGKILL
    assert job(tmp_path/"out", tmp_path/"ckpt", "--kill-at", "17", "--resume").returncode == -signal.SIGKILL
    resumed = job(tmp_path/"out", tmp_path/"ckpt", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_identical(result(tmp_path/"out"), reference)


def test_kill_during_save_leaves_previous_checkpoint_intact(tmp_path, reference):
    killed = job(tmp_path/"out", tmp_path/"ckpt", "--kill-in-save", "10")
    assert killed.returncode == -signal.SIGKILL
    names = sorted(p.name for p in (tmp_path/"ckpt").iterdir())
    assert any(n.startswith(TMP_PREFIX) for n in names), names  # the interrupted write
    latest = list_checkpoints(tmp_path/"ckpt")[-1]
    assert latest.name == "step-00000008.pt"
    assert load_checkpoint(latest)["step"] == 8  # whole and loadable
    resumed = job(tmp_path/"out", tmp_path/"ckpt", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert not any(p.name.startswith(TMP_PREFIX) for p in (tmp_path/"ckpt").iterdir())
    assert_identical(result(tmp_path/"out"), reference)
