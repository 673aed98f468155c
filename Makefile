# mlkit: notebook-first ML projects. `make` (or `make help`) lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

# Which torch build `make install` puts in the environment: cpu (default) or cuda. See README, "Environments".
TORCH ?= cpu
TORCH_INDEX_cpu := https://download.pytorch.org/whl/cpu
TORCH_INDEX_cuda :=
ifeq ($(filter $(TORCH),cpu cuda),)
$(error TORCH must be cpu or cuda, not '$(TORCH)')
endif

# The environment: the active conda environment if there is one, else .venv/ made from the python3 on PATH.
ifdef CONDA_PREFIX
ENV ?= $(CONDA_PREFIX)
else
ENV ?= $(CURDIR)/.venv
endif
BIN := $(ENV)/bin
PY := $(BIN)/python
# `make install` leaves this stamp; targets that need the environment rebuild it when the locks change.
STAMP := $(ENV)/.mlkit-installed-$(TORCH)
# NO_INSTALL=1 runs a target in the environment as it is (the drift tests use it on copies of the repo).
INSTALLED := $(if $(NO_INSTALL),,$(STAMP))

NOTEBOOKS = $(shell find nbs tests/notebooks -name '*.ipynb' -not -path '*/.ipynb_checkpoints/*' 2>/dev/null | sort)
PIP_COMPILE := $(BIN)/pip-compile --quiet --strip-extras --no-emit-find-links --no-emit-index-url
TORCH_PIN := $(shell grep -E '^torch[=<>~!]' requirements.in)

.PHONY: help install hooks lock upgrade conda-lock export lint test check lab bench gpu-check train clean \
        check-notebooks check-export check-lock check-workflows

help: ## List the targets
	@echo "mlkit: make TARGET   (TORCH=cpu|cuda picks the torch build; now $(TORCH); environment: $(ENV))"
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## (.*)/  \1\t\2/' | expand -t 18

install: ## Create or sync the environment from the locks; register the kernel, the git filter and merge driver
	@if [ ! -x "$(PY)" ]; then \
	  if [ -n "$$CONDA_PREFIX" ]; then echo "error: conda environment $(ENV) has no python; 'conda env create -f environment.yml' first" >&2; exit 1; fi; \
	  echo "creating $(ENV) with $$(python3 --version)"; python3 -m venv "$(ENV)"; fi
	$(PY) -m pip install --quiet "$$(grep -E '^pip-tools==' requirements.txt)"
	@# torch first, on its own: the CPU build comes from PyTorch's CPU index (PyPI's Linux wheel is the CUDA build).
	$(PY) -m pip install --quiet --no-deps --retries 1 $(if $(TORCH_INDEX_$(TORCH)),--extra-index-url $(TORCH_INDEX_$(TORCH))) \
	  "$$(grep -E '^torch==' requirements-$(TORCH).txt)"
	$(BIN)/pip-sync --quiet requirements.txt requirements-$(TORCH).txt
	PYTHONWARNINGS=ignore $(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name mlkit --display-name "Python (mlkit)" >/dev/null
	@$(MAKE) --no-print-directory hooks
	@touch "$(STAMP)"

hooks: ## Set up the git filter (nbstripout --keep-id) and nbdev's merge driver in this checkout
	@# Configured by hand: `nbstripout --install` drops --keep-id, and nbdev_install_hooks relies on PATH.
	@# Then one index refresh with the filter bypassed. In a fresh clone every notebook is "racily clean" (written
	@# in the same second as the index), so git would run the filter (a Python start) on each at the next `git status`.
	@# Bypassing it is safe: the smudge is cat and notebooks are committed clean, so a notebook whose raw bytes equal
	@# its blob is unmodified, and one whose bytes differ stays marked modified for git to clean and compare later.
	@if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
	  git config filter.nbstripout.clean '"$(PY)" -m nbstripout --keep-id' && \
	  git config filter.nbstripout.smudge cat && \
	  git config filter.nbstripout.required true && \
	  git config diff.ipynb.textconv '"$(PY)" -m nbstripout --keep-id -t' && \
	  git config merge.nbdev-merge.name "resolve notebook conflicts with nbdev" && \
	  git config merge.nbdev-merge.driver '"$(BIN)/nbdev_merge" %O %A %B %P' && \
	  { git -c filter.nbstripout.clean=cat -c filter.nbstripout.required=false update-index -q --refresh >/dev/null 2>&1 || true; } && \
	  echo "git: nbstripout filter (--keep-id) and nbdev merge driver set up"; \
	else echo "not a git checkout: no git filter or merge driver set up"; fi

$(STAMP): requirements.txt requirements-$(TORCH).txt setup.py settings.ini
	@$(MAKE) --no-print-directory install

lock: ## Recompile requirements*.txt from requirements.in, keeping current pins where possible
	$(PIP_COMPILE) --unsafe-package torch -o requirements.txt requirements.in
	@# torch builds: CPU against this machine's indexes (+cpu local tag dropped: the index decides the build),
	@# CUDA against PyPI alone, with the shared pins of requirements.txt as constraints.
	echo "$(TORCH_PIN)" | CUSTOM_COMPILE_COMMAND="make lock" $(PIP_COMPILE) --allow-unsafe -c requirements.txt -o requirements-cpu.txt -
	sed -i -E 's/^(torch==[^+ ]+)\+cpu$$/\1/; s/# via -r -$$/# via -r requirements.in/' requirements-cpu.txt
	echo "$(TORCH_PIN)" | env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null CUSTOM_COMPILE_COMMAND="make lock" \
	  $(PIP_COMPILE) --allow-unsafe -c requirements.txt -o requirements-cuda.txt -
	sed -i -E 's/# via -r -$$/# via -r requirements.in/' requirements-cuda.txt

upgrade: ## Recompile the locks with the newest versions requirements.in allows
	$(MAKE) lock PIP_COMPILE="$(PIP_COMPILE) --upgrade"

conda-lock: ## Lock environment.yml's conda layer with conda-lock for linux-64 and osx-arm64 (needs conda)
	@command -v conda >/dev/null 2>&1 || { echo "error: conda-lock needs conda, and this machine has none; run 'make conda-lock' where conda is installed (CI: the conda-lock workflow). No lock file was written." >&2; exit 1; }
	@command -v conda-lock >/dev/null 2>&1 || { echo "error: conda-lock is not installed; 'conda install -c conda-forge conda-lock' first. No lock file was written." >&2; exit 1; }
	@# conda-lock cannot read the '-r requirements.txt' pip lines (conda-lock#474), and pip-tools locks those
	@# anyway: conda-lock pins the conda layer (Python, pip), requirements*.txt pin the packages.
	mkdir -p build && awk '/^  - pip:/{skip=1; next} skip && /^      /{next} {skip=0; print}' environment.yml > build/environment.conda.yml
	conda-lock lock -f build/environment.conda.yml -p linux-64 -p osx-arm64 --lockfile conda-lock.yml

export: $(INSTALLED) ## Export the notebooks in nbs/ to the package mlkit/
	$(BIN)/nbdev_export

lint: $(INSTALLED) ## Lint mlkit/, tests/, bench/, scripts/ with ruff, and the notebooks through nbqa
	$(BIN)/ruff check $(wildcard mlkit tests bench scripts) setup.py
	$(BIN)/nbqa ruff nbs

test: $(INSTALLED) ## Run the notebook tests (nbdev_test) and then pytest over tests/
	$(BIN)/nbdev_test --n_workers 2
	$(BIN)/pytest tests

check: $(INSTALLED) ## Fail on drift: notebook outputs, mlkit/ out of sync, stale lock, lint, invalid workflows
	@$(MAKE) --no-print-directory -k NO_INSTALL=1 check-notebooks check-export check-lock lint check-workflows \
	  && echo "check: all clean" || { echo "check: FAILED (see above)" >&2; exit 1; }

check-notebooks:
	@$(BIN)/nbstripout --verify --keep-id $(NOTEBOOKS) || { \
	  echo "error: notebooks above hold outputs or execution counts; clear them (or 'git add' them: the filter strips them)" >&2; exit 1; }

check-export:
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	  cp -r settings.ini nbs mlkit "$$tmp"/ && (cd "$$tmp" && $(BIN)/nbdev_export) && \
	  diff -r -q -x __pycache__ mlkit "$$tmp/mlkit" || { \
	  echo "error: mlkit/ is out of sync with nbs/ (files above differ); run 'make export' and commit" >&2; exit 1; }

check-lock:
	@$(PY) scripts/check_lock.py

check-workflows:
	@$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml

lab: $(INSTALLED) ## Start JupyterLab on localhost with the project's kernel (LAB_ARGS adds options)
	$(BIN)/jupyter lab --ServerApp.ip=127.0.0.1 --ServerApp.root_dir="$(CURDIR)" \
	  --MappingKernelManager.default_kernel_name=mlkit $(LAB_ARGS)

bench: $(INSTALLED) ## Run the benchmarks in bench/ (baseline and mlkit interleaved; medians and ratios)
	@shopt -s nullglob; files=(bench/*.py); [ $${#files[@]} -gt 0 ] || { echo "no benchmarks in bench/ yet"; exit 0; }; \
	  for f in "$${files[@]}"; do echo "== $$f"; $(PY) "$$f" || exit 1; done

gpu-check: $(INSTALLED) ## On a CUDA machine (make install TORCH=cuda): check GPU utilities and Trainer speed, one table
	$(PY) scripts/gpu_check.py

EXPERIMENT ?= nbs/experiments/train_digits.ipynb
train: $(INSTALLED) ## The main job: the digits experiment notebook, run headlessly by `mlkit run` (ARGS="-p lr 0.01 -p epochs 3")
	$(BIN)/mlkit run $(EXPERIMENT) $(ARGS)

clean: ## Remove caches and build artifacts (keeps .venv/ and runs/)
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache _proc _docs
	find . -name __pycache__ -type d -prune -not -path './.venv/*' -exec rm -rf {} +
	find nbs -name .ipynb_checkpoints -type d -prune -exec rm -rf {} +
