# One way to run things; README and .ci/run call these targets.
# `make run` and `make test` set up everything they need on a fresh machine (venv, pip, npm, Go tools).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BUF := tools/node_modules/.bin/buf
CONFIG ?=

.PHONY: help setup run test test-python test-go lint gen gen-check breaking bench bench-proxy bench-security wrk clean model eval-security

help:
	@echo "make run     start llmtrace serve (core on 127.0.0.1:50051; CONFIG=file.yaml to use a config)"
	@echo "make test    regenerate+diff stubs, lint, type-check, buf checks, Python and Go tests"
	@echo "make lint    ruff, mypy --strict, buf lint/format/breaking, go vet"
	@echo "make gen     regenerate Python and Go stubs from proto/"
	@echo "make bench   run the benchmarks in tools/bench/ (core and proxy)"
	@echo "make bench-proxy  run only the proxy benchmark (tools/bench/proxy.py)"
	@echo "make bench-security  time the regex tiers and the classifier per 1 KB prompt"
	@echo "make model   retrain the shipped injection classifier (needs ../shared/datasets)"
	@echo "make eval-security  leave-sources-out evaluation of the security tiers (docs/security.md)"

# The venv is rebuilt when the dependency lists change.
$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e clients/python -e '.[dev]'
	touch $@

$(BUF): tools/package.json tools/package-lock.json
	cd tools && npm ci --silent --no-audit --no-fund
	touch $@

setup: $(VENV)/.installed $(BUF)

run: $(VENV)/.installed
	$(VENV)/bin/llmtrace serve $(if $(CONFIG),--config $(CONFIG))

gen: setup
	PYTHON=$(PY) tools/gen.sh

gen-check: setup
	PYTHON=$(PY) tools/gen.sh --check

# buf breaking compares the contract with the previous commit (skipped on the first one).
breaking: $(BUF)
	@if git rev-parse -q --verify HEAD~1 >/dev/null && git cat-file -e HEAD~1:proto 2>/dev/null; then \
		$(BUF) breaking --against '.git#ref=HEAD~1' && echo "buf breaking: no breaking change since HEAD~1"; \
	else echo "buf breaking: no previous commit with proto/, skipped"; fi

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(BUF) lint
	$(BUF) format --diff --exit-code
	$(MAKE) --no-print-directory breaking
	cd clients/go && go vet ./...

test-python: setup
	$(VENV)/bin/pytest -q

test-go: setup
	cd clients/go && LLMTRACE_BIN=$(CURDIR)/$(VENV)/bin/llmtrace go test ./...

test: gen-check lint test-python test-go

# The proxy benchmark's load generator: the Debian package, installed when missing.
SUDO := $(shell test "$$(id -u)" -eq 0 || echo sudo)
wrk:
	@command -v wrk >/dev/null || { echo "installing wrk (apt-get install -y wrk)"; \
		$(SUDO) apt-get install -y -q wrk >/dev/null || { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q wrk >/dev/null; }; }

bench: setup wrk
	$(PY) tools/bench/run_all.py

bench-proxy: setup wrk
	$(PY) tools/bench/proxy.py

bench-security: setup
	$(PY) tools/bench/security_tiers.py
	$(PY) tools/bench/classifier.py

model: setup
	$(PY) -m tools.train.classifier

eval-security: setup
	$(PY) -m tools.train.evaluate

clean:
	rm -rf $(VENV) .tools tools/node_modules .mypy_cache .ruff_cache .pytest_cache
