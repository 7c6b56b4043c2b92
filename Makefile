# intelbus: the two commands are `make demo` and `make test`; both install what is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: install stack-install up down status demo test unit integration bench bench-quick screenshots clean

install: $(STAMP)  ## create .venv and install intelbus (editable) with pinned dependency ranges

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "intelbus needs Python 3.11 or newer (set PYTHON=python3.11)")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test,bench]'
	@rm -f $(VENV)/.installed-*
	@touch $@

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
