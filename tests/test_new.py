"`mlkit new` as a user drives it: the template against this repository, bad input, and a made project's own make targets."
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlkit.new import SHARED, _project_path, _shared_files, new_project

COVERS = ("07_cli", "13_new")  # the notebooks these tests cover: `make test NB=...` runs them

MLKIT = str(Path(sys.executable).parent/"mlkit")
ROOT = Path(__file__).parent.parent


def test_the_template_shares_this_repository_s_files_and_cannot_drift():
    "Each shared template file is this repository's own (a link to it in a checkout), byte for byte."
    shared = [str(_project_path(p)) for p in _shared_files()]
    for must in ("Makefile", ".gitignore", ".gitattributes", "setup.py", "pyproject.toml", "environment.yml",
                 "requirements.txt", "requirements-cpu.txt", "requirements-cuda.txt", ".ci/run",
                 ".github/workflows/ci.yml", "scripts/check_lock.py", "nbs/experiments/train_digits.ipynb",
                 "sweeps/digits.yaml", ".github/workflows/docs.yml", "nbs/_quarto.yml", "nbs/styles.css",
                 "scripts/check_docs.py", ".devcontainer/devcontainer.json", "scripts/schemas/devcontainer.schema.json"):
        assert must in shared, must
    for rel in _shared_files():
        mine = ROOT/_project_path(rel)
        assert (SHARED/rel).is_symlink() and (SHARED/rel).resolve() == mine.resolve(), rel
        assert (SHARED/rel).read_bytes() == mine.read_bytes(), rel
    # and the repository's copy of what a new project gets is in git: a wheel carries the files, not the links
    tracked = subprocess.run(["git", "ls-files", "mlkit/templates"], cwd=ROOT, capture_output=True, text=True).stdout
    for rel in _shared_files(): assert f"mlkit/templates/project/{rel}" in tracked, rel


def made(tmp_path, **kw) -> Path:
    return new_project(tmp_path/"lab", name="lab", author="Ada L", email="ada@example.com", mlkit_source=str(ROOT),
                       lock=False, **kw)


def test_a_project_has_its_own_names_and_mlkit_by_a_direct_reference(tmp_path):
    dest = made(tmp_path, git=False)
    settings = (dest/"settings.ini").read_text()
    assert "lib_name = lab\n" in settings and "author = Ada L\n" in settings and "$" not in settings
    assert f"requirements = mlkit@{ROOT.resolve().as_uri()}\n" in settings
    reference = f"mlkit @ {ROOT.resolve().as_uri()}"
    assert (dest/"requirements.in").read_text().rstrip().endswith(reference)
    lock = (dest/"requirements.txt").read_text()
    assert f"\n{reference}\n    # via -r requirements.in\n" in lock and "\nmlkit==" not in lock  # never PyPI's mlkit
    assert "name: lab" in (dest/"environment.yml").read_text()
    assert '"name": "lab"' in (dest/".devcontainer"/"devcontainer.json").read_text()
    assert (dest/"lab"/"core.py").is_file() and "def accuracy" in (dest/"lab"/"core.py").read_text()  # exported
    assert not (dest/"mlkit").exists() and not list(dest.rglob("train.py"))  # no copy of mlkit's sources
    assert os.access(dest/".ci"/"run", os.X_OK)
    for p in dest.rglob("*"):
        if p.is_file() and p.suffix in (".ini", ".md", ".py", ".ipynb", ".yml"): assert "$name" not in p.read_text(), p
    r = subprocess.run([sys.executable, "scripts/check_lock.py"], cwd=dest, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr  # the direct reference counts as pinned
    _docs_and_devcontainer_check(dest)


INTEGRATIONS = ("tensorboard", "mlflow", "mlflow-skinny", "wandb", "psycopg", "psycopg-binary")


def _lock_names(text):
    return {re.split(r"[\s=;@\[]", ln)[0].lower() for ln in text.splitlines() if re.match(r"^[A-Za-z0-9]", ln)}


def test_a_project_s_requirements_and_locks_are_its_own_without_mlkit_s_integrations(tmp_path):
    "requirements.in is the project's; the locks taken offline from mlkit's hold what it reaches, no inert or test-only line."
    dest = made(tmp_path, git=False)
    req = (dest/"requirements.in").read_text()
    assert "dev machines' disk" not in req and "mlkit[mlflow]: mlflow-skinny" in req and "mlkit[dev]" not in req
    assert re.search(r"^torch==\S+$", req, re.M) and re.search(r"^scikit-learn", req, re.M)
    lock = (dest/"requirements.txt").read_text()
    assert not _lock_names(lock) & set(INTEGRATIONS), _lock_names(lock) & set(INTEGRATIONS)
    assert "never" not in lock and not re.search(r"^torch", lock, re.M) and "#   torch" not in lock
    mine = (ROOT/"requirements.txt").read_text()
    assert _lock_names(lock) < _lock_names(mine) | {"mlkit"}  # a subset of mlkit's pins: no version moved
    for line in lock.splitlines():
        if re.match(r"^[A-Za-z0-9]", line) and not line.startswith("mlkit @"): assert line in mine.splitlines(), line
    # sqlalchemy and alembic stay only as optuna's (mlkit's sweeps) requirements, not as mlkit's test-only integrations
    for name in ("sqlalchemy", "alembic"):
        block = re.search(rf"^{name}==.*?\n((?:    #.*\n)+)", lock, re.M)
        assert block is None or "requirements.in" not in block[1], block[1]
    r = subprocess.run([sys.executable, "scripts/check_lock.py"], cwd=dest, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # and each mutation of the derivation is seen: a lock of mlkit's own would carry its integrations
    assert _lock_names(mine) & set(INTEGRATIONS)


def _filtered(dest, rel):
    "A notebook as the project's own git filter (its scripts/check_notebooks.py, as `make hooks` sets it up) cleans it."
    return subprocess.run([sys.executable, "scripts/check_notebooks.py", "clean"], stdin=open(dest/rel), cwd=dest,
                          capture_output=True, text=True, check=True).stdout


def test_a_project_s_notebooks_are_committed_as_its_filter_writes_them_with_its_kernel(tmp_path):
    dest = made(tmp_path, git=True)
    notebooks = subprocess.run(["git", "ls-files", "*.ipynb"], cwd=dest, capture_output=True, text=True).stdout.split()
    assert {"nbs/index.ipynb", "nbs/00_core.ipynb", "nbs/experiments/train_digits.ipynb"} <= set(notebooks), notebooks
    for rel in notebooks:
        committed = subprocess.run(["git", "show", f"HEAD:{rel}"], cwd=dest, capture_output=True, text=True).stdout
        assert _filtered(dest, rel) == committed == (dest/rel).read_text(), rel
        # the kernel `make install` registers; the filter writes its name as display_name, as nbdev_clean does
        assert json.loads(committed)["metadata"]["kernelspec"] == {"display_name": "mlkit", "language": "python",
                                                                  "name": "mlkit"}, rel
    assert subprocess.run(["git", "status", "--porcelain"], cwd=dest, capture_output=True, text=True).stdout == ""


def test_the_template_notebooks_are_in_the_filtered_form_with_the_project_kernel():
    "The files themselves, so that a project made without the filter at hand is committed clean as well."
    from mlkit.new import ONLY_NEW
    for path in ONLY_NEW.rglob("*.ipynb*"):
        out = subprocess.run([sys.executable, str(ROOT/"scripts"/"check_notebooks.py"), "clean"], stdin=open(path),
                             capture_output=True, text=True, check=True).stdout
        assert out == path.read_text(), path
        assert json.loads(out)["metadata"]["kernelspec"] == {"display_name": "mlkit", "language": "python",
                                                             "name": "mlkit"}, path


def _docs_and_devcontainer_check(dest):
    "What make check proves of a project's docs configuration (nbdev.yml as nbdev writes it) and devcontainer.json."
    for cmd in ([sys.executable, "scripts/check_docs.py"],
                [str(Path(sys.executable).parent/"check-jsonschema"), "--schemafile",
                 "scripts/schemas/devcontainer.schema.json", ".devcontainer/devcontainer.json"]):
        r = subprocess.run(cmd, cwd=dest, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


def test_percent_signs_and_spaces_are_kept_and_the_folder_is_an_ordinary_one(tmp_path):
    source = tmp_path/"my mlkit"  # a checkout in a folder with a space: its file URL holds %20
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "build", "*.egg-info", "__pycache__"),
                    symlinks=True)
    dest = new_project(tmp_path/"lab", name="lab", author="Ada 100% L", description="99% accuracy, or close",
                       mlkit_source=str(source), lock=False, git=True)
    import configparser
    cfg = configparser.ConfigParser(delimiters=["="])  # as setup.py and nbdev read it: with interpolation
    cfg.read(dest/"settings.ini")
    assert cfg["DEFAULT"]["description"] == "99% accuracy, or close" and cfg["DEFAULT"]["author"] == "Ada 100% L"
    assert cfg["DEFAULT"]["requirements"] == f"mlkit@{source.resolve().as_uri()}" and "%20" in cfg["DEFAULT"]["requirements"]
    assert (dest/"lab"/"core.py").is_file()
    _docs_and_devcontainer_check(dest)  # nbs/nbdev.yml holds the description as nbdev reads it from settings.ini
    assert oct(dest.stat().st_mode & 0o777) == oct(0o777 & ~_umask())
    log = subprocess.run(["git", "log", "--format=%an %s"], cwd=dest, capture_output=True, text=True).stdout
    assert log.startswith("Ada 100% L New project from mlkit") and log.count("\n") == 1
    assert subprocess.run(["git", "status", "--porcelain"], cwd=dest, capture_output=True, text=True).stdout == ""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_force_adds_what_is_missing_and_replaces_nothing(tmp_path):
    (tmp_path/"lab").mkdir()
    (tmp_path/"lab"/"README.md").write_text("my notes\n")
    (tmp_path/"lab"/"data.csv").write_text("1,2\n")
    (tmp_path/"lab"/".env").write_text("TOKEN=secret\n")
    dest = made(tmp_path, git=True, force=True)
    assert (dest/"README.md").read_text() == "my notes\n" and (dest/"data.csv").read_text() == "1,2\n"
    assert (dest/"Makefile").is_file() and (dest/"lab"/"core.py").is_file()
    committed = subprocess.run(["git", "ls-files"], cwd=dest, capture_output=True, text=True).stdout.split()
    assert "Makefile" in committed and "lab/core.py" in committed
    assert not {".env", "data.csv", "README.md"} & set(committed)  # the first commit holds what mlkit new wrote, no more


def test_bad_input_is_one_line_and_writes_nothing(tmp_path):
    (tmp_path/"taken").mkdir()
    (tmp_path/"taken"/"x.txt").write_text("mine")
    (tmp_path/"a_file").write_text("")
    cases = [(["taken"], "exists and is not empty"),
             (["my-proj"], "'my-proj' is not a valid Python package name (it has '-'); try --name my_proj"),
             (["p", "--name", "json"], "would shadow the standard library's module 'json'"),
             (["p", "--name", "torch"], "would shadow an installed package 'torch'"),
             (["p", "--name", "mlkit"], "would shadow mlkit itself"),
             (["p", "--mlkit-source", str(tmp_path/"nowhere")], "no such checkout, wheel or folder"),
             (["a_file/p", "--name", "p"], "cannot write in"),
             (["p", "--python", "3.12"], "the locks mlkit ships are for Python 3.11"),
             (["p", "--description", 'Deep "learning"'], "would break the docs site's nbs/nbdev.yml"),
             (["p", "--description", "C:\\data"], "a double quote or backslash")]
    for args, message in cases:
        r = subprocess.run([MLKIT, "new", *args], cwd=tmp_path, capture_output=True, text=True)
        assert r.returncode == 1 and message in r.stderr and len(r.stderr.splitlines()) == 1, (args, r.stderr)
        assert r.stderr.startswith("mlkit new: error: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "taken"]
    assert (tmp_path/"taken"/"x.txt").read_text() == "mine"


def _make(dest, *args, timeout=1800):
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "MLKIT_RUNS_DIR", "MLKIT_PROJECT_ROOT", "MAKEFLAGS",
                                                            "MAKELEVEL", "MFLAGS", "CONDA_PREFIX")}
    return subprocess.run(["make", *args], cwd=dest, capture_output=True, text=True, timeout=timeout, env=env)


def _save_like_jupyterlab(path, lib):
    "What JupyterLab 4 writes when a notebook is run and saved: language_info, its kernel's spec, outputs and counts."
    nb = json.loads(path.read_text())
    nb["metadata"]["kernelspec"] = {"display_name": f"Python ({lib})", "language": "python", "name": "mlkit"}
    nb["metadata"]["language_info"] = {"codemirror_mode": {"name": "ipython", "version": 3}, "file_extension": ".py",
                                       "mimetype": "text/x-python", "name": "python", "nbconvert_exporter": "python",
                                       "pygments_lexer": "ipython3", "version": "3.11.7"}
    for n, cell in enumerate(c for c in nb["cells"] if c["cell_type"] == "code"):
        cell["execution_count"] = n + 1
        cell["outputs"] = [{"name": "stdout", "output_type": "stream", "text": ["ran\n"]}]
    path.write_text(json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n")


@pytest.mark.slow
def test_a_project_s_offline_locks_are_what_its_make_lock_writes_and_install_on_every_target(tmp_path):
    "lock=False (mlkit new offline): the locks taken from mlkit's agree with a real make lock (PyPI), and every target resolves."
    from test_locks import pypi_reachable
    if not pypi_reachable(): pytest.skip("PyPI is out of reach")
    dest = made(tmp_path, git=False)
    for target in ("check-lock-full", "check-lock-targets"):
        r = subprocess.run(["make", "--no-print-directory", target, "NO_INSTALL=1", f"ENV={sys.prefix}"], cwd=dest,
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, (target, r.stdout[-3000:] + r.stderr[-3000:])
    assert "ok: linux-x86_64-cuda (Python 3.11.9" in r.stdout and "needs" not in r.stderr, r.stdout + r.stderr
    r = subprocess.run(["make", "--no-print-directory", "lock", "NO_INSTALL=1", f"ENV={sys.prefix}"], cwd=dest,
                       capture_output=True, text=True, timeout=900)  # and make lock itself writes no inert line
    assert r.returncode == 0 and "never" not in (dest/"requirements.txt").read_text(), r.stderr[-3000:]


@pytest.mark.slow
def test_a_new_project_passes_its_own_tests_checks_exports_and_trains(tmp_path):
    "From nothing: mlkit new, then in the project make test, make check (and it catches outputs), make export, make train."
    r = subprocess.run([MLKIT, "new", str(tmp_path/"digits_lab"), "--mlkit-source", str(ROOT), "--author", "Ada L",
                        "--email", "ada@example.com"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    dest = tmp_path/"digits_lab"
    assert subprocess.run(["git", "log", "--oneline"], cwd=dest, capture_output=True, text=True).stdout.count("\n") == 1
    t = _make(dest, "test")
    assert t.returncode == 0, t.stdout[-3000:] + t.stderr[-3000:]
    # make install (run by make test) ends by saying how to put mlkit on PATH, and that is true
    assert "install: done; to put mlkit on PATH: source .venv/bin/activate" in t.stdout, t.stdout[-3000:]
    assert subprocess.run(["bash", "-c", "source .venv/bin/activate && mlkit --help"], cwd=dest,
                          capture_output=True).returncode == 0
    t = _make(dest, "test", "NB=00_core")  # --nb comes with mlkit (its pytest plugin), not from a conftest.py
    assert t.returncode == 0 and "unrecognized arguments" not in t.stderr, t.stdout[-3000:] + t.stderr[-3000:]
    assert "plugins:" in t.stdout and "mlkit-" in t.stdout, t.stdout[-3000:]
    lock = (dest/"requirements.txt").read_text()  # resolved by make lock (PyPI) in mlkit new
    assert not _lock_names(lock) & set(INTEGRATIONS) and "never" not in lock, lock
    status = lambda: subprocess.run(["git", "status", "--porcelain"], cwd=dest, capture_output=True, text=True).stdout  # noqa: E731
    time.sleep(1.1)  # a later mtime than the index's: git runs the filter on each touched notebook (not a timed assert)
    for nb in (dest/"nbs").rglob("*.ipynb"): nb.touch()
    assert status() == ""  # each notebook is committed as the project's filter writes it
    _save_like_jupyterlab(dest/"nbs"/"index.ipynb", "digits_lab")
    # git reports a file whose size changed as modified without running the filter, until git add re-reads it
    assert subprocess.run(["git", "diff", "--exit-code"], cwd=dest, capture_output=True, text=True).returncode == 0
    subprocess.run(["git", "add", "nbs/index.ipynb"], cwd=dest, check=True)
    assert status() == ""  # nothing to commit: Lab's metadata, kernelspec, outputs and counts all filtered
    assert '"language_info"' in (dest/"nbs"/"index.ipynb").read_text()  # (the save is in the working tree)
    lt = _make(dest, "check-lock-targets")  # also where PyTorch's CPU index is out of reach (its fallback)
    assert lt.returncode == 0, lt.stdout[-3000:] + lt.stderr[-3000:]
    c = _make(dest, "check")  # the Lab save in the working tree is fine: the filter cleans it as it is staged
    assert c.returncode == 0 and "check: all clean" in c.stdout, c.stdout[-3000:] + c.stderr[-3000:]
    # --renormalize: git add would skip a file whose stat the index already holds
    subprocess.run(["git", "-c", "filter.nbstripout.clean=cat", "add", "--renormalize", "nbs/index.ipynb"], cwd=dest,
                   check=True)
    c = _make(dest, "check")  # staged around the filter: what the commit would hold is judged
    assert c.returncode != 0 and "nbs/index.ipynb (staged)" in c.stdout + c.stderr, c.stdout[-2000:] + c.stderr[-2000:]
    subprocess.run(["git", "add", "--renormalize", "nbs/index.ipynb"], cwd=dest, check=True)  # the advice it gives
    assert status() == ""
    (dest/"digits_lab"/"core.py").unlink()
    e = _make(dest, "export")
    assert e.returncode == 0 and "def accuracy" in (dest/"digits_lab"/"core.py").read_text(), e.stderr[-2000:]
    tr = _make(dest, "train", "ARGS=-p epochs 3")
    assert tr.returncode == 0, tr.stdout[-3000:] + tr.stderr[-3000:]
    [run] = [p for p in (dest/"runs").iterdir() if p.is_dir() and p.name != "sweeps"]
    assert json.loads((run/"meta.json").read_text())["status"] == "finished"
    assert json.loads((run/"records.json").read_text())["test_accuracy"] > 0.8
    assert "git status" and subprocess.run(["git", "status", "--porcelain"], cwd=dest, capture_output=True,
                                           text=True).stdout == ""  # nothing made outside runs/ and .venv/ (ignored)
    shutil.rmtree(dest/".venv", ignore_errors=True)
