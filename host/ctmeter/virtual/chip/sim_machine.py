# SPDX-License-Identifier: MIT
# MicroPython (unix port) only: the virtual chip's `machine` module. It extends the unix
# port's own module with the reset functions a board has; the exit codes tell the
# supervisor (host/ctmeter/virtual/supervisor.py) how to restart the chip.
import sys
from os import getenv

from machine import *  # noqa: F401,F403

HARD_RESET = 99
SOFT_RESET = 98  # soft reset from the friendly REPL: boot.py and main.py run again
SOFT_RESET_RAW = 97  # soft reset from the raw REPL: main.py is skipped, raw REPL resumes


exiting = None  # the exit code once the chip has begun to reset


def chip_exit(code):
    # The reason goes to the supervisor's note file first: a Ctrl-C (SIGINT) that lands
    # while the process winds down kills it, and the exit code with it. One that lands
    # before sys.exit finds `exiting` set (chip.py then exits all the same).
    global exiting
    exiting = code
    note = getenv("CTMETER_RESET_NOTE")
    if note:
        with open(note, "w") as f:
            f.write(str(code))
    sys.exit(code)


def reset():
    chip_exit(HARD_RESET)


def soft_reset():
    chip_exit(SOFT_RESET)


def reset_cause():
    return 1  # PWRON_RESET
