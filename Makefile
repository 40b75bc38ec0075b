# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates .venv when missing and installs what it needs first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e .
	touch $(STAMP)

# The tests and linters need the test extra; the demo does not wait for it.
$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(TEST_STAMP)

install: $(TEST_STAMP)

demo: $(STAMP)
	$(BIN)/transferscope demo --out demo-out

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -q

lint: $(TEST_STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

# The README's picture of the demo report's first screen (needs Debian's chromium).
screenshot: demo-out/report/index.html
	mkdir -p docs
	chromium --headless --no-sandbox --hide-scrollbars --window-size=1280,900 \
		--screenshot=docs/report.png file://$(CURDIR)/demo-out/report/index.html

demo-out/report/index.html:
	$(MAKE) demo

clean:
	rm -rf $(VENV) demo-out
