# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create/update the project venv (.venv) with the pinned torch/torchaudio pair
# (requirements/constraints.txt) and this package installed editable, then run.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test setup clean-venv

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml requirements/constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements/constraints.txt -e ".[test]"
	$(PY) -m pip install --quiet --no-deps clearvoice==0.1.2
	$(PY) -c "import speechbrain_ext, speechbrain, torchaudio; print('speechbrain-ext', speechbrain_ext.__version__, 'ready')"
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/speechbrain-ext demo

# pytest exits 5 when it collected no test; make turns any non-zero exit into a failure.
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
