"The locks and `make install`'s guards: broken on purpose in a copy of the repository, each must fail in one line."
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from conftest import make


def pypi_reachable() -> bool:
    try:
        with urllib.request.urlopen("https://pypi.org/simple/pip/", timeout=10): return True
    except OSError: return False


needs_pypi = pytest.mark.skipif(not pypi_reachable(), reason="PyPI is out of reach")


def edit(path: Path, old: str, new: str):
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def drop_line(path: Path, start: str):
    lines = path.read_text().splitlines(keepends=True)
    kept = [ln for ln in lines if not ln.startswith(start)]
    assert len(kept) == len(lines) - 1, start
    path.write_text("".join(kept))


@needs_pypi
def test_lock_targets_pass_and_name_what_breaks_them(repo_copy):
    r = make("check-lock-targets", cwd=repo_copy)
    assert r.returncode == 0, r.stderr
    assert all(f"ok: {t}" in r.stdout for t in ("linux-x86_64-cpu", "linux-x86_64-cuda", "macos-arm64-cpu")), r.stdout
    drop_line(repo_copy/"requirements.txt", "appnope==")  # a package only macOS needs
    r = make("check-lock-targets", cwd=repo_copy)
    assert r.returncode != 0
    assert "error: macos-arm64-cpu: needs appnope" in r.stderr and "linux-x86_64-cuda" not in r.stderr, r.stderr
    drop_line(repo_copy/"requirements.txt", "traitlets==")  # one every target needs
    r = make("check-lock-targets", "TARGETS=linux-x86_64-cuda", cwd=repo_copy)
    assert "error: linux-x86_64-cuda: needs traitlets" in r.stderr, r.stderr


@needs_pypi
def test_lock_targets_fail_on_a_pin_without_a_wheel_for_the_target(repo_copy):
    cpu = repo_copy/"requirements-cpu.txt"
    cpu.write_text(cpu.read_text() + "nvidia-nccl-cu13==2.29.7\n")  # Linux only: nothing for macOS
    r = make("check-lock-targets", "TARGETS=macos-arm64-cpu", cwd=repo_copy)
    assert r.returncode != 0 and "macos-arm64-cpu: the locks do not resolve" in r.stderr, r.stderr


@needs_pypi
@pytest.mark.parametrize("case", ["pin deleted", "extra added", "marker added", "torch lock pin deleted"])
def test_full_lock_check_sees_every_drift(repo_copy, case):
    if case == "pin deleted": drop_line(repo_copy/"requirements.txt", "cwevals==")
    if case == "extra added": edit(repo_copy/"requirements.in", "mlflow-skinny>=2.16", "mlflow-skinny[databricks]>=2.16")
    if case == "marker added": edit(repo_copy/"requirements.in", "nvidia-ml-py>=12", 'nvidia-ml-py>=12; sys_platform == "linux"')
    if case == "torch lock pin deleted": drop_line(repo_copy/"requirements-cuda.txt", "triton==")
    r = make("check-lock-full", cwd=repo_copy)
    assert r.returncode != 0, r.stdout
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")], r.stderr
    assert "run 'make lock'" in r.stderr


@needs_pypi
def test_full_lock_check_passes_on_the_committed_locks(repo_copy):
    r = make("check-lock-full", cwd=repo_copy)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("case, expected", [
    ("cuda wheels in requirements.txt", "requirements.txt pins CUDA runtime wheels (nvidia-nccl-cu13)"),
    ("cuda wheels in the cpu lock", "requirements-cpu.txt pins CUDA runtime wheels (triton)"),
    ("cpu lock is the cuda lock", "requirements-cpu.txt equals requirements-cuda.txt"),
    ("pip pinned", "requirements.txt pins pip"),
    ("conda asks for another python", "environment.yml is stale: requirements.txt was compiled with Python 3.11"),
])
def test_offline_lock_check_refuses_wrong_locks(repo_copy, case, expected):
    req, cpu = repo_copy/"requirements.txt", repo_copy/"requirements-cpu.txt"
    if case == "cuda wheels in requirements.txt": req.write_text(req.read_text() + "nvidia-nccl-cu13==2.29.7\n")
    if case == "cuda wheels in the cpu lock": cpu.write_text(cpu.read_text() + "triton==3.7.1\n")
    if case == "cpu lock is the cuda lock": shutil.copy(repo_copy/"requirements-cuda.txt", cpu)
    if case == "pip pinned": req.write_text(req.read_text() + "pip==26.3\n")
    if case == "conda asks for another python": edit(repo_copy/"environment.yml", "python=3.11", "python=3.12")
    r = make("check-lock", cwd=repo_copy)
    assert r.returncode != 0 and expected in r.stderr, r.stderr


def install(repo, *args, env=None, target="install") -> subprocess.CompletedProcess:
    "`make install` as a user runs it (no NO_INSTALL), with `env` over this environment minus any conda variables."
    base = {k: v for k, v in os.environ.items() if not k.startswith("CONDA_")}
    return subprocess.run(["make", "--no-print-directory", target, *args], cwd=repo, capture_output=True, text=True,
                          env={**base, **(env or {})}, timeout=120)


def one_line(r: subprocess.CompletedProcess) -> str:
    "The error of a refused install: one line of ours (make adds its own '***' line)."
    ours = [ln for ln in r.stderr.splitlines() if not re.match(r"make(\[\d+\])?: \*\*\*", ln)]
    assert r.returncode != 0 and len(ours) == 1 and ours[0].startswith("error: "), r.stderr
    return ours[0]


def other_python() -> str | None:
    "A Python other than 3.11 on this machine (pyenv keeps several), or None."
    for v in ("3.12", "3.13", "3.10"):
        for found in [shutil.which(f"python{v}"), *Path.home().glob(f".pyenv/versions/{v}*/bin/python{v}")]:
            if found and subprocess.run([str(found), "-V"], capture_output=True).returncode == 0: return str(found)
    return None


def test_install_refuses_another_python(repo_copy, tmp_path):
    python = other_python()
    if python is None: pytest.skip("no Python but 3.11 here")
    r = install(repo_copy, f"PYTHON={python}", f"ENV={tmp_path/'env'}")
    line = one_line(r)
    assert "the locks are for Python 3.11" in line and "make install PYTHON=python3.11" in line, line
    assert not (tmp_path/"env").exists()
    r = install(repo_copy, f"PYTHON={sys.executable}", f"ENV={tmp_path/'env'}", target="check-env")  # 3.11: goes on
    assert r.returncode == 0, r.stderr


def test_install_refuses_environments_it_would_strip(repo_copy, tmp_path):
    base = tmp_path/"conda"
    (base/"condabin").mkdir(parents=True)
    line = one_line(install(repo_copy, env={"CONDA_PREFIX": str(base), "CONDA_DEFAULT_ENV": "base"}))
    assert "conda's base environment is active" in line and "conda env create -f environment.yml" in line
    other = base/"envs"/"research"
    other.mkdir(parents=True)
    line = one_line(install(repo_copy, env={"CONDA_PREFIX": str(other), "CONDA_DEFAULT_ENV": "research"}))
    assert "is not the project's ('mlkit', from environment.yml)" in line
    foreign = tmp_path/"someone-elses-venv"
    foreign.mkdir()
    line = one_line(install(repo_copy, f"ENV={foreign}"))
    assert "was not made by make install" in line
    ours = base/"envs"/"mlkit"  # the project's conda environment passes the guard
    (ours/"bin").mkdir(parents=True)
    (ours/"bin"/"python").symlink_to(sys.executable)
    r = install(repo_copy, env={"CONDA_PREFIX": str(ours), "CONDA_DEFAULT_ENV": "mlkit"}, target="check-env")
    assert r.returncode == 0, r.stderr
    line = one_line(install(repo_copy, env={"CONDA_PREFIX": str(other), "CONDA_DEFAULT_ENV": "research"},
                            target="check-env"))  # the guard alone refuses too
    assert "is not the project's" in line


def test_environment_yml_pulls_nothing_unpinned():
    "conda makes Python and pip; make install does the rest from the locks (no pip section to pull torch>=… freely)."
    text = (Path(__file__).parents[1]/"environment.yml").read_text()
    assert "pip:" not in text and "-r requirements" not in text and "python=3.11" in text
