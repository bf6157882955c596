# SPDX-License-Identifier: MIT
"""Shared test options and fixtures.

`--port` runs the `board`-marked tests against a real board; without it they are skipped with
the reason. Everything else runs on this machine: CPython, the MicroPython unix port, and the
virtual board.
"""

import pytest

from tests.micropython_runner import MicroPython


def pytest_addoption(parser):
    parser.addoption("--port", default=None, help="serial port of a real board (board tests)")
    parser.addoption("--board", default="esp32", help="board definition name in boards/")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--port"):
        return
    skip = pytest.mark.skip(reason="needs a real board: run `make test-board PORT=/dev/ttyUSB0`")
    for item in items:
        if "board" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def micropython():
    """Runs scripts on the MicroPython unix port (see tests/micropython_runner.py)."""
    return MicroPython()
