"""A run's git capture never waits on the notebook filter: right after `git clone` + `make hooks` (every notebook racily
clean) and after a JupyterLab save, the capture runs the filter on no unchanged file, and `dirty` is true to content."""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from conftest import REPO
from test_git_filter import lab_save  # Jupyter Server's writer, as JupyterLab saves after a run

from mlkit.runmeta import git_state
from mlkit.track import LocalTracker

COVERS = ("08_runmeta",)  # the notebooks these tests cover: `make test NB=...` runs them

TRIES = 20


def git(*args, cwd):
    cmd = ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    "A repository holding mlkit's Makefile, notebook filter (scripts/check_notebooks.py), settings and all its notebooks."
    origin = tmp_path_factory.mktemp("git-capture")/"origin"
    files = ["Makefile", "settings.ini", ".gitattributes", ".gitignore", "scripts/check_notebooks.py",
             *(p.relative_to(REPO).as_posix() for p in sorted((REPO/"nbs").rglob("*.ipynb"))
               if ".ipynb_checkpoints" not in p.parts)]
    for f in files:
        (origin/f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO/f, origin/f)
    git("init", "-q", "-b", "main", cwd=origin)
    git("add", "-A", cwd=origin)  # committed clean already (make check): the bytes as they are
    git("commit", "-qm", "base", cwd=origin)
    return origin


@pytest.fixture
def counting_env(tmp_path):
    "An environment for `make hooks ENV=...` whose python leaves a line per start: every run of the notebook filter."
    log, env = tmp_path/"filter-runs", tmp_path/"env"
    (env/"bin").mkdir(parents=True)
    (env/"bin"/"python").write_text(f'#!/bin/sh\necho "$*" >> "{log}"\nexec "{sys.executable}" "$@"\n')
    (env/"bin"/"python").chmod(0o755)
    log.touch()
    return env, log


def clone_with_hooks(origin, dest, env):
    "`git clone`, then `make hooks` as `make install` runs it (with `env`'s python): the filter is mlkit's."
    git("clone", "-q", str(origin), str(dest), cwd=dest.parent)
    r = subprocess.run(["make", "--no-print-directory", "hooks", "NO_INSTALL=1", f"ENV={env}"], cwd=dest,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "notebook filter" in r.stdout, r.stdout + r.stderr
    assert 'mlkit-nbfilter" clean' in git("config", "filter.nbstripout.clean", cwd=dest)


def runs_of(log):
    "The filter's runs logged since the last call."
    lines = log.read_text().splitlines()
    log.write_text("")
    return lines


def test_a_run_made_right_after_clone_and_make_hooks_is_clean_at_once(origin, counting_env, tmp_path, monkeypatch):
    "20 times: clone, make hooks, a run at once (LocalTracker, meta.json): dirty False, and the filter never ran."
    env, log = counting_env
    monkeypatch.setenv("MLKIT_RUNS_DIR", str(tmp_path/"runs"))
    monkeypatch.delenv("MLKIT_PROJECT_ROOT", raising=False)
    took, racy = [], 0
    for i in range(TRIES):
        clone = tmp_path/f"clone{i}"
        clone_with_hooks(origin, clone, env)
        runs_of(log)  # make hooks' own refresh runs no filter either; not this test's point
        monkeypatch.chdir(clone)
        # racily clean: the index is not older than the files, so git cannot trust their timestamps
        racy += int(os.stat(clone/".git"/"index").st_mtime) <= int(os.stat(clone/"nbs"/"00_core.ipynb").st_mtime)
        start = time.perf_counter()
        with LocalTracker(name=f"try{i}") as run: pass
        took.append(time.perf_counter() - start)
        meta = json.loads((run.path/"meta.json").read_text())
        assert (meta["git"]["dirty"], meta["git"]["error"]) == (False, None), (i, meta["git"])
        assert runs_of(log) == [], i  # not once per notebook, not once at all: nothing changed
        assert not (run.path/"artifacts"/"git.diff").exists()
    print(f"\n{TRIES} runs right after clone + make hooks ({racy} racily clean): "
          f"{min(took):.2f}-{max(took):.2f} s, median {sorted(took)[TRIES // 2]:.2f} s")
    assert max(took) < 5  # a sanity bound only: the filter runs counted above are the proof


def future_mtimes(root):
    "Give every notebook a timestamp git's index can never be newer than: each stays racily clean, whatever git writes."
    later = time.time() + 600
    for nb in root.rglob("*.ipynb"):
        if ".git" not in nb.parts: os.utime(nb, (later, later))


def test_racily_clean_notebooks_are_never_filtered(origin, counting_env, tmp_path):
    "Made racy for sure (timestamps ahead of any index write): still no filter run, and dirty False, twice."
    env, log = counting_env
    clone = tmp_path/"clone"
    clone_with_hooks(origin, clone, env)
    future_mtimes(clone)
    runs_of(log)
    for _ in range(2):
        state = git_state(clone)
        assert (state["dirty"], state["diff"], state["error"]) == (False, "", None)
        assert runs_of(log) == []
    assert git("status", "--porcelain", cwd=clone) == ""  # and git agrees, through the real filter
    assert len(runs_of(log)) > 1  # ... which it had to run on the racy notebooks: the setup is what it claims


def test_after_a_lab_save_clean_after_an_edit_dirty_with_the_edit(origin, counting_env, tmp_path):
    "A JupyterLab save of a run (outputs, counts, language_info) is no change; a source edit is, in committed form."
    env, log = counting_env
    clone = tmp_path/"clone"
    clone_with_hooks(origin, clone, env)
    rel, other = "nbs/experiments/train_digits.ipynb", "nbs/00_core.ipynb"
    lab_save(clone, rel)
    lab_save(clone, other)
    runs_of(log)
    state = git_state(clone)
    assert (state["dirty"], state["diff"], state["error"]) == (False, "", None)
    assert runs_of(log) == []  # mlkit's filter is run in this process, not once per notebook

    nb = json.loads((clone/rel).read_text())
    cell = next(c for c in nb["cells"] if c["cell_type"] == "code" and "parameters" in c["metadata"].get("tags", []))
    cell["source"] = ["epochs = 777  # edited\n", *cell["source"]]
    (clone/rel).write_text(json.dumps(nb, indent=1))
    state = git_state(clone)
    assert (state["dirty"], state["error"]) == (True, None)
    assert f"+++ b/{rel}" in state["diff"] and '+    "epochs = 777  # edited\\n",' in state["diff"]
    assert other not in state["diff"] and "output_type" not in state["diff"] and "language_info" not in state["diff"]
    assert runs_of(log) == []
    # byte for byte the diff git itself makes, through the real filter
    git("add", "-A", cwd=clone)
    assert len(runs_of(log)) >= 2
    assert git("diff", "--cached", "--no-textconv", "--no-color", "HEAD", cwd=clone) == state["diff"]


def test_another_filter_runs_once_per_changed_file_and_a_failing_one_is_unknown(origin, tmp_path):
    "A filter mlkit does not know (not make hooks') runs for the changed notebook alone; if it fails, dirty is None."
    clone = tmp_path/"clone"
    git("clone", "-q", str(origin), str(clone), cwd=tmp_path)
    log = tmp_path/"runs"
    log.touch()
    git("config", "filter.nbstripout.clean", f'echo run >> "{log}"; "{sys.executable}" scripts/check_notebooks.py clean',
        cwd=clone)
    git("config", "filter.nbstripout.required", "true", cwd=clone)
    future_mtimes(clone)
    lab_save(clone, "nbs/00_core.ipynb")
    state = git_state(clone)
    assert (state["dirty"], state["diff"], state["error"]) == (False, "", None)
    assert len(runs_of(log)) == 1
    git("config", "filter.nbstripout.clean", "exit 3", cwd=clone)
    state = git_state(clone)
    assert state["dirty"] is None and "hash-object failed" in state["error"] and "clean filter" in state["error"], state
