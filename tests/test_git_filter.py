"The git filter set up by `make hooks` (part of `make install`) stages notebooks without outputs, keeping cell ids."
import json
import subprocess

from conftest import make


def git(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


def test_git_add_strips_outputs_and_keeps_ids(repo_copy):
    git("init", "-q", cwd=repo_copy)
    r = make("hooks", cwd=repo_copy)
    assert r.returncode == 0 and "nbstripout filter" in r.stdout, r.stdout + r.stderr
    path = repo_copy/"nbs"/"00_core.ipynb"
    nb = json.loads(path.read_text())
    ids = [c["id"] for c in nb["cells"]]
    for c in nb["cells"]:
        if c["cell_type"] == "code":
            c["execution_count"] = 5
            c["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["secret output\n"]}]
    path.write_text(json.dumps(nb, indent=1))

    git("add", "nbs/00_core.ipynb", cwd=repo_copy)
    staged = json.loads(git("show", ":nbs/00_core.ipynb", cwd=repo_copy))
    code = [c for c in staged["cells"] if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    assert [c["id"] for c in staged["cells"]] == ids
    assert "secret output" in path.read_text()  # the working copy keeps its outputs
    assert git("config", "merge.nbdev-merge.driver", cwd=repo_copy).strip().endswith("%O %A %B %P")
