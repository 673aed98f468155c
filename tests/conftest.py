"Shared fixtures: a throwaway copy of the repository, and `make` run in the current environment."
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def repo_files():
    "Files of the working tree that git would keep: tracked, plus untracked ones not ignored."
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    return [f for f in out.split("\0") if f and (REPO/f).is_file()]


@pytest.fixture
def repo_copy(tmp_path):
    "A copy of the repository (no .git, no environment) to break on purpose."
    dest = tmp_path/"repo"
    for f in repo_files():
        (dest/f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO/f, dest/f)
    return dest


def make(*args, cwd=REPO, timeout=300):
    "Run `make ARGS` with this interpreter's environment, installing nothing; return the finished process."
    cmd = ["make", "--no-print-directory", *args, "NO_INSTALL=1", f"ENV={sys.prefix}"]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
