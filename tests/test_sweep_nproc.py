"`mlkit sweep --nproc N`: each trial a DDP run under torchrun (CPU, gloo), pruned on every rank at once."
import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from test_sweep import TRAIN, new_project, notebook

COVERS = ("07_cli", "12_sweep", "12d_sweep_workers")  # the notebooks these tests cover: `make test NB=...` runs them

MLKIT = str(Path(sys.executable).parent/"mlkit")

# The sweep tests' Trainer notebook, then a last cell in which each rank writes where its fit ended
TRAIN = (*TRAIN[:2], """
import os, pathlib
from mlkit.distributed import dist_env
from mlkit.run import record
rank = dist_env().rank  # each rank says where its fit ended: the pruner's stop must reach both at the same step
pathlib.Path(os.environ['MLKIT_RUN_DIR'], f'rank{rank}.json').write_text(
    json.dumps({'step': trainer.step, 'epochs': len(trainer.history), 'world': dist_env().world_size}))
record('score', -trainer.history[-1]['valid_loss'])""")


@pytest.fixture
def project(tmp_path, monkeypatch):
    "A project folder with the DDP notebook; its runs folder in MLKIT_RUNS_DIR; one thread per rank."
    root = new_project(tmp_path, monkeypatch)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    notebook(root, "ddp.ipynb", TRAIN[0], "import json", *TRAIN[1:])
    return root


def spec(root, **over) -> Path:
    "s.yaml: good, good, then a bad learning rate, median pruning after two trials, unless `over` says otherwise."
    text = {"name": "s", "notebook": "ddp.ipynb", "metric": {"name": "score", "goal": "maximize"}, "method": "random",
            "n_trials": 3, "params": {"lr": {"type": "categorical", "choices": [0.1, 0.0]}},
            "pruner": {"type": "median", "metric": "valid_loss", "n_startup_trials": 2},
            "start_with": [{"lr": 0.1}, {"lr": 0.1}, {"lr": 0.0}], **over}
    path = root/"s.yaml"
    path.write_text(json.dumps(text))
    return path


def sweep(*args, env=None, timeout=600):
    return subprocess.run([MLKIT, "sweep", *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def study():
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    path = Path(os.environ["MLKIT_RUNS_DIR"])/"sweeps"/"s"/"journal.log"
    return optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(path))))


@pytest.mark.parametrize("where", ["flag", "spec"])
@pytest.mark.slow
def test_a_nproc_2_sweep_prunes_a_trial_on_both_ranks_at_the_same_step(project, where):
    "Rank 0 reports and is told to prune; TrackingCallback's broadcast stops rank 1 at the same step, and the run is pruned."
    r = sweep(spec(project), "--nproc", "2") if where == "flag" else sweep(spec(project, nproc=2))
    assert r.returncode == 0, r.stdout + r.stderr
    trials = study().trials
    assert [(t.params["lr"], t.state) for t in trials] == [
        (0.1, TrialState.COMPLETE), (0.1, TrialState.COMPLETE), (0.0, TrialState.PRUNED)], r.stdout + r.stderr
    from mlkit.runs import list_runs
    by_trial = {x.meta["trial"]: x for x in list_runs(os.environ["MLKIT_RUNS_DIR"])}
    ends = {n: [json.loads((by_trial[n].path/f"rank{k}.json").read_text()) for k in (0, 1)] for n in by_trial}
    for n, (rank0, rank1) in ends.items():
        assert by_trial[n].meta["nproc"] == 2 and rank0["world"] == rank1["world"] == 2
        assert rank0 == rank1, (n, rank0, rank1)  # both ranks ended their fit at the same step
    assert ends[0][0]["epochs"] == ends[1][0]["epochs"] == 6
    pruned = by_trial[2]
    assert pruned.status == "pruned" and pruned.meta["pruned_at_step"] == 1, pruned.meta
    assert ends[2][0]["epochs"] == ends[2][1]["epochs"] == 1  # stopped after the epoch it was judged on, on both ranks
    assert "trial 2 pruned at step 1" in r.stdout and "Traceback" not in r.stdout + r.stderr


@pytest.mark.parametrize("args, over, env, message", [
    (("--nproc", "0"), {}, {}, "mlkit sweep: error: --nproc takes a number of processes per trial, 1 or more, got 0"),
    ((), {"nproc": 0}, {}, "s.yaml: nproc takes a number of processes per trial, 1 or more, got 0"),
    ((), {"nproc": "two"}, {}, "s.yaml: nproc takes a number of processes per trial, 1 or more, got 'two'"),
    (("--nproc", "2", "--gpus-per-trial", "1"), {}, {"MLKIT_FAKE_GPUS": "2"},
     "mlkit sweep: error: --gpus-per-trial 1 with 2 processes per trial: each rank uses the GPU of its local rank, so "
     "give --gpus-per-trial 2"),
    (("--gpus-per-trial", "3"), {"nproc": 3}, {"MLKIT_FAKE_GPUS": "2"}, "--gpus-per-trial 3: this machine shows 2 GPU(s)"),
])
def test_bad_nproc_is_one_line_and_runs_nothing(project, args, over, env, message):
    r = sweep(spec(project, **over), *args, env=env)
    assert r.returncode == 1 and message in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stdout == "" and not Path(os.environ["MLKIT_RUNS_DIR"]).exists()  # nothing made
