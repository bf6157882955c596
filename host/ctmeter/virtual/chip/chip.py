# SPDX-License-Identifier: MIT
# MicroPython (unix port) only: the virtual chip's start-up.
#
#   micropython chip.py power-on|soft|soft-raw      (cwd = the simulated flash)
#
# Like a board: run boot.py, then main.py (not after a soft reset from the raw REPL),
# then the REPL (chip_repl.py, loaded only then: a board's REPL takes none of its heap).
# With a ROM partition (CTMETER_ROM), it is mounted at /rom first, as a ROMFS build does.
# Ctrl-C arrives as SIGINT from the supervisor, i.e. as KeyboardInterrupt, never as a byte.
import sys
from os import getenv

import sim_machine

sys.modules["machine"] = sim_machine

if getenv("CTMETER_ROM"):  # a ROMFS partition (rom_partition.py): mounted before boot.py
    import sim_vfs

    sys.modules["vfs"] = sim_vfs
    sim_vfs.mount_rom(sys.path)

_globals = {"__name__": "__main__"}


def _run_file(name):
    try:
        with open(name) as f:
            source = f.read()
    except OSError:
        return
    try:
        code = compile(source, name, "exec")
        source = None  # a board reads main.py as it compiles it: the text is not kept
        exec(code, _globals)
    except KeyboardInterrupt as exc:
        sys.print_exception(exc)
    except SystemExit:
        raise
    except Exception as exc:  # a crashing main.py drops to the REPL, as on a board
        sys.print_exception(exc)


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


def _repl(raw):
    try:
        import chip_repl
    except MemoryError:
        # The firmware left no room for it (a board's REPL is in C and needs none): drop
        # the firmware's modules from sys.modules (an import at the REPL loads them again).
        for name in list(sys.modules):
            if name not in ("sim_machine", "machine", "sim_vfs", "vfs"):
                del sys.modules[name]
        import gc

        gc.collect()
        import chip_repl
    chip_repl.serve(raw, _globals, _uninterrupted)


def _main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "power-on"
    _uninterrupted(_run_file, "boot.py", again=False)
    if mode != "soft-raw":
        _uninterrupted(_run_file, "main.py", again=False)
    _uninterrupted(_repl, mode == "soft-raw")


_main()
