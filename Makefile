# A notebook-first ML project (mlkit's template; `mlkit new` makes more). `make` (or `make help`) lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
# The package that nbs/ exports to: settings.ini's lib_name.
LIB := $(shell sed -nE 's/^lib_name[[:space:]]*=[[:space:]]*([^[:space:]]+).*/\1/p' settings.ini 2>/dev/null)

# Which torch build `make install` puts in the environment: cpu (default) or cuda. See README, "Environments".
TORCH ?= cpu
TORCH_INDEX_cpu := https://download.pytorch.org/whl/cpu
TORCH_INDEX_cuda :=
TORCH_NAME_cpu := CPU
TORCH_NAME_cuda := CUDA
TORCH_VERSION = $(shell sed -nE 's/^torch==([^ ;]+).*/\1/p' requirements-$(TORCH).txt)
# pip-tools' own dependencies (its Requires-Dist but pip and setuptools, which stay the environment's own; colorama
# is Windows-only): installed from the lock with it. tests/test_install_messages.py checks the list against its metadata.
PIP_TOOLS_DEPS := build click colorama packaging pyproject-hooks wheel
ifeq ($(filter $(TORCH),cpu cuda),)
$(error TORCH must be cpu or cuda, not '$(TORCH)')
endif

# The environment: the active conda environment if there is one, else .venv/ made from $(PYTHON).
ifdef CONDA_PREFIX
ENV ?= $(CONDA_PREFIX)
else
ENV ?= $(CURDIR)/.venv
endif
BIN := $(ENV)/bin
# The locks are compiled for one Python minor, 3.11 (any patch release). environment.yml pins the same.
PYTHON ?= python3
LOCK_PYTHON := 3.11
# Which torch build is installed (cpu, cuda, or none), read from its version.py without importing it.
export TORCH_BUILD := import importlib.util as u, pathlib, re; s = u.find_spec("torch"); print("none" if s is None else "cuda" if re.search(r"^cuda\W.*=\s*['\"]", pathlib.Path(s.origin).with_name("version.py").read_text(), re.M) else "cpu")
# Where an index stands: "answers", or "is unreachable (why)"; for the error when pip finds no torch of the asked build.
export INDEX_PROBE := import sys, urllib.request as u; exec("try:\n with u.urlopen(sys.argv[1], timeout=10): print('answers, but has no such wheel for this platform')\nexcept Exception as e: print(f'is unreachable ({getattr(e, \"reason\", e)})')")
# The installed torch must be the asked-for build: checked after each step that installs packages, before pip check.
TORCH_IS_ASKED = b=$$($(PY) -c "$$TORCH_BUILD") && [ "$$b" = "$(TORCH)" ] || { echo "error: TORCH=$(TORCH) but the installed torch is $$( [ "$$b" = none ] && echo 'missing' || echo "the $$(echo $$b | tr a-z A-Z) build"): $(if $(TORCH_INDEX_$(TORCH)),$(TORCH_INDEX_$(TORCH)) $$($(PY) -c "$$INDEX_PROBE" "$(TORCH_INDEX_$(TORCH))/torch/"); pip took torch from another index or a local wheel,PyPI or a local wheel gave the other build); make install again where the index answers, or use TORCH=$(if $(filter cpu,$(TORCH)),cuda,cpu)" >&2; exit 1; }
PY_OK := import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)
# "Python 3.12.1", or why a python gives no version: a pyenv shim whose version is not installed exits 127.
PY_IS = $$(v=$$("$(1)" -c 'import platform; print(platform.python_version())' 2>/dev/null) && echo "Python $$v" || { \
  [ -n "$$(command -v pyenv)" ] && [[ "$$(command -v "$(1)")" == */shims/* ]] && echo "a pyenv shim with no Python behind it (the version it needs is not installed, or not selected: 'pyenv versions')" || echo "a python that does not run"; })
# Where to get 3.11, for someone who has none; then PYTHON= names it.
GET_PY := get Python $(LOCK_PYTHON) (pyenv install $(LOCK_PYTHON), or uv python install $(LOCK_PYTHON), or apt install python$(LOCK_PYTHON)-venv from the deadsnakes PPA, or python.org; or conda env create -f environment.yml)
# The advice for a Python that is not 3.11: PYTHON=python3.11 where one runs here, else where to get it.
USE_PY = $$(python$(LOCK_PYTHON) -c "$(PY_OK)" 2>/dev/null && echo "run 'make install PYTHON=python$(LOCK_PYTHON)'" || echo "$(GET_PY), then run 'make install PYTHON=python$(LOCK_PYTHON)'")
WRONG_PY = error: the locks are for Python $(LOCK_PYTHON), and $(1) is $(call PY_IS,$(1)); $(USE_PY)
PY := $(BIN)/python
# The git notebook filter (clean), `git diff`'s view of notebooks (textconv FILE) and nbdev's merge driver (merge %O %A
# %B %P): a small sh script that `make hooks` writes into git's common folder, shared by every `git worktree` of the
# clone, so that git's configuration names no checkout. git runs it at the top of the worktree it works in; it runs
# that worktree's scripts/check_notebooks.py (nbstripout in a checkout of a commit older than that script) with that
# worktree's .venv/bin/python, else the Python `make hooks` was run with (a conda environment, ENV=...).
define NBFILTER
#!/bin/sh
# mlkit's git notebook filter and merge driver, written by `make hooks` (see the Makefile): clean, textconv FILE,
# merge %O %A %B %P, with this worktree's scripts/check_notebooks.py and Python.
top=$$(git rev-parse --show-toplevel 2>/dev/null) || top=$$PWD
hooks_py='$(subst ','\'',$(PY))'
py=$$top/.venv/bin/python
[ -x "$$py" ] || py=$$hooks_py
[ -x "$$py" ] || { echo "error: git's notebook filter needs a Python, and neither $$top/.venv/bin/python nor $$hooks_py (make hooks' environment) exists; run 'make install'" >&2; exit 1; }
mode=$$1
shift
[ "$$mode" = merge ] && exec "$${py%/*}/nbdev_merge" "$$@"
[ -f "$$top/scripts/check_notebooks.py" ] && exec "$$py" "$$top/scripts/check_notebooks.py" "$$mode" "$$@"
# a checkout of a commit older than scripts/check_notebooks.py: nbstripout, its filter then
[ "$$mode" = textconv ] && exec "$$py" -m nbstripout --keep-id --extra-keys metadata.language_info -t "$$@"
exec "$$py" -m nbstripout --keep-id --extra-keys metadata.language_info "$$@"
endef
export NBFILTER
# What git's configuration names (and quotes in its errors): the script, in the common folder of the worktree git runs in.
NBFILTER_RUN = sh "$$(git rev-parse --git-common-dir)/mlkit-nbfilter"
# `make install` leaves this stamp; targets that need the environment rebuild it when the locks change.
STAMP := $(ENV)/.mlkit-installed-$(TORCH)
# NO_INSTALL=1 runs a target in the environment as it is (the drift tests use it on copies of the repo).
INSTALLED := $(if $(NO_INSTALL),,$(STAMP))

TORCH_PIN := $(shell grep -E '^torch[=<>~!]' requirements.in)

.PHONY: help install install-torch check-env hooks lock upgrade conda-lock export lint test check lab bench gpu-check train sweep clean test-all \
        check-notebooks check-export check-lock check-lock-targets check-lock-full check-workflows check-docs check-devcontainer docs

help: ## List the targets
	@echo "$(LIB): make TARGET   (TORCH=cpu|cuda picks the torch build; now $(TORCH); environment: $(ENV))"
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## (.*)/  \1\t\2/' | expand -t 21

install: check-env ## Create or sync the environment from the locks; register the kernel, the git filter and merge driver
	@if [ ! -x "$(PY)" ]; then echo "install: creating $(ENV:$(CURDIR)/%=%) with $$("$(PYTHON)" --version)"; \
	  "$(PYTHON)" -m venv "$(ENV)" && touch "$(ENV)/.mlkit-env"; fi
	@# pip-sync leaves pip-tools and its dependencies alone, so they come from the lock here, each pinned, --no-deps.
	@echo "install: pip-tools and its dependencies ($(PIP_TOOLS_DEPS)), as locked"
	@reqs=(); for p in pip-tools $(PIP_TOOLS_DEPS); do r=$$(grep -iE "^$$p==" requirements.txt) || { \
	  echo "error: requirements.txt pins no $$p, which pip-tools needs; run 'make lock'" >&2; exit 1; }; reqs+=("$$r"); done; \
	  $(PY) -m pip install --quiet --no-deps "$${reqs[@]}"
	@$(MAKE) --no-print-directory install-torch
	@echo "install: $$(grep -hoE '^[A-Za-z0-9][A-Za-z0-9._-]*' requirements.txt requirements-$(TORCH).txt | sort -u | wc -l) locked packages (pip-sync; a minute or two in a new environment)"
	@# --no-deps: nothing enters unpinned (a lock missing a package fails pip check below, not silently)
	@$(BIN)/pip-sync --quiet --pip-args "--no-deps" requirements.txt requirements-$(TORCH).txt
	@$(TORCH_IS_ASKED)
	@$(PY) -m pip check >/dev/null || { $(PY) -m pip check >&2; echo "error: the locks miss a package the environment needs (above); run 'make lock'" >&2; exit 1; }
	@echo "install: $(LIB) (editable), the Jupyter kernel '$(LIB)', the git filter and merge driver"
	@PYTHONWARNINGS=ignore $(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@$(PY) -m ipykernel install --sys-prefix --name mlkit --display-name "Python ($(LIB))" >/dev/null
	@$(MAKE) --no-print-directory hooks
	@touch "$(STAMP)"
	@case ":$$PATH:" in *":$(BIN):"*) echo "install: done; mlkit is on PATH";; *) if [ "$(ENV)" = "$${CONDA_PREFIX:-}" ]; then \
	  echo "install: done; to put mlkit on PATH: conda activate $(notdir $(ENV))"; \
	  else echo "install: done; to put mlkit on PATH: source $(ENV:$(CURDIR)/%=%)/bin/activate"; fi;; esac

# torch first, on its own. The CPU build comes from PyTorch's CPU index: on Linux it is asked for as torch==X+cpu,
# which PyPI (whose Linux wheel is the CUDA build, 500 MiB) cannot satisfy, so a blocked index stops the install here.
# The CUDA build from PyPI alone: a local CPU wheel (find-links) would satisfy torch==X too (X+cpu matches X).
# An installed torch of the other build satisfies torch==X as well (to pip and pip-sync): it is replaced.
install-torch:
	@echo "install: torch $(TORCH_VERSION) ($(TORCH_NAME_$(TORCH)) build) from $(or $(TORCH_INDEX_$(TORCH)),PyPI)"
	@$(if $(filter cuda,$(TORCH)),env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null) \
	  $(PY) -m pip install --quiet --no-deps --retries 1 $(if $(TORCH_INDEX_$(TORCH)),--extra-index-url $(TORCH_INDEX_$(TORCH))) \
	  $$([ "$$($(PY) -c "$$TORCH_BUILD")" = "$(if $(filter cuda,$(TORCH)),cpu,cuda)" ] && echo --force-reinstall) \
	  "torch==$(TORCH_VERSION)$(if $(filter cpu,$(TORCH)),$$([ "$$(uname -s)" = Linux ] && echo +cpu))" || { \
	  echo "error: pip could not install torch $(TORCH_VERSION)'s $(TORCH_NAME_$(TORCH)) build (above): $(or $(TORCH_INDEX_$(TORCH)),PyPI) $$($(PY) -c "$$INDEX_PROBE" "$(or $(TORCH_INDEX_$(TORCH)),https://pypi.org/simple)/torch/")$(if $(filter cpu,$(TORCH)),; PyPI's Linux torch is the CUDA build; put a CPU wheel in a find-links folder (PIP_FIND_LINKS) or use TORCH=cuda)" >&2; exit 1; }
	@$(TORCH_IS_ASKED)

check-env: ## Refuse what make install must not touch: conda's base, others' environments, a Python the locks are not for
	@# Only an environment that is the project's: .venv/ here, one make made (marked), or conda's `mlkit` from
	@# environment.yml. pip-sync removes whatever the locks do not list, so never conda's base or someone else's.
	@if [ -n "$$CONDA_PREFIX" ] && [ "$(ENV)" = "$$CONDA_PREFIX" ]; then \
	  want=$$(sed -nE 's/^name:[[:space:]]*([^[:space:]]+).*/\1/p' environment.yml); \
	  if [ -d "$(ENV)/condabin" ] || [ "$${CONDA_DEFAULT_ENV:-}" = base ]; then echo "error: conda's base environment is active, and make install would strip it to the locks; create the project's (conda env create -f environment.yml && conda activate $$want), or conda deactivate to use .venv/" >&2; exit 1; fi; \
	  if [ "$$(basename "$(ENV)")" != "$$want" ]; then echo "error: the active conda environment $(ENV) is not the project's ('$$want', from environment.yml), and make install would strip it to the locks; conda activate $$want (or create it: conda env create -f environment.yml)" >&2; exit 1; fi; \
	  if [ ! -x "$(PY)" ]; then echo "error: conda environment $(ENV) has no python; 'conda env create -f environment.yml' first" >&2; exit 1; fi; \
	elif [ -z "$(strip $(ENV))" ]; then echo "error: ENV is empty; leave it unset for .venv/, or name a folder" >&2; exit 1; \
	elif [ -e "$(ENV)" ] && [ "$(abspath $(ENV))" != "$(CURDIR)/.venv" ] && [ ! -e "$(ENV)/.mlkit-env" ]; then \
	  echo "error: $(ENV) was not made by make install, and make install would strip it to the locks; pick a new folder (ENV=...) or the default .venv/" >&2; exit 1; fi
	@if [ "$(TORCH)" = cuda ] && [ "$$(uname -s)" = Darwin ]; then echo "error: TORCH=cuda: macOS has no CUDA; use TORCH=cpu (MPS comes with it)" >&2; exit 1; fi
	@if [ -x "$(PY)" ] && [ -n "$$CONDA_PREFIX" ] && [ "$(ENV)" = "$$CONDA_PREFIX" ]; then "$(PY)" -c "$(PY_OK)" 2>/dev/null || { \
	  echo "error: the conda environment $(notdir $(ENV)) has $(call PY_IS,$(PY)), and the locks are for Python $(LOCK_PYTHON); recreate it from environment.yml (conda deactivate && conda env remove -n $(notdir $(ENV)) && conda env create -f environment.yml && conda activate $(notdir $(ENV))), or conda install -n $(notdir $(ENV)) python=$(LOCK_PYTHON)" >&2; exit 1; }; \
	elif [ -x "$(PY)" ]; then "$(PY)" -c "$(PY_OK)" 2>/dev/null || { echo "error: $(ENV:$(CURDIR)/%=%) has $(call PY_IS,$(PY)), and the locks are for Python $(LOCK_PYTHON); remove it (rm -rf $(ENV:$(CURDIR)/%=%)) and make install again$$("$(PYTHON)" -c "$(PY_OK)" 2>/dev/null || echo ", with PYTHON=python$(LOCK_PYTHON) ($(PYTHON) is $(call PY_IS,$(PYTHON)))")" >&2; exit 1; }; \
	else command -v "$(PYTHON)" >/dev/null || { echo "error: no $(PYTHON) on PATH; $(USE_PY)" >&2; exit 1; }; \
	  "$(PYTHON)" -c "$(PY_OK)" 2>/dev/null || { echo "$(call WRONG_PY,$(PYTHON))" >&2; exit 1; }; fi

hooks: ## Set up the git notebook filter (scripts/check_notebooks.py: nbdev_clean's form, no outputs) and nbdev's merge driver
	@# Configured by hand: `nbstripout --install` and nbdev_install_hooks rely on PATH. The filter writes what nbdev_clean
	@# writes, without outputs (scripts/check_notebooks.py); a checkout of an older commit without that script gets
	@# nbstripout, its filter then. Without a Python (.venv/ deleted) it fails in one line naming the fix (NBFILTER).
	@# Then one index refresh with the filter bypassed. In a fresh clone every notebook is "racily clean" (written
	@# in the same second as the index), so git would run the filter (a Python start) on each at the next `git status`.
	@# Bypassing it is safe: the smudge is cat and notebooks are committed clean, so a notebook whose raw bytes equal
	@# its blob is unmodified, and one whose bytes differ stays marked modified for git to clean and compare later.
	@if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
	  script="$$(git rev-parse --git-common-dir)/mlkit-nbfilter" && \
	  printf '%s\n' "$$NBFILTER" > "$$script.tmp" && mv -f "$$script.tmp" "$$script" && \
	  git config filter.nbstripout.clean '$(NBFILTER_RUN) clean' && \
	  git config filter.nbstripout.smudge cat && \
	  git config filter.nbstripout.required true && \
	  git config diff.ipynb.textconv '$(NBFILTER_RUN) textconv' && \
	  git config merge.nbdev-merge.name "resolve notebook conflicts with nbdev" && \
	  git config merge.nbdev-merge.driver '$(NBFILTER_RUN) merge %O %A %B %P' && \
	  { git -c filter.nbstripout.clean=cat -c filter.nbstripout.required=false update-index -q --refresh >/dev/null 2>&1 || true; } && \
	  echo "git: notebook filter (scripts/check_notebooks.py) and nbdev merge driver set up"; \
	else echo "not a git checkout: no git filter or merge driver set up"; fi

$(STAMP): requirements.txt requirements-$(TORCH).txt setup.py settings.ini
	@$(MAKE) --no-print-directory install

# The locks are resolved by uv against PyPI alone (no pip configuration, find-links or local wheels), so they come
# out the same on any machine: requirements.txt universal (markers for macOS-, Windows- or Python-only packages),
# the CPU torch lock with torch's macOS arm64 metadata (the CPU build's dependencies: no CUDA wheels), the CUDA one
# with its Linux x86_64 metadata. pip-sync installs them; a lock's existing pins are kept unless UV_ARGS=--upgrade.
UV_COMPILE = env $(addprefix -u ,$(filter UV_%,$(.VARIABLES))) $(BIN)/uv pip compile --quiet --no-config \
  --default-index https://pypi.org/simple --python-version $(LOCK_PYTHON) \
  --custom-compile-command "make lock  (uv, PyPI alone, Python $(LOCK_PYTHON))" $(UV_ARGS)

# What the override below leaves in requirements.txt: torch and the packages only it needs, each marked
# `; sys_platform == 'never'` (inert), and `torch` in the `# via` lines of packages others need too. All removed.
define TIDY_LOCK
import re, sys
path = sys.argv[1]
head, *blocks = re.split(r"(?m)^(?=[A-Za-z0-9])", open(path).read())
blocks[-1], _, foot = blocks[-1].partition("\n\n")
entries = [(b.splitlines()[0], re.findall(r"(?m)^\s+#\s+(?:via )?(\S.*)$$", b)) for b in blocks]
kept = [(line, via) for line, via in entries if not re.search(r"\bsys_platform == 'never'", line)]
alive = {re.split(r"[\s=;@\[]", line)[0].lower() for line, _ in kept}
out = [head.rstrip("\n")] if head.strip() else []
for line, via in kept:
    via = [v for v in via if v != "via" and ((v.startswith("-") and not v.startswith("--override")) or v.lower() in alive or v in ("pip", "setuptools", "wheel"))]
    out += [line] + ([f"    # via {via[0]}"] if len(via) == 1 else ["    # via", *(f"    #   {v}" for v in via)] if via else [])
open(path, "w").write("\n".join(out) + "\n" + ("\n" + foot if foot else ""))
endef
export TIDY_LOCK

lock: $(INSTALLED) ## Recompile requirements*.txt from requirements.in (PyPI alone, for Python 3.11), keeping pins
	@mkdir -p build
	grep -vE '^torch[=<>~!]' requirements.in > build/requirements.in
	@# torch stays out of requirements.txt even when a requirement depends on it (mlkit, in projects made by mlkit new):
	@# an override that never applies removes it; the torch locks below pin it and its dependencies per build.
	echo 'torch ; sys_platform == "never"' > build/no-torch.txt
	$(UV_COMPILE) --universal --no-emit-package pip --no-emit-package setuptools \
	  --override build/no-torch.txt -o requirements.txt build/requirements.in
	sed -i.bak 's|-r build/requirements.in|-r requirements.in|' requirements.txt && rm -f requirements.txt.bak
	$(PY) -c "$$TIDY_LOCK" requirements.txt
	echo "$(TORCH_PIN)" > build/torch.in
	MACOSX_DEPLOYMENT_TARGET=14.0 $(UV_COMPILE) --python-platform aarch64-apple-darwin -c requirements.txt \
	  -o requirements-cpu.txt build/torch.in
	$(UV_COMPILE) --python-platform x86_64-manylinux_2_28 -c requirements.txt -o requirements-cuda.txt build/torch.in
	for f in requirements-cpu.txt requirements-cuda.txt; do sed -i.bak 's|-r build/torch.in|-r requirements.in|' $$f && rm -f $$f.bak; done

upgrade: ## Recompile the locks with the newest versions requirements.in allows
	$(MAKE) lock UV_ARGS=--upgrade

conda-lock: ## Lock environment.yml's conda layer with conda-lock for linux-64 and osx-arm64 (needs conda)
	@command -v conda >/dev/null 2>&1 || { echo "error: conda-lock needs conda, and this machine has none; run 'make conda-lock' where conda is installed (CI: the conda-lock workflow). No lock file was written." >&2; exit 1; }
	@command -v conda-lock >/dev/null 2>&1 || { echo "error: conda-lock is not installed; 'conda install -c conda-forge conda-lock' first. No lock file was written." >&2; exit 1; }
	@# conda-lock pins the conda layer (Python, pip); requirements*.txt pin the packages.
	conda-lock lock -f environment.yml -p linux-64 -p osx-arm64 --lockfile conda-lock.yml

export: $(INSTALLED) ## Export the notebooks in nbs/ to the package (settings.ini's lib_name)
	$(BIN)/nbdev_export

lint: $(INSTALLED) ## Lint the package, tests/, bench/, scripts/ with ruff, and the notebooks through nbqa
	$(BIN)/ruff check $(wildcard $(LIB) tests bench scripts) setup.py
	$(BIN)/nbqa ruff nbs

# pytest exits 5 when a selection has no tests (a project whose tests are all slow, or none): not a failure here.
# --dist worksteal: a worker that runs out of tests takes queued ones from the other (the long tests end unevenly).
PYTEST = $(BIN)/pytest -n 2 --dist worksteal --durations=10 $(1) tests || [ $$? -eq 5 ]

# NB=05_train (or nbs/05_train.ipynb, ./nbs/..., a full path): that notebook alone, then the tests that cover it
# (their file's COVERS, or their own @pytest.mark.covers, names it: tests/conftest.py).
NB_PATH = nbs/$(shell printf '%s' '$(NB)' | sed -E 's/\.ipynb$$//; s|^(.*/)?nbs/||; s|^\./||').ipynb

test: $(INSTALLED) ## Run the notebook tests (nbdev_test), then pytest over tests/ in 2 processes, but the slow ones (NB=05_train: one notebook's)
ifdef NB
	@[ -f "$(NB_PATH)" ] || { echo "error: NB=$(NB): there is no $(NB_PATH)" >&2; exit 1; }
	$(BIN)/nbdev_test --path $(NB_PATH)
	$(call PYTEST,-m "not slow" --nb $(NB_PATH))
else
	$(BIN)/nbdev_test --n_workers 2
	$(call PYTEST,-m "not slow")
endif

test-all: test ## make test, then the slow end-to-end tests (a made project's own make test, PostgreSQL); CI runs this
	$(call PYTEST,-m slow)

check: $(INSTALLED) ## Fail on drift: notebook outputs, the package out of sync, stale lock, lint, invalid workflows, docs or devcontainer
	@$(MAKE) --no-print-directory -k NO_INSTALL=1 check-notebooks check-export check-lock lint check-workflows check-docs \
	  check-devcontainer \
	  && echo "check: all clean" || { echo "check: FAILED (see above)" >&2; exit 1; }

check-notebooks:
	@$(PY) scripts/check_notebooks.py check

check-export:
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	  cp -rL settings.ini nbs $(LIB) "$$tmp"/ && (cd "$$tmp" && $(BIN)/nbdev_export) && \
	  diff -r -q -x __pycache__ -x templates $(LIB) "$$tmp/$(LIB)" || { \
	  echo "error: $(LIB)/ is out of sync with nbs/ (files above differ); run 'make export' and commit" >&2; exit 1; }

check-lock:
	@$(PY) scripts/check_lock.py

check-lock-targets: $(INSTALLED) ## Prove the locks install on each target (Linux CPU/CUDA, macOS arm64), from PyPI
	@$(PY) scripts/check_lock_targets.py $(TARGETS)

check-lock-full: $(INSTALLED) ## Recompile the locks in a temporary copy (PyPI) and fail if they differ from the committed ones
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && cp Makefile requirements.in requirements*.txt environment.yml "$$tmp"/ && \
	  { $(MAKE) --no-print-directory -s -C "$$tmp" lock NO_INSTALL=1 ENV="$(ENV)" >/dev/null || { \
	    echo "error: could not recompile the locks (above), so their freshness is unproven" >&2; exit 1; }; } && stale= && \
	  for f in requirements.txt requirements-cpu.txt requirements-cuda.txt; do \
	    diff -u "$$f" "$$tmp/$$f" >&2 || stale="$$stale $$f"; done; \
	  [ -z "$$stale" ] || { echo "error:$$stale differ from a fresh 'make lock' (above); run 'make lock' and commit" >&2; exit 1; }

check-workflows:
	@$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml

check-docs:
	@$(PY) scripts/check_docs.py

check-devcontainer:
	@# JSON5, a superset of the JSONC that VS Code reads (comments, trailing commas)
	@$(BIN)/check-jsonschema --force-filetype json5 --schemafile scripts/schemas/devcontainer.schema.json .devcontainer/devcontainer.json

docs: $(INSTALLED) ## Build the docs site into _docs/ with nbdev_docs (needs Quarto; CI's docs workflow has it)
	@command -v quarto >/dev/null 2>&1 || { echo "error: make docs needs Quarto (https://quarto.org/docs/get-started/), which is not installed here; nothing was built (.github/workflows/docs.yml builds and deploys the site)" >&2; exit 1; }
	@# README.md is written by hand, and tests/test_docs.py keeps nbs/index.ipynb (the site's home page) consistent with
	@# it; nbdev_docs would rewrite README.md from index.ipynb when the notebook is newer, so it is made newer.
	touch README.md
	$(BIN)/nbdev_docs

lab: $(INSTALLED) ## Start JupyterLab on localhost with the project's kernel (LAB_ARGS adds options)
	@# Jupyter refuses to run as root without --allow-root, and root is the usual user in Docker and devcontainers.
	$(BIN)/jupyter lab --ServerApp.ip=127.0.0.1 --ServerApp.root_dir="$(CURDIR)" $(if $(filter 0,$(shell id -u)),--allow-root) \
	  --MappingKernelManager.default_kernel_name=mlkit $(LAB_ARGS)

bench: $(INSTALLED) ## Run the benchmarks in bench/ (a baseline and the code under test, interleaved; medians and ratios)
	@shopt -s nullglob; files=(bench/*.py); [ $${#files[@]} -gt 0 ] || { echo "no benchmarks in bench/ yet"; exit 0; }; \
	  for f in "$${files[@]}"; do echo "== $$f"; $(PY) "$$f" || exit 1; done

gpu-check: $(INSTALLED) ## On a CUDA machine (make install TORCH=cuda): check GPU utilities and Trainer speed, one table
	$(PY) scripts/gpu_check.py

EXPERIMENT ?= nbs/experiments/train_digits.ipynb
train: $(INSTALLED) ## The main job: the digits experiment notebook, run headlessly by `mlkit run` (ARGS="-p lr 0.01 -p epochs 3")
	@$(BIN)/mlkit run $(EXPERIMENT) $(ARGS)

SWEEP ?= sweeps/digits.yaml
WORKERS ?= 2
sweep: $(INSTALLED) ## Search the digits notebook's parameters with Optuna, pruning on (WORKERS=2; ARGS="--n-trials 8")
	@$(BIN)/mlkit sweep $(SWEEP) --workers $(WORKERS) $(ARGS)

clean: ## Remove caches and build artifacts (keeps .venv/ and runs/)
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache _proc _docs
	find . -name __pycache__ -type d -prune -not -path './.venv/*' -exec rm -rf {} +
	find nbs -name .ipynb_checkpoints -type d -prune -exec rm -rf {} +
