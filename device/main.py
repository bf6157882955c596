# SPDX-License-Identifier: MIT
# The meter starts here on every hard reset (a soft reset from mpremote's raw REPL skips it).
from meter.board import board_module, stopped

board_module()  # first, while the heap is empty: stopped() needs it when nothing else fits
try:
    from meter.app import main

    main()
except Exception as exc:  # noqa: BLE001 - Ctrl-C (KeyboardInterrupt) still reaches the REPL
    stopped(exc)  # could not start, or stopped on an error: say why and restart the board
