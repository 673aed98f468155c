"`make lab` serves the project on loopback with the project kernel, which runs code in the project environment."
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest
import requests
import websocket
from conftest import REPO


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab():
    port, token = free_port(), uuid.uuid4().hex
    args = f"--no-browser --port={port} --ServerApp.port_retries=0 --IdentityProvider.token={token}"
    # nothing for root here: `make lab` itself must run as root (Docker, devcontainers) as well as as a user
    proc = subprocess.Popen(["make", "--no-print-directory", "lab", "NO_INSTALL=1", f"ENV={sys.prefix}",
                             f"LAB_ARGS={args}"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
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
