# Two entry points (see README): `make run` and `make test`.
# Each creates/reuses a virtualenv and installs with the pinned, tested versions in constraints.txt.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.calib-installed
RUN_ARGS ?=

.PHONY: run test install clean browser

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	$(PY) -m pip install -q -c constraints.txt --no-deps torchattacks  # its torchvision pin is not needed
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/calib run --dataset digits $(RUN_ARGS)

test: $(STAMP) browser
	$(PY) -m pytest -q

# the report tests render report.html in headless Chromium (Debian package); skipped if unavailable
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1)) || \
	  echo "chromium could not be installed: browser tests will be skipped"

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
