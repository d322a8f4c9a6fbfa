# flanx: `make demo`, `make test`, `make bench`. Each target bootstraps .venv itself.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed-$(shell cat setup.py constraints.txt | sha1sum | cut -c1-12)
FLANX_DATA_DIR ?= $(abspath ../shared/data)
export FLANX_DATA_DIR

.PHONY: install demo test test-fast bench clean

$(STAMP): setup.py constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools wheel
	$(PIP) install --quiet -c constraints.txt -e '.[test]'
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m flanx.cli demo

test: $(STAMP)
	$(PY) -m pytest -q -ra tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -ra -m "not slow" tests

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

clean:
	rm -rf $(VENV) build src/*.egg-info
