"A notebook executed by papermill in the project kernel reports progress as readable lines, not a widget or redraws."
import subprocess
import sys
from pathlib import Path

import nbformat

COVERS = ("06_callbacks",)  # the notebooks these tests cover: `make test NB=...` runs them

NOTEBOOK = Path(__file__).parent/"notebooks"/"train_tiny.ipynb"


def test_progress_under_papermill_is_lines(tmp_path):
    out = tmp_path/"out.ipynb"
    r = subprocess.run([str(Path(sys.executable).parent/"papermill"), str(NOTEBOOK), str(out), "-p", "epochs", "2",
                        "--log-level", "WARNING"], capture_output=True, text=True, timeout=300, env=None)
    assert r.returncode == 0, r.stderr
    outputs = nbformat.read(out, as_version=4).cells[-1].outputs
    assert [o.output_type for o in outputs] == ["stream"] * len(outputs)  # no widget bar, no display data
    text = "".join(o.text for o in outputs if o.name == "stdout")
    lines = text.splitlines()
    assert "\r" not in text
    assert len(lines) == 2, lines  # a summary per epoch (these take well under the 30 s between progress lines)
    assert lines[0].startswith("epoch 1/2  train_loss") and lines[1].startswith("epoch 2/2") and "valid_loss" in lines[-1]
