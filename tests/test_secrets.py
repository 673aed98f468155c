"Secrets kept out both ways: none reaches any file of any tracker, and no harmless hyperparameter is lost on the way."
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_track import _item_key, _wandb_records  # the W&B offline-file parser

from mlkit.runmeta import is_secret_key, redact, redact_argv
from mlkit.runs import flatten
from mlkit.track import LocalTracker, MLflowTracker, MultiTracker, TensorBoardTracker, WandbTracker

# the notebooks these tests cover: `make test NB=...` runs them
COVERS = ("08_runmeta", "10_track", "10c_local_tracker", "10d_trackers")

# Where each secret is given, how (VALUE stands for it; a dotted name nests parameters), and the secret itself.
# The values are distinctive, so that a scan of the bytes of every file finds any copy of them.
SECRETS = [
    ("argv", "", "--api-key=VALUE", "sekret-01-apikey"),
    ("argv", "", "--password VALUE", "sekret-02-passw"),
    ("argv", "", "--token=VALUE", "sekret-03-tokn"),
    ("argv", "", "--hf_token VALUE", "sekret-04-hftok"),
    ("argv", "", "-p db_password VALUE", "sekret-05-papermill"),
    ("argv", "", "-r wandb_api_key VALUE", "sekret-06-raw"),
    ("argv", "", "db.password=VALUE", "sekret-07-hydra"),
    ("argv", "", "+cloud.secret_key=VALUE", "sekret-08-hydraplus"),
    ("url", "", "--endpoint https://api.example.com/v1?api_key=VALUE&lang=en", "sekret-09-argvurl"),
    ("env", "PGPASSWORD", "VALUE", "sekret-10-pgpass"),
    ("env", "MYSQL_PWD", "VALUE", "sekret-11-mysql"),
    ("env", "DB_PASS", "VALUE", "sekret-12-dbpass"),
    ("env", "CI_JOB_JWT", "VALUE", "sekret-13-jwt"),
    ("env", "AWS_SECRET_ACCESS_KEY", "VALUE", "sekret-14-aws"),
    ("env", "HF_TOKEN", "VALUE", "sekret-15-hfenv"),  # echoed in the harmless "note" below
    ("env", "DEPLOY_TOKEN", "VALUE", "sekret-16-deploy"),  # echoed in the project's git diff
    ("env", "SENTRY_AUTH_TOKEN", "VALUE", "sekret-17-sentry"),  # echoed in the project's untracked train.py
    ("params", "password", {"value": "VALUE"}, "sekret-18-pwdict"),
    ("params", "auth", {"user": "bob", "pass": "VALUE"}, "sekret-19-authpass"),
    ("params", "db.credentials", ["VALUE", "second"], "sekret-20-list"),
    ("params", "api_token", "VALUE", "sekret-21-apitoken"),
    ("params", "optimizer.client_secret", "VALUE", "sekret-22-deep"),
    ("params", "services.search.apiKey", "VALUE", "sekret-23-deeper"),
    ("params", "connection", "host=db user=bob password=VALUE dbname=runs", "sekret-24-libpq"),
    ("params", "request.header", "Authorization: Bearer VALUE", "sekret-25-header"),
    ("params", "tracking.uri", "postgresql://bob:VALUE@db/mlflow", "sekret-26-userinfo"),
    ("url", "data_url", "https://store.example.com/d.csv?sv=2020-08-04&sig=VALUE&se=2030-01-01", "sekret-27-sas"),
    ("url", "hooks.callback", "https://hooks.example.com/notify?channel=ml&token=VALUE", "sekret-28-hook"),
    ("url", "presigned", "https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA&X-Amz-Signature=VALUE", "sekret-29-amz"),
]
SECRET_VALUES = [s for *_, s in SECRETS]

HARMLESS = {  # kept exactly, in params.json, MLflow and W&B
    "lr": 0.001, "batch_size": 32, "max_tokens": 512, "num_tokens": 1024, "tokens_per_batch": 4096, "token_count": 77,
    "sort_key": "loss", "key_dim": 64, "n_keys": 8, "tokenizer": "gpt2", "tokenizer_name": "bert-base-uncased",
    "monkey": "george", "author": "ada", "keyboard_layout": "dvorak", "num_passes": 3, "bypass_cache": True,
    "pad_token_id": 0, "primary_key": "run_id", "cache_key": "v1", "rng_key": 42, "use_auth_token": True,
    "max_password_length": 64, "vocab_size": 50257, "signal": "SIGTERM",
    "model": {"max_tokens": 2048, "key_dim": 128, "tokenizer": {"name": "gpt2", "vocab_size": 50257}},
    "data": {"url": "https://data.example.com/train.csv?split=train&shard=3", "sort_key": "length"},
}
HARMLESS_ARGV = ["--max-tokens", "512", "--sort-key", "loss", "--tokenizer", "gpt2", "-p", "num_passes", "3",
                 "model.key_dim=64", "--lr=0.001"]
NOTE = "pulled with sekret-15-hfenv"  # harmless text around an env secret: the secret masked, the rest kept


def _fill(how, secret): return json.loads(json.dumps(how).replace("VALUE", secret))


def _nest(params, dotted, value):
    *parents, last = dotted.split(".")
    for p in parents: params = params.setdefault(p, {})
    params[last] = value


def argv():
    out = ["train.py"]
    for where, name, how, secret in SECRETS:
        if not name and where in ("argv", "url"): out += _fill(how, secret).split(" ")
    return out + HARMLESS_ARGV


def environ(): return {name: secret for where, name, _, secret in SECRETS if where == "env"}


def params():
    out = json.loads(json.dumps(HARMLESS))
    for where, name, how, secret in SECRETS:
        if name and where in ("params", "url"): _nest(out, name, _fill(how, secret))
    return {**out, "note": NOTE}


def test_the_table():
    "At least 30 names and values; secrets given only in argv, only in env, only nested in params, only in a URL."
    assert len(SECRETS) + len(flatten(HARMLESS)) >= 30 and len(set(SECRET_VALUES)) == len(SECRETS)
    text = {"argv": " ".join(argv()), "env": json.dumps(environ()), "params": json.dumps(params())}
    places = {s: [k for k, t in text.items() if s in t] for s in SECRET_VALUES}
    assert all(places[s] for s in SECRET_VALUES)
    assert places["sekret-01-apikey"] == ["argv"] and places["sekret-10-pgpass"] == ["env"]
    assert places["sekret-22-deep"] == ["params"] and params()["optimizer"]["client_secret"] == "sekret-22-deep"
    assert places["sekret-27-sas"] == ["params"] and "?" in params()["data_url"]
    for name, value in flatten(HARMLESS).items():  # True and None are kept under any name
        assert isinstance(value, bool) or not is_secret_key(name.rsplit(".", 1)[-1]), name


def test_redaction_alone():
    "The same table through redact and redact_argv: quicker to read than the trackers' files when something fails."
    env_secrets = set(environ().values())
    hidden, command = redact(params(), env_secrets), redact_argv(argv(), env_secrets)
    assert {k: hidden[k] for k in HARMLESS} == HARMLESS and hidden["note"] == "pulled with ***"
    assert command[-len(HARMLESS_ARGV):] == HARMLESS_ARGV
    assert [s for s in SECRET_VALUES if s in repr(hidden) or s in repr(command)] == []


@pytest.fixture
def project(tmp_path, monkeypatch):
    "A project of its own, a git repository with env secrets in a modified file and an untracked one; runs outside it."
    proj = tmp_path/"proj"
    proj.mkdir()
    (proj/"settings.ini").write_text("[DEFAULT]\nlib_name = demo\n")
    (proj/"deploy.py").write_text("host = 'db'\n")
    git = lambda *a: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=proj, check=True,
                                     capture_output=True)
    git("init", "-q", "-b", "main")
    git("add", ".")
    git("commit", "-qm", "first")
    env = environ()
    (proj/"deploy.py").write_text(f"host = 'db'\nheaders = {{'X-Deploy': '{env['DEPLOY_TOKEN']}'}}\n")
    (proj/"train.py").write_text(f"import sentry_sdk\nsentry_sdk.init(dsn, '{env['SENTRY_AUTH_TOKEN']}')\nlr = 0.001\n")
    monkeypatch.chdir(proj)
    monkeypatch.delenv("MLKIT_PROJECT_ROOT", raising=False)
    return proj


def test_no_secret_reaches_any_tracker_and_every_hyperparameter_survives(project, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    runs_root = tmp_path/"runs"
    monkeypatch.setenv("MLKIT_RUNS_DIR", str(runs_root))
    for k in ("MLFLOW_TRACKING_URI", "JPY_SESSION_NAME", "MLKIT_NOTEBOOK"): monkeypatch.delenv(k, raising=False)
    for k, v in environ().items(): monkeypatch.setenv(k, v)
    monkeypatch.setattr(sys, "argv", argv())

    (runs_root/"_mlflow").mkdir(parents=True)
    uri = f"sqlite:///{runs_root/'_mlflow'/'mlflow.db'}"
    local, mlflow = LocalTracker(name="secrets"), MLflowTracker(tracking_uri=uri)
    with MultiTracker(local, TensorBoardTracker(name="secrets"), mlflow,
                      WandbTracker(project="mlkit-test", mode="offline")) as run:
        run.log_params(params())
        run.log_metrics({"loss": 0.5}, step=0)

    # (a) no secret's bytes in any file under runs/
    files = [p for p in runs_root.rglob("*") if p.is_file()]
    assert {"params.json", "meta.json", "mlflow.db"} <= {p.name for p in files}
    assert any(p.name.startswith("events.out.tfevents") for p in files) and any(p.suffix == ".wandb" for p in files)
    leaks = [(str(p.relative_to(runs_root)), s) for p in files for s in SECRET_VALUES if s.encode() in p.read_bytes()]
    assert leaks == []

    # (b) every harmless hyperparameter kept exactly: in params.json ...
    saved = json.loads((local.path/"params.json").read_text())
    assert {k: saved[k] for k in HARMLESS} == HARMLESS
    assert saved["note"] == "pulled with ***" and saved["password"] == saved["auth"] == "***"
    # ... in MLflow's params (as strings) ...
    got = MlflowClient(uri).get_run(mlflow.run_id).data.params
    assert {k: got[k] for k in flatten(HARMLESS)} == {k: str(v) for k, v in flatten(HARMLESS).items()}
    # ... and in W&B's config
    [wandb_file] = (runs_root/"_wandb").rglob("run-*.wandb")
    config = {_item_key(i): json.loads(i.value_json) for r in _wandb_records(wandb_file)
              if r.WhichOneof("record_type") == "config" for i in r.config.update}
    assert {k: config[k] for k in HARMLESS} == HARMLESS

    # the command line as recorded, and the git capture that held two of the env secrets
    meta = json.loads((local.path/"meta.json").read_text())
    assert meta["command"][:4] == ["train.py", "--api-key=***", "--password", "***"]
    assert meta["command"][-len(HARMLESS_ARGV):] == HARMLESS_ARGV
    assert meta["git"]["dirty"] is True and meta["git"]["error"] is None


# --- structured command-line values: JSON, Python literals, YAML, redacted key by key ---------------------------------
STRUCTURED = {  # the secret given inside a structured argument, and how the recorded command must read back
    "sekret-30-json": '{"credentials": {"secret": "VALUE", "user": "bob"}, "private_key": "VALUE-pk", "lr": 0.1}',
    "sekret-31-eqjson": '--cfg={"db": {"host": "db1", "api_key": "VALUE"}, "layers": [16, 8]}',
    "sekret-32-pylit": "{'auth': {'user': 'bob', 'pass': 'VALUE'}, 'sort_key': 'loss'}",
    "sekret-33-yaml": "+db={host: db1, password: VALUE}",
    "sekret-34-broken": '{"api_key": "VALUE", ',  # looks structured, does not parse: whole, as ***
}


def structured_argv():
    out = ["train.py"]
    for secret, how in STRUCTURED.items():
        if how.startswith("--cfg="): out += ["--cfg", how[len("--cfg="):].replace("VALUE", secret)]  # both forms
        out.append(how.replace("VALUE", secret))
    return out + ["[1, 2, 3]", '{"lr":0.1,  "sort_key": "loss"}']


def secrets_in(folder) -> list:
    "(file, secret) for each structured secret's bytes found in any file under `folder`."
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert files
    return [(str(p.relative_to(folder)), s) for p in files for s in STRUCTURED if s.encode() in p.read_bytes()]


def test_structured_argv_values_are_redacted_by_key_in_meta_json(tmp_path):
    "A real `python train.py ...` with JSON, `--cfg=JSON`, `--cfg JSON`, a Python literal, YAML and a broken one."
    proj, runs = tmp_path/"proj", tmp_path/"runs"
    proj.mkdir()
    (proj/"train.py").write_text("from mlkit.track import LocalTracker\n"
                                 "with LocalTracker(name='cfg') as run: run.log_metrics({'loss': 0.5}, step=0)\n")
    env = {**os.environ, "MLKIT_RUNS_DIR": str(runs), "MLKIT_PROJECT_ROOT": str(proj)}
    r = subprocess.run([sys.executable, *structured_argv()], cwd=proj, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    [run] = [p for p in runs.iterdir() if (p/"meta.json").exists()]
    assert secrets_in(runs) == []
    command = json.loads((run/"meta.json").read_text())["command"]
    assert json.loads(command[1]) == {"credentials": "***", "private_key": "***", "lr": 0.1}  # JSON stays JSON
    assert json.loads(command[3]) == json.loads(command[4][len("--cfg="):]) == {
        "db": {"host": "db1", "api_key": "***"}, "layers": [16, 8]}
    assert command[2] == "--cfg" and command[4].startswith("--cfg={")
    assert command[5] == "{'auth': '***', 'sort_key': 'loss'}"  # a Python literal stays one
    assert command[6] == '+db={"host": "db1", "password": "***"}'  # YAML, written as JSON (which YAML reads)
    assert command[7:] == ["***", "[1, 2, 3]", '{"lr":0.1,  "sort_key": "loss"}']  # broken: whole; harmless: kept


def test_mlkit_run_structured_parameter_redacted_in_the_whole_run_folder(tmp_path):
    "`mlkit run NB -p cfg JSON`: the nested secret is in no file of the run (meta.json, params, the executed notebook)."
    proj, runs = tmp_path/"proj", tmp_path/"runs"
    (proj/"nbs"/"experiments").mkdir(parents=True)
    (proj/"settings.ini").write_text("[DEFAULT]\nlib_name = proj\n")
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook
    nb = new_notebook(cells=[new_code_cell("cfg = {}", metadata={"tags": ["parameters"]}),
                             new_code_cell("print(sorted(cfg))")],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, proj/"nbs"/"experiments"/"cfg.ipynb")
    cfg = '{"db": {"host": "db1", "password": "sekret-35-mlkitrun"}, "lr": 0.1}'
    env = {**os.environ, "MLKIT_RUNS_DIR": str(runs)}
    env.pop("MLKIT_RUN_DIR", None)
    mlkit = str(Path(sys.executable).parent/"mlkit")
    r = subprocess.run([mlkit, "run", "nbs/experiments/cfg.ipynb", "-p", "cfg", cfg], cwd=proj, env=env,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    [run] = [p for p in runs.iterdir() if (p/"meta.json").exists()]
    assert {"meta.json", "notebook.ipynb"} <= {p.name for p in run.iterdir()}
    leaks = [str(p.relative_to(runs)) for p in runs.rglob("*") if p.is_file() and b"sekret-35-mlkitrun" in p.read_bytes()]
    assert leaks == []
    command = json.loads((run/"meta.json").read_text())["command"]
    assert json.loads(command[command.index("cfg") + 1]) == {"db": {"host": "db1", "password": "***"}, "lr": 0.1}
