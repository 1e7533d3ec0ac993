# medjax: two commands to start. `make demo` pretrains on the bundled demo data; `make test` runs the suite.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
DEMO_DATA ?= data/demo
DEMO_WORKDIR ?= runs/demo

.PHONY: demo test install install-dev system-deps lab clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[notebooks]'
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[dev,notebooks,interop,federated]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(PY) -m medjax.demo_job --data $(DEMO_DATA) --workdir $(DEMO_WORKDIR)

# the browser tests need the system Chromium: installed first when possible, else the exact command is printed
# before anything else is installed
system-deps:
	bash .ci/ensure-chromium

test: system-deps $(VENV)/.installed-dev
	$(PY) -m pytest -n 2 --timeout 900 --durations=40 tests

lab: $(VENV)/.installed
	$(VENV)/bin/medjax lab

clean:
	rm -rf $(VENV) runs data/demo data/demo_prepared
