"""The git filter set up by `make hooks`, with real git, JupyterLab's writer and nbdev's own commands, and `make check`.

A clean checkout stays clean whatever the everyday tools write into its notebooks: a JupyterLab save (outputs, execution
counts, language_info), nbdev_clean. `make check` judges what a commit holds (HEAD and the index), not the working tree.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, make, repo_files

COVERS = ("11_run",)  # notebook_parameters on a cleaned notebook
GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
NOTEBOOKS = sorted(f for f in repo_files() if f.endswith(".ipynb") and not (REPO/f).is_symlink())


def git(*args, cwd, check=True):
    "Run git; its stdout (check) or the finished process."
    r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env=GIT_ENV)
    if check: assert r.returncode == 0, f"git {' '.join(args)}: {r.stdout}{r.stderr}"
    return r.stdout if check else r


@pytest.fixture
def clone(tmp_path):
    return make_clone(tmp_path)


def make_clone(tmp_path):
    "This working tree as a fresh clone would have it: committed byte for byte as it is, then `make hooks`."
    dest = tmp_path/"repo"
    for f in repo_files():
        (dest/f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO/f, dest/f, follow_symlinks=False)
    git("init", "-q", "-b", "main", cwd=dest)
    git("add", "-A", cwd=dest)  # no filter is set up yet: the bytes as they are
    git("commit", "-qm", "base", cwd=dest)
    r = make("hooks", cwd=dest)
    assert r.returncode == 0 and "notebook filter" in r.stdout, r.stdout + r.stderr
    return dest


def lab_save(root, rel, seed=1):
    "Save notebook `rel` as JupyterLab does after running it: through Jupyter Server's contents manager, its writer."
    from jupyter_server.services.contents.filemanager import FileContentsManager
    nb = json.loads((root/rel).read_text())
    for i, c in enumerate(nb["cells"]):
        if c["cell_type"] != "code": continue
        c["execution_count"] = i + seed
        c["outputs"] = [{"output_type": "stream", "name": "stdout", "text": [f"epoch {seed}\n", "done"]},
                        {"output_type": "execute_result", "execution_count": i + seed, "metadata": {},
                         "data": {"text/plain": [f"<Trainer at 0x7f{seed:04x}>"]}}]
        c["metadata"].update(scrolled=True, execution={"iopub.status.busy": f"2026-01-0{seed}T10:00:00.000Z"})
    name = nb["metadata"]["kernelspec"]["name"]  # Lab writes the kernel's spec: display_name is the kernel's own
    nb["metadata"]["kernelspec"] = {"display_name": {"python3": "Python 3"}.get(name, f"Python ({name})"),
                                    "language": "python", "name": name}
    nb["metadata"]["language_info"] = {"codemirror_mode": {"name": "ipython", "version": 3}, "file_extension": ".py",
                                       "mimetype": "text/x-python", "name": "python", "nbconvert_exporter": "python",
                                       "pygments_lexer": "ipython3", "version": f"3.11.{seed}"}
    nb["metadata"]["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}, "version_major": 2,
                                                                                "version_minor": 0}}
    FileContentsManager(root_dir=str(root)).save({"type": "notebook", "format": "json", "content": nb}, rel)
    assert '"language_info"' in (root/rel).read_text() and '"output_type"' in (root/rel).read_text()


@pytest.fixture(autouse=True)
def _jupyter_data(tmp_path, monkeypatch):  # the contents manager signs notebooks in Jupyter's data folder: not the user's
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path/"jupyter-data"))


def check_notebooks(root):
    r = make("check-notebooks", cwd=root)
    return r.returncode, r.stdout + r.stderr


def test_git_add_strips_outputs_and_keeps_ids(clone):
    path = clone/"nbs"/"00_core.ipynb"
    ids = [c["id"] for c in json.loads(path.read_text())["cells"]]
    lab_save(clone, "nbs/00_core.ipynb")
    git("add", "nbs/00_core.ipynb", cwd=clone)
    staged = json.loads(git("show", ":nbs/00_core.ipynb", cwd=clone))
    code = [c for c in staged["cells"] if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None and c["metadata"] == {} for c in code)
    assert [c["id"] for c in staged["cells"]] == ids
    assert "language_info" not in staged["metadata"] and "widgets" not in staged["metadata"]
    assert "epoch 1" in path.read_text()  # the working copy keeps its outputs
    assert git("config", "merge.nbdev-merge.driver", cwd=clone).strip().endswith("%O %A %B %P")


def test_a_jupyterlab_save_of_every_notebook_leaves_the_checkout_clean_and_make_check_green(clone):
    "Run every notebook and save it in Lab: git sees no change, and `make check` does not complain about the tree."
    assert NOTEBOOKS and "nbs/experiments/train_digits.ipynb" in NOTEBOOKS
    for rel in NOTEBOOKS: lab_save(clone, rel)
    assert git("diff", cwd=clone) == ""
    # git lists a file whose size changed as modified until it is staged again (git's stat check): which stages nothing
    git("add", "-A", cwd=clone)
    assert git("status", "--porcelain", cwd=clone) == ""
    code, out = check_notebooks(clone)
    assert code == 0, out
    assert "working-tree notebook(s) hold outputs" in out and len(out.strip().splitlines()) == 1, out  # one line
    for rel in NOTEBOOKS:  # JupyterLab's own metadata and Python version are in the working files, not in git
        assert '"language_info"' in (clone/rel).read_text() and "language_info" not in git("show", f":{rel}", cwd=clone)


@pytest.mark.parametrize("commit", [True, False], ids=["committed", "staged"])
def test_a_notebook_committed_around_the_filter_fails_make_check_naming_it_and_the_advice_fixes_it(clone, commit):
    lab_save(clone, "nbs/03_data.ipynb")
    path = clone/"nbs"/"03_data.ipynb"
    path.write_text(path.read_text().replace('"# ', '"# An edit: ', 1))  # with the outputs, a change worth committing
    git("-c", "filter.nbstripout.clean=cat", "add", "nbs/03_data.ipynb", cwd=clone)
    if commit: git("commit", "-qm", "an edit, with outputs by mistake", cwd=clone)
    code, out = check_notebooks(clone)
    where = "committed" if commit else "staged"
    assert code != 0 and f"nbs/03_data.ipynb ({where}) holds outputs; execution counts; metadata language_info" in out, out
    assert "nbs/00_core.ipynb" not in out and "git add --renormalize FILE" in out, out
    git("add", "--renormalize", "nbs/03_data.ipynb", cwd=clone)  # the advice, word for word
    if commit: git("commit", "-q", "--amend", "--no-edit", cwd=clone)
    code, out = check_notebooks(clone)
    assert code == 0, out
    assert "epoch 1" in (clone/"nbs"/"03_data.ipynb").read_text()  # the user's outputs stay in the working file


def test_without_the_filter_make_check_says_so_and_judges_the_working_tree(clone):
    git("config", "--unset", "filter.nbstripout.clean", cwd=clone)
    lab_save(clone, "nbs/03_data.ipynb")
    code, out = check_notebooks(clone)
    assert code != 0 and "the git notebook filter is not set up here ('make hooks' sets it up)" in out, out
    assert "nbs/03_data.ipynb holds outputs" in out, out


def test_nbdev_clean_leaves_a_fresh_clone_clean_and_keeps_the_parameters_cell(clone):
    "nbdev_clean (also run by nbdev_prepare and nbdev's hooks) writes what the filter writes, tags included."
    from mlkit.run import notebook_parameters, read_notebook
    bin_dir = os.path.dirname(sys.executable)
    lab_save(clone, "nbs/experiments/train_digits.ipynb")  # a saved, run notebook, cleaned by nbdev
    r = subprocess.run([f"{bin_dir}/nbdev_clean"], cwd=clone, capture_output=True, text=True)
    assert r.returncode == 0 and "Failed" not in r.stderr, r.stderr
    assert git("diff", cwd=clone) == ""
    git("add", "-A", cwd=clone)
    assert git("status", "--porcelain", cwd=clone) == ""
    params = notebook_parameters(read_notebook(clone/"nbs"/"experiments"/"train_digits.ipynb"))
    assert {"lr", "epochs"} <= set(params), params  # so `make train ARGS="-p lr 0.01"` still has parameters to set
    code, out = check_notebooks(clone)
    assert code == 0, out


def test_the_committed_notebooks_are_in_the_one_form_nbdev_clean_and_the_filter_write():
    "Each notebook's committed bytes are what nbdev_clean and the filter give (after a Lab save too): nothing to rewrite."
    sys.path.insert(0, str(REPO/"scripts"))
    import check_notebooks
    keys = check_notebooks.settings_keys(REPO)
    for rel in NOTEBOOKS:
        text = (REPO/rel).read_text()
        assert check_notebooks.dumps(check_notebooks.clean(json.loads(text), keys)) == text, (
            f"{rel} is not in its committed form: run 'make hooks && git add --renormalize -- \"*.ipynb\"' and commit")


@pytest.mark.parametrize("rel", ["nbs/experiments/train_digits.ipynb", "sweeps/digits.yaml"])
def test_a_run_notebook_without_its_parameters_cell_fails_make_check_naming_it(clone, rel):
    nb_rel = "nbs/experiments/train_digits.ipynb"
    if rel.startswith("sweeps"):  # a sweep's notebook outside nbs/experiments/
        nb_rel = "nbs/tiny.ipynb"
        shutil.copy(clone/"tests"/"notebooks"/"train_tiny.ipynb", clone/nb_rel)
        (clone/rel).write_text((clone/rel).read_text().replace("nbs/experiments/train_digits.ipynb", nb_rel))
    path = clone/nb_rel
    nb = json.loads(path.read_text())
    for c in nb["cells"]: c["metadata"].pop("tags", None)
    path.write_text(json.dumps(nb, indent=1, sort_keys=True) + "\n")
    code, out = check_notebooks(clone)
    assert code != 0 and f"{nb_rel} has no cell tagged 'parameters'" in out, out
    git("add", nb_rel, cwd=clone)  # and once staged, as what a commit would hold
    code, out = check_notebooks(clone)
    assert code != 0 and f"{nb_rel} (staged) has no cell tagged 'parameters'" in out, out


def test_git_diff_shows_a_notebook_cell_by_cell_and_nothing_for_outputs(clone):
    lab_save(clone, "nbs/00_core.ipynb")
    assert git("diff", cwd=clone) == ""  # outputs alone: no change
    path = clone/"nbs"/"00_core.ipynb"
    nb = json.loads(path.read_text())
    cell = next(c for c in nb["cells"] if c["cell_type"] == "code" and "def " in "".join(c["source"]))
    cell["source"] = ["# a new first line\n", *cell["source"]]
    path.write_text(json.dumps(nb, indent=1))
    diff = git("diff", cwd=clone)
    assert f"# ---- code cell {cell['id']}" in diff and "\n+# a new first line\n" in diff, diff
    assert '"outputs"' not in diff and '"execution_count"' not in diff, diff


def test_git_add_without_the_environment_fails_in_one_line_naming_make_install(clone, tmp_path):
    "Deleting .venv (as some error messages suggest) leaves the filter without its Python: git says how to get it back."
    env = tmp_path/"venv"
    env.symlink_to(sys.prefix)  # an environment that can be deleted without deleting this one
    r = subprocess.run(["make", "--no-print-directory", "hooks", f"ENV={env}"], cwd=clone, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lab_save(clone, "nbs/00_core.ipynb", seed=2)
    (clone/"nbs"/"00_core.ipynb").write_text((clone/"nbs"/"00_core.ipynb").read_text().replace("def ", "def  ", 1))
    git("add", "nbs/00_core.ipynb", cwd=clone)  # works while the environment is there
    git("reset", "-q", cwd=clone)
    env.unlink()
    r = git("add", "nbs/00_core.ipynb", cwd=clone, check=False)
    assert r.returncode != 0
    first, *rest = r.stderr.splitlines()  # git's whole stderr: our line, then git's own short lines quoting the command
    assert first == (f"error: git's notebook filter needs a Python, and neither {clone}/.venv/bin/python nor "
                     f"{env}/bin/python (make hooks' environment) exists; run 'make install'"), r.stderr
    assert 1 <= len(rest) <= 3 and all(len(ln) < 100 and "exec" not in ln and "error: git's" not in ln for ln in rest), (
        r.stderr)
    assert git("diff", "--cached", "--name-only", cwd=clone) == ""  # nothing was staged unfiltered


def staged_notebook(root, rel):
    return json.loads(git("show", f":{rel}", cwd=root))


def test_each_worktree_runs_its_own_filter_and_removing_the_one_that_ran_make_hooks_breaks_none(clone, tmp_path):
    """git's configuration is shared by every `git worktree`: the filter it names runs the worktree's own
    scripts/check_notebooks.py, with the worktree's .venv/bin/python if it has one, else the Python make hooks used; a
    worktree of a commit older than that script gets nbstripout (--keep-id, language_info stripped), its filter then."""
    rel = "nbs/00_core.ipynb"
    ids = [c["id"] for c in json.loads((clone/rel).read_text())["cells"]]
    git("checkout", "-qb", "old", cwd=clone)  # a commit from before the filter was scripts/check_notebooks.py
    git("rm", "-q", "scripts/check_notebooks.py", *(f for f in NOTEBOOKS if f != rel), cwd=clone)  # nbstripout is slow
    git("commit", "-qm", "before scripts/check_notebooks.py", cwd=clone)
    git("checkout", "-q", "main", cwd=clone)
    hooked, old = tmp_path/"hooked", tmp_path/"old"
    git("worktree", "add", "-q", "-b", "hooked", str(hooked), cwd=clone)
    git("worktree", "add", "-q", str(old), "old", cwd=clone)
    r = make("hooks", cwd=hooked)  # the Python it records: this one's (ENV=sys.prefix)
    assert r.returncode == 0, r.stdout + r.stderr
    log = tmp_path/"venv-python-runs"
    (clone/".venv"/"bin").mkdir(parents=True)  # the main checkout's own environment: a Python that logs its runs
    (clone/".venv"/"bin"/"python").write_text(f'#!/bin/sh\necho run >> "{log}"\nexec "{sys.executable}" "$@"\n')
    (clone/".venv"/"bin"/"python").chmod(0o755)

    lab_save(old, rel)
    git("add", rel, cwd=old)
    nb = staged_notebook(old, rel)  # nbstripout's form: the kernelspec as Lab wrote it, the ids kept
    assert nb["metadata"]["kernelspec"]["display_name"] == "Python (mlkit)" and "language_info" not in nb["metadata"], nb
    assert [c["id"] for c in nb["cells"]] == ids and not any(c.get("outputs") for c in nb["cells"])

    git("worktree", "remove", "--force", str(hooked), cwd=clone)
    lab_save(clone, rel)
    (clone/rel).write_text((clone/rel).read_text().replace('"# ', '"# An edit: ', 1))
    (clone/"nbs"/"sub").mkdir()
    git("add", "../00_core.ipynb", cwd=clone/"nbs"/"sub")  # from a folder below the top too
    nb = staged_notebook(clone, rel)  # scripts/check_notebooks.py's form, run by the checkout's own .venv
    assert nb["metadata"]["kernelspec"]["display_name"] == "mlkit" and "language_info" not in nb["metadata"], nb
    runs = log.read_text().count("run")
    assert runs >= 1 and "+# An edit: " in git("diff", "--cached", cwd=clone/"nbs"), runs  # textconv, from below too
    assert log.read_text().count("run") > runs
    code, out = check_notebooks(clone)
    assert code == 0, out


def test_git_stash_restore_and_checkout_bring_back_the_committed_form_without_the_outputs(clone):
    "git keeps the filtered form only: whatever brings a notebook back from git (stash included) has no outputs."
    rel = "nbs/03_data.ipynb"
    committed = (clone/rel).read_text()
    for undo in (["restore", rel], ["checkout", "--", rel], ["stash"]):
        lab_save(clone, rel)
        (clone/rel).write_text((clone/rel).read_text().replace('"# ', '"# An edit: ', 1))
        git(*undo, cwd=clone)
        if undo == ["stash"]:
            assert (clone/rel).read_text() == committed
            git("stash", "pop", cwd=clone)  # the edit comes back; the outputs do not
            assert "# An edit: " in (clone/rel).read_text()
            git("checkout", "--", rel, cwd=clone)
        assert '"output_type"' not in (clone/rel).read_text() and "epoch 1" not in (clone/rel).read_text(), undo


def test_git_add_of_a_notebook_that_is_not_utf8_stages_it_as_it_is_and_make_check_names_it(clone):
    "The filter passes what is not a notebook through (a UTF-16 file, as some editors and shells write): no traceback."
    (clone/"nbs"/"utf16.ipynb").write_bytes('{"cells": []}'.encode("utf-16"))
    r = git("add", "nbs/utf16.ipynb", cwd=clone, check=False)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    code, out = check_notebooks(clone)
    assert code != 0 and "nbs/utf16.ipynb (staged) is not a readable notebook" in out and "Traceback" not in out, out


def test_each_kind_of_problem_gets_its_own_advice_once_and_a_failing_notebook_is_not_also_fine(clone):
    "Conflict markers, a lost parameters cell, an unreadable file, outputs committed: each named, each with what fixes it."
    lab_save(clone, "nbs/00_core.ipynb")  # outputs (which the filter strips) and nbdev_merge's marker cells (no ids)
    nb = json.loads((clone/"nbs"/"00_core.ipynb").read_text())
    for i, m in ((1, "<<<<<<< HEAD"), (3, "======="), (5, ">>>>>>> theirs")):
        nb["cells"].insert(i, {"cell_type": "markdown", "metadata": {}, "source": f"`{m}`"})
    (clone/"nbs"/"00_core.ipynb").write_text(json.dumps(nb, indent=1))
    train = clone/"nbs"/"experiments"/"train_digits.ipynb"
    nb = json.loads(train.read_text())
    for c in nb["cells"]: c["metadata"].pop("tags", None)
    train.write_text(json.dumps(nb, indent=1, sort_keys=True) + "\n")
    (clone/"nbs"/"03_data.ipynb").write_text("<<<<<<< HEAD\n" + (clone/"nbs"/"03_data.ipynb").read_text())
    lab_save(clone, "nbs/04_distributed.ipynb")
    git("-c", "filter.nbstripout.clean=cat", "add", "nbs/04_distributed.ipynb", cwd=clone)  # around the filter
    lab_save(clone, "nbs/05_train.ipynb")  # the one notebook that is fine
    code, out = check_notebooks(clone)
    assert code != 0, out
    assert "error: nbs/00_core.ipynb holds merge conflict markers (cells 2, 4, 6, counting from 1)\n" in out, out
    advice = {ln.split(" (")[0]: ln for ln in out.splitlines() if ln.startswith("error: ") and "): " in ln}
    assert advice["error: conflict markers"].startswith("error: conflict markers (nbs/00_core.ipynb): ") and (
        "delete the marker cells" in advice["error: conflict markers"]), out
    assert advice["error: no 'parameters' cell"].startswith(
        "error: no 'parameters' cell (nbs/experiments/train_digits.ipynb): ") and "Cell Tags" in out, out
    assert advice["error: not a readable notebook"].startswith("error: not a readable notebook (nbs/03_data.ipynb): ")
    assert "git restore" in advice["error: not a readable notebook"], out
    assert advice["error: not in the committed form"].startswith(
        "error: not in the committed form (nbs/04_distributed.ipynb): 'git add --renormalize FILE'"), out
    assert len(advice) == 4 and out.count("renormalize") == 1, out
    assert "check-notebooks: 1 working-tree notebook(s) hold outputs" in out, out  # 05; not 00 or 04, named above
