# SPDX-License-Identifier: MIT
"""The virtual board: the firmware on the MicroPython unix port, fed by the sensor model.

Environment (set by the host's virtual-board runner, host/ctmeter/virtual/):
    CTMETER_FEED        "<request fifo>,<response fifo>" of the sensor feed (required)
    CTMETER_CLOCK       "fast" (default: simulated time runs as fast as the CPU allows),
                        "realtime" (paced to the wall clock, for `make sim`) or "exact"
                        (simulated time advances only by the samples taken, sleeps and the
                        time-lapse, never by the host's CPU time: every sample of a replayed
                        file is measured, and the same input gives the same readings)
    CTMETER_HEAP_LOCK   "1": micropython.heap_lock() around every sampling burst and its
                        accumulation, so any allocation there raises at once (tests)
    CTMETER_TIMELAPSE_S simulated seconds skipped after each measured window (default 0).
                        A test accelerator for multi-day soaks: the meter samples one
                        window, then time jumps; energy still integrates the elapsed time.
    CTMETER_EPOCH       Unix time at the start of the simulation (default: now); 0 starts
                        with an unset clock, as a board after a power cut
    CTMETER_NTP         "1": sync_clock() succeeds (sets the clock to the host's time), as
                        NTP would; otherwise an unset clock stays unset
    CTMETER_SIM_START_NS simulated time (ns) at which this run of the chip starts: where
                        the previous run left the world (a reset does not rewind the load
                        or the wall clock); 0 at the first power-on

Feed protocol (allocation-free on this side): request = struct '<QI' (first frame index,
frame count); response = count * nch little-endian uint16 codes, frame-major. The frame
index is simulated time * sample rate, so the model knows what the ADC would see then.

The simulated clock advances by the samples taken, plus the real time the firmware spends
between bursts (network, console, computing) so that slow I/O costs sampling time as it
would on a chip. Ticks count from this run's start (a reset restarts them, as on a chip),
wrap every 2**30 µs like the chip's, and start one minute before a wrap so wrap handling
is exercised in every run.
"""

import os
import struct
import sys
import time

try:
    import micropython
except ImportError:
    from meter.cpython_shims import micropython, ptr8  # noqa: F401

from meter.board import BoardBase

try:
    from micropython import const
except ImportError:  # CPython
    from meter.cpython_shims import const

_MASK = const((1 << 30) - 1)
_TICKS_START_US = const((1 << 30) - 60000000)
_STAGE = const(512)  # feed bytes read at once (the rest of a burst in further reads)
RESET_EXIT_CODE = const(99)


class BoardError(Exception):
    pass


@micropython.viper
def _copy(dst: ptr8, offset: int, src: ptr8, n: int):
    for i in range(n):
        dst[offset + i] = src[i]


class UnixBoard(BoardBase):
    root = "."
    platform = "unix"

    def __init__(self, channel_pins, voltage_pin=None, atten_db=11, sample_rate_hz=4000):
        feed = os.getenv("CTMETER_FEED")
        if not feed or "," not in feed:
            raise BoardError("CTMETER_FEED is not set: start the firmware with `ctmeter sim`")
        req_path, resp_path = feed.split(",", 1)
        self.nch = len(channel_pins) + (0 if voltage_pin is None else 1)
        self.sample_rate_hz = sample_rate_hz
        self._req = open(req_path, "wb")
        self._resp = open(resp_path, "rb")
        self._reqbuf = bytearray(12)
        self._stage = bytearray(_STAGE)
        clock = os.getenv("CTMETER_CLOCK")
        self._realtime = clock == "realtime"
        self._exact = clock == "exact"
        self._lock = os.getenv("CTMETER_HEAP_LOCK") == "1"
        self._timelapse_ns = int(float(os.getenv("CTMETER_TIMELAPSE_S") or 0) * 1e9)
        epoch = os.getenv("CTMETER_EPOCH")
        self._epoch_s = int(epoch) if epoch is not None and epoch != "" else int(time.time())
        # simulated clock: _sim_ns at real time _sync_us (time.ticks_us: time.time_ns()
        # allocates a big int on this port, and the sampling path must allocate nothing)
        self._sim_ns = self._boot_ns = int(os.getenv("CTMETER_SIM_START_NS") or 0)
        self._sync_us = time.ticks_us()
        self._sampled_frames = 0
        self._late_max_us = 0
        self._wdt_timeout_ns = 0
        self._wdt_last_ns = 0
        # simulated Wi-Fi: CTMETER_WIFI names a file saying whether the access point is
        # "up" or "down" (tests switch it); unset, the host's network is the link ("sim")
        self._ap = os.getenv("CTMETER_WIFI") or None
        self._linked = False
        self.wifi_connects = 0

    # clock
    def _now_ns(self):
        if self._exact:
            return self._sim_ns
        return self._sim_ns + time.ticks_diff(time.ticks_us(), self._sync_us) * 1000

    def _sync(self):
        if self._exact:
            return
        now = time.ticks_us()
        self._sim_ns += time.ticks_diff(now, self._sync_us) * 1000
        self._sync_us = now

    def ticks_us(self):
        return (_TICKS_START_US + (self._now_ns() - self._boot_ns) // 1000) & _MASK

    def ticks_ms(self):
        return ((self._now_ns() - self._boot_ns) // 1000000) & _MASK

    def unix_time(self):
        return self._epoch_s + self._now_ns() // 1000000000

    def sync_clock(self):
        if not self.clock_set() and os.getenv("CTMETER_NTP") == "1":
            self._epoch_s = int(time.time()) - self._now_ns() // 1000000000
        return self.clock_set()

    def sleep_ms(self, ms):
        if self._realtime:
            time.sleep_ms(ms)
        else:
            self._sync()
            self._sim_ns += ms * 1000000

    # sampling
    def read_frames(self, buf, start, n):
        self._sync()
        fs = self.sample_rate_hz
        frame0 = (self._sim_ns * fs + 999999999) // 1000000000
        struct.pack_into("<QI", self._reqbuf, 0, frame0, n)
        self._req.write(self._reqbuf)
        need = n * self.nch * 2
        got = 0
        offset = start * self.nch * 2
        while got < need:
            m = self._resp.readinto(self._stage, min(need - got, _STAGE))
            if not m:
                raise BoardError("sensor feed closed")
            _copy(buf, offset + got, self._stage, m)
            got += m
        end_ns = (frame0 + n) * 1000000000 // fs
        if self._realtime:
            # the samples are "taken" when the wall clock reaches their time
            wait_us = (end_ns - self._now_ns()) // 1000
            if wait_us > 0:
                time.sleep_us(wait_us)
            self._sync()
        else:
            self._sim_ns = end_ns
            self._sync_us = time.ticks_us()
        self._sampled_frames += n
        self._check_wdt()

    def sampling(self, on):
        if self._lock:
            if on:
                micropython.heap_lock()
            else:
                micropython.heap_unlock()

    def sampling_stats(self):
        late, self._late_max_us = self._late_max_us, 0
        return self.sample_rate_hz, late

    def after_window(self):
        if self._timelapse_ns:
            self._sync()
            self._sim_ns += self._timelapse_ns

    # watchdog: simulated; a starved watchdog resets the board like the chip's
    def wdt_start(self, timeout_ms):
        self._wdt_timeout_ns = timeout_ms * 1000000
        self._wdt_last_ns = self._now_ns()

    def wdt_feed(self):
        self._check_wdt()
        self._wdt_last_ns = self._now_ns()

    def _check_wdt(self):
        if self._wdt_timeout_ns and self._now_ns() - self._wdt_last_ns > self._wdt_timeout_ns:
            if self._timelapse_ns == 0:
                print("wdt: watchdog timeout, resetting")
                self.reset()

    # Wi-Fi: the unix port uses the host's network directly; with CTMETER_WIFI a link is
    # simulated as a station sees it: it drops when the access point goes away and comes
    # back only through a connect while the access point is there
    def _ap_up(self):
        try:
            with open(self._ap) as f:
                return f.read().strip() == "up"
        except OSError:
            return False

    def wifi_connect(self, ssid, password):
        if self._ap is not None:
            self.wifi_connects += 1
            self._linked = self._ap_up()

    def wifi_status(self):
        if self._ap is None:
            return "sim"
        if self._linked and not self._ap_up():
            self._linked = False
        return "connected" if self._linked else "down"

    def rssi(self):
        return None

    # system
    def reset(self):
        sys.exit(RESET_EXIT_CODE)


def hold_watchdog():
    """meter.board.stopped after Ctrl-C: the virtual board's watchdog belongs to the board
    object, which is gone once the meter stopped; nothing to hold."""


def restart_later(seconds):
    """meter.board.stopped on the virtual board: wait (in real time only when the clock is,
    as in `make sim`, where Ctrl-C then reaches the REPL as on a chip; otherwise briefly),
    then reset."""
    time.sleep(seconds if os.getenv("CTMETER_CLOCK") == "realtime" else 1)
    sys.exit(RESET_EXIT_CODE)
