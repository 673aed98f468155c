"The experiment notebooks run headlessly through `mlkit run`, as `make train` runs them, so that they cannot rot."
import json
import os
import re
import subprocess
import sys
from pathlib import Path

COVERS = ("experiments/train_digits",)  # the notebooks these tests cover: `make test NB=...` runs them

REPO = Path(__file__).resolve().parents[1]
MLKIT = str(Path(sys.executable).parent/"mlkit")


def test_train_digits_runs_and_records(tmp_path):
    "What `make train` shows and keeps: the run's folder first, a line per epoch, the seed, a notebook without reprs."
    env = {**os.environ, "MLKIT_RUNS_DIR": str(tmp_path/"runs")}
    r = subprocess.run([MLKIT, "run", "nbs/experiments/train_digits.ipynb", "-p", "epochs", "3", "-p", "width", "32",
                        "-p", "seed", "7"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-4000:]
    [run] = [p for p in (tmp_path/"runs").iterdir() if not p.name.startswith((".", "_"))]
    meta = json.loads((run/"meta.json").read_text())
    params = json.loads((run/"params.json").read_text())
    records = json.loads((run/"records.json").read_text())
    assert meta["status"] == "finished"
    assert meta["seed"] == 7  # the kernel's seed_everything(seed), though the run was made by mlkit run's process
    assert (params["epochs"], params["width"], params["trainer"]["epochs"]) == (3, 32, 3)
    assert 0.0 <= records["test_accuracy"] <= 1.0 and "test_accuracy" in r.stdout
    assert (run/"notebook.ipynb").is_file() and (run/"artifacts"/"checkpoints"/"best.pt").is_file()
    metrics = (run/"metrics.csv").read_text()
    assert ",train_loss_step," in metrics and ",valid_loss," in metrics
    # the terminal: the run's id and folder before anything else, then one line per epoch (its summary)
    lines = r.stdout.splitlines()
    assert lines[0] == f"mlkit run: run {run.name} (train_digits) in {run}", lines[:3]
    epochs = [ln for ln in lines if ln.startswith("epoch ")]
    assert [ln.split()[1] for ln in epochs] == ["1/3", "2/3", "3/3"], epochs
    assert all("valid_loss" in ln for ln in epochs), epochs
    # the executed notebook: the same lines under the training cell, and no `<Trainer at 0x...>`-like repr anywhere
    cells = [c for c in json.loads((run/"notebook.ipynb").read_text())["cells"] if c["cell_type"] == "code"]
    texts = ["".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", "")) for c in cells for o in c["outputs"]]
    assert not [t for t in texts if re.search(r"<[\w.]+( object)? at 0x", t)], texts
    assert not [o for c in cells for o in c["outputs"] if o["output_type"] == "execute_result"], "an Out: value shown"
    assert sum(len(c["outputs"]) for c in cells) <= 3 + 3, [len(c["outputs"]) for c in cells]  # 2 plots, 3 epochs, 1 print
