# The two commands of the README:  `make lab`  and  `make test`.
# Both install what they need into .venv first; re-running is fast when nothing changed.
#
# Variables (make VAR=value ...):
#   PYTHON           the interpreter the venv is made from (3.10 ... 3.13), e.g. PYTHON=python3.12
#   TORCH            the torch requirement installed first, e.g. TORCH=torch==2.13.0+cpu for the CPU build
#   EXTRA_INDEX_URL  one more package index for pip, e.g. PyTorch's CPU-only wheel index
# A different PYTHON, TORCH or EXTRA_INDEX_URL than the venv was made with makes a new venv.
PYTHON          ?= python3
TORCH           ?= torch==2.13.0
EXTRA_INDEX_URL ?=
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
CONFIG := $(VENV)/.config
INDEX  := $(if $(strip $(EXTRA_INDEX_URL)),--extra-index-url "$(EXTRA_INDEX_URL)")
WANTED := python=$(shell $(PYTHON) -c 'import platform; print(platform.python_version())' 2>/dev/null) torch=$(TORCH) index=$(EXTRA_INDEX_URL)

.PHONY: install lab test test-nb demo bench student engines clean FORCE

install: $(STAMP)

# Rewritten (and the venv removed) only when the wanted configuration changes, so the stamp below
# stays valid otherwise.
$(CONFIG): FORCE
	@case "$(WANTED)" in python=\ *) echo "qlab: error: PYTHON=$(PYTHON) does not run" >&2; exit 2;; esac
	@if [ "$$(cat $@ 2>/dev/null)" != "$(WANTED)" ]; then \
		echo "making a new $(VENV) for: $(WANTED)"; rm -rf $(VENV); mkdir -p $(VENV); echo "$(WANTED)" > $@; fi

$(STAMP): pyproject.toml environment.yml $(CONFIG)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first and pinned: an unpinned torch pulls gigabytes of CUDA packages.
	$(PIP) install -q $(INDEX) "$(TORCH)"
	$(PIP) install -q $(INDEX) -e ".[test,hf]"
	touch $(STAMP)

lab: install
	$(VENV)/bin/jupyter lab notebooks/

demo: install
	$(VENV)/bin/qlab demo

test: install
	$(VENV)/bin/qlab info
	bash tools/install_browser.sh
	# two workers, a test file each (pytest-xdist), the longest files first (tests/conftest.py): the browser
	# tests run every notebook once, two at a time, in its student edition with the instructor's solutions
	# appended, and compare what it prints with the committed instructor notebook (nbval's check, see
	# tests/test_browser.py), while the other worker runs the rest
	$(PY) -m pytest tests -q -n 2 --dist loadfile --durations=25

# nbval over the instructor notebooks (two at a time, one kernel per worker; each runs torch on one thread):
# for whoever edits a notebook. `make test` checks the same outputs in the browser run.
test-nb: install
	$(PY) -m pytest --nbval --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg notebooks -q -p no:cacheprovider -n 2 --dist loadfile

# The student edition and the nbgrader course (README: "For instructors"), in build/course/.
student: install
	$(PY) tools/build_course.py

bench: install
	$(PY) benchmarks/bench_core.py

# llama.cpp for qlab's GGUF exports (qlab.export, notebook 12, benchmarks/bench_llama_cpp.py), as
# llama-cpp-python built from source into .venv: there is no CPU wheel. Tens of minutes on 2 cores; not part
# of `make test`. On x86-64 the build targets AVX2 rather than -march=native: a native build on a CPU with
# AMX (Xeon Sapphire Rapids and later) emits AMX tile instructions, which a VM that does not grant AMX
# state kills with SIGILL (measured here: `tileloadd` in the Q8_0 matmul).
ENGINE_CMAKE_ARGS ?= $(if $(filter x86_64,$(shell uname -m)),-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON,-DGGML_NATIVE=ON)
engines: install
	CMAKE_ARGS="$(ENGINE_CMAKE_ARGS) -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF" \
		$(PIP) install --no-binary llama-cpp-python --no-cache-dir llama-cpp-python diskcache

clean:
	rm -rf $(VENV) build *.egg-info
