"`make check` passes on a clean tree and fails, naming the file, for each kind of drift."
import json

import pytest
from conftest import make


def check_fails_naming(repo, name):
    r = make("check", cwd=repo)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert name in out, out
    return out


def test_clean_copy_passes(repo_copy):
    r = make("check", cwd=repo_copy)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "check: all clean" in r.stdout


def test_notebook_with_outputs(repo_copy):
    path = repo_copy/"nbs"/"00_core.ipynb"
    nb = json.loads(path.read_text())
    cell = next(c for c in nb["cells"] if c["cell_type"] == "code")
    cell["execution_count"] = 1
    cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["hello\n"]}]
    path.write_text(json.dumps(nb, indent=1))
    out = check_fails_naming(repo_copy, "nbs/00_core.ipynb")
    assert "outputs or execution counts" in out


def test_execution_count_alone(repo_copy):
    path = repo_copy/"nbs"/"00_core.ipynb"
    nb = json.loads(path.read_text())
    next(c for c in nb["cells"] if c["cell_type"] == "code")["execution_count"] = 7
    path.write_text(json.dumps(nb, indent=1))
    check_fails_naming(repo_copy, "nbs/00_core.ipynb")


def test_kernel_language_info_left_in_a_notebook(repo_copy):
    "A notebook saved after running keeps metadata.language_info (with Python's patch version): noise in every diff."
    path = repo_copy/"nbs"/"00_core.ipynb"
    nb = json.loads(path.read_text())
    nb["metadata"]["language_info"] = {"name": "python", "version": "3.11.7"}
    path.write_text(json.dumps(nb, indent=1))
    check_fails_naming(repo_copy, "nbs/00_core.ipynb")


def test_module_edited_by_hand(repo_copy):
    with open(repo_copy/"mlkit"/"core.py", "a") as f: f.write("\nHAND_EDIT = 1\n")
    out = check_fails_naming(repo_copy, "mlkit/core.py")
    assert "out of sync" in out


def test_notebook_changed_without_export(repo_copy):
    path = repo_copy/"nbs"/"00_core.ipynb"
    nb = json.loads(path.read_text())
    cell = next(c for c in nb["cells"] if "def runs_dir" in "".join(c["source"]))
    cell["source"] = "".join(cell["source"]).replace("The folder holding run records", "Where runs live")
    path.write_text(json.dumps(nb, indent=1))
    check_fails_naming(repo_copy, "core.py")


@pytest.mark.parametrize("line, expected", [
    ("rich>=13", "'rich>=13' from requirements.in is not pinned"),
    ("tqdm<4.0", "outside 'tqdm<4.0'"),
])
def test_lock_stale(repo_copy, line, expected):
    path = repo_copy/"requirements.in"
    path.write_text(path.read_text() + line + "\n")
    out = check_fails_naming(repo_copy, "requirements.txt")
    assert expected in out


def test_dependency_removed_from_requirements_in(repo_copy):
    path = repo_copy/"requirements.in"
    path.write_text("\n".join(ln for ln in path.read_text().splitlines() if not ln.startswith("nbqa")) + "\n")
    out = check_fails_naming(repo_copy, "requirements.txt")
    assert "nbqa" in out


def test_torch_lock_stale(repo_copy):
    path = repo_copy/"requirements.in"
    path.write_text(path.read_text().replace("torch==2.13.0", "torch==2.12.0"))
    check_fails_naming(repo_copy, "requirements-cpu.txt")


def test_lint_error_in_tests(repo_copy):
    (repo_copy/"tests"/"test_sloppy.py").write_text("import os\n")
    check_fails_naming(repo_copy, "tests/test_sloppy.py")


def test_lint_error_in_notebook(repo_copy):
    path = repo_copy/"nbs"/"00_core.ipynb"
    nb = json.loads(path.read_text())
    nb["cells"].append({"cell_type": "code", "id": "sloppy01", "metadata": {}, "execution_count": None,
                        "outputs": [], "source": ["x = None\n", "assert x == None"]})
    path.write_text(json.dumps(nb, indent=1))
    check_fails_naming(repo_copy, "nbs/00_core.ipynb")


def test_invalid_workflow(repo_copy):
    (repo_copy/".github"/"workflows"/"broken.yml").write_text(
        "name: broken\non: push\njobs:\n  build:\n    steps:\n      - run: echo hi\n")  # no runs-on
    check_fails_naming(repo_copy, "broken.yml")


def test_all_drifts_reported_together(repo_copy):
    "One run names every problem, not just the first."
    with open(repo_copy/"mlkit"/"core.py", "a") as f: f.write("\nHAND_EDIT = 1\n")
    (repo_copy/"tests"/"test_sloppy.py").write_text("import os\n")
    out = check_fails_naming(repo_copy, "mlkit/core.py")
    assert "tests/test_sloppy.py" in out
