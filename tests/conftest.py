# SPDX-License-Identifier: MIT
"""Shared test options and fixtures.

`--port` runs the `board`-marked tests against a real board (`make test-board PORT=...`);
without it the same tests run against a virtual board (tests/test_on_board.py). Everything
else runs on this machine: CPython, the MicroPython unix port, and the virtual board.
"""

import pytest

from tests.micropython_runner import MicroPython


def pytest_addoption(parser):
    parser.addoption("--port", default=None, help="serial port of a real board (board tests)")
    parser.addoption("--board", default="esp32", help="board definition name in boards/")


@pytest.fixture(scope="session")
def micropython():
    """Runs scripts on the MicroPython unix port (see tests/micropython_runner.py)."""
    return MicroPython()
