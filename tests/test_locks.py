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


def needs_pypi(test):
    "Resolves against PyPI (minutes in all): skipped where PyPI is out of reach, and slow (make test-all runs it)."
    return pytest.mark.slow(pytest.mark.skipif(not pypi_reachable(), reason="PyPI is out of reach")(test))


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
    for target in ("linux-x86_64-cpu", "linux-x86_64-cuda", "macos-arm64-cpu"):
        assert f"ok: {target} (Python 3.11.0" in r.stdout and f"ok: {target} (Python 3.11.9" in r.stdout, r.stdout
    drop_line(repo_copy/"requirements.txt", "appnope==")  # a package only macOS needs
    r = make("check-lock-targets", cwd=repo_copy)
    assert r.returncode != 0
    assert "error: macos-arm64-cpu (Python 3.11.0): needs appnope" in r.stderr and "linux-x86_64-cuda" not in r.stderr, r.stderr
    drop_line(repo_copy/"requirements.txt", "traitlets==")  # one every target needs
    r = make("check-lock-targets", "TARGETS=linux-x86_64-cuda", cwd=repo_copy)
    assert "error: linux-x86_64-cuda (Python 3.11.0): needs traitlets" in r.stderr, r.stderr


@needs_pypi
def test_lock_targets_fail_on_a_pin_without_a_wheel_for_the_target(repo_copy):
    cpu = repo_copy/"requirements-cpu.txt"
    cpu.write_text(cpu.read_text() + "nvidia-nccl-cu13==2.29.7\n")  # Linux only: nothing for macOS
    r = make("check-lock-targets", "TARGETS=macos-arm64-cpu", cwd=repo_copy)
    assert r.returncode != 0 and "macos-arm64-cpu (Python 3.11.0): the locks do not resolve" in r.stderr, r.stderr
    assert "cause: Because nvidia-nccl-cu13==2.29.7 has no wheels" in r.stderr, r.stderr  # the reason, not "no solution"


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
def test_full_lock_check_fails_when_it_cannot_recompile(repo_copy):
    (repo_copy/"requirements.in").write_text((repo_copy/"requirements.in").read_text() + "no-such-package-mlkit-zz>=1\n")
    r = make("check-lock-full", cwd=repo_copy)
    assert r.returncode != 0 and "error: could not recompile the locks" in r.stderr, r.stderr


def test_install_tells_the_torch_builds_apart_without_importing_torch(tmp_path):
    "The probe make install uses to replace a torch of the other build (pip would keep it: 2.13.0+cpu is ==2.13.0)."
    probe = subprocess.run(["make", "-s", "-f", "-", "show"], input="include Makefile\nshow: ; @echo \"$$TORCH_BUILD\"\n",
                           capture_output=True, text=True, cwd=Path(__file__).parents[1]).stdout.strip()
    for cuda, build in (("None", "cpu"), ("'12.8'", "cuda")):
        site = tmp_path/build/"torch"
        site.mkdir(parents=True)
        (site/"__init__.py").write_text("raise SystemExit('imported')\n")
        (site/"version.py").write_text(f"__version__ = '2.13.0'\ncuda: Optional[str] = {cuda}\nhip = None\n")
        r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(tmp_path/build)})
        assert r.stdout.strip() == build, (build, r.stdout, r.stderr)


@needs_pypi
def test_full_lock_check_passes_on_the_committed_locks(repo_copy):
    r = make("check-lock-full", cwd=repo_copy)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("case, expected", [
    ("cuda wheels in requirements.txt", "requirements.txt pins CUDA runtime wheels (nvidia-nccl-cu13)"),
    ("cuda- wheels in requirements.txt", "requirements.txt pins CUDA runtime wheels (cuda-bindings)"),
    ("cuda wheels in the cpu lock", "requirements-cpu.txt pins CUDA runtime wheels (triton)"),
    ("cpu lock is the cuda lock", "requirements-cpu.txt equals requirements-cuda.txt"),
    ("pip pinned", "requirements.txt pins pip"),
    ("setuptools pinned", "requirements.txt pins setuptools"),
    ("wheel in the cpu lock", "requirements-cpu.txt pins wheel"),
    ("torch stale in the cuda lock", "requirements-cuda.txt is stale: pins torch==2.12.0"),
    ("a lock missing", "requirements-cuda.txt missing; run 'make lock'"),
    ("the 3.11 pin out of bounds, a 3.12 one in", "pins numpy==1.20.0, outside 'numpy>=1.26'"),
    ("an arbitrary-equality pin", "requirements.txt pins CUDA runtime wheels (nvidia-cublas)"),
    ("conda asks for another python", "environment.yml is stale: requirements.txt was compiled with Python 3.11"),
    ("a pip section in environment.yml", "environment.yml has a pip section"),
])
def test_offline_lock_check_refuses_wrong_locks(repo_copy, case, expected):
    req, cpu, cuda = repo_copy/"requirements.txt", repo_copy/"requirements-cpu.txt", repo_copy/"requirements-cuda.txt"
    add = lambda path, line: path.write_text(path.read_text() + line + "\n")  # noqa: E731
    if case == "cuda wheels in requirements.txt": add(req, "nvidia-nccl-cu13==2.29.7")
    if case == "cuda- wheels in requirements.txt": add(req, "cuda-bindings==13.5.0")
    if case == "cuda wheels in the cpu lock": add(cpu, "triton==3.7.1")
    if case == "cpu lock is the cuda lock": shutil.copy(cuda, cpu)
    if case == "pip pinned": add(req, "pip==26.3")
    if case == "setuptools pinned": add(req, "setuptools==84.2.1")
    if case == "wheel in the cpu lock": add(cpu, "wheel==0.48.0")
    if case == "torch stale in the cuda lock": edit(cuda, "torch==2.13.0", "torch==2.12.0")
    if case == "a lock missing": cuda.unlink()
    if case == "the 3.11 pin out of bounds, a 3.12 one in":  # as `make upgrade` forks pins by Python version
        numpy = next(ln for ln in req.read_text().splitlines() if ln.startswith("numpy=="))
        edit(req, numpy + "\n", "numpy==1.20.0 ; python_full_version < '3.12'\n" + numpy + " ; python_full_version >= '3.12'\n")
    if case == "an arbitrary-equality pin": add(req, "nvidia-cublas===13.1.1.3")
    if case == "conda asks for another python": edit(repo_copy/"environment.yml", "python=3.11", "python=3.12")
    if case == "a pip section in environment.yml": add(repo_copy/"environment.yml", "  - pip:\n      - -r requirements.txt")
    r = make("check-lock", cwd=repo_copy)
    assert r.returncode != 0 and expected in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_offline_lock_check_takes_conda_spellings_of_the_python(repo_copy):
    for spelling in ("python=3.11.9", "python==3.11", "python=3.11.*"):
        (repo_copy/"environment.yml").write_text((repo_copy/"environment.yml").read_text().replace("python=3.11", spelling, 1))
        r = make("check-lock", cwd=repo_copy)
        assert r.returncode == 0, (spelling, r.stderr)
        (repo_copy/"environment.yml").write_text((repo_copy/"environment.yml").read_text().replace(spelling, "python=3.11", 1))


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
