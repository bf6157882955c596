# SPDX-License-Identifier: MIT
# MicroPython (unix port) only: the virtual chip's REPL, loaded by chip.py only once the
# chip needs it (main.py has ended, or a soft reset from the raw REPL), so that while the
# meter runs the heap holds no more of the chip than a board's does (its REPL is in C).
#
# A friendly REPL on stdin/stdout that also speaks the raw REPL mpremote uses:
# Ctrl-A raw mode, Ctrl-B friendly, Ctrl-D soft reset (or end of a raw command: "OK",
# output, \x04, error, \x04, ">"), raw-paste is declined with "R\x00".
# Ctrl-C arrives as SIGINT from the supervisor, i.e. as KeyboardInterrupt, never as a byte.
import sys

import sim_machine

_RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
_out = sys.stdout.buffer if hasattr(sys.stdout, "buffer") else sys.stdout
_in = sys.stdin.buffer if hasattr(sys.stdin, "buffer") else sys.stdin
_globals = None  # the chip's __main__ globals (serve)
_uninterrupted = None  # chip.py's guard against a stray Ctrl-C (serve)


def _w(data):
    _out.write(data)


def _getc():
    while True:
        try:
            b = _in.read(1)
        except KeyboardInterrupt:
            return 3
        if not b:
            raise SystemExit(0)  # host closed the port: power off
        return b[0]


def _exec_raw(code):
    _w(b"OK")
    try:
        exec(code, _globals)
        _w(b"\x04")
    except SystemExit:
        raise
    except BaseException as exc:  # includes KeyboardInterrupt: reported, REPL goes on
        _w(b"\x04")
        sys.print_exception(exc)
    _w(b"\x04")


def _soft_reset(code):
    # the reset is under way before it is announced: a Ctrl-C sent on seeing the
    # announcement cannot stop it (see _uninterrupted)
    sim_machine.exiting = code
    _w(b"MPY: soft reboot\r\n")
    sim_machine.chip_exit(code)


def _raw_repl():
    _w(_RAW_BANNER + b">")
    buf = bytearray()
    while True:
        c = _getc()
        if c == 1:  # Ctrl-A: already raw; show the banner again
            buf = bytearray()
            _w(b"\r\n" + _RAW_BANNER + b">")
        elif c == 2:  # Ctrl-B: friendly REPL
            _w(b"\r\n")
            return
        elif c == 3:  # Ctrl-C: drop the buffer
            buf = bytearray()
        elif c == 4:
            if not buf:
                _soft_reset(sim_machine.SOFT_RESET_RAW)
            code = bytes(buf)
            buf = bytearray()
            _exec_raw(code)
            _w(b">")
        elif c == 5 and not buf:  # raw-paste request "\x05A\x01": not supported
            _getc()
            _getc()
            _w(b"R\x00")
        else:
            buf.append(c)


def _friendly_repl():
    _w(b"MicroPython (ctmeter virtual board); Ctrl-A raw REPL, Ctrl-D soft reset\r\n>>> ")
    line = bytearray()
    while True:
        c = _getc()
        if c == 1:
            _uninterrupted(_raw_repl)  # a stray Ctrl-C must not drop it to this REPL
            _w(b">>> ")
        elif c == 3:
            line = bytearray()
            _w(b"\r\nKeyboardInterrupt\r\n>>> ")
        elif c == 4:
            _soft_reset(sim_machine.SOFT_RESET)
        elif c in (13, 10):
            _w(b"\r\n")
            if line:
                try:
                    code = bytes(line).decode()
                    try:
                        value = eval(code, _globals)
                        if value is not None:
                            print(repr(value))
                    except SyntaxError:
                        exec(code, _globals)
                except SystemExit:
                    raise
                except BaseException as exc:
                    sys.print_exception(exc)
            line = bytearray()
            _w(b">>> ")
        elif c in (8, 127):
            if line:
                line = line[:-1]
                _w(b"\x08 \x08")
        else:
            line.append(c)
            _w(bytes([c]))


def serve(raw, globals_, uninterrupted):
    """The chip's REPL from now on: first the raw one if `raw` (after a soft reset from it),
    then the friendly one for good. Returns only by a reset (SystemExit)."""
    global _globals, _uninterrupted
    _globals = globals_
    _uninterrupted = uninterrupted
    if raw:
        uninterrupted(_raw_repl)
    while True:
        uninterrupted(_friendly_repl)
