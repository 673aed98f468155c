"""`make install`'s messages where the environment is wrong: a blocked torch index, a Python that is not 3.11 (a pyenv
shim, a conda environment), and pip-tools' own dependencies, which must come from the lock."""
import importlib.metadata as md
import os
import re
import shutil
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from test_locks import install, one_line

COVERS = ()  # the Makefile's install and check-env: no notebook

REPO = Path(__file__).parents[1]


def fake_python(path: Path, version: str | None):
    "A python that says it is `version` (and not 3.11), or, with None, a pyenv shim whose version is not installed."
    path.parent.mkdir(parents=True, exist_ok=True)
    if version is None:
        body = f"echo \"pyenv: {path.name}: command not found\" >&2\nexit 127\n"
    else:
        body = f'case "$2" in *version_info*) exit 1;; *python_version*) echo {version};; esac\n'
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def path_with(*dirs: Path) -> str:
    "PATH: `dirs` first, then the system's tools, without pyenv's shims or any other Python of this machine's user."
    return ":".join([*map(str, dirs), "/usr/local/sbin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"])


def test_a_python_that_is_not_3_11_gets_a_line_that_names_it_and_the_fix(repo_copy, tmp_path):
    bin_ = tmp_path/"bin"
    fake_python(bin_/"python3.12", "3.12.1")
    (bin_/"python3.11").symlink_to(sys.executable)  # a 3.11 is at hand: the advice is to name it
    line = one_line(install(repo_copy, "PYTHON=python3.12", f"ENV={tmp_path/'env'}", target="check-env",
                            env={"PATH": path_with(bin_)}))
    assert "the locks are for Python 3.11, and python3.12 is Python 3.12.1; run 'make install PYTHON=python3.11'" in line
    assert not (tmp_path/"env").exists()


def test_a_pyenv_shim_without_its_python_and_no_3_11_anywhere(repo_copy, tmp_path):
    "The shim exits 127 ('command not found'): it is named as such, and with no 3.11 here, the line says where to get one."
    shims, pyenv = tmp_path/"pyenv"/"shims", tmp_path/"pyenv"/"bin"
    fake_python(shims/"python3", None)
    fake_python(shims/"python3.11", None)  # 3.11's shim too: pyenv knows it, nothing runs it
    fake_python(pyenv/"pyenv", "0")
    line = one_line(install(repo_copy, f"ENV={tmp_path/'env'}", target="check-env",
                            env={"PATH": path_with(pyenv, shims)}))
    assert "python3 is a pyenv shim with no Python behind it" in line, line
    assert "does not run" not in line and "pyenv: python3" not in line
    for way in ("pyenv install 3.11", "uv python install 3.11", "deadsnakes", "python.org", "conda env create"):
        assert way in line, (way, line)


def test_a_python_that_is_not_there_is_named_with_where_to_get_3_11(repo_copy, tmp_path):
    line = one_line(install(repo_copy, "PYTHON=python3.99", f"ENV={tmp_path/'env'}", target="check-env",
                            env={"PATH": path_with(tmp_path/"bin")}))
    has_311 = subprocess.run(["python3.11", "-c", "pass"], env={"PATH": path_with(tmp_path/"bin")}).returncode == 0 \
        if shutil.which("python3.11", path=path_with(tmp_path/"bin")) else False
    advice = "run 'make install PYTHON=python3.11'" if has_311 else "get Python 3.11 (pyenv install 3.11"
    assert line.startswith(f"error: no python3.99 on PATH; {advice}"), line
    assert not (tmp_path/"env").exists()


def test_a_conda_environment_with_another_python_is_told_to_recreate_it(repo_copy, tmp_path):
    env = tmp_path/"envs"/"mlkit"
    fake_python(env/"bin"/"python", "3.12.1")
    line = one_line(install(repo_copy, target="check-env", env={"CONDA_PREFIX": str(env), "CONDA_DEFAULT_ENV": "mlkit"}))
    assert "the conda environment mlkit has Python 3.12.1" in line, line
    assert "conda env create -f environment.yml" in line and "conda install -n mlkit python=3.11" in line
    assert "rm -rf" not in line and "PYTHON=" not in line  # a venv's advice, which does not apply here


def test_a_venv_with_another_python_is_removed_and_remade(repo_copy, tmp_path):
    env = tmp_path/"env"
    fake_python(env/"bin"/"python", "3.12.1")
    (env/".mlkit-env").touch()
    line = one_line(install(repo_copy, f"ENV={env}", f"PYTHON={sys.executable}", target="check-env"))
    assert f"{env} has Python 3.12.1, and the locks are for Python 3.11; remove it (rm -rf {env})" in line, line
    assert "PYTHON=" not in line  # PYTHON is 3.11 already


# --- the torch build ---------------------------------------------------------------------------------------------------

def fake_torch(folder: Path, version: str, cuda: str | None) -> Path:
    "A wheel of a 'torch' that is only its version.py: CUDA-looking (as PyPI's Linux wheel) when `cuda` is given."
    folder.mkdir(parents=True, exist_ok=True)
    whl = folder/f"torch-{version}-py3-none-any.whl"
    info = f"torch-{version}.dist-info"
    files = {"torch/__init__.py": "", "torch/version.py": f"__version__ = '{version}'\ncuda = {cuda!r}\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{n},,\n" for n in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(whl, "w") as z:
        for n, text in files.items(): z.writestr(n, text)
    return whl


def closed_port() -> int:
    "A local port nothing listens on (bound, then released): connecting to it is refused at once."
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def install_torch(repo: Path, tmp_path: Path, wheels: Path) -> tuple[subprocess.CompletedProcess, Path, str]:
    """`make install-torch` (install's torch step) in a new venv, with PyTorch's CPU index on a closed local port and,
    standing in for PyPI, only the find-links folder `wheels` (an empty local index, no pip configuration)."""
    env = tmp_path/"env"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    (tmp_path/"index").mkdir()
    index = f"http://127.0.0.1:{closed_port()}/whl/cpu"
    r = install(repo, f"ENV={env}", f"TORCH_INDEX_cpu={index}", target="install-torch",
                env={"PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": (tmp_path/"index").as_uri(),
                     "PIP_FIND_LINKS": str(wheels), "PIP_EXTRA_INDEX_URL": "", "PIP_CONSTRAINT": "", "PIP_NO_INPUT": "1"})
    return r, env, index


def has_torch(env: Path) -> bool: return any(env.glob("lib/python*/site-packages/torch"))


def test_a_blocked_cpu_index_stops_the_install_before_pypis_cuda_torch(repo_copy, tmp_path):
    "Where PyPI (here a folder) has only the CUDA build, the install stops at torch and names the index that failed."
    fake_torch(tmp_path/"pypi", "2.13.0", cuda="12.8")
    r, env, index = install_torch(repo_copy, tmp_path, tmp_path/"pypi")
    ours = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert r.returncode != 0 and len(ours) == 1, r.stderr
    assert f"torch 2.13.0's CPU build (above): {index} is unreachable" in ours[0], ours[0]
    assert "PyPI's Linux torch is the CUDA build" in ours[0] and "make lock" not in ours[0]
    assert not has_torch(env)  # the CUDA wheel was not taken


def test_a_torch_of_the_other_build_is_named_as_soon_as_it_is_installed(repo_copy, tmp_path):
    "A local wheel that says 2.13.0+cpu but is a CUDA build: the build check fails right after torch, naming the index."
    fake_torch(tmp_path/"wheels", "2.13.0+cpu", cuda="12.8")
    r, env, index = install_torch(repo_copy, tmp_path, tmp_path/"wheels")
    assert has_torch(env), r.stderr
    ours = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]  # pip's own warnings above it
    assert r.returncode != 0 and len(ours) == 1, r.stderr
    line = ours[0]
    assert f"TORCH=cpu but the installed torch is the CUDA build: {index} is unreachable" in line, line
    assert "make lock" not in line


# --- pip-tools' own dependencies -----------------------------------------------------------------------------------------

def pip_tools_deps() -> set[str]:
    "pip-tools' dependencies on this platform, all the way down, as installed here (pip and setuptools apart)."
    seen, todo = set(), ["pip-tools"]
    while todo:
        for spec in md.requires(todo.pop()) or []:
            req = Requirement(spec)
            name = canonicalize_name(req.name)
            if (req.marker is None or req.marker.evaluate({"extra": ""})) and name not in seen | {"pip", "setuptools"}:
                seen.add(name)
                todo.append(name)
    return seen


def test_pip_tools_and_its_dependencies_are_installed_as_locked():
    "pip-sync leaves them alone: make install takes each from the lock (wheel too, which astunparse bounds below 1.0)."
    listed = re.search(r"^PIP_TOOLS_DEPS := (.*)$", (REPO/"Makefile").read_text(), re.M).group(1).split()
    assert pip_tools_deps() <= {canonicalize_name(n) for n in listed}, pip_tools_deps()
    pins = dict(re.findall(r"^([A-Za-z0-9._-]+)==([^\s;]+)", (REPO/"requirements.txt").read_text(), re.M))
    pins = {canonicalize_name(k): v for k, v in pins.items()}
    for name in ["pip-tools", *pip_tools_deps()]:
        assert md.version(name) == pins[name], (name, md.version(name), pins.get(name))
    assert "wheel" in pins and Requirement("wheel<1.0,>=0.23").specifier.contains(pins["wheel"])
