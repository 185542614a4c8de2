# Two entry points: `make demo` and `make test`. Both create .venv and install what is missing.
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
SYSSTAMP:= $(VENV)/.system-packages
DEB_PACKAGES := gcc gcc-arm-none-eabi libnewlib-arm-none-eabi gcc-avr avr-libc simavr \
                gcc-riscv64-unknown-elf picolibc-riscv64-unknown-elf dataset-fashion-mnist \
                postgresql

.PHONY: demo test bench lint system clean

$(SYSSTAMP):
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	fi
	@mkdir -p $(VENV) && touch $@

$(STAMP): pyproject.toml | $(SYSSTAMP)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[mcu,search,verify,dev]'
	touch $@

system: $(SYSSTAMP)

demo: $(STAMP) $(SYSSTAMP)
	$(BIN)/ebnn train --data digits --model digits --epochs 30 --out build/demo/digits.pt
	$(BIN)/ebnn summary build/demo/digits.pt
	$(BIN)/ebnn eval build/demo/digits.pt --data digits --split test

test: $(STAMP) $(SYSSTAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q -n 2 tests

bench: $(STAMP) $(SYSSTAMP)
	$(BIN)/python benchmarks/run.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf build .pytest_cache
