# SPDX-License-Identifier: MIT
# Every target creates and uses the project's own virtual environment: nothing is installed by hand.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
BOARD  ?= esp32
PORT   ?=

.PHONY: all setup vendor services test test-board sim lint bench flash deploy clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

setup: $(STAMP) vendor

# MicroPython libraries the firmware uses (umqtt.simple), fetched from PyPI and checked by sha256.
vendor: $(STAMP)
	$(PY) -m ctmeter.vendor

# System services the tests talk to (mosquitto, PostgreSQL, Chromium); installs what is missing.
services:
	bash tests/services/install.sh

test: setup services
	$(PY) -m pytest -q

# The device tests against a real board on a serial port.
test-board: setup
	@if [ -z "$(PORT)" ]; then echo "test-board: give the board's port, e.g. make test-board PORT=/dev/ttyUSB0"; exit 2; fi
	$(PY) -m pytest -q -m board --port $(PORT) --board $(BOARD)

sim: setup
	$(PY) -m ctmeter sim

lint: $(STAMP)
	$(VENV)/bin/ruff check device host tests bench

bench: setup
	$(PY) -m bench.run

flash: setup
	@if [ -z "$(PORT)" ]; then echo "flash: give the board's port, e.g. make flash BOARD=esp32 PORT=/dev/ttyUSB0"; exit 2; fi
	$(PY) -m ctmeter flash --board $(BOARD) --port $(PORT)

deploy: setup
	$(PY) -m ctmeter deploy --board $(BOARD) --port $(PORT)

clean:
	rm -rf build .pytest_cache .hypothesis .ruff_cache
