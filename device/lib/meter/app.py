# SPDX-License-Identifier: MIT
"""The meter: board -> sampling -> metering -> energy -> readings -> outbox/publishers,
with persistence and the console, in one cooperative loop.

    from meter.app import Meter
    Meter().run()          # device/main.py does this

One loop iteration = one window: whole mains cycles (10, ~200 ms at 50 Hz) sampled in ONE
contiguous paced burst (allocation-free: board.read_frames, then WindowAccumulator.add).
A window must be contiguous: any pause inside it (console, bookkeeping) would drop samples
and break the whole-cycle assumption that makes the DC removal and RMS exact. 200 ms is
short enough for Ctrl-C and the watchdog. Then the light work between windows: results and
energy, console input, and at the
reading interval (default 10 s) one reading per channel, delivered over HTTP (one POST
with all channels, so a 300 ms link costs 3 % of the time at 10 s) and/or MQTT. Readings
that cannot be delivered go to the on-flash outbox and are replayed in order. The energy
counters and seq are persisted on a schedule and at a clean stop (Ctrl-C, `reboot`).

Energy integrates each window's power over the whole time since the previous window
ended (ticks, wrap-safe), so time spent on the network is still counted: duty affects
what is *seen*, not what is integrated.
"""

import gc
import sys

from meter import modules
from meter.errors import PersistError

try:
    from micropython import const
except ImportError:  # CPython
    from meter.cpython_shims import const

VERSION = "0.1.0"
_MPY = sys.implementation.name == "micropython"
# tick counters wrap at 2**30; written as a literal: 1 << 30 is a big int on the chip
_TICKS_MASK = const(0x3FFFFFFF)
_CLOCK_RETRY_MS = const(30000)  # NTP attempts while the clock is unset
_MAX_FAILING = const(20)  # windows in a row that raise before the meter gives up or restarts (~4 s)
# Wi-Fi: checked every second; a link that is down gets a new connect after 5 s, then
# after 10, 20, ... at most 5 min (a missing access point is not hammered). Each connect
# returns at once (the driver connects in the background): sampling never waits for it.
_WIFI_CHECK_MS = const(1000)
_WIFI_RETRY_MIN_MS = const(5000)
_WIFI_RETRY_MAX_MS = const(300000)
# Loaded for one job and dropped after it (meter.modules): delivery (readings, HTTP, the
# outbox) runs once per interval, the config module at start and for console commands.
_DELIVER = const("meter.deliver")
_BOOT = const("meter.boot")  # the start-up (Meter.__init__, the top of Meter.run)
_PER_DELIVERY = const(("meter.deliver", "meter.reading", "meter.outbox", "meter.http_post"))
_PER_POSTER = const(("meter.url", "meter.tlsca"))  # shared with MQTT, which stays loaded
_PER_COMMAND = ("meter.config", "meter.reading", "meter.jsontext")
_PER_USE = ("meter.console_cmds", "meter.console_out", "meter.commands", "meter.config",
            "meter.config_check", "meter.jsontext") + _PER_DELIVERY + _PER_POSTER
# SCT-013-030 (30 A per volt) at 11 dB, 3.3 V over 4096 codes: the scale when the host
# wrote none. Deploy computes the right one from sensor profile, burden and board.
DEFAULT_AMPS_PER_COUNT = 30.0 * 3.3 / 4096
DEFAULT_VOLTS_PER_COUNT = 0.3  # (host tools import both)


class _Interval:
    """Time-weighted sums of one channel's window results over a reading interval."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.t = 0.0
        self.i2 = 0.0
        self.p = 0.0
        self.s = 0.0
        self.v2 = 0.0
        self.f = 0.0

    def add(self, r, dt):
        self.t += dt
        self.i2 += r.irms * r.irms * dt
        self.p += r.power * dt
        self.s += r.apparent * dt
        self.v2 += r.voltage * r.voltage * dt
        self.f += r.frequency * dt


class Meter:
    VERSION = VERSION

    def __init__(self, board=None, fs=None):
        # the start-up code runs once: loaded for it and dropped (meter.boot)
        modules.use(_BOOT).setup(self, board, fs)
        modules.drop(_BOOT)

    # ---------------------------------------------------------------- setup
    def _secrets(self):
        c = self.conf
        return tuple(s for s in (c["wifi"]["password"], c["http"]["token"],
                                 c["mqtt"]["password"]) if s)

    def cadata(self):
        """The TLS CA (bytes) from the file tls.ca names, or None."""
        name = self.conf["tls"]["ca"]
        return self.fs.read(name) if name else None

    def _out(self, line):
        print(line)

    # ---------------------------------------------------------------- main loop
    def run(self):
        modules.use(_BOOT).start(self)
        modules.drop(_BOOT)
        try:
            while self.running:
                try:
                    self.step()
                    self._failing = 0
                except KeyboardInterrupt:
                    # Ctrl-C: mpremote or a deploy wants the REPL; the watchdog must not
                    # reset the board under it
                    self.board.wdt_hold()
                    raise
                except MemoryError:
                    # a fragmented heap must not stop the meter: that window (or that
                    # post, that console line) is lost, energy keeps integrating over time
                    self.mem_errors += 1
                    self.hook = None
                    gc.collect()
                    self._failing += 1
                    if self._failing >= _MAX_FAILING:
                        self._restart_for_memory()
                except Exception as exc:  # noqa: BLE001 - counted, shown, and bounded
                    # A failure in a rare path (a post, a flash file, a console command)
                    # must not stop the meter: counted in status, energy integrates on.
                    # The same failure in window after window is not rare: then the meter
                    # stops, its counters saved, and main.py restarts the board.
                    self.errors += 1
                    self.last_error = type(exc).__name__
                    self.hook = None
                    self._failing += 1
                    if self._failing >= _MAX_FAILING:
                        raise
        finally:
            self.shutdown()

    def _restart_for_memory(self):
        # Out of memory window after window: this heap does not recover by itself (a load
        # that ran out part-way stays allocated: meter.modules), and the watchdog would
        # reset the board only after 30 s, without saving. Restart now, energy saved.
        try:
            self.shutdown()
        except MemoryError:
            pass  # not even that fits: the counters lose what a power cut would
        self.board.reset()

    def step(self):
        """One window of samples and the work due after it."""
        n = self.acc.window_frames(self.fs_hz, self.cycles)
        if n > self.buf_frames:
            n = self.buf_frames
        # the sampling loop: the board may lock the heap around it (the virtual board does
        # with CTMETER_HEAP_LOCK=1, proving that sampling and accumulation allocate nothing)
        b = self.board
        b.sampling(True)
        try:
            b.read_frames(self.buf, 0, n)
            self.acc.add(self.buf, 0, n)
        finally:
            b.sampling(False)
        self._duty_frames += n
        self._end_window()
        if self.hook is not None:
            self.hook(self, n)
        if self.mqtt is not None:
            self._mqtt_keepalive()
        self.console.poll()
        self.board.wdt_feed()

    def _end_window(self):
        b = self.board
        acc = self.acc
        self.last_raw = [acc.raw_sums(c) for c in range(self.nch)]
        results = acc.finish(self.fs_hz, self.last)  # overwrites the last window's
        now = b.ticks_us()
        dt_us = b.ticks_diff(now, self._window_end_us)
        self._window_end_us = now
        dt = dt_us / 1e6
        for i in range(self.nchan):
            r = results[i]
            self.energy[i].add(r.power, dt_us)
            self.intervals[i].add(r, dt)
        self.last = results
        self.windows += 1
        self.uptime_ms += dt_us // 1000
        if self.stops and self.uptime_ms >= self.stops:
            # Run long enough (meter.board.RUN_OK_S): the stops before this start no longer
            # count as in a row (meter.board.stopped waits longer after each). Inline, and
            # the name imported here: as a Meter method with module-level imports it put
            # 0.9 KB more in use from lib/ (bench/heap.py firmware(), measured).
            self.stops = 0
            from meter.board import STOPS

            try:
                self.fs.discard(STOPS)
            except OSError:
                pass  # the flash says no: the next stop waits longer than it needs to
        b.after_window()
        now_ms = b.ticks_ms()
        self._wifi(now_ms)
        iv = self.conf["interval_s"] * 1000
        if b.ticks_diff(now_ms, self._interval_start_ms) >= iv:
            # a fixed cadence: the next interval starts where this one was due, not where
            # the window happened to end (that slipped by up to a window per reading);
            # after a long stall the cadence restarts from now
            start = (self._interval_start_ms + iv) & _TICKS_MASK
            self._interval_start_ms = start if b.ticks_diff(now_ms, start) < iv else now_ms
            self._update_duty()
            if self._clock_ready():
                self._deliver_use("readings")
        if self.unsent:  # left by a MemoryError while delivering: send or store them first
            self._deliver_use("flush")
        elif self.outbox_depth and (self.http or self.mqtt is not None) and self.link_ready():
            self._deliver_use("drain")
        if self.store.should_persist(now_ms):
            self.persist(now_ms)

    def _wifi(self, now_ms):
        """Keep Wi-Fi up: reconnect a dropped link with backoff; deliveries wait for it."""
        b = self.board
        if b.ticks_diff(now_ms, self._wifi_at) < 0:
            return
        st = b.wifi_status()
        self.wifi_up = st == "connected" or st == "sim"
        if self.wifi_up:
            self._wifi_wait_ms = 0
            wait = _WIFI_CHECK_MS
        elif self._wifi_wait_ms == 0:
            # just found down (or still connecting from boot): give the driver its own
            # reconnect first
            wait = self._wifi_wait_ms = _WIFI_RETRY_MIN_MS
        else:
            c = self.conf["wifi"]
            if c["ssid"]:  # no network configured: nothing to retry
                b.wifi_connect(c["ssid"], c["password"])
                self.wifi_retries += 1
            wait = self._wifi_wait_ms
            self._wifi_wait_ms = min(_WIFI_RETRY_MAX_MS, 2 * wait)
        self._wifi_at = (now_ms + wait) & _TICKS_MASK

    def _mqtt_keepalive(self):
        # a ping when the connection was idle for half the keepalive (a check of the clock
        # otherwise): with readings less often than 1.5 keepalives the broker would drop
        # the session and publish the "offline" will between every two readings
        try:
            self.mqtt.poll()
        except OSError as exc:  # MqttError: the link is dropped, the next publish reconnects
            self.mqtt_result = "error: %s" % getattr(exc, "kind", "network")

    def _update_duty(self):
        now = self.board.ticks_us()
        span = self.board.ticks_diff(now, self._duty_start_us)
        if span > 0:
            self.duty = self._duty_frames * 1e6 / self.fs_hz / span
        self._duty_frames = 0
        self._duty_start_us = now

    # ---------------------------------------------------------------- readings
    def _clock_ready(self):
        # Readings carry wall-clock time: none is made before the clock is set (after a
        # power cut the ESP32's RTC restarts at its epoch). The interval sums keep
        # accumulating, so the first reading covers all the time since the last one.
        if self.clock_ok:
            return True
        b = self.board
        now = b.ticks_ms()
        if self._clock_try_ms is None or b.ticks_diff(now, self._clock_try_ms) >= _CLOCK_RETRY_MS:
            self._clock_try_ms = now
            self.clock_ok = b.sync_clock()
        return self.clock_ok

    def outbox_seen(self, box):
        # the outbox is loaded per use: its depth (and status, for the console) are kept
        self.outbox_depth = box.depth()
        self.outbox_status = box.status()

    def link_ready(self):
        """False while Wi-Fi is down or while backing off after a failed delivery."""
        if not self.wifi_up:
            return False
        if self.retry_at is None:
            return True
        return self.board.ticks_diff(self.board.ticks_ms(), self.retry_at) >= 0

    def _deliver_use(self, what):
        try:
            return getattr(modules.use(_DELIVER), what)(self)
        finally:
            for name in _PER_DELIVERY:
                modules.drop(name)
            if self.mqtt is None:
                for name in _PER_POSTER:
                    modules.drop(name)

    # ---------------------------------------------------------------- persistence
    def _energy_state(self):
        out = []
        for e in self.energy:
            out += [e.mwh, e.rem, e.export_mwh, e.export_rem]
        return out

    def persist(self, now_ms=None):
        try:
            self.store.save(self._energy_state(), now_ms)
        except PersistError as exc:
            self.problems.append(str(exc))

    def shutdown(self):
        """Clean stop: persist the counters (Ctrl-C, reboot, end of a test run), keep unsent
        readings in the outbox and leave the MQTT session with a retained "offline" (close()
        never raises)."""
        self.persist(self.board.ticks_ms())
        if self.unsent:
            # Readings made but not yet sent or stored: a delivery ran out of memory, and
            # the restart for memory comes after it failed window after window. The outbox
            # alone is smaller than the HTTP client; RAM does not survive the restart.
            try:
                self._deliver_use("store")
            except Exception:  # noqa: BLE001 - the stop goes on (MemoryError, flash)
                pass  # as after a power cut: those readings are lost, the counters are not
        if self.mqtt is not None:
            self.mqtt.close()


def main():
    Meter().run()
