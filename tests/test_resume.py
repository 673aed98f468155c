"Kill a training run with SIGKILL anywhere, resume from the latest checkpoint: the result is bit-identical."
import json
import random
import signal
from pathlib import Path

import pytest
import torch
from conftest import run_job

from mlkit.checkpoint import list_checkpoints, load_checkpoint
from mlkit.core import TMP_PREFIX
from mlkit.runs import list_runs

COVERS = ("00_core", "02_checkpoint", "05_train", "06_callbacks", "10_track")  # what these cover (make test NB=...)

JOB = Path(__file__).parent/"jobs"/"resume_job.py"
STEPS = 3 * 8  # 3 epochs of 16 batches with grad_accum=2


def job(out, ckpt, *flags):
    return run_job(JOB, out, ckpt, *flags)


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


LOADER_REFERENCES = {}


def loader_reference(tmp_path_factory, loader):
    if loader not in LOADER_REFERENCES:
        d = tmp_path_factory.mktemp(f"reference-{loader}")
        r = job(d/"out", d/"ckpt", "--loader", loader)
        assert r.returncode == 0, r.stderr
        LOADER_REFERENCES[loader] = result(d/"out")
    return LOADER_REFERENCES[loader]


# kill points: mid-epoch in the first epoch, its last batch, after its epoch-end checkpoint, mid-epoch in a later epoch
KILLS = [("5", "after_step"), (str(STEPS // 3), "after_batch"), (str(STEPS // 3), "after_epoch"), ("13", "after_step")]


@pytest.mark.covers("03_data")  # the loader setups: ResumableSampler and resumable_loader
@pytest.mark.parametrize("loader", ["generator", "weighted", "workers"])
@pytest.mark.parametrize("step, event", KILLS)
def test_every_loader_setup_resumes_exactly_or_says_why_not(tmp_path, tmp_path_factory, loader, step, event):
    """A user's generator, a sampler mlkit cannot rebuild (replayed), workers with random augmentation: killed
    anywhere, the resumed run is bit-identical — except mid-epoch with workers, where fit(resume=...) warns."""
    reference = loader_reference(tmp_path_factory, loader)
    killed = job(tmp_path/"out", tmp_path/"ckpt", "--loader", loader, "--kill-at", step, "--kill-event", event)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = job(tmp_path/"out", tmp_path/"ckpt", "--loader", loader, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    mid_epoch = event == "after_step"
    if loader == "workers" and mid_epoch:
        assert "RuntimeWarning: resuming" in resumed.stderr and "num_workers=2" in resumed.stderr, resumed.stderr
    else:
        assert "RuntimeWarning" not in resumed.stderr, resumed.stderr
        assert_identical(result(tmp_path/"out"), reference)


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


def test_kill_while_the_checkpoint_is_half_written(tmp_path, reference):
    "Killed with half of step 10's checkpoint on disk: the latest checkpoint still loads, and the resumed run is exact."
    killed = job(tmp_path/"out", tmp_path/"ckpt", "--kill-mid-write", "10")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    latest = list_checkpoints(tmp_path/"ckpt")[-1]
    assert load_checkpoint(latest)["step"] == 8, latest  # the half-written one is not among the checkpoints
    resumed = job(tmp_path/"out", tmp_path/"ckpt", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_identical(result(tmp_path/"out"), reference)


def _rows(run):
    return {name: [(step, value) for step, _, value in rows] for name, rows in run.metrics.items()}


def test_resumed_fit_continues_its_run_record(tmp_path):
    "Killed after step 7 (checkpoint at 6), resumed: one run, every step once, the same values as without the kill."
    ref = job(tmp_path/"ref", tmp_path/"ref-ckpt", "--track", str(tmp_path/"ref-runs"))
    assert ref.returncode == 0, ref.stderr
    [reference] = list_runs(tmp_path/"ref-runs")
    runs = tmp_path/"runs"
    killed = job(tmp_path/"out", tmp_path/"ckpt", "--kill-at", "7", "--kill-event", "after_batch", "--track", str(runs))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    [run] = list_runs(runs)
    assert run.status == "interrupted" and max(s for s, _ in _rows(run)["train_loss_step"]) == 7
    resumed = job(tmp_path/"out", tmp_path/"ckpt", "--resume", "--track", str(runs))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout and "step-00000006.pt" in resumed.stdout and "optimizer step 6" in resumed.stdout
    [after] = list_runs(runs)  # the same run, not a second one with the same name
    assert (after.id, after.status, len(after.meta["resumes"]), after.meta["resumes"][0]["after_step"]) == \
        (run.id, "finished", 1, 6)
    got, expected = _rows(after), _rows(reference)
    timings = {"epoch_time_s", "samples_per_s", "peak_memory_bytes"}  # measured, so they differ: compare their steps
    assert {k: [s for s, _ in v] for k, v in got.items()} == {k: [s for s, _ in v] for k, v in expected.items()}
    assert {k: v for k, v in got.items() if k not in timings} == {k: v for k, v in expected.items() if k not in timings}
