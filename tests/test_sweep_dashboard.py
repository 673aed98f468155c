"`mlkit sweep dashboard NAME`: optuna-dashboard on a real sweep's journal, loaded in headless Chromium as a user opens it."
import html
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess

import pytest
import test_sweep
from test_sweep import MLKIT, TOY, notebook, spec, study, sweep

COVERS = ("07_cli", "12_sweep", "12e_sweep_report")
project = test_sweep.project  # the fixture: a project folder with its runs folder in MLKIT_RUNS_DIR
CHROMIUM = shutil.which("chromium") or shutil.which("google-chrome")


def start_dashboard(*args, env=None):
    "`mlkit sweep dashboard ...` in its own process group; (process, its first line) once it has printed one."
    proc = subprocess.Popen([MLKIT, "sweep", "dashboard", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env={**os.environ, **(env or {})})
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout=120): proc.kill(); pytest.fail("the dashboard printed nothing in 120 s")
    return proc, proc.stdout.readline()


def page_text(url) -> str:
    "The text of `url` as headless Chromium renders it (optuna-dashboard is a JavaScript app: no JS, no trials)."
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000",
                          "--dump-dom", url], capture_output=True, text=True, timeout=180).stdout
    text = re.sub(r"<script.*?</script>|<style.*?</style>", "", dom, flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)))


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM, reason="no Chromium or Chrome to load the dashboard in (Debian: apt-get install chromium)")
def test_the_dashboard_shows_the_sweeps_trials_in_a_browser_and_ctrl_c_stops_it(project):
    notebook(project, "toy.ipynb", *TOY)
    assert sweep(spec(project, n_trials=3)).returncode == 0
    best = study().best_trial
    proc, first = start_dashboard("s", "--port", "0")
    try:
        url = re.search(r"http://127\.0\.0\.1:\d+/dashboard/studies/\d+", first)
        assert url, first
        text = page_text(url[0])
        assert "s (id=" in text, text[:2000]  # the study's page, not an error page
        assert f"Best Trial (number={best.number})" in text and f"{best.value}" in text, text[:3000]
        assert "score" in text and "Objective 0" not in text, text[:3000]  # the axis is the metric's name
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert err.strip() == "mlkit sweep: dashboard stopped" and "Traceback" not in out + err


def test_dashboard_mistakes_get_one_line_and_an_open_one_warns(project, tmp_path):
    notebook(project, "toy.ipynb", *TOY)
    assert sweep(spec(project, n_trials=1)).returncode == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        r = subprocess.run([MLKIT, "sweep", "dashboard", "s", "--port", str(taken.getsockname()[1])],
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stdout == "", r
    assert re.fullmatch(r"mlkit sweep: error: cannot listen on 127\.0\.0\.1:\d+: .*--port 0 takes a free one\)\n", r.stderr)
    r = subprocess.run([MLKIT, "sweep", "dashboard", "nope"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.startswith("mlkit sweep: error: no sweep 'nope'") and r.stderr.count("\n") == 1
    shadow = tmp_path/"shadow"  # an environment without the extra
    shadow.mkdir()
    (shadow/"optuna_dashboard.py").write_text("raise ImportError('No module named optuna_dashboard')\n")
    r = subprocess.run([MLKIT, "sweep", "dashboard", "s"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(shadow)})
    assert (r.returncode, r.stderr) == (1, "mlkit sweep: error: mlkit sweep dashboard needs optuna-dashboard: "
                                           "pip install 'mlkit[dashboard]'\n"), r
    proc, first = start_dashboard("s", "--port", "0", "--host", "0.0.0.0")
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert first.startswith("optuna-dashboard of sweep s: http://127.0.0.1:"), first
    assert "listens on 0.0.0.0 with no login" in err and "Traceback" not in err

