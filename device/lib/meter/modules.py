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
