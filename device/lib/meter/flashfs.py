# SPDX-License-Identifier: MIT
"""The small filesystem interface the storage modules (persist, outbox, config) use.

    fs = FlashFS("/")                 # ESP32: littlefs root; unix port / CPython: any directory
    fs.write("a.bin", b"...")         # create/truncate and write the whole file
    fs.append("log", b"line\\n")
    fs.replace("state", b"...")       # write "state.tmp", then rename over "state" (atomic)
    data = fs.read("a.bin")           # whole small file (OSError ENOENT when missing)
    with fs.open("log", "rb") as f:   # read-only streaming (seek/readline) for bigger files
        ...
    fs.rename(a, b); fs.remove(a); fs.listdir(); fs.exists(a); fs.size(a)
    sub = fs.subdir("outbox")         # same interface rooted at a sub-directory (created)

Every change to flash goes through write/append/rename/remove, so tests substitute a
fault-injecting fs (tests/fault_fs.py) that "cuts power" in the middle of any of them.
On littlefs and POSIX a rename over an existing file is atomic; MicroPython has no fsync,
so nothing here relies on one: callers make their formats robust to torn writes instead.
"""

import os

try:
    from micropython import const
except ImportError:  # CPython
    from meter.cpython_shims import const

_ENOENT = const(2)
_DIR_BIT = const(0x4000)  # S_IFDIR in st_mode


class FlashFS:
    """Whole-file operations on plain names inside one directory (no path separators)."""

    def __init__(self, root="/"):
        root = str(root)
        if len(root) > 1 and root.endswith("/"):
            root = root[:-1]
        self.root = root

    def path(self, name):
        if not name or "/" in name or name in (".", ".."):
            raise ValueError("flashfs: bad file name %r" % (name,))
        if self.root == "/":
            return "/" + name
        return self.root + "/" + name

    def subdir(self, name):
        """A FlashFS rooted at the sub-directory `name`, created if it does not exist."""
        p = self.path(name)
        try:
            os.mkdir(p)
        except OSError:
            if not self.is_dir(name):
                raise
        return self.__class__(p)

    def is_dir(self, name):
        try:
            return bool(os.stat(self.path(name))[0] & _DIR_BIT)
        except OSError:
            return False

    def read(self, name):
        with open(self.path(name), "rb") as f:
            return f.read()

    def open(self, name, mode="rb"):
        """Open for reading only; every write goes through write/append/replace."""
        if mode not in ("r", "rb"):
            raise ValueError("flashfs.open is read-only; use write/append/replace")
        return open(self.path(name), mode)

    def write(self, name, data):
        with open(self.path(name), "wb") as f:
            f.write(data)

    def append(self, name, data):
        with open(self.path(name), "ab") as f:
            f.write(data)

    def replace(self, name, data):
        """Write `data` to name.tmp, close it, then rename over `name` (atomic on littlefs)."""
        tmp = name + ".tmp"
        self.write(tmp, data)
        self.rename(tmp, name)

    def rename(self, src, dst):
        os.rename(self.path(src), self.path(dst))

    def remove(self, name):
        os.remove(self.path(name))

    def discard(self, name):
        """Remove `name` if it exists; True when something was removed."""
        try:
            self.remove(name)
            return True
        except OSError as e:
            if e.args and e.args[0] == _ENOENT:
                return False
            raise

    def listdir(self):
        return sorted(os.listdir(self.root))

    def exists(self, name):
        try:
            os.stat(self.path(name))
            return True
        except OSError:
            return False

    def size(self, name):
        return os.stat(self.path(name))[6]
