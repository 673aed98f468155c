"`mlkit rerun` as a user drives it: what changed since (packages, code, notebook), names, parameters it cannot replay, kills."
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

COVERS = ("08_runmeta", "11_run", "11d_rerun")  # the notebooks these tests cover: `make test NB=...` runs them

REPO = Path(__file__).resolve().parents[1]
MLKIT = str(Path(sys.executable).parent/"mlkit")


@pytest.fixture
def project(tmp_path, monkeypatch):
    "A git project (settings.ini, nbs/experiments/, the notebook check script) with its runs folder outside it."
    root = tmp_path/"proj"
    (root/"nbs"/"experiments").mkdir(parents=True)
    (root/"scripts").mkdir()
    shutil.copy2(REPO/"scripts"/"check_notebooks.py", root/"scripts")
    (root/"settings.ini").write_text("[DEFAULT]\nlib_name = proj\nallowed_cell_metadata_keys = tags\n")
    monkeypatch.setenv("MLKIT_RUNS_DIR", str(tmp_path/"runs"))
    monkeypatch.delenv("MLKIT_RUN_DIR", raising=False)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.chdir(root)
    git(root, "init", "-q", "-b", "main")
    return root


def git(root, *args) -> str:
    cmd = ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args]
    return subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=True).stdout


def notebook(project, name, *sources, params=None, commit=True) -> str:
    "Write nbs/experiments/NAME (a `parameters` cell, then a code cell per source) and commit it."
    cells = [new_code_cell(params, metadata={"tags": ["parameters"]})] if params is not None else []
    nb = new_notebook(cells=cells + [new_code_cell(s) for s in sources],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    path = project/"nbs"/"experiments"/name
    nbformat.write(nb, path)
    subprocess.run([sys.executable, "scripts/check_notebooks.py", "fix", str(path)], cwd=project, check=True)  # as committed
    if commit: git(project, "add", "-A"), git(project, "commit", "-qm", f"write {name}")
    return str(path.relative_to(project))


def mlkit(*args, env=None, timeout=180):
    return subprocess.run([MLKIT, *args], capture_output=True, text=True, timeout=timeout, env=env)


def runs_by_name() -> dict[str, dict]:
    "The meta.json of each run in the runs folder, by the run's name."
    metas = [json.loads(p.read_text()) for p in Path(os.environ["MLKIT_RUNS_DIR"]).glob("*/meta.json")]
    return {m["name"]: m for m in metas}


def packages(name: str) -> dict:
    "The packages.json of the run named `name`."
    [folder] = [p.parent for p in Path(os.environ["MLKIT_RUNS_DIR"]).glob("*/meta.json")
                if json.loads(p.read_text())["name"] == name]
    return json.loads((folder/"packages.json").read_text())


def notes(stderr: str) -> list[str]:
    "What `mlkit rerun` said before the run started: its `mlkit rerun:` lines, without the prefix."
    return [line.removeprefix("mlkit rerun: ") for line in stderr.splitlines() if line.startswith("mlkit rerun: ")]


def test_the_difference_list_names_a_package_whose_version_differs(project, tmp_path):
    "An older PyYAML put first through PYTHONPATH (as a user injects a package) is named with both versions."
    nb = notebook(project, "pkg.ipynb", "import importlib.metadata as md\nprint('kernel has pyyaml', md.version('pyyaml'))",
                  params="n = 1")
    r = mlkit("run", nb, "--name", "base")
    assert r.returncode == 0, r.stderr
    import importlib.metadata
    venv = importlib.metadata.version("pyyaml")
    assert packages("base")["pyyaml"] == venv  # recorded at the start, in the run's packages.json
    assert "distributions" not in runs_by_name()["base"]  # not in meta.json, rewritten at every step of the run
    older = tmp_path/"older"/"PyYAML-5.1.dist-info"
    older.mkdir(parents=True)
    (older/"METADATA").write_text("Metadata-Version: 2.1\nName: PyYAML\nVersion: 5.1\n")
    again = mlkit("rerun", "base", env={**os.environ, "PYTHONPATH": str(tmp_path/"older")})
    assert again.returncode == 0, again.stderr
    said = notes(again.stderr)
    assert said[0] == f"environment: pyyaml {venv} → 5.1", said
    assert "notebook changed since: no" in said and not any("added" in s or "removed" in s for s in said), said
    assert re.fullmatch(r"same as then: python [\d.]+, platform .+, git commit [0-9a-f]{12}, no uncommitted changes",
                        said[-1]), said
    assert "kernel has pyyaml 5.1" in again.stdout  # what the list said is what the notebook ran with
    assert packages("base-rerun")["pyyaml"] == "5.1"  # and recorded so


def test_an_old_run_that_recorded_nothing_is_unknown_never_same(project):
    nb = notebook(project, "old.ipynb", "print(n)", params="n = 1")
    assert mlkit("run", nb, "--name", "old").returncode == 0
    [meta_path] = Path(os.environ["MLKIT_RUNS_DIR"]).glob("*/meta.json")
    m = json.loads(meta_path.read_text())
    for key in ("distributions", "python", "platform", "git", "torch", "cuda", "requirements_sha256"): m.pop(key, None)
    meta_path.write_text(json.dumps(m))
    (meta_path.parent/"packages.json").unlink()
    again = mlkit("rerun", "old")
    assert again.returncode == 0, again.stderr
    assert notes(again.stderr) == ["environment: unknown (the run recorded no package list)",
                                   "python: unknown (the run recorded none)", "platform: unknown (the run recorded none)",
                                   "code: unknown (the run recorded no git state)", "notebook changed since: no"]
    assert "same" not in again.stderr and "requirements.txt" not in again.stderr


def test_a_parameter_recorded_only_as_its_repr_must_be_given_again(project):
    nb = notebook(project, "model.ipynb", "print('model is', model)", params="model = None")
    assert mlkit("run", nb, "--name", "m").returncode == 0
    [meta_path] = Path(os.environ["MLKIT_RUNS_DIR"]).glob("*/meta.json")
    m = json.loads(meta_path.read_text())  # as `mlkit run` records a value JSON cannot hold: its repr, and its type
    m["notebook_params"]["model"], m["param_reprs"] = "<Foo object at 0x7f>", {"model": "Foo"}
    meta_path.write_text(json.dumps(m))
    refused = mlkit("rerun", "m")
    assert (refused.returncode, refused.stdout) == (1, ""), refused.stderr
    assert refused.stderr == (f"mlkit rerun: error: run {meta_path.parent.name} recorded parameter 'model' only as its repr "
                              "(a Foo): give it again with -p model VALUE\n")
    assert len(runs_by_name()) == 1  # nothing run
    again = mlkit("rerun", "m", "-p", "model", "small")
    assert again.returncode == 0 and "model is small" in again.stdout, again.stderr


def test_a_computed_secret_or_object_the_run_could_not_keep_is_computed_again(project, monkeypatch):
    "A parameters cell that reads a secret from the environment, or builds an object: rerun lets the notebook do it again."
    monkeypatch.setenv("API_TOKEN", "tok-env-5531")
    nb = notebook(project, "computed.ipynb", "print('token', len(api_token), 'rng', rng.random() < 1, 'n', n)",
                  params='import os, random\napi_token = os.environ["API_TOKEN"]\nrng = random.Random(0)\nn = 1')
    assert mlkit("run", nb, "--name", "c").returncode == 0
    again = mlkit("rerun", "c", "-p", "n", "2")
    assert again.returncode == 0, again.stderr
    assert "token 12 rng True n 2" in again.stdout
    assert "api_token, rng: computed again by the notebook (the run kept no value to give it)" in notes(again.stderr)
    assert mlkit("rerun", "c", "-p", "api_token", "x").returncode == 0  # -p still gives one


def test_reruns_get_distinct_names_and_the_original_stays_findable(project):
    nb = notebook(project, "names.ipynb", "print(n)", params="n = 1")
    assert mlkit("run", nb, "--name", "base").returncode == 0
    for _ in range(2):  # the second would find two runs named base if the first took the original's name
        r = mlkit("rerun", "base")
        assert r.returncode == 0, r.stderr
    metas = runs_by_name()
    assert sorted(metas) == ["base", "base-rerun", "base-rerun-2"]
    first = next(p.parent.name for p in Path(os.environ["MLKIT_RUNS_DIR"]).glob("*/meta.json")
                 if json.loads(p.read_text())["name"] == "base")
    assert metas["base-rerun"]["rerun_of"] == metas["base-rerun-2"]["rerun_of"] == first
    ls = mlkit("runs", "ls")
    assert ls.returncode == 0 and "base-rerun-2" in ls.stdout


def _children(pid: int) -> list[int]:
    "Every process below `pid` (from /proc)."
    parents = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try: parents[int(d.name)] = int((d/"stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError): pass
    found, todo = [], [pid]
    while todo:
        kids = [c for c, p in parents.items() if p == todo[0]]
        found += kids
        todo = todo[1:] + kids
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc")
def test_a_killed_rerun_of_a_changed_notebook_leaves_the_source_tree_clean(project, tmp_path):
    mark = tmp_path/"napping"
    nb = notebook(project, "nap.ipynb", "import os, time\nfrom pathlib import Path\n"
                  f"Path({str(mark)!r}).write_text(os.getcwd())\ntime.sleep(nap)", params="nap = 0.0")
    assert mlkit("run", nb, "--name", "base").returncode == 0
    mark.unlink()
    notebook(project, "nap.ipynb", "print('changed since')", params="nap = 0.0")  # committed: the tree is clean
    assert git(project, "status", "--porcelain", "--untracked-files=all") == ""
    err = open(tmp_path/"rerun.err", "w+")
    p = subprocess.Popen([MLKIT, "rerun", "base", "-p", "nap", "300"], stdout=subprocess.DEVNULL, stderr=err,
                         start_new_session=True)
    try:
        waited = threading.Event()
        while not mark.exists() and p.poll() is None and not waited.wait(0.1): pass
        assert mark.exists(), (tmp_path/"rerun.err").read_text()  # the kernel runs the copy's time.sleep now
        kernel = _children(p.pid)
        os.killpg(p.pid, signal.SIGKILL)  # the whole `mlkit rerun` group, with no chance to clean up
        for pid in kernel:  # the kernel runs in a session of its own
            try: os.kill(pid, signal.SIGKILL)
            except ProcessLookupError: pass
        p.wait()
    finally:
        if p.poll() is None: os.killpg(p.pid, signal.SIGKILL); p.wait()
    assert "nap.ipynb has changed since run" in (tmp_path/"rerun.err").read_text()
    assert mark.read_text() == str(project/"nbs"/"experiments")  # the copy ran in the notebook's folder
    assert git(project, "status", "--porcelain", "--untracked-files=all", "--ignored") == ""
    check = subprocess.run([sys.executable, "scripts/check_notebooks.py", "check"], cwd=project, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


TRAIN = """import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mlkit.track import TrackingCallback
from mlkit.train import Trainer

g = torch.Generator().manual_seed(0)
ds = TensorDataset(torch.randn(256, 8, generator=g), torch.randint(0, 2, (256,), generator=g))
t = Trainer(nn.Linear(8, 2), DataLoader(ds, batch_size=32), DataLoader(ds, batch_size=64), cbs=[TrackingCallback()])
t.fit(epochs)
"""


def runs() -> list[Path]: return sorted(Path(os.environ["MLKIT_RUNS_DIR"]).iterdir())
def meta(run: Path) -> dict: return json.loads((run/"meta.json").read_text())


def values(run: Path) -> list[tuple]:
    "The (step, name, value) rows of a run's metrics, leaving out those that measure time or speed."
    rows = [line.split(",") for line in (run/"metrics.csv").read_text().splitlines()[1:]]
    return [(s, n, v) for s, _, n, v in rows if not any(w in n for w in ("time", "per_s", "throughput", "mem"))]


@pytest.mark.slow
def test_rerun_reproduces_the_metrics(project):
    "Moved from test_run.py; the rerun's name and the difference list's words are the new ones."
    nb = notebook(project, "train.ipynb", "import torch\ntorch.manual_seed(seed)", TRAIN, params="epochs = 1\nseed = 0")
    r = mlkit("run", nb, "-p", "epochs", "2", "-p", "seed", "3", "--name", "orig")
    assert r.returncode == 0, r.stderr
    [first] = runs()
    again = mlkit("rerun", "orig")
    assert again.returncode == 0, again.stderr
    assert "mlkit rerun: nothing changed since: the " in again.stderr and "installed packages" in again.stderr
    second = [p for p in runs() if p != first][0]
    m = meta(second)
    assert (m["status"], m["rerun_of"], m["name"]) == ("finished", first.name, "orig-rerun")
    assert m["notebook_params"] == {"epochs": 2, "seed": 3}
    assert values(first) == values(second) and any(n == "valid_loss" for _, n, _ in values(first))
    changed = mlkit("rerun", first.name, "-p", "seed", "4")
    assert changed.returncode == 0, changed.stderr
    third = [p for p in runs() if p not in (first, second)][0]
    assert meta(third)["notebook_params"] == {"epochs": 2, "seed": 4}
    assert values(third) != values(first)  # the comparison can fail
    assert "no run 'nope'" in mlkit("rerun", "nope").stderr
    notebook(project, "train.ipynb", "import torch\ntorch.manual_seed(seed + 1)", TRAIN, params="epochs = 1\nseed = 0")
    as_ran = mlkit("rerun", first.name)  # the notebook's code changed since: the rerun runs it as it ran
    assert as_ran.returncode == 0, as_ran.stderr
    assert "train.ipynb has changed since run" in as_ran.stderr and "notebook changed since: yes" in as_ran.stderr
    fourth = [p for p in runs() if p not in (first, second, third)][0]
    assert values(fourth) == values(first)
    assert (meta(fourth)["notebook"], meta(fourth)["notebook_as_ran_in"]) == (str(project/nb), first.name)
    assert [p.name for p in (project/nb).parent.iterdir() if p.name.startswith(".")] == []  # its copy is gone


def test_a_computed_default_is_replayed_by_rerun(project):
    "SEED from the environment: recorded as the value it took, and the rerun runs that value without SEED set."
    nb = notebook(project, "seeded.ipynb", "print('seed is', seed, 'shape', shape, 'data', repr(data_dir))\nout / 'x'",
                  params="import os\nfrom pathlib import Path\nseed: int = int(os.environ.get('SEED', '0'))\n"
                         "shape = (16, 8)\ndata_dir = Path('data')\nout = Path.cwd() / 'out'")
    r = mlkit("run", nb, "--name", "seeded", env={**os.environ, "SEED": "5"})
    assert r.returncode == 0, r.stderr
    assert "seed is 5 shape (16, 8) data PosixPath('data')" in r.stdout
    first = runs_by_name()["seeded"]
    out = str(project/"nbs"/"experiments"/"out")
    assert first["notebook_params"] == {"seed": 5, "shape": "(16, 8)", "data_dir": "data", "out": out}
    assert first["param_reprs"] == {"shape": "tuple"} and first["param_paths"] == ["data_dir", "out"]
    env = {k: v for k, v in os.environ.items() if k != "SEED"}
    again = mlkit("rerun", "seeded", env=env)
    assert again.returncode == 0, again.stderr
    # the recorded 5, not the 0 the notebook would compute now; the tuple its literal default makes again; a Path
    assert "seed is 5 shape (16, 8) data PosixPath('data')" in again.stdout
    assert runs_by_name()["seeded-rerun"]["notebook_params"] == first["notebook_params"]


def test_a_rerun_keeps_the_originals_cwd_and_kernel(project, tmp_path):
    "--cwd and -k are part of how a run ran: its rerun uses them again (and says so in meta.json)."
    (project/"data").mkdir()
    (project/"data"/"x.txt").write_text("rows 7")
    nb = notebook(project, "reads.ipynb", "import os\nprint(open('data/x.txt').read(), os.path.basename(os.getcwd()))")
    r = mlkit("run", nb, "--cwd", ".", "-k", "python3", "--name", "rooted")
    assert r.returncode == 0, r.stderr
    again = mlkit("rerun", "rooted")
    assert again.returncode == 0, again.stderr  # from the notebook's own folder, data/x.txt is not there
    m = runs_by_name()["rooted-rerun"]
    assert (m["kernel_cwd"], m["kernel"], m["kernel_from"]) == (str(project), "python3", "asked for (--kernel)")
