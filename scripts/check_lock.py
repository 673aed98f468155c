"""Fail when the locks are stale against requirements.in (offline: no resolver, no network).

Stale means: a requirement of requirements.in that no lock pins, or pins at a version outside its
bounds; a pin that requirements.txt keeps for a direct dependency requirements.in no longer lists;
or environment.yml asking for another Python than the lock was compiled with. Wrong means: CUDA runtime
wheels in requirements.txt or the CPU lock, a CPU lock equal to the CUDA lock, or pip or setuptools
pinned in requirements.txt (they belong to the environment, not the project; wheel is locked there, for pip-tools
and astunparse), or pip or wheel in a torch lock. `make check-lock-full`
recompiles the locks to catch what this cannot see (an extra or a marker added, a pin deleted by hand).
"""
import re
import sys
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

TORCH_LOCKS = ("requirements-cpu.txt", "requirements-cuda.txt")
# The CUDA runtime that PyPI's Linux torch pulls in; nvidia-ml-py (the small NVML binding mlkit uses) is not part of it.
CUDA_RUNTIME = re.compile(r"^(nvidia-(?!ml-py$).+|cuda-.+|triton)$")
ENVIRONMENT_OWN = ("pip", "setuptools", "wheel")  # setuptools may come into a torch lock, as torch's own requirement


def direct_requirements(path):
    "The requirements listed in a .in file (option lines and comments skipped)."
    reqs = []
    for line in Path(path).read_text().splitlines():
        line = line.split(" #")[0].strip()
        if line and not line.startswith(("#", "-")): reqs.append(Requirement(line))
    return reqs


# The environment the locks are for, as far as markers ask: a pin for another Python or OS is not this one's.
LOCK_ENV = {"python_version": "3.11", "python_full_version": "3.11.9", "sys_platform": "linux", "os_name": "posix",
            "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython"}


def pins(path):
    "name -> (version, direct) for the `name==version [; marker]` lines of a lock that apply to Python 3.11 on Linux."
    out, name = {}, None
    for line in Path(path).read_text().splitlines():
        if m := re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)===?([^=;\s]+)\s*(?:;(.*))?$", line):
            name = canonicalize_name(m[1])
            if m[3] and not Marker(m[3]).evaluate(LOCK_ENV):
                name = None  # another Python's or platform's pin
                continue
            try: out[name] = [Version(m[2]), False]
            except InvalidVersion: out[name] = [m[2], False]  # an arbitrary-equality pin: kept as text
        elif m := re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*@\s*(\S+)\s*(?:;(.*))?$", line):  # a direct reference
            name = canonicalize_name(m[1])
            if m[3] and not Marker(m[3]).evaluate(LOCK_ENV):
                name = None
                continue
            out[name] = [m[2], False]  # pinned by its URL
        elif name and re.match(r"^\s+#\s+(via )?-r requirements\.in", line):
            out[name][1] = True
    return out


def lock_python(path):
    m = re.search(r"make lock .*Python (\d+\.\d+)", Path(path).read_text())
    return m and m[1]


def problems(root="."):
    root = Path(root)
    missing = [f for f in ("requirements.in", "requirements.txt", *TORCH_LOCKS, "environment.yml") if not (root/f).is_file()]
    if missing:
        yield f"{', '.join(missing)} missing; run 'make lock'"
        return
    direct = direct_requirements(root/"requirements.in")
    locked = pins(root/"requirements.txt")
    for req in direct:
        name = canonicalize_name(req.name)
        files = TORCH_LOCKS if name == "torch" else ("requirements.txt",)
        for f in files:
            pinned = locked if f == "requirements.txt" else pins(root/f)
            if name not in pinned:
                yield f"{f} is stale: '{req}' from requirements.in is not pinned; run 'make lock'"
            elif req.url or not isinstance(pinned[name][0], Version):  # a direct reference: the same URL
                if pinned[name][0] != req.url:
                    yield f"{f} is stale: pins {req.name} @ {pinned[name][0]}, not '{req}' of requirements.in; run 'make lock'"
            elif not req.specifier.contains(pinned[name][0], prereleases=True):
                yield f"{f} is stale: pins {req.name}=={pinned[name][0]}, outside '{req}' in requirements.in; run 'make lock'"
    listed = {canonicalize_name(r.name) for r in direct}
    for name, (version, is_direct) in locked.items():
        if is_direct and name not in listed:
            yield (f"requirements.txt is stale: pins {name}=={version} for requirements.in, which no longer lists it; "
                   "run 'make lock'")
    for f in ("requirements.txt", "requirements-cpu.txt"):
        if cuda := sorted(n for n in pins(root/f) if CUDA_RUNTIME.match(n)):
            yield f"{f} pins CUDA runtime wheels ({', '.join(cuda[:4])}{', ...' if len(cuda) > 4 else ''}); run 'make lock'"
    if pins(root/"requirements-cpu.txt") == pins(root/"requirements-cuda.txt"):
        yield "requirements-cpu.txt equals requirements-cuda.txt: the CPU lock was resolved as the CUDA build; run 'make lock'"
    for f in ("requirements.txt", *TORCH_LOCKS):
        # wheel is locked with pip-tools and astunparse (wheel<1.0), which need it; torch>=2.9 requires setuptools>=77
        allowed = ("wheel",) if f == "requirements.txt" else ("setuptools",)
        if own := [n for n in ENVIRONMENT_OWN if n in pins(root/f) and n not in allowed]:
            yield f"{f} pins {', '.join(own)}, which belong to the environment; run 'make lock'"
    if re.search(r"^\s*-\s*pip\s*:", (root/"environment.yml").read_text(), re.M):
        yield ("environment.yml has a pip section, which conda would install unpinned before make install; leave the "
               "packages to the locks (make install)")
    py = lock_python(root/"requirements.txt")
    env = (root/"environment.yml").read_text()
    if py and not re.search(rf"^\s*-\s*python\s*==?\s*{re.escape(py)}(\.\d+|\.\*)?\s*$", env, re.M):
        yield f"environment.yml is stale: requirements.txt was compiled with Python {py}; ask for python={py}"


if __name__ == "__main__":
    found = list(problems())
    for p in found: print(f"error: {p}", file=sys.stderr)
    sys.exit(1 if found else 0)
