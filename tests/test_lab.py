"""`make lab` serves the project on loopback with the project kernel, which runs code in the project environment; a
notebook run and saved in that JupyterLab, driven in headless Chromium, leaves a clone with the git filter clean.

Chromium is driven over its DevTools protocol (a websocket, with websocket-client): keystrokes go to the page as a
user's would (the command palette's "Run All Cells", Ctrl+S); the test reads Lab's state through `window.jupyterapp`
(`--LabApp.expose_app_in_browser`) only to know when to go on. Without Chromium those tests are skipped.
"""
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest
import requests
import websocket
from conftest import REPO, make
from test_git_filter import git, make_clone

COVERS = ("00_core", "experiments/train_digits")  # the notebooks run and saved in Lab; project_root from 00_core
CHROMIUM = shutil.which("chromium") or shutil.which("google-chrome")  # not Ubuntu's chromium-browser: a snap stub


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_lab(root, *lab_args, env=None):
    "`make lab` in `root`, on a free port with a token: yields its URL and auth headers; stopped on exit."
    port, token = free_port(), uuid.uuid4().hex
    args = " ".join((f"--no-browser --port={port} --ServerApp.port_retries=0 --IdentityProvider.token={token}",
                     *lab_args))
    # nothing for root here: `make lab` itself must run as root (Docker, devcontainers) as well as as a user
    proc = subprocess.Popen(["make", "--no-print-directory", "lab", "NO_INSTALL=1", f"ENV={sys.prefix}",
                             f"LAB_ARGS={args}"], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, env=env)
    base, headers = f"http://127.0.0.1:{port}", {"Authorization": f"token {token}"}
    try:
        for _ in range(120):
            try:
                if requests.get(f"{base}/api/status", headers=headers, timeout=1).ok: break
            except requests.ConnectionError: pass
            if proc.poll() is not None: pytest.fail("make lab exited:\n" + proc.stdout.read())
            time.sleep(0.5)
        else: pytest.fail("JupyterLab did not answer within 60 s")
        yield base, headers
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try: proc.wait(timeout=20)
            except subprocess.TimeoutExpired: os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def lab():
    with running_lab(REPO) as server: yield server


def run_code(base, headers, kernel_id, code):
    "Execute `code` on a kernel over its websocket; return what it printed."
    ws = websocket.create_connection(f"{base.replace('http', 'ws')}/api/kernels/{kernel_id}/channels",
                                     header=[f"{k}: {v}" for k, v in headers.items()], timeout=60)
    msg_id = uuid.uuid4().hex
    ws.send(json.dumps({"channel": "shell", "content": {"code": code, "silent": False},
                        "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test",
                                   "session": uuid.uuid4().hex, "version": "5.3"},
                        "metadata": {}, "parent_header": {}}))
    out = []
    while True:
        msg = json.loads(ws.recv())
        if msg.get("parent_header", {}).get("msg_id") != msg_id: continue
        if msg["msg_type"] == "stream": out.append(msg["content"]["text"])
        if msg["msg_type"] == "error": pytest.fail(f"cell failed: {msg['content']['evalue']}")
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle": break
    ws.close()
    return "".join(out)


def test_lab_lists_notebooks_and_runs_project_kernel(lab):
    base, headers = lab
    listing = requests.get(f"{base}/api/contents/nbs", headers=headers, timeout=10).json()
    assert "00_core.ipynb" in {item["name"] for item in listing["content"]}
    specs = requests.get(f"{base}/api/kernelspecs", headers=headers, timeout=10).json()
    assert specs["default"] == "mlkit" and "mlkit" in specs["kernelspecs"]

    kernel = requests.post(f"{base}/api/kernels", json={"name": "mlkit"}, headers=headers, timeout=30).json()
    try:
        code = "import sys, mlkit.core\nprint(sys.prefix)\nprint(mlkit.core.project_root())"
        out = run_code(base, headers, kernel["id"], code)
        prefix, root = out.split()
        assert os.path.realpath(prefix) == os.path.realpath(sys.prefix)  # the project environment, not the system Python
        assert os.path.realpath(root) == os.path.realpath(REPO)
    finally:
        requests.delete(f"{base}/api/kernels/{kernel['id']}", headers=headers, timeout=10)


# --- JupyterLab in headless Chromium ----------------------------------------------------------------------------------
KEYS = {"Enter": ("Enter", 13), "s": ("KeyS", 83), "c": ("KeyC", 67)}  # key: its DOM code and keyCode
CTRL, SHIFT = 2, 8  # the DevTools protocol's modifier bits


class Chromium:
    "Headless Chromium with one page, driven over its DevTools protocol: keystrokes in, JavaScript values out."

    def __init__(self, profile):
        # no background networking, component updates or sync: on a closed network their connections are refused
        self.log = open(profile.parent/"chromium.log", "w+")
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--window-size=1280,1024", f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=self.log, start_new_session=True)
        self.next_id = 0
        port_file = profile/"DevToolsActivePort"  # Chromium picks a free port and writes it here
        self.wait(lambda: port_file.exists() and port_file.read_text().count("\n") >= 1, "Chromium's DevTools port")
        port = port_file.read_text().split()[0]
        pages = [t for t in requests.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json() if t["type"] == "page"]
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.call("Emulation.setFocusEmulationEnabled", enabled=True)  # a headless page is never focused: Lab's
        # current widget (what Run All and Ctrl+S act on) follows the focus

    def wait(self, ready, what, timeout=180):
        "Poll `ready()` until it is true (its value); fail naming `what` if it never is (a guard, not a timing)."
        for _ in range(int(timeout/0.2)):
            if value := ready(): return value
            if self.proc.poll() is not None:
                self.log.seek(0)
                pytest.fail(f"Chromium exited while waiting for {what}:\n{self.log.read()}")
            time.sleep(0.2)
        dialog = self.js("document.querySelector('.jp-Dialog')?.innerText")  # what Lab asks, if it asks
        pytest.fail(f"{what}: not within {timeout} s" + (f"; Lab's dialog says: {dialog}" if dialog else ""))

    def call(self, method, **params):
        "One DevTools command; its result."
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while (msg := json.loads(self.ws.recv())).get("id") != self.next_id: pass  # events: none asked for
        assert "error" not in msg, f"{method}: {msg['error']}"
        return msg["result"]

    def js(self, expression):
        "The value of a JavaScript expression in the page."
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in r, f"{expression}: {r['exceptionDetails']}"
        return r["result"].get("value")

    def press(self, key, modifiers=0):
        "A key pressed and released, as a keyboard sends it."
        code, keycode = KEYS[key]
        for kind in ("rawKeyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", type=kind, key=key, code=code, windowsVirtualKeyCode=keycode,
                      nativeVirtualKeyCode=keycode, modifiers=modifiers)

    def close(self):
        with contextlib.suppress(Exception): self.ws.close()
        with contextlib.suppress(ProcessLookupError): os.killpg(self.proc.pid, signal.SIGTERM)
        try: self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired: os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


# Lab's state, read through window.jupyterapp: the notebook panel open on PATH, and its code cells
PANEL = ("(() => {{ const w = window.jupyterapp && jupyterapp.shell.currentWidget;"
         " return w && w.context && w.context.path === {path} && w.context.isReady ? w : null; }})()")
CELLS = "Array.from({{length: {panel}.content.model.cells.length}}, (_, i) => {panel}.content.model.cells.get(i))"


def run_all_and_save(browser, base, token, root, rel):
    "Open notebook `rel` in Lab, run all its cells from the command palette, save with Ctrl+S; Lab's save done."
    panel = PANEL.format(path=json.dumps(rel))
    browser.call("Page.navigate", url=f"{base}/lab/tree/{rel}?token={token}")
    browser.wait(lambda: browser.js(f"!!({panel}) && {panel}.sessionContext.session?.kernel?.status === 'idle'"),
                 f"{rel} open in Lab with its kernel idle")
    assert browser.js(f"{panel}.sessionContext.session.kernel.name") == "mlkit"  # the project's kernel
    browser.press("c", CTRL | SHIFT)  # the command palette
    browser.wait(lambda: browser.js("document.activeElement.classList.contains('lm-CommandPalette-input')"),
                 "the command palette's search box")
    browser.call("Input.insertText", text="Run All Cells")
    active = "document.querySelector('.lm-CommandPalette-item.lm-mod-active .lm-CommandPalette-itemLabel')"
    browser.wait(lambda: browser.js(f"{active}?.textContent === 'Run All Cells'"), "'Run All Cells' in the palette")
    browser.press("Enter")
    cells = CELLS.format(panel=panel)
    state = (f"(() => {{ const code = {cells}.filter(c => c.type === 'code');"
             " if (code.some(c => Array.from({length: c.outputs.length}, (_, i) => c.outputs.get(i).type)"
             ".includes('error'))) return 'error';"
             f" return code.every(c => c.executionCount !== null) && {panel}.sessionContext.session.kernel.status"
             " === 'idle' ? 'done' : ''; })()")
    assert browser.wait(lambda: browser.js(state), f"{rel}: every cell run") == "done", f"{rel}: a cell failed"
    assert browser.js(f"{panel}.context.model.dirty"), f"{rel}: Lab does not see the run as a change"
    path = root/rel
    before = path.stat().st_mtime_ns
    browser.press("s", CTRL)
    browser.wait(lambda: path.stat().st_mtime_ns != before and browser.js(f"!{panel}.context.model.dirty"),
                 f"{rel}: Lab's save")


@pytest.fixture
def lab_clone(tmp_path):
    "A fresh clone with `make hooks` done, its `make lab` (Jupyter's user files in tmp) and a headless Chromium."
    clone = make_clone(tmp_path)
    jupyter = {"JUPYTER_DATA_DIR": tmp_path/"jupyter-data", "JUPYTER_CONFIG_DIR": tmp_path/"jupyter-config",
               "JUPYTERLAB_SETTINGS_DIR": tmp_path/"lab-settings", "JUPYTERLAB_WORKSPACES_DIR": tmp_path/"lab-workspaces"}
    env = {**os.environ, **{k: str(v) for k, v in jupyter.items()}}
    observe = ("--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate")
    with running_lab(clone, *observe, env=env) as (base, headers):
        (tmp_path/"chromium").mkdir()
        browser = Chromium(tmp_path/"chromium")
        try: yield clone, browser, base, headers["Authorization"].split()[1]
        finally: browser.close()


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM, reason="Chromium is not installed (.ci/run installs Debian's chromium)")
def test_notebooks_run_and_saved_in_jupyterlab_leave_a_clone_with_the_filter_clean_and_make_check_green(lab_clone):
    "Run all cells in Lab, Ctrl+S: the files hold what Lab writes, yet git sees no change and `make check` passes."
    clone, browser, base, token = lab_clone
    rels = ["nbs/00_core.ipynb", "nbs/experiments/train_digits.ipynb"]
    for rel in rels: run_all_and_save(browser, base, token, clone, rel)
    saved = {rel: json.loads((clone/rel).read_text()) for rel in rels}
    for rel, nb in saved.items():  # Lab really saved: execution counts and the kernel's language_info are in the files
        assert all(c["execution_count"] for c in nb["cells"] if c["cell_type"] == "code"), rel
        assert nb["metadata"]["language_info"]["name"] == "python", rel
    outputs = [o["output_type"] for c in saved[rels[1]]["cells"] for o in c.get("outputs", [])]
    assert "stream" in outputs and "display_data" in outputs, outputs  # the training's progress and its plot
    r = make("check-notebooks", cwd=clone)
    out = (r.stdout + r.stderr).strip()
    assert r.returncode == 0 and len(out.splitlines()) <= 1, out  # one informational line at most
    assert git("diff", cwd=clone) == ""
    git("add", "-A", cwd=clone)  # git lists a saved notebook as modified (its size changed) until staged: nothing staged
    assert git("status", "--porcelain", cwd=clone) == ""
    for where in ("HEAD:", ":"):  # committed and staged, the experiment notebook keeps its parameters cell
        nb = json.loads(git("show", f"{where}nbs/experiments/train_digits.ipynb", cwd=clone))
        assert any("parameters" in c["metadata"].get("tags", []) for c in nb["cells"]), where
