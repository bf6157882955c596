# SPDX-License-Identifier: MIT
"""Modules loaded for one job and dropped after it, so their code leaves the heap.

    cmds = modules.use("meter.console_cmds")    # import (or the already loaded module)
    ...
    modules.drop("meter.console_cmds")          # forget it: the GC frees its code

On MicroPython, imported bytecode lives in the heap for as long as the module is
referenced. Work that is rare (console commands, config validation, Home Assistant
discovery) is kept out of the resident set this way; a module's names (qstrs) stay interned
after the first load, so a reload costs only the file read and the code itself.
Under CPython, drop() does nothing: imports are cheap there and tests may patch modules.

A load that runs out of memory part-way leaves part of the module allocated (4-11 KB of an
11 KB module, measured on the unix port with a synthetic module) until that module next
loads in full; dropping it and collecting does not free it, nor does overwriting the Python
stack, so something outside the Python stack holds it. In a heap with no room to spare the
next load then fails too: the meter needs margin (bench/heap_floor.py measures the smallest
heap that runs; the soak runs lib/ 8 KB above it, ROMFS at the issue's 64 KB, its floor).
"""

import gc
import sys

_MPY = sys.implementation.name == "micropython"


def use(name):
    if _MPY and name not in sys.modules:
        # Free the previous copy now, from this shallow frame: a collection triggered deep
        # inside the import scans a deeper C stack, whose stale slots can still point at the
        # old copy (the GC is conservative) and keep it, so the heap would need both.
        gc.collect()
    __import__(name)
    return sys.modules[name]


def drop(name):
    if not _MPY or name not in sys.modules:
        return
    del sys.modules[name]
    i = name.rfind(".")
    parent = sys.modules.get(name[:i]) if i > 0 else None
    if parent is not None:
        try:
            delattr(parent, name[i + 1:])
        except (AttributeError, KeyError):
            pass
