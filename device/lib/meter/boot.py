# SPDX-License-Identifier: MIT
"""The meter's start-up: run once, loaded for it and dropped after (meter.modules).

    setup(meter, board, fs)     # Meter.__init__: config, board, calibration, buffers,
                                # counters, outbox state, publishers, console
    start(meter)                # Meter.run, before the loop: Wi-Fi, clock, boot line, WDT

None of this code is needed again while the meter runs, so it does not stay in the heap
with the loop's (meter.app).
"""

import gc
import json
import sys
from array import array

from meter import modules
from meter.app import (
    _MPY,
    _PER_COMMAND,
    _PER_USE,
    DEFAULT_AMPS_PER_COUNT,
    DEFAULT_VOLTS_PER_COUNT,
    VERSION,
    _Interval,
)
from meter.board import RUN_OK_S, STOPS, make_board
from meter.calib import Calibration
from meter.console import BOOT_PREFIX, Console
from meter.energy import EnergyCounter
from meter.errors import APP_ERRORS, CalibrationError
from meter.flashfs import FlashFS
from meter.metering import WindowAccumulator
from meter.persist import CounterStore

try:
    from micropython import const
except ImportError:  # CPython
    from meter.cpython_shims import const

_BUF_BYTES = const(8192)  # the window buffer: 10 cycles at 4 kHz of 5 inputs fit
_CYCLES = const(10)  # mains cycles per window (fewer when fs * inputs would not fit the buffer)
_LOWEST_HZ = const(45)
_WDT_MS = const(30000)
_GC_EVERY = const(4096)

def _intern_names():
    """Load, once at start, each module that is otherwise loaded per use, and drop it.

    Their names (qstrs) are interned for good then, while the heap holds little more than
    the config and the window buffer (made just before: the one larger block). Interned
    names are never freed, and their table grows by doubling: on the 64-bit unix port one
    step is a single ~7 KB block. Grown later, in a heap fragmented by days of work, that
    block may not be found, and a console line would be refused for lack of memory though
    the heap has room in smaller pieces.
    """
    if not _MPY:
        return
    for name in _PER_USE:
        try:
            modules.use(name)
        except ImportError:  # a module this build does not ship (none today)
            pass
        for loaded in _PER_USE:
            modules.drop(loaded)
    gc.collect()


def _window_buffer(m):
    # The largest block the meter keeps (3.5 KB for a channel and voltage at 4 kHz): made
    # first, in a heap that the names and the per-use modules have not yet cut into pieces
    # (bench/heap_floor.py: made after them, it was what a small heap could not find).
    cap = _BUF_BYTES // (2 * m.nch)
    m.cycles = max(1, min(_CYCLES, cap * _LOWEST_HZ // m.fs_hz))
    # the buffer holds one window of this config, not the largest any config needs
    frames = m.fs_hz * m.cycles // _LOWEST_HZ + 1
    m.buf_frames = min(cap, frames)
    # from a range, not from bytes(...): that allocates the buffer twice over (a zeroed
    # bytes, then the array copied from it). The values are overwritten by the first burst.
    m.buf = array("H", range(m.buf_frames * m.nch))


def _copied(x):
    # a deep copy of the config: every dict, list, str and float made anew
    if isinstance(x, dict):
        return {k: _copied(x[k]) for k in x}
    if isinstance(x, list):
        return [_copied(v) for v in x]
    if isinstance(x, str):
        return "%s" % x
    if isinstance(x, float):
        return x * 1.0
    return x


def setup(m, board, fs):
    # Every attribute the meter keeps, named first: its attribute table grows to its final
    # size (~1 KB in one piece on the 64-bit port) while the heap is still empty. Grown at
    # the end of the start-up instead, the last step of that growth was what a 64 KB heap
    # could not find (bench/heap_floor.py).
    m.fs = m.conf = m.device = m.problems = m.nchan = m.vch = m.fs_hz = m.board = None
    m.nch = m.cycles = m.buf_frames = m.buf = m.calibs = m.acc = m.store = None
    m.energy = m.outbox_fs = m.intervals = m.last = m.windows = m.duty = None
    m._duty_frames = m._duty_start_us = m.post_result = m.mqtt_result = m.posts_ok = None
    m.posts_failed = m.backoff_ms = m.retry_at = m.http = m.unsent = m.mqtt = None
    m.console = m.hook = m.mem_errors = m.errors = m.last_error = m._failing = None
    m.rejected = m.clock_ok = m._clock_try_ms = m.last_raw = m.uptime_ms = m.stops = None
    m.running = m.wifi_up = m.wifi_retries = m._wifi_wait_ms = m._wifi_at = None
    m._window_end_us = m._interval_start_ms = m.outbox_depth = m.outbox_status = None
    m.fs = fs or FlashFS("/" if sys.platform == "esp32" else ".")
    cfg = modules.use("meter.config").Config(m.fs)
    c, problems = cfg.data, cfg.problems  # the validated config (a dict) and what it refused
    del cfg
    modules.drop("meter.config")
    # Made again now that the config's code has left: the config was parsed above that
    # code, so it would pin the middle of the heap, the room later loads need in one piece;
    # the copy lands low, in the pieces the code left (at 64 KB from ROMFS, 0.2 simulated
    # days ran 18 times in 18 with the copy, 14 in 18 without: bench/heap_floor.py runs)
    gc.collect()
    m.conf = c = _copied(c)
    m.problems = _copied(list(problems))
    del problems
    # the name the readings carry until the next start, as the MQTT topics made at start do
    # (`config set device_id` applies after reboot)
    m.device = c["device_id"]
    chans = c["channels"]
    volt = c["voltage"]
    m.nchan = len(chans)
    m.vch = m.nchan if volt is not None else None
    m.fs_hz = c["sample_rate_hz"]
    m.board = board or make_board([ch["pin"] for ch in chans],
                                  volt["pin"] if volt else None, 11, m.fs_hz)
    m.nch = m.board.nch
    _window_buffer(m)
    _intern_names()
    scales = []
    for ch in chans:
        scales.append(ch["amps_per_count"] or DEFAULT_AMPS_PER_COUNT)
    if volt is not None:
        scales.append(volt["volts_per_count"] or DEFAULT_VOLTS_PER_COUNT)
    m.calibs = []
    for i, ch in enumerate(chans + ([volt] if volt else [])):
        try:
            m.calibs.append(Calibration.from_dict(ch["calibration"]))
        except CalibrationError as exc:
            m.problems.append("channel %d calibration ignored: %s" % (i, exc))
            m.calibs.append(Calibration())
    mains = c["mains_hz"]
    m.acc = WindowAccumulator(m.nch, scales, vch=m.vch, calib=m.calibs,
                              nominal_v=float(c["nominal_voltage"]),
                              nominal_hz=50.0 if mains == "auto" else float(mains))
    # persistence: 4 ints per channel (energy counter state)
    m.store = CounterStore(m.fs, interval_s=c["persist_interval_s"])
    m.store.load(channels=4 * m.nchan, now_ms=m.board.ticks_ms())
    m.problems += m.store.problems
    e = m.store.energy
    m.energy = [EnergyCounter(*e[4 * i:4 * i + 4]) for i in range(m.nchan)]
    m.outbox_fs = m.fs.subdir("outbox")
    box = modules.use("meter.outbox").Outbox(m.outbox_fs)
    m.problems += box.problems
    m.outbox_seen(box)
    del box
    modules.drop("meter.outbox")
    m.intervals = [_Interval() for _ in range(m.nchan)]
    m.last = []  # latest window results
    m.windows = 0
    m.duty = 0.0
    m._duty_frames = 0
    m._duty_start_us = None
    m.post_result = "none yet"
    m.mqtt_result = "off" if not c["mqtt"]["enabled"] else "none yet"
    m.posts_ok = 0
    m.posts_failed = 0
    m.backoff_ms = 0
    m.retry_at = None
    m.http = False  # HTTP delivery on (its poster is made per use: meter.deliver)
    m.unsent = []  # readings made but neither delivered nor in the outbox yet
    m.mqtt = None
    _publishers(m)
    m.console = Console(out=m._out, mode=c["console"]["mode"], channels=m.nchan,
                        inputs=m.nch, source=m.board.console_source(),
                        app_errors=APP_ERRORS, secrets=m._secrets, commands="meter.commands",
                        context=m, drop=_MPY, transient=_PER_COMMAND,
                        stream=sys.stdout if _MPY else None)
    m.hook = None  # called after each window by commands that need live data
    m.mem_errors = 0
    m.errors = 0  # other exceptions the loop survived (status), the last one's type
    m.last_error = None
    m._failing = 0  # windows in a row that failed
    m.rejected = 0
    m.clock_ok = False
    m._clock_try_ms = None
    m.last_raw = []
    m.uptime_ms = 0
    # stopped() counted stops in a row: the uptime (ms) after which the count is cleared
    m.stops = RUN_OK_S * 1000 if m.fs.exists(STOPS) else 0
    m.running = False
    m.wifi_up = True
    m.wifi_retries = 0
    m._wifi_wait_ms = 0
    m._wifi_at = 0


def _publishers(m):
    c = m.conf
    cadata = None
    try:
        cadata = m.cadata()
    except OSError:
        m.problems.append("tls.ca file not found on flash")
        m.conf["tls"]["ca"] = ""
    if c["http"]["enabled"]:
        # made once here to check the config; per use afterwards
        why = m._deliver_use("check_http")
        if why:
            m.problems.append("http disabled: %s" % why)
        m.http = not why
    if c["mqtt"]["enabled"]:
        try:
            from meter.mqtt_pub import MqttPublisher

            m.mqtt = MqttPublisher.from_url(
                c["mqtt"]["url"], c["device_id"], cadata=cadata,
                user=c["mqtt"]["user"] or None,
                password=c["mqtt"]["password"] or None,
                prefix=c["mqtt"]["prefix"], discovery=c["mqtt"]["discovery"],
                keepalive_s=c["mqtt"]["keepalive_s"],
                channels=tuple(range(1, len(c["channels"]) + 1)),
                voltage=c["voltage"] is not None)
        except ImportError as exc:
            m.problems.append("mqtt disabled: %s" % exc)
        except ValueError as exc:
            m.problems.append("mqtt disabled: %s" % exc)


def start(m):
    c = m.conf
    m.board.wifi_connect(c["wifi"]["ssid"], c["wifi"]["password"])
    m._wifi_at = m.board.ticks_ms()
    m._wifi(m._wifi_at)
    m.clock_ok = m.board.sync_clock()
    print(BOOT_PREFIX + json.dumps({
        "version": VERSION, "device": c["device_id"], "platform": m.board.platform,
        "channels": m.nchan, "voltage": m.vch is not None,
        "sample_rate_hz": m.fs_hz, "boots": m.store.boots,
        "problems": m.problems}))
    m.board.wdt_start(_WDT_MS)
    if _MPY:
        # Collect every _GC_EVERY bytes allocated, not only when the heap is exhausted: the
        # garbage of a few windows is freed while it is small, so what the loop keeps lands
        # low in the heap, not in the room the per-use modules are loaded into (64 KB
        # heap: from a delivery that failed at the first interval to days that ran). A
        # collection's time grows with the heap (a board with PSRAM has megabytes): past
        # 128 KB the step grows with it, so collections take the same share of the time.
        gc.threshold(max(_GC_EVERY, (gc.mem_free() + gc.mem_alloc()) // 32))
    m.running = True
    now = m.board.ticks_us()  # a local: nothing reads the start time later
    m._window_end_us = now
    m._interval_start_ms = m.board.ticks_ms()
    m._duty_start_us = now
