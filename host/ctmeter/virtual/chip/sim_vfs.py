# SPDX-License-Identifier: MIT
# MicroPython (unix port) only: the virtual chip's `vfs` module when it has a ROMFS
# partition (host/ctmeter/virtual/rom_partition.py maps it and passes CTMETER_ROM). It adds
# to the unix port's own module the rom_ioctl a port built with ROMFS has (what
# `mpremote romfs` uses), and mounts the partition at /rom as such a port does at start-up.
#
#   rom_ioctl(1)                       number of partitions (1)
#   rom_ioctl(2, 0)                    the partition, a memoryview read in place
#   rom_ioctl(3, 0, n) / (3, 0, off, n)  erase before writing (whole blocks); min write size
#   rom_ioctl(4, 0, off, data)         write
#   rom_ioctl(5, 0)                    writing done
#   rom_ioctl(6, 0)                    erase block size
from os import getenv

import uctypes
from micropython import const
from vfs import *  # noqa: F401,F403
from vfs import VfsRom, mount

_ENODEV = const(19)  # folded by the compiler: no names of its own on the chip
_EINVAL = const(22)
_MIN_WRITE = const(4)

_a, _n, _block = [int(x) for x in getenv("CTMETER_ROM").split(":")]
_part = uctypes.bytearray_at(_a, _n)
del _a


def rom_ioctl(op, *args):
    if op == 1:
        return 1
    if not args or args[0] != 0:
        return -_ENODEV
    if op == 2:
        return memoryview(_part)
    if op == 3:
        off, n = (0, args[1]) if len(args) == 2 else (args[1], args[2])
        if off < 0 or n < 0 or off % _block or off + n > _n:
            return -_EINVAL
        end = min(_n, (off + n + _block - 1) // _block * _block)
        ff = b"\xff" * 256
        for i in range(off, end, 256):
            _part[i:i + 256] = ff
        return _MIN_WRITE
    if op == 4:
        off, data = args[1], args[2]
        if off < 0 or off + len(data) > _n:
            return -_EINVAL
        _part[off:off + len(data)] = data
        return 0
    if op == 5:
        return 0
    if op == 6:
        return _block
    return -_EINVAL


def mount_rom(path):
    """Mount the partition at /rom and put /rom and /rom/lib first on `path` (sys.path), as
    a port with ROMFS does before boot.py; nothing when it holds no valid image."""
    try:
        mount(VfsRom(memoryview(_part)), "/rom")
    except OSError:
        return False
    path[0:0] = ["/rom", "/rom/lib"]
    return True
