"""README.md as a newcomer reads it: the order of its sections, a table that names every command, links and the
picture that exist, and the quickstart's `source .venv/bin/activate` putting `mlkit` on PATH."""
import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from mlkit.cli import parser

COVERS = ("index", "07_cli")  # the notebooks these tests cover: `make test NB=...` runs them

README = (REPO/"README.md").read_text()


def _headings(text):
    return re.findall(r"^## (.+)$", text, re.M)


def test_a_newcomer_meets_the_quickstart_first_and_the_many_machine_details_last():
    heads = _headings(README)
    order = ["Quickstart", "Commands", "Starting a new project", "The development loop", "Training runs", "Sweeps",
             "The library", "Documentation", "Environments", "Many machines"]
    found = [next(i for i, h in enumerate(heads) if h.startswith(o)) for o in order]
    assert found == sorted(found), heads
    quickstart = README.split("## Commands")[0]
    for step in ("make train", "make test", "source .venv/bin/activate", "mlkit runs ls"):
        assert step in quickstart, step


def _table(text, heading):
    m = re.search(rf"^## {heading}\n\n((?:\|.*\n)+)", text, re.M)
    assert m, heading
    return [re.split(r"(?<!\\)\|", row)[1].strip() for row in m.group(1).splitlines()[2:]]


def test_the_command_table_names_every_make_target_and_every_mlkit_command():
    commands = " ".join(_table(README, "Commands"))
    targets = re.findall(r"^([a-z-]+):.*## ", (REPO/"Makefile").read_text(), re.M)
    assert len(targets) > 15
    missing = [t for t in targets if not re.search(rf"`make {re.escape(t)}(?![\w-])", commands)]
    assert not missing, f"make targets the README's command table does not name: {missing}"
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) >= {"run", "rerun", "runs", "sweep", "new", "gpus"}
    missing = [c for c in sub.choices if f"`mlkit {c}" not in commands]
    assert not missing, f"mlkit commands the README's command table does not name: {missing}"


def test_every_relative_link_and_the_picture_exist():
    links = re.findall(r"\]\(([^)#\s]+)\)", README)
    local = [link for link in links if not re.match(r"^[a-z]+://", link)]
    assert "nbs/images/valid_loss.png" in local  # the picture at the top
    for link in local: assert (REPO/link).exists(), link
    assert (REPO/"nbs/images/valid_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_activating_the_environment_puts_mlkit_on_path(tmp_path):
    "The quickstart's `source .venv/bin/activate` (here: this environment's activate) gives a working `mlkit`."
    activate = Path(sys.prefix)/"bin"/"activate"
    if not activate.exists(): pytest.skip(f"{sys.prefix} is not a venv (no bin/activate)")
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != Path(sys.prefix)/"bin")
    env = {**os.environ, "PATH": path}
    env.pop("VIRTUAL_ENV", None)
    before = subprocess.run(["bash", "-c", "command -v mlkit"], env=env, capture_output=True, text=True, cwd=tmp_path)
    after = subprocess.run(["bash", "-c", f"source {activate} && mlkit runs ls --root {tmp_path}"], env=env,
                           capture_output=True, text=True, cwd=tmp_path)
    assert not before.stdout.startswith(sys.prefix)
    assert after.returncode == 0, after.stderr


def test_many_machines_shows_slurm_first_and_each_of_its_commands_parses():
    "Slurm (run, sweep, preemption) first, then torchrun and PostgreSQL by hand; tests/test_slurm*.py run these commands."
    section = README.split("## Many machines")[1].split("\n## ")[0]
    order = [section.index(s) for s in ("**Slurm first.**", "**Preemption, requeues and time limits.**",
                                        "**DDP across machines by hand.**", "**Sweeps on many machines by hand.**")]
    assert order == sorted(order), order
    import shlex
    lines = [line.split("  #")[0].strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)
             for line in block.splitlines() if line.startswith("mlkit ")]
    assert sum("--slurm" in line for line in lines) >= 3 and any(line.startswith("mlkit jobs") for line in lines), lines
    for line in lines:
        args = parser().parse_args(shlex.split(line)[1:])  # an option mlkit does not have exits 2 here
        assert args.func is not None, line
