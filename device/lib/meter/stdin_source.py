# SPDX-License-Identifier: MIT
"""Non-blocking byte source over stdin (the USB/UART REPL on a board, a pipe on the unix port).

    src = StdinSource(); if src.any(): b = src.read1()   # an int 0..255, or -1 at EOF

`readline()` would block the meter, and the chip's stdin holds ~260 bytes: the console polls
this between sampling bursts and assembles lines itself. Ctrl-C never arrives here: the
REPL turns it into KeyboardInterrupt.
"""

import select
import sys


class StdinSource:
    def __init__(self, stream=None):
        self._stream = stream or sys.stdin
        self._poll = select.poll()
        self._poll.register(self._stream, select.POLLIN)
        self._raw = self._stream.buffer if hasattr(self._stream, "buffer") else self._stream

    def any(self):
        # ipoll reuses its result tuple: no allocation when nothing has arrived
        for _ in self._poll.ipoll(0) if hasattr(self._poll, "ipoll") else self._poll.poll(0):
            return True
        return False

    def read1(self):
        b = self._raw.read(1)
        if not b:
            return -1
        return b[0] if isinstance(b, (bytes, bytearray)) else ord(b)
