"""Prove that the committed locks install on each target of the support matrix, against PyPI alone.

For each target (a platform, Python 3.11 and a torch lock) uv resolves requirements.txt plus that torch lock for the
target's platform, wheels only, from the package indexes' metadata: nothing is installed and no wheel is downloaded.
A target fails when a pin has no wheel for it (the resolution fails), or when the resolution needs a package the
locks do not pin for it (pip-sync would pull that package in unpinned). Usage: check_lock_targets.py [TARGET...]
"""
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ENVIRONMENT_OWN = {"pip", "setuptools", "wheel"}  # the environment's own tools (pip-tools needs them): not locked
PYTHONS = ("3.11.0", "3.11.9")  # the first and a late 3.11 (soupsieve's pins fork at 3.11.5)
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
LINUX = {"sys_platform": "linux", "platform_system": "Linux", "os_name": "posix", "platform_machine": "x86_64"}
MACOS = {"sys_platform": "darwin", "platform_system": "Darwin", "os_name": "posix", "platform_machine": "arm64"}
# name: (uv's --python-platform, its marker environment, the torch lock, extra index for torch, extra environment)
TARGETS = {
    "linux-x86_64-cpu": ("x86_64-manylinux_2_28", LINUX, "requirements-cpu.txt", TORCH_CPU_INDEX, {}),
    "linux-x86_64-cuda": ("x86_64-manylinux_2_28", LINUX, "requirements-cuda.txt", None, {}),
    "macos-arm64-cpu": ("aarch64-apple-darwin", MACOS, "requirements-cpu.txt", None, {"MACOSX_DEPLOYMENT_TARGET": "14.0"}),
}


def lock_lines(text: str) -> list[Requirement]:
    "The `name==version [; marker]` requirements of a lock file's text."
    return [Requirement(line) for line in text.splitlines() if re.match(r"^[A-Za-z0-9][^#]*==", line)]


def applies(req: Requirement, env: dict, python: str) -> bool:
    return req.marker is None or req.marker.evaluate({**env, "python_version": python[:4], "python_full_version": python,
                                                      "implementation_name": "cpython",
                                                      "platform_python_implementation": "CPython"})


def resolve(uv: str, locks: dict[str, str], platform: str, index: str | None, extra_env: dict,
            python: str, without_torch: bool = False) -> tuple[int, str, str]:
    "(status, uv's error, resolved lock text) of resolving the lock texts `locks` for `platform`, wheels only."
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in locks.items(): (Path(tmp)/name).write_text(text)
        # torch left out altogether, also where a requirement depends on it (mlkit, in a project made by mlkit new)
        overrides = ["--override", str(Path(tmp)/"no-torch.txt")] if without_torch else []
        if without_torch: (Path(tmp)/"no-torch.txt").write_text('torch ; sys_platform == "never"\n')
        out = Path(tmp)/"resolved.txt"
        cmd = [uv, "pip", "compile", "--no-config", "--quiet", "--default-index", "https://pypi.org/simple",
               "--python-version", python, "--python-platform", platform, "--only-binary", ":all:", "--no-header",
               "--no-annotate", *overrides, *locks, "-o", str(out)]
        # PyTorch's index holds some of torch's dependencies too, at other versions: take each from wherever it is
        if index: cmd += ["--extra-index-url", index, "--index-strategy", "unsafe-best-match"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("UV_")} | extra_env  # PyPI alone, as make lock
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp)
        return p.returncode, p.stderr.strip(), out.read_text() if out.exists() else ""


def unreachable(err: str) -> bool:
    return bool(re.search(r"dns error|failed to lookup address|connection refused|connect error|operation timed out", err, re.I))


def check(name: str, root: Path, uv: str, python: str) -> list[str]:
    "Problems of target `name` on `python` (empty: it installs from the locks alone)."
    platform, env, torch_lock, index, extra_env = TARGETS[name]
    locks, note = {f: (root/f).read_text() for f in ("requirements.txt", torch_lock)}, ""
    rc, err, resolved = resolve(uv, locks, platform, index, extra_env, python)
    if rc != 0 and index and unreachable(err):
        # PyTorch's CPU index out of reach (a machine that sees PyPI only): check all but torch's own wheel. Left out by
        # an override, not by dropping its pin: a requirement that depends on torch would pull PyPI's (CUDA) build.
        locks[torch_lock] = "\n".join(ln for ln in locks[torch_lock].splitlines() if not ln.startswith("torch=="))
        rc, err, resolved = resolve(uv, locks, platform, None, extra_env, python, without_torch=True)
        note = f" (torch's own CPU wheel not checked: {index} is out of reach)"
    if rc != 0:
        lines = [ln.strip() for ln in err.splitlines()]
        why = next((ln for ln in lines if ln.startswith("cause:")), None) or next((ln for ln in lines if ln), "uv failed")
        return [f"{name} (Python {python}): the locks do not resolve{note}: {why}"]
    pinned = {canonicalize_name(r.name) for text in locks.values() for r in lock_lines(text) if applies(r, env, python)}
    needed = {canonicalize_name(r.name) for r in lock_lines(resolved)}
    missing = sorted(needed - pinned - ENVIRONMENT_OWN)
    if missing: return [f"{name} (Python {python}): needs {', '.join(missing)}, which the locks do not pin for it{note}"]
    print(f"ok: {name} (Python {python}, {len(needed)} packages, all pinned, all with wheels){note}")
    return []


def main(argv: list[str]) -> int:
    unknown = [t for t in argv if t not in TARGETS]
    if unknown:
        print(f"error: no target {', '.join(unknown)}; the targets are {', '.join(TARGETS)}", file=sys.stderr)
        return 2
    uv = str(Path(sys.executable).parent/"uv")
    problems = [p for name in argv or TARGETS for python in PYTHONS for p in check(name, Path.cwd(), uv, python)]
    for p in problems: print(f"error: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
