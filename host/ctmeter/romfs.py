# SPDX-License-Identifier: MIT
"""The firmware's lib/ as a ROMFS image, for boards whose MicroPython has a ROMFS partition.

    img = image(files)                        # {dest: BuiltFile} -> ROMFS bytes (lib/ only)
    size = partition_size(transport)          # None: this MicroPython has no ROMFS
    if not holds(transport, img): write(transport, img)

Modules imported from a ROMFS run in place from the flash: their bytecode and constants
never enter the heap, which is what lets the meter run in a chip's small heap (README,
"Memory"). The image is built with mpremote's own writer (mpremote.romfs.VfsRomWriter) and
written with `mpremote romfs deploy`'s code, over the transport deploy already holds.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import tempfile
from pathlib import Path
from types import SimpleNamespace

from mpremote.romfs import VfsRomWriter
from mpremote.transport import TransportError

from ctmeter import transport as tp

ROM_DIR = "lib/"  # what goes to the ROMFS: the compiled modules (boot.py, main.py, config
# and board.json stay on the writable filesystem, where the board runs and edits them)


def image(files: dict) -> bytes:
    """A ROMFS image of the lib/ files among `files` ({dest: BuiltFile}), laid out as on
    the flash (/rom/lib/meter/app.mpy), in a stable order so equal inputs give equal bytes."""
    tree: dict = {}
    for dest in sorted(d for d in files if d.startswith(ROM_DIR)):
        node = tree
        *dirs, name = dest.split("/")
        for d in dirs:
            node = node.setdefault(d, {})
        node[name] = files[dest].data
    writer = VfsRomWriter()

    def add(node):
        for name in sorted(node):
            if isinstance(node[name], dict):
                writer.opendir(name)
                add(node[name])
                writer.closedir()
            else:
                writer.mkfile(name, node[name])

    add(tree)
    return writer.finalise()


_QUERY = """\
try:
    import vfs
    print(len(vfs.rom_ioctl(2, 0)) if vfs.rom_ioctl(1) > 0 else -1)
except (ImportError, AttributeError, TypeError):
    print(-1)
"""


def partition_size(transport) -> int | None:
    """The size of the board's first ROMFS partition, or None when its MicroPython has none
    (no vfs module, as before 1.23; no vfs.rom_ioctl, as in the standard ESP32 builds; no
    partition; or one served as a block device rather than memory: then lib/ is copied)."""
    out = tp.run(transport, _QUERY, "looking for a ROMFS partition").decode().strip()
    try:
        size = int(out.splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise tp.DeviceError(f"unexpected answer to the ROMFS query: {out[:80]!r}") from exc
    return size if size > 0 else None


def holds(transport, img: bytes) -> bool:
    """True when the partition already starts with exactly this image (hashed on the board)."""
    code = ("import vfs, hashlib, binascii\n"
            f"print(binascii.hexlify(hashlib.sha256(vfs.rom_ioctl(2, 0)[:{len(img)}])"
            ".digest()).decode())")
    out = tp.run(transport, code, "hashing the ROMFS partition").decode().strip()
    return out.endswith(hashlib.sha256(img).hexdigest())


class _State:
    """The slice of mpremote's State that its romfs deploy uses."""

    def __init__(self, transport):
        self.transport = transport

    def ensure_raw_repl(self):
        if not self.transport.in_raw_repl:
            self.transport.enter_raw_repl(soft_reset=False)

    def did_action(self):
        pass


def write(transport, img: bytes, size: int):
    """Write `img` to partition 0 as `mpremote romfs deploy` does (it unmounts /rom first;
    the board mounts the new image at its next reset)."""
    from mpremote.commands import CommandError as MpremoteError
    from mpremote.commands import _do_romfs_deploy

    if len(img) > size:
        raise tp.DeviceError(f"the firmware's ROMFS image ({len(img)} bytes) does not fit the "
                             f"board's ROMFS partition ({size} bytes)",
                             "deploy without it: --no-romfs")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lib.romfs"
        path.write_bytes(img)
        args = SimpleNamespace(path=str(path), partition=0, mpy=False)
        said = io.StringIO()
        try:
            with contextlib.redirect_stdout(said):
                _do_romfs_deploy(_State(transport), args)
        except (MpremoteError, TransportError, SystemExit) as exc:
            last = (said.getvalue().strip().splitlines() or [str(exc)])[-1]
            raise tp.DeviceError(f"writing the ROMFS partition failed: {last}") from exc
