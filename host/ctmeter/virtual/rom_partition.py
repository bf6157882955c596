# SPDX-License-Identifier: MIT
"""The virtual chip's ROMFS partition: a file mapped into the chip's memory.

A MicroPython built with ROMFS (MICROPY_VFS_ROM) has a flash partition that the CPU reads
in place: `mpremote romfs deploy` writes a ROMFS image to it, the firmware mounts it at
/rom before boot.py, and .mpy modules imported from it run from the flash. Their bytecode
and constants are not copied into the heap (only the per-function records the loader
makes are): on a chip without PSRAM that is the difference between a meter that fits and
one that does not (docs/BENCHMARKS.md, heap section).

The virtual chip models it with the PyPI unix port, which runs MicroPython inside a
CPython process: this script, run by that CPython, maps the partition file (shared, so
what the chip writes reaches the file, and survives the chip's resets and power cuts as
written flash does), tells the chip where it is (CTMETER_ROM=address:size:block), then
starts MicroPython. The chip's `vfs.rom_ioctl` (chip/sim_vfs.py) serves it the way a port's
C code does. The mapping is outside MicroPython's heap, as a board's flash is.

    python rom_partition.py PARTITION_FILE -X heapsize=64k chip.py power-on
"""

import ctypes
import mmap
import os
import sys
from pathlib import Path

SIZE = 256 * 1024  # as a small ESP32 ROMFS partition; the firmware's image is ~80 KB
BLOCK = 4096  # the flash's erase block
ERASED = b"\xff"


def path_for(flash_dir) -> Path:
    """Where a virtual board keeps its ROM partition: beside its flash folder."""
    flash_dir = Path(flash_dir)
    return flash_dir.with_name(flash_dir.name + ".romfs")


def ensure(path, size=SIZE) -> Path:
    """The partition file, created erased (all 0xFF) if missing or of another size."""
    path = Path(path)
    if not path.exists() or path.stat().st_size != size:
        path.write_bytes(ERASED * size)
    return path


def available() -> bool:
    """True when the chip can have a ROM partition: it runs as the PyPI unix port inside
    this CPython (module micropython_run), not as a separate $MICROPYTHON binary."""
    if os.environ.get("MICROPYTHON"):
        return False
    import importlib.util

    return importlib.util.find_spec("micropython_run") is not None


def command(path) -> list:
    """The start of the chip's command line with the partition at `path` (the MicroPython
    arguments follow)."""
    return [sys.executable, str(Path(__file__).resolve()), str(path)]


def write_image(path, image: bytes, size=SIZE):
    """Write a ROMFS image into the partition file directly (what a flashing tool writing
    the partition does): the rest of the partition is left erased."""
    if len(image) > size:
        raise ValueError(f"ROMFS image of {len(image)} bytes does not fit the {size}-byte "
                         "partition")
    ensure(path, size)
    with open(path, "r+b") as f:
        f.write(image)
        f.write(ERASED * (size - len(image)))


def _main(argv):
    import micropython_run

    part = argv[1]
    with open(part, "r+b") as f:
        mem = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_WRITE)
    buf = (ctypes.c_char * len(mem)).from_buffer(mem)
    os.environ["CTMETER_ROM"] = f"{ctypes.addressof(buf)}:{len(mem)}:{BLOCK}"
    # `buf` and `mem` stay referenced until MicroPython returns: the mapping must outlive it
    code = micropython_run.run_main(["micropython"] + argv[2:])
    del buf
    mem.close()
    return code


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
