"`run_job` (tests/conftest.py) ends a job as `python job.py` would: the resume tests rely on it."
import signal

from conftest import run_job

COVERS = ()  # the test harness itself: no notebook


def job(tmp_path, body):
    path = tmp_path/"job.py"
    path.write_text(body)
    return run_job(path)


def test_exit_status_as_python_gives_it(tmp_path):
    assert job(tmp_path, "import sys\nsys.exit(3)").returncode == 3
    assert job(tmp_path, "raise ValueError('boom')").returncode == 1
    assert job(tmp_path, "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)").returncode == -signal.SIGKILL
    r = job(tmp_path, "raise KeyboardInterrupt")  # Python ends an uncaught Ctrl-C by SIGINT, after its exit handlers
    assert r.returncode == -signal.SIGINT and "KeyboardInterrupt" in r.stderr


def test_threads_finish_and_exit_handlers_run_and_output_is_flushed(tmp_path):
    r = job(tmp_path, "import atexit, threading, time\n"
                      "atexit.register(lambda: print('atexit ran'))\n"
                      "threading.Thread(target=lambda: (time.sleep(0.2), print('thread ended'))).start()\n"
                      "print('main done')")
    assert (r.returncode, r.stdout.splitlines()) == (0, ["main done", "thread ended", "atexit ran"])


def test_each_job_draws_its_own_random_numbers_and_runs_its_own_script(tmp_path):
    body = "import random, sys\nimport numpy as np\nprint(random.random(), np.random.rand(), sys.argv[0].endswith('job.py'))"
    first, second = job(tmp_path, body).stdout, job(tmp_path, body).stdout
    assert first.split()[2] == "True" and first.split()[0] != second.split()[0] and first.split()[1] != second.split()[1]
