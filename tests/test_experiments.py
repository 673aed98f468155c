"The experiment notebooks run headlessly through `mlkit run`, as `make train` runs them, so that they cannot rot."
import json
import os
import subprocess
import sys
from pathlib import Path

COVERS = ("experiments/train_digits",)  # the notebooks these tests cover: `make test NB=...` runs them

REPO = Path(__file__).resolve().parents[1]
MLKIT = str(Path(sys.executable).parent/"mlkit")


def test_train_digits_runs_and_records(tmp_path):
    env = {**os.environ, "MLKIT_RUNS_DIR": str(tmp_path/"runs")}
    r = subprocess.run([MLKIT, "run", "nbs/experiments/train_digits.ipynb", "-p", "epochs", "2", "-p", "width", "32"],
                       cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    [run] = [p for p in (tmp_path/"runs").iterdir() if not p.name.startswith((".", "_"))]
    meta = json.loads((run/"meta.json").read_text())
    params = json.loads((run/"params.json").read_text())
    records = json.loads((run/"records.json").read_text())
    assert meta["status"] == "finished"
    assert (params["epochs"], params["width"], params["trainer"]["epochs"]) == (2, 32, 2)
    assert 0.0 <= records["test_accuracy"] <= 1.0 and "test_accuracy" in r.stdout
    assert (run/"notebook.ipynb").is_file() and (run/"artifacts"/"checkpoints"/"best.pt").is_file()
    metrics = (run/"metrics.csv").read_text()
    assert ",train_loss_step," in metrics and ",valid_loss," in metrics
