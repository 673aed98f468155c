"""A real, private Slurm cluster on this machine for the tests: its own munged, slurmctld and slurmd(s).

`SlurmCluster(folder).start()` writes a slurm.conf naming this host as controller and node(s), on free ports, with every
state, spool, pid and log file under `folder`, and its own munge key and socket, so that several clusters (pytest-xdist
workers) and a site's own Slurm never meet. `env` is what a process needs to use it (`SLURM_CONF`). `python
tests/slurm_cluster.py DIR` starts one by hand and prints its `export SLURM_CONF=...` line.

`missing()` says in one line why no cluster can run here (the packages not installed, not root), or None.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
APT_PACKAGES = ("slurm-wlm", "munge")


def missing() -> str | None:
    "Why no Slurm cluster can be started here, in one line; None when one can."
    absent = [d for d in DAEMONS if not (shutil.which(d) or Path("/usr/sbin", d).exists())]
    if absent: return f"{', '.join(absent)} not installed (Debian: apt-get install {' '.join(APT_PACKAGES)}; .ci/run does it)"
    if os.geteuid() != 0: return "the test Slurm cluster runs its daemons as root (SlurmUser=root), and this is not root"
    return None


def _daemon(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def wait_for(ok, timeout: float = 180, every: float = 0.3, what: str = "the condition"):
    "`ok()`'s first true value, asked every `every` seconds; an AssertionError naming `what` after `timeout` seconds."
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if (got := ok()): return got
        time.sleep(every)
    raise AssertionError(f"{what} did not happen within {timeout} s")


class SlurmCluster:
    "A Slurm cluster of one controller and `nodes` slurmd on this host, all under `folder`."

    def __init__(self, folder: str | Path, nodes: int = 1, cpus: int = 8, name: str = "mlkit-test"):
        self.folder, self.nodes, self.cpus, self.name = Path(folder).absolute(), nodes, cpus, name
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.folder/"slurm.conf"
        self.procs: list[subprocess.Popen] = []
        self.node_names = [self.host] if nodes == 1 else [f"node{i}" for i in range(nodes)]

    @property
    def env(self) -> dict:
        "The environment variables a process needs to use this cluster."
        return {"SLURM_CONF": str(self.conf)}

    def _write_conf(self):
        f = self.folder
        for d in ("state", "spool", "log"): (f/d).mkdir(parents=True, exist_ok=True)
        mem = max(1024, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2)
        if self.nodes == 1: nodes = [f"NodeName={self.host} CPUs={self.cpus} RealMemory={mem} State=UNKNOWN"]
        else:
            nodes = [f"NodeName={n} NodeHostname={self.host} NodeAddr=127.0.0.1 Port={free_port()} CPUs={self.cpus} "
                     f"RealMemory={mem} State=UNKNOWN" for n in self.node_names]
        self.conf.write_text("\n".join([
            f"ClusterName={self.name}", f"SlurmctldHost={self.host}", "SlurmUser=root", "SlurmdUser=root",
            "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={f/'munge.sock'}",
            f"SlurmctldPort={free_port()}", *([f"SlurmdPort={free_port()}"] if self.nodes == 1 else []),
            f"StateSaveLocation={f/'state'}", f"SlurmdSpoolDir={f/'spool'}/%n",
            f"SlurmctldPidFile={f/'slurmctld.pid'}", f"SlurmdPidFile={f/'slurmd-%n.pid'}",
            f"SlurmctldLogFile={f/'log/slurmctld.log'}", f"SlurmdLogFile={f/'log/slurmd-%n.log'}",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU", "SlurmdParameters=config_overrides", "JobRequeue=1", "ReturnToService=2",
            "MpiDefault=none", "SwitchType=switch/none", "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none", "SchedulerType=sched/backfill",
            "SchedulerParameters=sched_interval=2", "KillWait=5", "MinJobAge=3600", "InactiveLimit=0",
            "SlurmctldTimeout=30", "SlurmdTimeout=60", "MessageTimeout=10", "TCPTimeout=5",
            "PreemptType=preempt/none",
            *nodes,
            f"PartitionName=debug Nodes={','.join(self.node_names)} Default=YES MaxTime=INFINITE State=UP "
            "OverSubscribe=NO", ""]))

    def _munge(self):
        f = self.folder
        key = f/"munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
            key.chmod(0o400)
        self._spawn([_daemon("munged"), "--foreground", "--force", f"--socket={f/'munge.sock'}", f"--key-file={key}",
                     f"--pid-file={f/'munged.pid'}", f"--log-file={f/'log/munged.log'}", f"--seed-file={f/'munge.seed'}"])
        self._until(lambda: (f/"munge.sock").exists(), "munged made no socket")

    def _spawn(self, argv: list[str]):
        log = open(self.folder/"log"/f"{Path(argv[0]).name}-{len(self.procs)}.out", "ab")
        self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           env={**os.environ, **self.env}, start_new_session=True))

    def _until(self, ok, what: str, timeout: float = 30):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if ok(): return
            dead = [p for p in self.procs if p.poll() is not None]
            if dead: raise RuntimeError(f"{what}: {dead[0].args[0]} exited {dead[0].returncode}; see {self.folder/'log'}")
            time.sleep(0.2)
        raise RuntimeError(f"{what} within {timeout} s; see {self.folder/'log'}")

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        "A Slurm client command (sinfo, squeue, scontrol ...) against this cluster."
        return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=60,
                              env={**os.environ, **self.env})

    def idle(self) -> bool:
        r = self.run("sinfo", "-h", "-N", "-o", "%N %t", check=False)
        states = dict(line.split() for line in r.stdout.splitlines() if line.strip())
        return r.returncode == 0 and all(states.get(n, "").startswith(("idle", "mix")) for n in self.node_names)

    def start(self) -> SlurmCluster:
        self._write_conf()
        self._munge()
        self._spawn([_daemon("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        for n in self.node_names:
            self._spawn([_daemon("slurmd"), "-D", "-f", str(self.conf), *(["-N", n] if self.nodes > 1 else [])])
        self._until(self.idle, "the Slurm node(s) did not come up idle", timeout=60)
        return self

    def stop(self):
        for j in self.run("squeue", "-h", "-o", "%A", check=False).stdout.split(): self.run("scancel", j, check=False)
        for p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try: p.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
        self.procs.clear()

    def stop_controller(self):
        "Stop slurmctld only: clients then find the controller down."
        p = next(p for p in self.procs if Path(p.args[0]).name == "slurmctld")
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(10)

    def __enter__(self): return self.start()
    def __exit__(self, *exc): self.stop()


if __name__ == "__main__":
    c = SlurmCluster(sys.argv[1], nodes=int(sys.argv[2]) if len(sys.argv) > 2 else 1).start()
    print(f"export SLURM_CONF={c.conf}   # pids: {' '.join(str(p.pid) for p in c.procs)}")
