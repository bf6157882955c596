# SPDX-License-Identifier: MIT
# MicroPython (unix port) only: the virtual chip's start-up and REPL.
#
#   micropython chip.py power-on|soft|soft-raw      (cwd = the simulated flash)
#
# Like a board: run boot.py, then main.py (not after a soft reset from the raw REPL),
# then a friendly REPL on stdin/stdout that also speaks the raw REPL mpremote uses:
# Ctrl-A raw mode, Ctrl-B friendly, Ctrl-D soft reset (or end of a raw command: "OK",
# output, \x04, error, \x04, ">"), raw-paste is declined with "R\x00".
# Ctrl-C arrives as SIGINT from the supervisor, i.e. as KeyboardInterrupt, never as a byte.
import sys

import sim_machine

sys.modules["machine"] = sim_machine

_RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
_out = sys.stdout.buffer if hasattr(sys.stdout, "buffer") else sys.stdout
_in = sys.stdin.buffer if hasattr(sys.stdin, "buffer") else sys.stdin
_globals = {"__name__": "__main__"}


def _w(data):
    _out.write(data)


def _run_file(name):
    try:
        with open(name) as f:
            source = f.read()
    except OSError:
        return
    try:
        exec(compile(source, name, "exec"), _globals)
    except KeyboardInterrupt as exc:
        sys.print_exception(exc)
    except SystemExit:
        raise
    except Exception as exc:  # a crashing main.py drops to the REPL, as on a board
        sys.print_exception(exc)


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


def _uninterrupted(stage, *args, again=True):
    # A Ctrl-C that lands outside a program (between the stages, while a REPL writes its
    # prompt) does not end the chip: a REPL starts over; a script is not run again. One
    # that lands while the chip resets does not stop the reset.
    while True:
        try:
            return stage(*args)
        except KeyboardInterrupt:
            if sim_machine.exiting is not None:
                sim_machine.chip_exit(sim_machine.exiting)
            if not again:
                return


def _main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "power-on"
    _uninterrupted(_run_file, "boot.py", again=False)
    if mode == "soft-raw":
        _uninterrupted(_raw_repl)
    else:
        _uninterrupted(_run_file, "main.py", again=False)
    while True:
        _uninterrupted(_friendly_repl)


_main()
