# intelbus: the two commands are `make demo` and `make test`; both install what is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: install lock stack-install up down status demo test unit integration bench bench-quick screenshots clean

install: $(STAMP)  ## create .venv and install intelbus (editable) with the locked versions of constraints.txt

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "intelbus needs Python 3.11 or newer (set PYTHON=python3.11)")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test,bench]'
	@rm -f $(VENV)/.installed-*
	@touch $@

lock:  ## re-lock constraints.txt: a fresh venv from pyproject.toml's ranges, frozen (then review the diff)
	rm -rf .cache/lock-venv && $(PYTHON) -m venv .cache/lock-venv
	.cache/lock-venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
	.cache/lock-venv/bin/python -m pip install -q --disable-pip-version-check '.[test,bench]'
	{ sed -n '1,2p' constraints.txt; .cache/lock-venv/bin/python -m pip freeze --all \
	  | grep -v -E '^(pip|setuptools|wheel|intelbus)( @ |==)'; } > constraints.txt.new && mv constraints.txt.new constraints.txt
	rm -rf .cache/lock-venv

stack-install: install  ## apt packages (ClickHouse), Kafka and the registry from Maven Central
	$(BIN)/intelbus install

up: stack-install
	$(BIN)/intelbus up

down:
	$(BIN)/intelbus down

status:
	$(BIN)/intelbus status

demo: stack-install  ## the whole story, live
	$(BIN)/python -m ops.demo

test: stack-install  ## the whole suite: unit tests, then integration tests on the real stack
	$(BIN)/python -m pytest tests -q

unit: install
	$(BIN)/python -m pytest tests/unit -q

integration: stack-install
	$(BIN)/python -m pytest tests/integration -q

bench: stack-install
	$(BIN)/python -m bench.run

bench-quick: stack-install
	$(BIN)/python -m bench.run --quick

screenshots: stack-install  ## docs/console-wall.png and docs/console-trail.png, made by the console's browser tests
	INTELBUS_SCREENSHOTS=1 $(BIN)/python -m pytest tests/integration/test_console_browser.py -q

clean:
	rm -rf $(VENV) build *.egg-info
