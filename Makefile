# The two commands of the README:  `make lab`  and  `make test`.
# Both install what they need into .venv first; re-running is fast when nothing changed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: install lab test test-py test-nb demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml environment.yml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first and pinned: an unpinned torch pulls gigabytes of CUDA packages.
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[test,hf]"
	touch $(STAMP)

lab: install
	$(VENV)/bin/jupyter lab notebooks/

demo: install
	$(VENV)/bin/qlab demo

test: install
	$(VENV)/bin/qlab info
	bash tools/install_browser.sh
	$(PY) -m pytest tests -q
	$(PY) -m pytest --nbval --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg notebooks -q -p no:cacheprovider

bench: install
	$(PY) benchmarks/bench_core.py

clean:
	rm -rf $(VENV) build *.egg-info
