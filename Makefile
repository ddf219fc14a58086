# The two commands a new machine needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test check lint typecheck pytest peers venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@# python-ldap has no Linux wheel: it builds against libldap2-dev and libsasl2-dev.
	@test -e /usr/include/ldap.h -a -e /usr/include/sasl/sasl.h || bash deploy/dev/install-peers.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

peers:
	bash deploy/dev/install-peers.sh

demo: venv peers
	$(PY) -m roamgate.demo

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy

# The suite mostly waits on real peers (failure delays, timeouts), so three xdist workers halve
# its time on two cores; loadfile keeps each module (and its shared gateway) in one worker.
# `make test PYTEST_WORKERS=0` runs it serially.
PYTEST_WORKERS ?= 3

pytest: venv peers
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# CI runs `make test`: lint, strict types and the whole suite, as `make check` does.
test: lint typecheck pytest

check: test

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache demo-run
