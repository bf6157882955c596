# SPDX-License-Identifier: MIT
# MicroPython (unix port) only: the virtual chip's `machine` module. It extends the unix
# port's own module with the reset functions a board has; the exit codes tell the
# supervisor (host/ctmeter/virtual/supervisor.py) how to restart the chip.
import sys

from machine import *  # noqa: F401,F403

HARD_RESET = 99
SOFT_RESET = 98  # soft reset from the friendly REPL: boot.py and main.py run again
SOFT_RESET_RAW = 97  # soft reset from the raw REPL: main.py is skipped, raw REPL resumes


def reset():
    sys.exit(HARD_RESET)


def soft_reset():
    sys.exit(SOFT_RESET)


def reset_cause():
    return 1  # PWRON_RESET
