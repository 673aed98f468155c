"The mlkit command: fast to start, one line for user errors."
import os
import subprocess
import sys
from pathlib import Path

MLKIT = str(Path(sys.executable).parent/"mlkit")


def run(*args, **env):
    return subprocess.run([MLKIT, *args], capture_output=True, text=True, timeout=120, env={**os.environ, **env})


def test_help_does_not_import_torch():
    code = "import sys; from mlkit.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass\nprint('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip().endswith("False"), r.stdout + r.stderr
    r = run("--help")
    assert r.returncode == 0 and "gpus" in r.stdout


def test_gpus_without_gpus():
    env = {k: v for k, v in os.environ.items() if k != "MLKIT_FAKE_GPUS"}
    r = subprocess.run([MLKIT, "gpus"], capture_output=True, text=True, timeout=120, env={**env, "CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "no GPUs visible (no NVIDIA driver, or CUDA_VISIBLE_DEVICES hides them)"


def test_gpus_with_fake_gpus(tmp_path):
    r = run("gpus", MLKIT_FAKE_GPUS="3", MLKIT_LOCK_DIR=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 4


def test_user_error_is_one_line():
    r = run("gpus", MLKIT_FAKE_GPUS="lots")
    assert r.returncode == 1
    assert r.stderr == "mlkit gpus: error: MLKIT_FAKE_GPUS must be a number of GPUs, got 'lots'\n"
    r = run("nonsense")
    assert r.returncode == 2 and "invalid choice" in r.stderr
