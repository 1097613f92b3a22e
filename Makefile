# `make demo` and `make test` set everything up on a fresh machine (a .venv beside this file,
# exact versions from constraints.txt) and then run the main job or the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
REFERENCE ?= ../shared/reference

.PHONY: install demo test check-reference bench constraints clean

$(VENV)/.installed: setup.py constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "unified-io needs Python 3.11; run: make PYTHON=/path/to/python3.11 ...")'
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -c constraints.txt -e .
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m unified_io.experiments.main_job --out main_job_output

test: install
	$(PY) -m pytest -q -n 2 --dist worksteal --durations=15 tests

check-reference: install
	$(PY) -m unified_io.interop.check_reference $(REFERENCE)/uio2_text_golden.npz

bench: install
	$(PY) bench/step_time.py $(REFERENCE)/uio2_text_golden.npz --batch 2 --iters 50

# After a deliberate upgrade: re-resolve and pin every version again.
constraints: install
	{ echo "# Exact versions a fresh install resolves to (pip install -c constraints.txt -e .)."; \
	  echo "# Regenerate after a deliberate upgrade: make constraints."; \
	  $(VENV)/bin/pip freeze --exclude-editable; } > constraints.txt

clean:
	rm -rf $(VENV) *.egg-info
