# Every target creates or reuses .venv, so on a fresh machine `make run` and
# `make test` need nothing else (python3 >= 3.10 with venv, and network to PyPI).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help run test lint bench venv clean

help: ## Show the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-6s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP) ## Create .venv and install agent-supervise with its dev tools

run: $(STAMP) ## Run the demo fleet: agents finish, one memory hog is stopped at its cap
	@$(BIN)/agent-supervise fleet configs/example.yaml; status=$$?; \
	echo "exit status $$status (1 = not every task ended ok: the hog was stopped at its cap, as intended)"; \
	test $$status -le 1

test: $(STAMP) ## Run the test suite (real processes under real limits)
	$(BIN)/python -m pytest

lint: $(STAMP) ## Lint with ruff
	$(BIN)/ruff check .

bench: ## Benchmarks (not written yet: see issue "Benchmarks side by side with the peers")
	@echo "make bench: no benchmarks exist yet; nothing was measured." >&2
	@exit 2

clean: ## Remove the venv and caches
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
