# Two commands for a fresh machine with Python 3.11+:  `make run`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# two install levels, so `make run` stays small and a later `make test` adds the extras
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed-test

.PHONY: run test test-fast lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# the runtime dependencies only (what `make run` needs)
$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

# plus the test tools, the offline Kubernetes checkers and the load tool's event loop
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test,k8s,bench]'
	touch $@ $(RUN_STAMP)

tests/js/node_modules/.package-lock.json: tests/js/package-lock.json
	npm ci --prefix tests/js --no-audit --no-fund --loglevel=error

tests/k8s/grafana/node_modules/.package-lock.json: tests/k8s/grafana/package-lock.json
	npm ci --prefix tests/k8s/grafana --no-audit --no-fund --loglevel=error

NODE_DEPS := tests/js/node_modules/.package-lock.json tests/k8s/grafana/node_modules/.package-lock.json

## run: the service on http://127.0.0.1:3000, embedded mode, with dev tokens printed
## (the demo page needs npm for the socket.io JS client; without npm the service still runs)
run: $(RUN_STAMP)
	@if command -v npm >/dev/null; then $(MAKE) --no-print-directory $(word 1,$(NODE_DEPS)); \
	else echo "note: npm not found: the demo page will ask for the socket.io JS client"; fi
	$(BIN)/socketio-service --dev

## test: every suite (fast, slow, k8s), then the protocol suites again on python-engineio's
## stock websocket handling (the fallback driver); CI runs exactly this
test: $(STAMP) $(NODE_DEPS)
	$(BIN)/pytest
	WEBSOCKET_DRIVER=stock $(BIN)/pytest tests/test_protocol.py tests/test_hostile_input.py \
	  tests/test_client.py tests/test_js_client.py tests/test_engine_shape.py

## test-fast: the quick suite while you work (no slow, no k8s)
test-fast: $(STAMP) tests/js/node_modules/.package-lock.json
	$(BIN)/pytest -m "not slow and not k8s"

lint: $(STAMP)
	$(BIN)/ruff check service tests
	$(BIN)/ruff format --check service tests

clean:
	rm -rf $(VENV) tests/js/node_modules tests/k8s/grafana/node_modules
