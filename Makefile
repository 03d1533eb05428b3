# Two entry points (see README): `make run` and `make test`. Both set up what they need.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run demo test check bench clean deps

$(STAMP): pyproject.toml tests/identity/oidc/package-lock.json
	@bash scripts/bootstrap
	@python3 -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[dev,bench]'
	@bash scripts/setup-oidc
	@touch $(STAMP)

deps: $(STAMP)

run: $(STAMP)
	@$(VENV)/bin/cport up

demo: $(STAMP)
	@bash scripts/demo $(VENV)/bin/cport

test: $(STAMP)
	@bash scripts/test $(VENV)

check: $(STAMP)
	@$(VENV)/bin/ruff check src tests bench
	@$(VENV)/bin/ruff format --check src tests bench
	@$(VENV)/bin/mypy --strict src/cport

bench: $(STAMP)
	@for b in bench/bench_*.py; do $(PY) $$b --quick || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
