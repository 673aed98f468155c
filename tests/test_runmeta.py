"git_state against real git: fast on a fresh clone with the nbstripout filter, untracked code kept, never falsely clean."
import os
import shutil
import subprocess
import sys
import time

import nbformat
import pytest
from conftest import REPO, make

from mlkit import runmeta
from mlkit.runmeta import git_state

COVERS = ("08_runmeta",)  # the notebooks these tests cover: `make test NB=...` runs them

GIT = shutil.which("git")
NOTEBOOKS = [f"nbs/{i:02d}_nb.ipynb" for i in range(10)]


def git(*args, cwd):
    cmd = ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=True).stdout


def script(path, body):
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


@pytest.fixture
def clone(tmp_path):
    "A fresh clone of a repository of 10 clean notebooks, its filter counting its runs; made racily clean."
    origin = tmp_path/"origin"
    (origin/"nbs").mkdir(parents=True)
    for i, name in enumerate(NOTEBOOKS):
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"# Notebook {i}"),
                                             nbformat.v4.new_code_cell(f"x = {i}")])
        nbformat.write(nb, origin/name)
    # committed as the filter leaves them, so that the filter changes nothing in the clone
    subprocess.run([sys.executable, "-m", "nbstripout", "--keep-id", *NOTEBOOKS], cwd=origin, check=True)
    (origin/".gitattributes").write_text("*.ipynb filter=nbstripout\n")
    shutil.copy(REPO/"Makefile", origin/"Makefile")
    git("init", "-q", "-b", "main", cwd=origin)
    git("add", ".", cwd=origin)
    git("commit", "-qm", "notebooks", cwd=origin)
    repo = tmp_path/"clone"
    git("clone", "-q", str(origin), str(repo), cwd=tmp_path)
    runs = tmp_path/"filter-runs"
    runs.touch()
    # the real filter, behind a wrapper that leaves a line per run
    nbstripout = script(tmp_path/"nbstripout.sh", f'echo run >> "{runs}"\nexec "{sys.executable}" -m nbstripout --keep-id\n')
    for k, v in {"clean": str(nbstripout), "smudge": "cat", "required": "true"}.items():
        git("config", f"filter.nbstripout.{k}", v, cwd=repo)
    make_racy(repo)
    return repo, runs


def make_racy(repo):
    "Give the checked-out files and git's index the same old mtime: git must read every file to trust it."
    then = time.time() - 60
    for f in repo.rglob("*"):
        if ".git" not in f.relative_to(repo).parts: os.utime(f, (then, then))
    git("-c", "filter.nbstripout.clean=cat", "update-index", "-q", "--refresh", cwd=repo)  # records the old mtimes
    os.utime(repo/".git"/"index", (then, then))  # ... in an index no newer than the files


def filter_runs(path):
    n = len(path.read_text().splitlines())
    path.write_text("")
    return n


def test_racy_fresh_clone_makes_git_status_run_the_filter_on_every_notebook(clone):
    "The setup the tests below rely on: without a refresh, git reads every notebook through the filter."
    repo, runs = clone
    git("config", "filter.nbstripout.clean", f'echo run >> "{runs}"; cat', cwd=repo)  # the same count, without Python
    assert git("status", "--porcelain", cwd=repo) == ""
    assert filter_runs(runs) == len(NOTEBOOKS)


def test_git_state_runs_the_filter_once_per_modified_notebook(clone):
    repo, runs = clone
    state = git_state(repo)
    assert (state["dirty"], state["diff"], state["error"]) == (False, "", None)
    assert filter_runs(runs) == 0

    # outputs added, nothing else: the filter strips them, so git sees no change
    nb = nbformat.read(repo/NOTEBOOKS[4], as_version=4)
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="printed\n")]
    nb.cells[1].execution_count = 1
    nbformat.write(nb, repo/NOTEBOOKS[4])
    state = git_state(repo)
    assert (state["dirty"], state["diff"], state["error"]) == (False, "", None)
    assert filter_runs(runs) <= 1

    # and a real change in another notebook
    nb = nbformat.read(repo/NOTEBOOKS[3], as_version=4)
    nb.cells[1].source = "x = 333"
    nbformat.write(nb, repo/NOTEBOOKS[3])
    make_racy(repo)
    state = git_state(repo)
    assert state["dirty"] is True and state["error"] is None
    assert f"+++ b/{NOTEBOOKS[3]}" in state["diff"] and '+    "x = 333"' in state["diff"]
    assert NOTEBOOKS[4] not in state["diff"] and "printed" not in state["diff"]
    assert filter_runs(runs) <= 2  # one per modified notebook


def test_make_hooks_leaves_later_git_status_with_no_filter_runs(clone):
    repo, runs = clone
    r = make("hooks", cwd=repo)
    assert r.returncode == 0 and "notebook filter (scripts/check_notebooks.py)" in r.stdout, r.stdout + r.stderr
    assert 'mlkit-nbfilter" clean' in git("config", "filter.nbstripout.clean", cwd=repo)
    git("config", "filter.nbstripout.clean", f'echo run >> "{runs}"; cat', cwd=repo)
    assert git("status", "--porcelain", cwd=repo) == ""
    assert git("status", "--porcelain", cwd=repo) == ""
    assert filter_runs(runs) == 0


@pytest.fixture
def repo(tmp_path):
    "A small repository with one commit and no filter."
    repo = tmp_path/"repo"
    repo.mkdir()
    (repo/"model.py").write_text("layers = 2\n")
    (repo/".gitignore").write_text("*.log\n")
    git("init", "-q", "-b", "main", cwd=repo)
    git("add", ".", cwd=repo)
    git("commit", "-qm", "first", cwd=repo)
    return repo


def test_untracked_code_is_captured_and_what_is_not_says_why(repo, monkeypatch):
    monkeypatch.setenv("MLKIT_RUNS_DIR", str(repo/"runs"))
    monkeypatch.setenv("DEMO_API_KEY", "sekret-untracked-0451")
    train = 'import os\nlr = 0.1\nkey = "sekret-untracked-0451"\nprint("héllo")\n'
    (repo/"train.py").write_text(train)
    (repo/"src").mkdir()
    (repo/"src"/"data.py").write_text("batch_size = 32\n")
    (repo/".env").write_text("DEMO_API_KEY=sekret-untracked-0451\n")
    (repo/"id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    (repo/"aws_credentials.json").write_text("{}\n")
    (repo/"big.csv").write_text("x\n" * (runmeta.UNTRACKED_FILE_CAP // 2 + 1))
    (repo/"weights.bin").write_bytes(bytes(range(256)))
    (repo/"link.py").symlink_to(repo/"train.py")
    (repo/"train.log").write_text("ignored by .gitignore\n")
    (repo/"runs"/"20260101-000000-abcdef").mkdir(parents=True)
    (repo/"runs"/"20260101-000000-abcdef"/"meta.json").write_text("{}\n")

    state = git_state(repo)
    assert state["untracked"] == {"src/data.py": "batch_size = 32\n", "train.py": train.replace("sekret-untracked-0451", "***")}
    assert {s["path"]: s["reason"] for s in state["untracked_skipped"]} == {
        ".env": "secret-looking file name", "id_rsa": "secret-looking file name",
        "aws_credentials.json": "secret-looking file name", "big.csv": "larger than 256 KiB", "weights.bin": "binary",
        "link.py": "not a regular file (a link, a socket…)", "runs/": "the runs folder (1 untracked file)"}
    assert (state["dirty"], state["diff"], state["error"]) == (True, "", None)


def test_untracked_caps(repo, monkeypatch):
    monkeypatch.setattr(runmeta, "UNTRACKED_MAX_FILES", 3)
    monkeypatch.setattr(runmeta, "UNTRACKED_MAX_LISTED", 4)
    for i in range(10): (repo/f"step_{i}.py").write_text(f"step = {i}\n")
    state = git_state(repo)
    assert list(state["untracked"]) == ["step_0.py", "step_1.py", "step_2.py"]
    assert state["untracked_skipped"][:4] == [{"path": f"step_{i}.py", "reason": "over the cap of 3 files"} for i in range(3, 7)]
    assert state["untracked_skipped"][4] == {"path": "…", "reason": "3 more files left out, not listed"}


def test_only_the_runs_folder_untracked_is_not_dirty(repo, monkeypatch):
    monkeypatch.setenv("MLKIT_RUNS_DIR", str(repo/"runs"))
    (repo/"runs"/"r1").mkdir(parents=True)
    (repo/"runs"/"r1"/"metrics.csv").write_text("step,value\n")
    state = git_state(repo)
    assert (state["dirty"], state["untracked"], state["error"]) == (False, {}, None)


@pytest.mark.parametrize("which", ["all", "diff"])
@pytest.mark.parametrize("how, why", [("sleep 30", "did not answer within 1 s"),
                                      ('echo "fatal: simulated" >&2; exit 128', "failed (exit 128): fatal: simulated")])
def test_git_that_cannot_answer_is_unknown_never_clean(repo, tmp_path, monkeypatch, which, how, why):
    "A git that hangs or fails (here every command, or only the diff) leaves dirty None and says why."
    wrappers = tmp_path/"bin"
    wrappers.mkdir()
    match = "*" if which == "all" else "*diff*"
    script(wrappers/"git", f'case "$*" in {match}) {how};; esac\nexec "{GIT}" "$@"\n')
    monkeypatch.setenv("PATH", f"{wrappers}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(runmeta, "GIT_TIMEOUT", 1)
    start = time.monotonic()
    state = git_state(repo)
    assert state is not None and state["dirty"] is None and why in state["error"]
    assert (state["commit"] is None) == (which == "all")
    assert time.monotonic() - start < 20  # the hung git and its sleep were stopped, not waited for


def test_outside_a_repository(tmp_path):
    assert git_state(tmp_path) is None
