# The two commands a new user needs: `make run` and `make test`.
# Both create .venv (torch pinned to 2.13.0, the project installed editable) on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

# Extra Hydra overrides for `make run`, e.g. make run ARGS="optimizer=adam batch_size=1"
ARGS ?=
# Extra pytest arguments for `make test`, e.g. make test PYTEST_ARGS="-m slow"
PYTEST_ARGS ?=

.PHONY: run test setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch would pull the CUDA build (gigabytes).
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m runner $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) outputs/* multirun
