# Two entry points (see README): `make run` and `make test`.
# Each creates/reuses a virtualenv and installs with the pinned, tested versions in constraints.txt.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.calib-installed
RUN_ARGS ?=

.PHONY: run test install clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	$(PY) -m pip install -q -c constraints.txt --no-deps torchattacks  # its torchvision pin is not needed
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/calib run --dataset digits $(RUN_ARGS)

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
