"`mlkit new` as a user drives it: the template against this repository, bad input, and a made project's own make targets."
import json
import os
import shutil
import subprocess
import sys
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
                 "requirements.in", "requirements.txt", "requirements-cpu.txt", "requirements-cuda.txt", ".ci/run",
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


def _docs_and_devcontainer_check(dest):
    "What make check proves of a project's docs configuration (nbdev.yml as nbdev writes it) and devcontainer.json."
    for cmd in ([sys.executable, "scripts/check_docs.py"],
                [str(Path(sys.executable).parent/"check-jsonschema"), "--schemafile",
                 "scripts/schemas/devcontainer.schema.json", ".devcontainer/devcontainer.json"]):
        r = subprocess.run(cmd, cwd=dest, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


def test_the_substitutions_still_find_what_they_replace():
    "A shared file whose mlkit-named line changed would otherwise go into new projects unchanged, silently."
    from mlkit.new import _substitutions
    for name, pairs in _substitutions("lab").items():
        for old, _ in pairs: assert old in (ROOT/name).read_text(), (name, old)


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
    c = _make(dest, "check")
    assert c.returncode == 0 and "check: all clean" in c.stdout, c.stdout[-3000:] + c.stderr[-3000:]
    nb = dest/"nbs"/"00_core.ipynb"
    clean = nb.read_text()
    dirty = json.loads(clean)
    dirty["cells"][-1]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "hi\n"}]
    dirty["cells"][-1]["execution_count"] = 3
    nb.write_text(json.dumps(dirty, indent=1))
    c = _make(dest, "check")
    assert c.returncode != 0 and "nbs/00_core.ipynb" in c.stdout + c.stderr, c.stdout[-2000:] + c.stderr[-2000:]
    nb.write_text(clean)
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
