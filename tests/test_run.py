"`mlkit run` as a user drives it: a temporary project, notebooks in a subfolder of nbs/, each outcome and each bad input."
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

COVERS = ("07_cli", "11_run", "11a_params", "11b_distrun", "11c_execute")  # `make test NB=...` runs them

MLKIT = str(Path(sys.executable).parent/"mlkit")


@pytest.fixture
def project(tmp_path, monkeypatch):
    "A project folder (settings.ini, nbs/experiments/) with its runs folder in MLKIT_RUNS_DIR."
    root = tmp_path/"proj"
    (root/"nbs"/"experiments").mkdir(parents=True)
    (root/"settings.ini").write_text("[DEFAULT]\nlib_name = proj\n")
    monkeypatch.setenv("MLKIT_RUNS_DIR", str(tmp_path/"runs"))
    monkeypatch.delenv("MLKIT_RUN_DIR", raising=False)
    monkeypatch.chdir(root)
    return root


def runs(project) -> list[Path]:
    folder = Path(os.environ["MLKIT_RUNS_DIR"])
    return sorted(folder.iterdir()) if folder.exists() else []


def notebook(project, name, *sources, params=None) -> str:
    "Write nbs/experiments/NAME: a `parameters` cell holding `params` (if given), then a code cell per source."
    cells = [new_code_cell(params, metadata={"tags": ["parameters"]})] if params is not None else []
    nb = new_notebook(cells=cells + [new_code_cell(s) for s in sources],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    path = project/"nbs"/"experiments"/name
    nbformat.write(nb, path)
    return str(path.relative_to(project))


def mlkit(*args, timeout=180):
    return subprocess.run([MLKIT, *args], capture_output=True, text=True, timeout=timeout)


def meta(run: Path) -> dict: return json.loads((run/"meta.json").read_text())


PARAMS = "lr = 0.1  # learning rate\nepochs = 3  # passes over the data\nlayers = [16, 8]\ntag = 'base'\n"


def test_finished_run_with_typed_params(project):
    nb = notebook(project, "train.ipynb",
                  "import os\nprint('in', os.path.basename(os.getcwd()), type(lr).__name__, epochs, layers, tag)",
                  "from mlkit.run import record\nrecord('score', lr * epochs)\nrecord('layers', layers)", params=PARAMS)
    (project/"p.yaml").write_text("lr: 2\nepochs: 7\n")
    r = mlkit("run", nb, "-f", "p.yaml", "-p", "epochs", "5", "-p", "layers", "[4, 2]", "-p", "tag", "2024", "--name", "first")
    assert r.returncode == 0, r.stderr
    [run] = runs(project)
    m = meta(run)
    assert (m["status"], m["name"], m["error"]) == ("finished", "first", None)
    assert m["command"][1:3] == ["run", nb] and m["python"] and m["host"]
    params = json.loads((run/"params.json").read_text())
    assert params == {"lr": 2.0, "epochs": 5, "layers": [4, 2], "tag": "2024"}  # -p wins over -f; an int for a float
    assert isinstance(params["lr"], float)
    assert json.loads((run/"records.json").read_text()) == {"score": 10.0, "layers": [4, 2]}
    executed = nbformat.read(run/"notebook.ipynb", as_version=4)
    assert "in experiments float 5 [4, 2] 2024\n" in [o.get("text") for c in executed.cells for o in c.get("outputs", [])]
    assert f"run {run.name} finished" in r.stdout and str(run) in r.stdout
    assert "score" in r.stdout and "10" in r.stdout
    assert "-- cell 2/3" in r.stderr
    assert "IPKernelApp" not in r.stderr and (run/"kernel.log").is_file()  # the kernel's own log stays in the run
    ls = mlkit("runs", "ls")
    assert ls.returncode == 0 and "score" in ls.stdout.splitlines()[0] and "[4, 2]" in ls.stdout, ls.stdout


def test_the_seed_is_recorded_from_a_notebook_that_opens_no_tracker(project):
    "seed_everything in the kernel, no current_run/TrackingCallback/record: meta.json still has the seed."
    nb = notebook(project, "seeded.ipynb", "from mlkit.core import seed_everything\nseed_everything(seed)",
                  params="seed = 0\n")
    r = mlkit("run", nb, "-p", "seed", "5")
    assert r.returncode == 0, r.stderr
    [run] = runs(project)
    assert meta(run)["seed"] == 5 and not (run/".seed.json").exists()


def test_help_lists_the_notebooks_parameters(project):
    nb = notebook(project, "train.ipynb", "print(1)", params=PARAMS)
    code = ("import sys; from mlkit.cli import main\ntry: main(['run', sys.argv[1], '--help'])\n"
            "except SystemExit: pass\nprint(sorted({'torch', 'papermill', 'nbformat'} & set(sys.modules)))")
    r = subprocess.run([sys.executable, "-c", code, nb], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[-1] == "[]"  # neither torch nor papermill nor nbformat imported
    assert any(line.split()[:3] == ["lr", "float", "0.1"] and line.endswith("learning rate") for line in lines), r.stdout
    assert any(line.split()[:3] == ["layers", "list", "[16,"] for line in lines), r.stdout
    assert runs(project) == []


def one_line_error(*args) -> str:
    r = mlkit(*args)
    assert (r.returncode, r.stdout, r.stderr.count("\n")) == (1, "", 1), (r.returncode, r.stdout, r.stderr)
    assert r.stderr.startswith("mlkit run: error: ")
    return r.stderr


@pytest.mark.parametrize("case, args, message", [
    ("missing", ["nbs/experiments/nope.ipynb"], "no notebook at"),
    ("corrupt", ["nbs/experiments/corrupt.ipynb"], "is not a valid notebook"),
    ("not a notebook", ["nbs/experiments/plain.ipynb"], "is not a valid notebook"),
    ("no parameters cell", ["nbs/experiments/noparams.ipynb", "-p", "lr", "1"], "takes no parameters"),
    ("unknown", ["nbs/experiments/train.ipynb", "-p", "lrr", "1"],
     "no parameter 'lrr'; its parameters are: lr, epochs, layers, tag"),
    ("wrong type", ["nbs/experiments/train.ipynb", "-p", "epochs", "many"],
     "parameter 'epochs' takes an int (default 3), got 'many' (a str)"),
    ("bool for int", ["nbs/experiments/train.ipynb", "-p", "epochs", "true"], "parameter 'epochs' takes an int"),
    ("invalid YAML", ["nbs/experiments/train.ipynb", "-p", "layers", "[1, 2"], "cannot read '[1, 2' as YAML"),
    ("invalid YAML file", ["nbs/experiments/train.ipynb", "-f", "bad.yaml"], "invalid YAML in bad.yaml"),
    ("missing YAML file", ["nbs/experiments/train.ipynb", "-f", "none.yaml"], "cannot read parameters file none.yaml"),
    ("YAML not a mapping", ["nbs/experiments/train.ipynb", "-f", "list.yaml"], "must hold a mapping"),
    ("runs dir not writable", ["nbs/experiments/train.ipynb", "--runs-dir", "settings.ini/runs"],
     "cannot create the runs folder"),
    ("timeout 0", ["nbs/experiments/train.ipynb", "--cell-timeout", "0"], "cell timeout must be"),
])
def test_bad_input_is_one_line_and_leaves_no_run(project, case, args, message):
    notebook(project, "train.ipynb", "print(1)", params=PARAMS)
    notebook(project, "noparams.ipynb", "print(1)")
    (project/"nbs"/"experiments"/"corrupt.ipynb").write_text('{"cells": [')
    (project/"nbs"/"experiments"/"plain.ipynb").write_text('{"a": 1}')
    (project/"bad.yaml").write_text("lr: [1\n")
    (project/"list.yaml").write_text("- 1\n")
    assert message in one_line_error("run", *args)
    assert runs(project) == []


def test_failing_cell(project):
    nb = notebook(project, "fails.ipynb", "x = 1", "print('before')\n1 / 0", "print('never')", params="n = 1")
    r = mlkit("run", nb, "-p", "n", "2")
    assert r.returncode == 1
    [run] = runs(project)
    m = meta(run)
    assert (m["status"], m["error"]) == ("failed", "cell 3: ZeroDivisionError: division by zero")
    assert m["failed_cell"] == {"cell": 3, "ename": "ZeroDivisionError", "evalue": "division by zero"}
    summary = r.stderr.index("cell 3: ZeroDivisionError: division by zero")
    assert r.stderr.index("Traceback") < r.stderr.index("----> 2 1 / 0") < summary  # the cell's frame, then one line
    assert "\x1b[" not in r.stderr and "----> 2 1 / 0" in (run/"kernel.log").read_text()
    assert "ipykernel" not in r.stderr[:summary]  # the cell's frames, not the kernel's
    assert "before" in r.stdout and "never" not in r.stdout
    saved = (run/"notebook.ipynb").read_text()
    assert "ZeroDivisionError" in saved and "traceback" in saved


def test_cell_timeout(project):
    nb = notebook(project, "slow.ipynb", "print('ok')", "import time\ntime.sleep(60)")
    t0 = time.monotonic()
    r = mlkit("run", nb, "--cell-timeout", "2")
    assert r.returncode == 1 and time.monotonic() - t0 < 50
    [run] = runs(project)
    assert (meta(run)["status"], meta(run)["error"]) == ("failed", "cell 2 ran over the cell timeout of 2 s")
    assert "cell timeout of 2 s" in r.stderr


def test_kernel_death(project):
    nb = notebook(project, "dies.ipynb", "print('ok')", "import os\nos._exit(1)", "print('never')")
    r = mlkit("run", nb)
    assert r.returncode == 1, r.stderr
    [run] = runs(project)
    m = meta(run)
    assert m["status"] == "failed" and m["error"].startswith("the kernel died in cell 2"), m["error"]


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_interrupts(project, signum, status):
    nb = notebook(project, "long.ipynb", "import os\nprint('started', os.getpid(), flush=True)", "import time\ntime.sleep(120)")
    p = subprocess.Popen([MLKIT, "run", nb], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        started, kernel = p.stdout.readline().split()
        assert started == "started"
        time.sleep(1)
        p.send_signal(signum)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == status, err
    [run] = runs(project)
    m = meta(run)
    assert (m["status"], m["error"]) == ("interrupted", f"{signum.name} in cell 2")
    executed = nbformat.read(run/"notebook.ipynb", as_version=4)
    assert executed.cells[0].outputs[0].text == f"started {kernel}\n"
    with pytest.raises(ProcessLookupError): os.kill(int(kernel), 0)  # the kernel was shut down


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


def test_trainer_records_into_the_run(project):
    nb = notebook(project, "train.ipynb", TRAIN, "from mlkit.run import record\nrecord('epochs_done', epochs)",
                  params="epochs = 1")
    r = mlkit("run", nb, "-p", "epochs", "2")
    assert r.returncode == 0, r.stderr
    [run] = runs(project)  # one folder: the notebook's tracking went into the run mlkit made
    assert meta(run)["status"] == "finished"
    metrics = (run/"metrics.csv").read_text()
    assert metrics.count(",valid_loss,") == 2, metrics
    assert json.loads((run/"params.json").read_text())["epochs"] == 2
    assert json.loads((run/"records.json").read_text()) == {"epochs_done": 2}
    assert "\r" not in r.stdout and "epoch 2/2" in r.stdout  # progress as plain lines


def test_gpus_with_fake_gpus(project, tmp_path, monkeypatch):
    monkeypatch.setenv("MLKIT_FAKE_GPUS", "2")
    monkeypatch.setenv("MLKIT_LOCK_DIR", str(tmp_path/"locks"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("MLKIT_GPU_LOCKS", raising=False)
    nb = notebook(project, "gpu.ipynb", "import os\nprint('visible', os.environ['CUDA_VISIBLE_DEVICES'])")
    assert "--gpus 3: this machine shows 2 GPU(s)" in one_line_error("run", nb, "--gpus", "3")
    assert "--gpus takes a number of GPUs" in one_line_error("run", nb, "--gpus", "0")
    assert runs(project) == []
    holder = subprocess.Popen([sys.executable, str(Path(__file__).parent/"jobs"/"lock_job.py"), "hold", "1"],
                              stdout=subprocess.PIPE, text=True)
    waiter = None
    try:
        assert holder.stdout.readline().split() == ["held", "0"]
        r = mlkit("run", nb, "--gpus", "1")  # GPU 0 is taken: it gets GPU 1 at once
        assert r.returncode == 0 and "visible 1\n" in r.stdout, r.stderr
        waiter = subprocess.Popen([MLKIT, "run", nb, "--gpus", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        lines = []  # read in a thread: a waiter that never says it waits must fail the test, not hang it
        reader = threading.Thread(target=lambda: lines.extend(iter(waiter.stderr.readline, "")), daemon=True)
        reader.start()
        deadline = time.monotonic() + 60
        while not any(x.startswith("mlkit run: waiting") for x in lines) and time.monotonic() < deadline: time.sleep(0.1)
        line = next((x for x in lines if x.startswith("mlkit run: waiting")), "")
        assert line.startswith("mlkit run: waiting for 2 GPU(s)") and "holder" in line, lines
    except BaseException:
        if waiter is not None: waiter.kill()
        raise
    finally:
        holder.kill()
        holder.wait()
    out = waiter.communicate(timeout=120)[0]
    reader.join(10)
    err = "".join(lines)
    assert waiter.returncode == 0 and "visible 0,1\n" in out, err
    assert sorted(meta(p).get("gpu_ids") for p in runs(project)) == [[0, 1], [1]]


def test_importing_mlkit_for_a_run_leaves_torch_alone():
    "mlkit run's own process, trackers and callbacks import without torch (a second); the Trainer brings it."
    code = ("import sys, mlkit.cli, mlkit.run, mlkit.track, mlkit.events, mlkit.distributed, mlkit.runmeta\n"
            "from mlkit.runmeta import run_metadata\nm = run_metadata()\nprint('torch' in sys.modules, m['torch'])\n"
            "import mlkit.train\nprint('torch' in sys.modules, mlkit.train.Callback is mlkit.events.Callback)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    import torch
    assert r.stdout.splitlines() == [f"False {torch.__version__}", "True True"], r.stderr


def test_callbacks_do_not_import_the_trainer():
    "The dependency runs one way: mlkit.train uses mlkit.callbacks (its ProgressBar), callbacks need only events."
    code = "import sys, mlkit.callbacks\nprint('mlkit.train' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "False", r.stderr


@pytest.mark.slow
def test_nproc_two_cpu_processes(project, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = notebook(project, "ddp.ipynb", TRAIN,
                  "from mlkit.distributed import dist_env\nfrom mlkit.run import record\n"
                  "print(f'rank {dist_env().rank} of {dist_env().world_size}')\n"  # one write: the ranks share stdout
                  "record('world', dist_env().world_size)\nrecord(f'rank{dist_env().rank}', True)",
                  params="epochs = 1")
    assert "--nproc takes a number of processes" in one_line_error("run", nb, "--nproc", "0")
    assert runs(project) == []
    r = mlkit("run", nb, "--nproc", "2", "-p", "epochs", "2", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "rank 0 of 2" in r.stdout and "rank 1 of 2" in r.stdout, r.stdout
    [run] = runs(project)  # rank 1 made no folder of its own
    assert meta(run)["status"] == "finished"
    assert json.loads((run/"records.json").read_text()) == {"world": 2, "rank0": True}  # rank 0 alone records
    assert (run/"metrics.csv").read_text().count(",valid_loss,") == 2
    assert "epochs = 2" in (run/"notebook.py").read_text()
    again = mlkit("rerun", run.name, timeout=300)  # as it ran: in 2 processes again
    assert again.returncode == 0, again.stdout + again.stderr
    rerun = [p for p in runs(project) if p != run][0]
    assert meta(rerun)["nproc"] == 2 and json.loads((rerun/"records.json").read_text())["world"] == 2
    shutil.rmtree(rerun)
    executed = nbformat.read(run/"notebook.ipynb", as_version=4)  # rank 0's output, under its cells
    assert [o.text for o in executed.cells[-1].outputs] == ["rank 0 of 2\n"]
    assert "epoch 2/2" in "".join(o.get("text", "") for o in executed.cells[-2].outputs)
    assert [c.execution_count for c in executed.cells if c.cell_type == "code"] == [1, 2, 3, 4]
    assert not (run/".cells.jsonl").exists()


@pytest.mark.slow
def test_nproc_failures_and_magics(project, monkeypatch):
    "A --nproc run records its failing cell as a kernel run does, runs magics, and a script that exits says how."
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    fails = notebook(project, "ddp_fails.ipynb", "%env GREETING=hi\nsaid = !echo shell says $GREETING\nprint(said[0])",
                     "import os\nprint('before', os.environ['GREETING'])\nif int(os.environ['RANK']) == 0: 1 / 0",
                     "print('never')", params="n = 1")
    r = mlkit("run", fails, "--nproc", "2", "-p", "n", "2", timeout=300)
    assert r.returncode == 1
    [run] = runs(project)
    m = meta(run)
    assert (m["status"], m["error"]) == ("failed", "cell 3: ZeroDivisionError: division by zero"), m["error"]
    assert m["failed_cell"] == {"cell": 3, "ename": "ZeroDivisionError", "evalue": "division by zero"}
    assert "failed: cell 3: ZeroDivisionError: division by zero" in r.stderr
    executed = nbformat.read(run/"notebook.ipynb", as_version=4)  # source cells 1, 2 (injected), 3, ...
    first, failing, never = executed.cells[2], executed.cells[3], executed.cells[4]
    assert "shell says hi" in "".join(o.get("text", "") for o in first.outputs), first.outputs
    assert [o.output_type for o in failing.outputs] == ["stream", "error"] and failing.outputs[0].text == "before hi\n"
    assert failing.outputs[1].ename == "ZeroDivisionError" and never.outputs == [] and never.execution_count is None
    late = notebook(project, "ddp_late_exit.ipynb", "import atexit, os\nif os.environ['RANK'] == '1': "
                    "atexit.register(os._exit, 3)  # a worker that dies on its way out", "print('done')")
    r = mlkit("run", late, "--nproc", "2", timeout=300)
    finished = [p for p in runs(project) if p != run][0]
    assert r.returncode == 0 and meta(finished)["status"] == "finished", r.stdout + r.stderr
    assert "after the notebook ran to its end" in meta(finished)["exit_note"]
    shutil.rmtree(finished)
    # rank 0 exits: it logs the cell it is in first. (Had rank 1 exited first, torchrun could stop rank 0 before it
    # logged any cell, and the run would say "in a cell": seen once in CI, under load.)
    exits = notebook(project, "ddp_exits.ipynb", "print('one')", "import os\nif os.environ['RANK'] == '0': raise SystemExit(3)")
    r = mlkit("run", exits, "--nproc", "2", timeout=300)
    assert r.returncode == 1
    exited = [p for p in runs(project) if p != run][0]
    assert meta(exited)["status"] == "failed" and "torchrun exited with status" in meta(exited)["error"]
    assert "in cell 2 (the workers" in meta(exited)["error"] and meta(exited)["failed_cell"]["cell"] == 2


def test_a_secret_parameter_stays_out_of_the_run_folder(project):
    nb = notebook(project, "secret.ipynb", "print('key length', len(api_key))", params="api_key = ''  # the service's key")
    r = mlkit("run", nb, "--param", "api_key", "sk-sekret-55", "--name", "keyed")  # the long form too
    assert r.returncode == 0, r.stderr
    assert "key length 12" in r.stdout + r.stderr  # the notebook got the real value
    [run] = runs(project)
    leaks = [p.name for p in run.rglob("*") if p.is_file() and b"sk-sekret-55" in p.read_bytes()]
    assert leaks == []
    refused = mlkit("rerun", "keyed")  # no value kept to run again with: say so
    assert (refused.returncode, refused.stderr.count("\n")) == (1, 1) and "-p api_key VALUE" in refused.stderr
    again = mlkit("rerun", "keyed", "-p", "api_key", "sk-sekret-56")
    assert again.returncode == 0, again.stderr


def test_nproc_across_machines(project, monkeypatch):
    "Two machines, played by two launchers here: node 0 records the run (its rank 0), node 1 writes nothing."
    import socket
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = notebook(project, "ranks.ipynb", "import os, socket\nfrom mlkit.run import record\n"
                  "import torch.distributed as dist\ndist.init_process_group('gloo')\n"
                  "print('rank', dist.get_rank(), 'node', os.environ['GROUP_RANK'], flush=True)\n"
                  "record('world', dist.get_world_size())\nrecord('rank', dist.get_rank())\ndist.barrier()")
    for flags, says in [(["--nnodes", "2", "--node-rank", "0"], "--rdzv-endpoint"),
                        (["--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint", "h:1"], "node rank 2"),
                        (["--nnodes", "2", "--node-rank", "1", "--rdzv-endpoint", "h"], "HOST:PORT"),
                        (["--rdzv-endpoint", "h:1"], "--nnodes")]:
        assert says in one_line_error("run", nb, "--nproc", "2", *flags)
    assert "go with --nproc" in one_line_error("run", nb, "--nnodes", "2")
    assert runs(project) == []
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    flags = ["--nproc", "1", "--nnodes", "2", "--rdzv-endpoint", f"127.0.0.1:{port}"]
    node1 = subprocess.Popen([MLKIT, "run", nb, *flags, "--node-rank", "1"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # started first: it must wait for node 0, not lead
    try:
        node0 = mlkit("run", nb, *flags, "--node-rank", "0", timeout=300)
        out1, err1 = node1.communicate(timeout=120)
    finally:
        node1.kill()
    assert node0.returncode == 0 and node1.returncode == 0, node0.stderr + err1
    assert "rank 0 node 0" in node0.stdout and "rank 1 node 1" in out1, (node0.stdout, out1)
    assert "node 1" in err1 and "finished" in err1, err1
    [run] = runs(project)  # node 1 made no folder
    assert json.loads((run/"records.json").read_text()) == {"world": 2, "rank": 0}


def test_numbers_as_people_write_them(project):
    "1e-3 is a float and 010 is ten (YAML 1.1 would read a string and octal 8); a fractional timeout is fine."
    nb = notebook(project, "nums.ipynb", "print('got', repr(lr), repr(epochs))", params="lr = 0.1\nepochs = 3")
    r = mlkit("run", nb, "-p", "lr", "1e-3", "-p", "epochs", "010", "--cell-timeout", "1.5")
    assert r.returncode == 0, r.stderr
    assert "got 0.001 10" in r.stdout + r.stderr
    assert "lr" in one_line_error("run", nb, "-p", "lr", "fast") and "inf" in one_line_error("run", nb, "--cell-timeout", "inf")


def test_runs_in_threads_do_not_cross(project):
    "run_notebook in three threads at once (as a sweep's workers call it): each kernel gets its own folder and values."
    import io
    import logging

    import mlkit.gpu  # noqa: F401 (sets CUDA_DEVICE_ORDER for the process, on purpose, as it is imported)
    from mlkit.run import run_notebook
    nb = notebook(project, "t.ipynb", "import os, time\nfrom mlkit.run import record\nrecord('x', x)\n"
                  "record('folder', os.path.basename(os.environ['MLKIT_RUN_DIR']))\ntime.sleep(1)", "print('x is', x)",
                  params="x = 0")
    before, cwd, log = dict(os.environ), os.getcwd(), logging.getLogger("papermill")
    propagate = log.propagate
    outs, results = [io.StringIO() for _ in range(3)], [None] * 3
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, run_notebook(nb, {"x": i}, out=outs[i])))
               for i in range(3)]
    for t in threads: t.start()
    for t in threads: t.join(180)
    for i, r in enumerate(results):
        assert r is not None and r.status == "finished", (i, outs[i].getvalue())
        assert r.records == {"x": i, "folder": r.id}
        assert f"x is {i}\n" in outs[i].getvalue() and outs[i].getvalue().count("-- cell") == 3, outs[i].getvalue()
    assert len(runs(project)) == 3
    assert (dict(os.environ), os.getcwd(), log.propagate, log.handlers) == (before, cwd, propagate, [])


def test_notebook_as_papermill_left_it(project):
    "A notebook with an injected-parameters cell (papermill's output) keeps its cell numbers; no kernelspec is needed;"
    " YAML dates stay text."
    nb = notebook(project, "fails.ipynb", "x = 1", "1 / 0", params="n = 1\nwhen = None")
    assert mlkit("run", nb, "-p", "n", "2").returncode == 1
    [first] = runs(project)
    assert meta(first)["failed_cell"]["cell"] == 3
    again = project/"again.ipynb"
    executed = nbformat.read(first/"notebook.ipynb", as_version=4)
    executed.metadata.pop("kernelspec", None)
    executed.metadata.pop("language_info", None)
    nbformat.write(executed, again)
    r = mlkit("run", "again.ipynb", "-p", "n", "3", "-p", "when", "2024-01-31")
    assert r.returncode == 1
    second = [p for p in runs(project) if p != first][0]
    assert meta(second)["failed_cell"]["cell"] == 4, meta(second)  # params, injected, x = 1, 1 / 0
    assert meta(second)["name"] == "again"  # an unnamed run is named after its notebook
    assert json.loads((second/"params.json").read_text()) == {"n": 3, "when": "2024-01-31"}
    injected = [c for c in nbformat.read(second/"notebook.ipynb", as_version=4).cells
                if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and 'when = "2024-01-31"' in injected[0].source


def test_paths_with_braces_are_paths(project):
    "papermill fills {name} in paths with parameters: mlkit escapes them, so the notebook named is the one that runs."
    notebook(project, "t_2.ipynb", "print('the wrong notebook')", params="n = 1")
    nb = notebook(project, "t_{n}.ipynb", "print('the braces notebook', n)", params="n = 1")
    r = mlkit("run", nb, "-p", "n", "2")
    assert r.returncode == 0, r.stderr
    assert "the braces notebook 2" in r.stdout and "wrong" not in r.stdout


def test_secrets_nested_in_a_value_stay_out_and_a_rerun_asks_again(project):
    nb = notebook(project, "nested.ipynb", "print('key length', len(creds['api_key']))", params="creds = {}")
    r = mlkit("run", nb, "-p", "creds", "{api_key: sk-nested-77, user: bob}", "--name", "nested")
    assert r.returncode == 0, r.stderr
    assert "key length 12" in r.stdout
    [run] = runs(project)
    leaks = [p.name for p in run.rglob("*") if p.is_file() and b"sk-nested-77" in p.read_bytes()]
    assert leaks == []
    assert json.loads((run/"params.json").read_text())["creds"]["user"] == "bob"  # the harmless part is kept
    refused = mlkit("rerun", "nested")
    assert refused.returncode == 1 and "-p creds VALUE" in refused.stderr, refused.stderr


def test_numbers_in_a_params_file_read_as_on_the_command_line(project):
    nb = notebook(project, "nums.ipynb", "print('got', repr(lr), repr(epochs))", params="lr = 0.1\nepochs = 3")
    (project/"p.yaml").write_text("lr: 1e-3\nepochs: 010\n")
    r = mlkit("run", nb, "-f", "p.yaml")
    assert r.returncode == 0, r.stderr
    assert "got 0.001 10" in r.stdout
