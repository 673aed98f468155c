"""`make check` passes on a clean tree and fails, naming the file, for each kind of drift.

Each drift is tested against the one part of `make check` that finds it (`TARGET`, a second or two instead of the
whole check); `test_every_drift_is_reported_by_make_check_in_one_run` proves that `make check` runs every part.
"""
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, make

sys.path.insert(0, str(REPO/"scripts"))
import check_notebooks as cn  # noqa: E402


def check_fails_naming(repo, name, target="check"):
    r = make(target, cwd=repo)
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
    out = check_fails_naming(repo_copy, "nbs/00_core.ipynb", "check-notebooks")
    assert "nbs/00_core.ipynb holds outputs; execution counts" in out
    assert "not a git checkout, so no git filter: checking the working tree's notebooks" in out  # said, in one line


def test_execution_count_alone(repo_copy):
    path = repo_copy/"nbs"/"00_core.ipynb"
    nb = json.loads(path.read_text())
    next(c for c in nb["cells"] if c["cell_type"] == "code")["execution_count"] = 7
    path.write_text(json.dumps(nb, indent=1))
    out = check_fails_naming(repo_copy, "nbs/00_core.ipynb", "check-notebooks")
    assert "holds execution counts\n" in out


def test_kernel_language_info_left_in_a_notebook(repo_copy):
    "A notebook saved after running keeps metadata.language_info (with Python's patch version): noise in every diff."
    path = repo_copy/"nbs"/"00_core.ipynb"
    nb = json.loads(path.read_text())
    nb["metadata"]["language_info"] = {"name": "python", "version": "3.11.7"}
    path.write_text(json.dumps(nb, indent=1, sort_keys=True) + "\n")
    out = check_fails_naming(repo_copy, "nbs/00_core.ipynb", "check-notebooks")
    assert "nbs/00_core.ipynb holds metadata language_info\n" in out


@pytest.mark.parametrize("where", ["cells", "raw"])
def test_merge_conflict_left_in_a_notebook(repo_copy, where):
    "nbdev_merge's marker cells, or git's own markers in the file, are never a notebook to commit."
    path = repo_copy/"nbs"/"00_core.ipynb"
    if where == "raw":
        path.write_text(path.read_text().replace(' "cells": [', '<<<<<<< HEAD\n "cells": [', 1))
    else:
        nb = json.loads(path.read_text())
        nb["cells"][1:1] = [{"cell_type": "markdown", "id": f"m{i}", "metadata": {}, "source": [f"`{m}`"]}
                            for i, m in enumerate(["<<<<<<< HEAD", "=======", ">>>>>>> theirs"])]
        path.write_text(json.dumps(nb, indent=1, sort_keys=True) + "\n")
    out = check_fails_naming(repo_copy, "nbs/00_core.ipynb", "check-notebooks")
    expected = {"cells": "holds merge conflict markers (cells 2, 3, 4, counting from 1)",  # by position: no ids
                "raw": "is not a readable notebook"}[where]
    assert expected in out, out


def test_a_markdown_heading_underlined_with_equals_signs_is_no_conflict(repo_copy):
    path = repo_copy/"nbs"/"00_core.ipynb"
    nb = json.loads(path.read_text())
    nb["cells"][0]["source"] += ["\n", "Heading\n", "======="]
    path.write_text(json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    r = make("check-notebooks", cwd=repo_copy)
    assert r.returncode == 0, r.stdout + r.stderr


def test_module_edited_by_hand(repo_copy):
    with open(repo_copy/"mlkit"/"core.py", "a") as f: f.write("\nHAND_EDIT = 1\n")
    out = check_fails_naming(repo_copy, "mlkit/core.py", "check-export")
    assert "out of sync" in out


def test_notebook_changed_without_export(repo_copy):
    path = repo_copy/"nbs"/"00_core.ipynb"
    nb = json.loads(path.read_text())
    cell = next(c for c in nb["cells"] if "def runs_dir" in "".join(c["source"]))
    cell["source"] = "".join(cell["source"]).replace("The folder holding run records", "Where runs live")
    path.write_text(json.dumps(nb, indent=1))
    check_fails_naming(repo_copy, "core.py", "check-export")


@pytest.mark.parametrize("line, expected", [
    ("rich>=13", "'rich>=13' from requirements.in is not pinned"),
    ("tqdm<4.0", "outside 'tqdm<4.0'"),
])
def test_lock_stale(repo_copy, line, expected):
    path = repo_copy/"requirements.in"
    path.write_text(path.read_text() + line + "\n")
    out = check_fails_naming(repo_copy, "requirements.txt", "check-lock")
    assert expected in out


def test_dependency_removed_from_requirements_in(repo_copy):
    path = repo_copy/"requirements.in"
    path.write_text("\n".join(ln for ln in path.read_text().splitlines() if not ln.startswith("nbqa")) + "\n")
    out = check_fails_naming(repo_copy, "requirements.txt", "check-lock")
    assert "nbqa" in out


def test_torch_lock_stale(repo_copy):
    path = repo_copy/"requirements.in"
    path.write_text(path.read_text().replace("torch==2.13.0", "torch==2.12.0"))
    check_fails_naming(repo_copy, "requirements-cpu.txt", "check-lock")


def test_lint_error_in_tests(repo_copy):
    (repo_copy/"tests"/"test_sloppy.py").write_text("import os\n")
    check_fails_naming(repo_copy, "tests/test_sloppy.py", "lint")


def test_lint_error_in_notebook(repo_copy):
    path = repo_copy/"nbs"/"00_core.ipynb"
    nb = json.loads(path.read_text())
    nb["cells"].append({"cell_type": "code", "id": "sloppy01", "metadata": {}, "execution_count": None,
                        "outputs": [], "source": ["x = None\n", "assert x == None"]})
    path.write_text(json.dumps(nb, indent=1))
    check_fails_naming(repo_copy, "nbs/00_core.ipynb", "lint")


def test_invalid_workflow(repo_copy):
    (repo_copy/".github"/"workflows"/"broken.yml").write_text(
        "name: broken\non: push\njobs:\n  build:\n    steps:\n      - run: echo hi\n")  # no runs-on
    check_fails_naming(repo_copy, "broken.yml", "check-workflows")


@pytest.mark.parametrize("edit, expected", [
    (lambda c: c.pop("forwardPorts") and c.update(forwardPort=[8888]), "forwardPort"),  # a misspelt key
    (lambda c: c.update(forwardPorts="8888"), "forwardPorts"),  # a port list given as a string
    (lambda c: c.update(postCreateCommand=""), "postCreateCommand"),
    (lambda c: c.pop("image"), "image"),  # no image, Dockerfile or Compose file: nothing to start
])
def test_devcontainer_that_its_schema_refuses(repo_copy, edit, expected):
    path = repo_copy/".devcontainer"/"devcontainer.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config, indent=2))
    out = check_fails_naming(repo_copy, "devcontainer.json", "check-devcontainer")
    assert expected in out


def _replace(path, old, new):
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new))


@pytest.mark.parametrize("break_it, expected", [
    (lambda r: _replace(r/"settings.ini", "title = mlkit", "title = mlkit docs"), "nbs/nbdev.yml differs"),
    (lambda r: (r/"nbs"/"styles.css").unlink(), "its stylesheet styles.css"),
    (lambda r: _replace(r/"nbs"/"_quarto.yml", "metadata-files: [nbdev.yml", "metadata-files: [site.yml"), "site.yml"),
    (lambda r: (r/"nbs"/"_quarto.yml").write_text("project: [website\n"), "is not YAML"),
    (lambda r: (r/"nbs"/"index.ipynb").unlink(), "readme_nb = index.ipynb"),
    (lambda r: _replace(r/"settings.ini", "custom_sidebar = False", "custom_sidebar = True"), "metadata file sidebar.yml"),
    (lambda r: _replace(r/"settings.ini", "description = Notebook-first", 'description = "Notebook"-first'), "is not YAML"),
])
def test_docs_configuration_that_would_not_build(repo_copy, break_it, expected):
    break_it(repo_copy)
    out = check_fails_naming(repo_copy, "error:", "check-docs")
    assert expected in out


def test_every_drift_is_reported_by_make_check_in_one_run(repo_copy):
    "One `make check` names every problem, each found by its own part, not just the first."
    nb_path = repo_copy/"nbs"/"00_core.ipynb"
    nb = json.loads(nb_path.read_text())
    next(c for c in nb["cells"] if c["cell_type"] == "code")["execution_count"] = 7
    nb_path.write_text(json.dumps(nb, indent=1))  # check-notebooks
    with open(repo_copy/"mlkit"/"core.py", "a") as f: f.write("\nHAND_EDIT = 1\n")  # check-export
    (repo_copy/"requirements.in").write_text((repo_copy/"requirements.in").read_text() + "rich>=13\n")  # check-lock
    (repo_copy/"tests"/"test_sloppy.py").write_text("import os\n")  # lint
    (repo_copy/".github"/"workflows"/"broken.yml").write_text("name: broken\non: push\njobs:\n  b:\n    steps: []\n")
    (repo_copy/"nbs"/"styles.css").unlink()  # check-docs
    _replace(repo_copy/".devcontainer"/"devcontainer.json", '"forwardPorts"', '"forwardPort"')  # check-devcontainer
    out = check_fails_naming(repo_copy, "nbs/00_core.ipynb")
    for found in ("nbs/00_core.ipynb holds execution counts", "mlkit/core.py", "'rich>=13' from requirements.in is not pinned",
                  "tests/test_sloppy.py", "broken.yml", "its stylesheet styles.css", "forwardPort", "check: FAILED"):
        assert found in out, found


def test_devcontainer_as_vs_code_reads_it_with_comments_and_trailing_commas(repo_copy):
    "devcontainer.json is JSONC: VS Code and the devcontainer CLI accept comments and trailing commas, so check does too."
    path = repo_copy/".devcontainer"/"devcontainer.json"
    text = path.read_text().replace('"postCreateCommand": "make install",',
                                    '// the environment, from the locks\n  "postCreateCommand": "make install", /* once */')
    assert "// the environment" in text and '"gpu": "optional"}' in text
    path.write_text(text.replace('"gpu": "optional"}', '"gpu": "optional",}'))
    r = make("check-devcontainer", cwd=repo_copy)
    assert r.returncode == 0, r.stdout + r.stderr
    path.write_text(text.replace('"postCreateCommand"', '"postCreateCommands"'))  # and still refuses a misspelt key
    check_fails_naming(repo_copy, "postCreateCommands", "check-devcontainer")


def test_a_notebook_whose_path_has_a_space_or_is_not_utf8_is_named_in_one_line(repo_copy):
    "Paths reach check_notebooks.py whole (not split by make), and a file that is not UTF-8 is named, not a traceback."
    spaced = repo_copy/"nbs"/"my notebook.ipynb"
    nb = json.loads((repo_copy/"nbs"/"00_core.ipynb").read_text())
    nb["cells"][1]["execution_count"] = 3
    spaced.write_text(json.dumps(nb, indent=1))
    (repo_copy/"nbs"/"utf16.ipynb").write_bytes('{"cells": []}'.encode("utf-16"))
    out = check_fails_naming(repo_copy, "nbs/my notebook.ipynb holds execution counts", "check-notebooks")
    assert "nbs/utf16.ipynb is not a readable notebook" in out and "Traceback" not in out, out


# --- scripts/check_notebooks.py in-process: each rule of the committed form and of `check`, one small test each --------

KEYS = (cn.NBDEV_KEEP - cn.NOT_COMMITTED, cn.NBDEV_KEEP_CELL | {"tags"})


def nb_of(*cells, **top):
    return {"cells": list(cells), "metadata": {}, "nbformat": 4, "nbformat_minor": 5, **top}


def md(source, **extra):
    return {"cell_type": "markdown", "metadata": {}, "source": source, **extra}


def test_an_empty_cell_is_written_with_no_lines_as_nbdev_writes_it():
    assert cn.clean(nb_of(md([""], id="a"), md("", id="b")), KEYS)["cells"][0]["source"] == []
    assert cn.clean(nb_of(md("", id="b")), KEYS)["cells"][0]["source"] == []


def test_a_cell_without_an_id_gets_the_same_id_each_time_and_a_cell_with_one_keeps_it():
    got = [cn.clean(nb_of(md(["x"]), md(["x"]), md(["y"], id="mine")), KEYS)["cells"] for _ in range(2)]
    assert got[0] == got[1] and got[0][2]["id"] == "mine"  # the filter gives the same bytes each time
    assert got[0][0]["id"] and got[0][0]["id"] != got[0][1]["id"]  # and distinct ids to cells alike


def test_an_nbformat_4_4_notebook_is_written_as_4_5_as_nbformat_and_nbdev_write_it():
    assert cn.clean(nb_of(md(["x"], id="a"), nbformat_minor=4), KEYS)["nbformat_minor"] == 5
    assert cn.clean(nb_of(md(["x"], id="a"), nbformat=3, nbformat_minor=0), KEYS)["nbformat_minor"] == 0


def test_git_diffs_view_names_each_cells_kept_metadata():
    cell = {"cell_type": "code", "id": "p1", "metadata": {"tags": ["parameters"]}, "source": ["lr = 0.1\n"]}
    text = cn.textconv(cn.clean(nb_of(cell), KEYS))
    assert '# ---- code cell p1 {"tags": ["parameters"]}\nlr = 0.1\n' in text, text


def test_a_sweep_spec_names_its_notebook_relative_to_itself_or_to_the_root(tmp_path):
    for d in ("nbs/experiments", "sweeps"): (tmp_path/d).mkdir(parents=True)
    for name in ("nbs/x.ipynb", "nbs/y.ipynb", "nbs/experiments/e.ipynb"): (tmp_path/name).write_text("{}")
    (tmp_path/"sweeps"/"x.yaml").write_text("notebook: ../nbs/x.ipynb\n")
    (tmp_path/"sweeps"/"y.yaml").write_text("notebook: nbs/y.ipynb\n")
    (tmp_path/"sweeps"/"out.yaml").write_text("notebook: ../../elsewhere.ipynb\n")
    assert cn.run_notebooks(tmp_path) == {"nbs/x.ipynb", "nbs/y.ipynb", "nbs/experiments/e.ipynb"}


@pytest.fixture
def tiny_repo(tmp_path, monkeypatch):
    "A git repository (no filter runs: no .gitattributes) whose config names the filter as `make hooks` sets it up now."
    for k, v in {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
                 "GIT_COMMITTER_EMAIL": "t@example.com", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}.items():
        monkeypatch.setenv(k, v)
    run = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)
    run("init", "-q", "-b", "main")
    run("config", "filter.nbstripout.clean", 'sh "$(git rev-parse --git-common-dir)/mlkit-nbfilter" clean')
    (tmp_path/"nbs").mkdir()
    return tmp_path, run


def run_check(root, capsys):
    code = cn.check(cn.working_notebooks(root), root)
    out = capsys.readouterr()
    return code, out.out + out.err


def test_a_bad_notebook_unchanged_since_head_is_named_once(tiny_repo, capsys):
    root, git = tiny_repo
    bad = nb_of({"cell_type": "code", "id": "a", "metadata": {}, "source": [], "outputs": [], "execution_count": 3})
    (root/"nbs"/"a.ipynb").write_text(cn.dumps(bad))
    git("add", "-A")
    git("commit", "-qm", "x")
    code, out = run_check(root, capsys)
    assert code == 1 and out.count("nbs/a.ipynb (") == 1 and "nbs/a.ipynb (committed) holds execution counts" in out, out


def test_a_filter_set_up_by_an_older_make_hooks_is_named_and_the_working_tree_judged(tiny_repo, capsys):
    root, git = tiny_repo
    git("config", "filter.nbstripout.clean", '"/somewhere/.venv/bin/python" -m nbstripout --keep-id')  # 659dbfb's hooks
    (root/"nbs"/"a.ipynb").write_text(cn.dumps(nb_of(md(["x"], id="a"), metadata={"language_info": {}})))
    code, out = run_check(root, capsys)
    assert code == 1 and "the git notebook filter is an older one ('make hooks' updates it)" in out, out
    assert "nbs/a.ipynb holds metadata language_info" in out, out


def test_a_staged_notebook_deleted_from_the_working_tree_is_judged_as_staged(tiny_repo, capsys):
    root, git = tiny_repo
    (root/"nbs"/"a.ipynb").write_text(cn.dumps(nb_of(md(["x"], id="a"))))
    git("add", "-A")
    (root/"nbs"/"a.ipynb").unlink()
    code, out = run_check(root, capsys)
    assert code == 0 and "Traceback" not in out, out


@pytest.mark.parametrize("args, content, expected", [
    (["fix", "nope.ipynb"], None, "error: nope.ipynb: No such file or directory"),
    (["fix", "list.ipynb"], "[1, 2]", "error: list.ipynb is not a notebook (JSON, but no object with a list of cells)"),
    (["fix", "cells.ipynb"], '{"cells": [1]}', "error: cells.ipynb is not a notebook (JSON, but no object"),
    (["fix", "half.ipynb"], '{"cells": [', "error: half.ipynb is not a notebook (Expecting value"),
    (["fix", "nbs"], None, "error: nbs: Is a directory"),
    (["textconv", "nope.ipynb"], None, "error: nope.ipynb: No such file or directory"),
    (["fix"], None, "error: usage: check_notebooks.py clean | textconv FILE"),  # no file
    (["textconv"], None, "error: usage: check_notebooks.py clean | textconv FILE"),
])
def test_bad_arguments_give_one_line_and_a_nonzero_exit(tmp_path, args, content, expected):
    (tmp_path/"nbs").mkdir()
    if content is not None: (tmp_path/args[1]).write_text(content)
    r = subprocess.run([sys.executable, str(REPO/"scripts"/"check_notebooks.py"), *args], cwd=tmp_path,
                       capture_output=True, text=True)
    assert r.returncode != 0 and r.stderr.startswith(expected) and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr
    if content is not None: assert (tmp_path/args[1]).read_text() == content  # left as it was
