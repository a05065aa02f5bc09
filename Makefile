# The two commands a new user needs: `make run` and `make test`.
# Both create .venv (torch pinned to 2.13.0, the project installed editable) on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Two stamps: `make run` needs the runtime alone, `make test` adds the test extra on top.
RUNTIME := $(VENV)/.installed-runtime
STAMP := $(VENV)/.installed-stamp

# Extra Hydra overrides for `make run`, e.g. make run ARGS="optimizer=adam batch_size=1"
ARGS ?=
# Extra pytest arguments for `make test`, e.g. make test PYTEST_ARGS="-m slow"
PYTEST_ARGS ?=

.PHONY: run test setup clean

# The runtime plus everything the tests need (what `make test` installs).
setup: $(STAMP)

$(RUNTIME): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch would pull the CUDA build (gigabytes).
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e .
	# An editable install leaves runner/ uncompiled (pip compiles a regular one); where
	# PYTHONDONTWRITEBYTECODE is set, every run would compile it again (about 0.4 s).
	$(BIN)/python -m compileall -q runner
	touch $(RUNTIME)

$(STAMP): $(RUNTIME)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(RUNTIME)
	$(BIN)/python -m runner $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) outputs/* multirun
