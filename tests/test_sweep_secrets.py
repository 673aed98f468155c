"Secrets in a sweep (`fixed:` under a secret name, `mlkit sweep -p`): in no argv, file, storage or output; the kernel has them."
import hashlib
import json
import os
import shlex
import subprocess
import threading
import uuid
from pathlib import Path

import psutil
import pytest
import test_sweep
from test_sweep import MLKIT, notebook, runs, spec, study, sweep

COVERS = ("07_cli", "11_run", "12_sweep", "12d_sweep_workers", "12e_sweep_report")
project = test_sweep.project  # the fixture: a project folder with its runs folder in MLKIT_RUNS_DIR

# A secret in the spec, one on the command line: each test process its own, so that a test scanning every process's
# argv (ps) does not find the values another test, run in parallel, passes on purpose.
FIXED, GIVEN = f"sk-FIXED-{uuid.uuid4().hex[:12]}", f"pw-GIVEN-{uuid.uuid4().hex[:12]}"
NB = ("x = 0.5\nnap = 0.0\napi_key = ''\ndb_password = ''",
      "import hashlib, time\nfrom mlkit.run import record\ntime.sleep(nap)\n"
      "record('check_a', hashlib.sha256(api_key.encode()).hexdigest())\n"
      "record('check_b', hashlib.sha256(db_password.encode()).hexdigest())\nrecord('score', -(x - 0.3) ** 2)")


def _sha(text: str) -> str: return hashlib.sha256(text.encode()).hexdigest()


def _cmdlines() -> dict:
    "{pid: argv} of every process we can see (the /proc view `ps -eo args` shows)."
    found = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try: found[int(d.name)] = (d/"cmdline").read_bytes().replace(b"\0", b" ")
            except OSError: continue
    return found


def _files_holding(folder: Path, *secrets: str) -> list:
    "The files under `folder` that hold one of `secrets` (files that go away as we read, being replaced, are skipped)."
    found = []
    for top, _, names in os.walk(folder):  # unlike rglob, a folder renamed away while we walk is skipped
        for f in (Path(top)/n for n in names):
            try: data = f.read_bytes()
            except OSError: continue
            if any(s.encode() in data for s in secrets): found.append(f)
    return found


@pytest.mark.slow
def test_secrets_reach_the_kernel_and_nothing_else(project):
    "Two workers, a fixed secret and a -p secret: no process's argv (sampled while trials run), file or output holds them."
    notebook(project, "toy.ipynb", *NB)
    path = spec(project, fixed={"nap": 1.0, "api_key": FIXED}, n_trials=4)
    p = subprocess.Popen([MLKIT, "sweep", str(path), "--workers", "2", "-p", "db_password", GIVEN],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen, leaks, samples, done = set(), [], [], threading.Event()
    root = Path(os.environ["MLKIT_RUNS_DIR"])
    def sample():
        while not done.is_set():
            lines = _cmdlines()
            ps = subprocess.run(["ps", "-eo", "args"], capture_output=True).stdout
            try: ours = {c.pid for c in psutil.Process(p.pid).children(recursive=True)}
            except psutil.NoSuchProcess: ours = set()
            if any(b"ipykernel" in lines.get(pid, b"") for pid in ours):  # a trial's kernel is up: the sweep is under way
                samples.append(len(lines))
                leaks.extend(a for a in [*lines.values(), ps] if FIXED.encode() in a or GIVEN.encode() in a)
                leaks.extend(_files_holding(root, FIXED, GIVEN))  # a run's notebook as papermill saves it cell by cell
                seen.update(pid for pid in ours if b"mlkit.sweep" in lines.get(pid, b""))
    sampler = threading.Thread(target=sample)
    sampler.start()
    try: out, err = p.communicate(timeout=300)
    finally:
        done.set()
        sampler.join()
    assert p.returncode == 0, out + err
    assert len(samples) >= 3 and len(seen) >= 2, (samples, seen)  # sampled several times, both workers seen
    assert leaks == [], leaks[:3]  # not the workers', kernels' or the sweep's own argv (it moved -p to its environment)
    assert FIXED not in out + err and GIVEN not in out + err
    assert (root/"sweeps"/"s"/"journal.log").is_file() and list(root.glob("sweeps/s/worker-*.log"))
    assert _files_holding(root, FIXED, GIVEN) == []  # the journal, worker logs, meta/params.json, the notebooks
    rs = runs("s")
    assert len(rs) == 4 and {r.status for r in rs} == {"finished"}
    for r in rs:  # the kernel got both values
        assert (r.records["check_a"], r.records["check_b"]) == (_sha(FIXED), _sha(GIVEN)), r.records
        assert r.params["api_key"] == r.params["db_password"] == "***" and isinstance(r.params["x"], float)
    assert study().user_attrs["mlkit.spec"]["fixed"] == {"nap": 1.0, "api_key": "***"}
    ls = subprocess.run([MLKIT, "runs", "ls", "--sweep", "s"], capture_output=True, text=True)
    head, *rows = ls.stdout.splitlines()
    assert head.split()[:2] == ["id", "trial"] and "x" in head.split(), ls.stdout  # the trial, the searched parameter
    assert [int(r.split()[1]) for r in rows] == [0, 1, 2, 3], ls.stdout  # by trial, whichever worker ended first
    b = sweep("best", "s")
    assert b.returncode == 0 and FIXED not in b.stdout and GIVEN not in b.stdout
    *_, hint, command = b.stdout.splitlines()
    assert command.endswith("-p api_key VALUE -p db_password VALUE") and "api_key, db_password" in hint, b.stdout
    assert command.count("-p api_key") == 1 and "***" not in command, command  # one placeholder, not the stored ***
    # the changed secret is the same sweep: resumed, not refused
    again = spec(project, fixed={"nap": 1.0, "api_key": "another-secret-value"}, n_trials=4)
    r = sweep(again, "-p", "db_password", "yet-another-value")
    assert r.returncode == 0 and "4 of 4 trials done" in r.stdout, r.stdout + r.stderr


@pytest.mark.slow
def test_a_trial_s_recorded_command_repeats_it(project):
    "meta.json's command is the `mlkit run` line of the trial (secrets as ***): run with the secret, the same parameters."
    notebook(project, "toy.ipynb", *NB)
    path = spec(project, fixed={"api_key": FIXED}, n_trials=1)
    r = sweep(path, "-p", "db_password", GIVEN)
    assert r.returncode == 0, r.stdout + r.stderr
    [trial] = runs("s")
    command = trial.meta["command"]
    assert command[:3] == ["mlkit", "run", "toy.ipynb"] and "-c" not in command, command
    assert command[3:] == ["-p", "x", repr(trial.params["x"]), "-p", "api_key", "***", "-p", "db_password", "***"], command
    secret = {"api_key": FIXED, "db_password": GIVEN}
    line = [MLKIT, *command[1:]]
    for i, w in enumerate(line):
        if w == "***": line[i] = secret[line[i - 1]]
    again = subprocess.run(line, capture_output=True, text=True, cwd=project)
    assert again.returncode == 0, again.stdout + again.stderr
    [rerun] = [x for x in runs() if x.id != trial.id]
    assert rerun.params == trial.params and rerun.records == trial.records  # the same values, the same kernel results
    assert json.loads((trial.path/"params.json").read_text())["db_password"] == "***"


def test_bad_p_values_get_one_line_and_make_nothing(project):
    notebook(project, "toy.ipynb", *NB)
    path = spec(project, fixed={"api_key": FIXED})
    for args, message in [(("-p", "nope", GIVEN), "-p nope: toy.ipynb has no parameter 'nope'; its parameters are: x, nap"),
                          (("-p", "x", "0.5"), "-p x: x is searched (params) in the spec; give it in one place"),
                          (("-p", "api_key", GIVEN), "-p api_key: api_key is fixed in the spec"),
                          (("-p", "nap", GIVEN), "-p nap: parameter 'nap' takes a float (default 0.0), got VALUE"),
                          (("-p", "a b", GIVEN), "-p a b: not a parameter name"),
                          (("-p", "nap", "1", "-p", "nap", "2"), "-p nap is given twice")]:
        r = sweep(path, *args)
        assert r.returncode == 1 and message in r.stderr and len(r.stderr.splitlines()) == 1, (args, r.stderr)
        assert GIVEN not in r.stderr + r.stdout and FIXED not in r.stderr + r.stdout
    searched = spec(project, params={"x": {"type": "float", "low": 0.0, "high": 1.0},
                                     "api_key": {"type": "categorical", "choices": ["a", "b"]}})
    r = sweep(searched)
    assert r.returncode == 1 and "params.api_key: a secret cannot be searched" in r.stderr, r.stderr
    assert not Path(os.environ["MLKIT_RUNS_DIR"]).exists()  # nothing made


def test_a_secret_set_in_the_environment_is_never_on_a_command_line(project):
    "MLKIT_SWEEP_SECRET_<NAME> instead of -p: the same, and no argv ever held the value (not even before an exec)."
    notebook(project, "toy.ipynb", *NB)
    r = sweep(spec(project, n_trials=1), env={"MLKIT_SWEEP_SECRET_db_password": GIVEN})
    assert r.returncode == 0, r.stdout + r.stderr
    [run] = runs("s")
    assert run.records["check_b"] == _sha(GIVEN) and run.params["db_password"] == "***"
    assert shlex.join(run.meta["command"]).endswith("-p db_password '***'")


def test_an_abbreviated_param_option_is_moved_off_argv_too(project):
    "`--para NAME VALUE` is -p to argparse: the running sweep's argv must not hold VALUE (the kernel looks at every process)."
    notebook(project, "toy.ipynb", "x = 0.5\ndb_password = ''",
             "from pathlib import Path\nfrom mlkit.run import record\n"
             "seen = [p.name for p in Path('/proc').iterdir() if p.name.isdigit() and (p/'cmdline').exists()\n"
             "        and db_password.encode() in (p/'cmdline').read_bytes()]\n"
             "record('score', x)\nrecord('argv_holding', len(seen))")
    r = sweep(spec(project, n_trials=1), "--para", "db_password", GIVEN)
    assert r.returncode == 0, r.stdout + r.stderr
    [run] = runs("s")
    assert run.records["argv_holding"] == 0 and run.params["db_password"] == "***", run.records


def test_a_trial_failing_with_its_secret_in_the_error_keeps_it_out_of_the_storage_and_the_terminal(project):
    "An exception quoting the secret (a rejected key): the trial's reason, the terminal, `status` and meta.json show ***."
    notebook(project, "toy.ipynb", "x = 0.5\napi_key = ''\ndb_password = ''",
             "raise ValueError(f'rejected {api_key} and {db_password}')")
    r = sweep(spec(project, fixed={"api_key": FIXED}, n_trials=1), "-p", "db_password", GIVEN)
    assert r.returncode == 1 and "rejected *** and ***" in r.stdout + r.stderr, r.stdout + r.stderr
    assert FIXED not in r.stdout + r.stderr and GIVEN not in r.stdout + r.stderr
    journal = Path(os.environ["MLKIT_RUNS_DIR"], "sweeps", "s", "journal.log").read_text()
    assert FIXED not in journal and GIVEN not in journal
    st = sweep("status", "s")
    assert "rejected *** and ***" in st.stdout and FIXED not in st.stdout and GIVEN not in st.stdout, st.stdout
    [run] = runs("s")
    assert run.status == "failed" and "rejected *** and ***" in run.meta["error"], run.meta["error"]


def test_runs_ls_sweep_shows_a_searched_parameter_that_did_not_vary(project):
    "One trial: x took one value, so plain `runs ls` would hide it; --sweep shows what the sweep searched, first."
    notebook(project, "toy.ipynb", *NB)
    assert sweep(spec(project, n_trials=1)).returncode == 0
    ls = subprocess.run([MLKIT, "runs", "ls", "--sweep", "s"], capture_output=True, text=True)
    assert ls.stdout.split()[:7] == ["id", "trial", "name", "status", "start", "duration", "x"], ls.stdout


def test_best_asks_for_a_p_secret_given_in_an_earlier_session(project):
    "Started with -p, resumed without: the trials of the first session ran with the secret, and `best` still asks for it."
    notebook(project, "toy.ipynb", "x = 0.5\ndb_password = ''",
             "from mlkit.run import record\nrecord('score', x if db_password else -1)")
    assert sweep(spec(project, n_trials=1), "-p", "db_password", GIVEN).returncode == 0
    assert sweep(spec(project, n_trials=2)).returncode == 0  # the trial without the secret scores -1: not the best
    b = sweep("best", "s")
    assert b.stdout.splitlines()[-1].endswith("-p db_password VALUE"), b.stdout
