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
import json
import math
import sys
from array import array

from meter import reading
from meter.board import make_board
from meter.calib import Calibration, CalibrationError
from meter.config import Config, ConfigError
from meter.console import BOOT_PREFIX, Console
from meter.energy import EnergyCounter, EnergyError
from meter.flashfs import FlashFS
from meter.metering import MeterError, WindowAccumulator
from meter.outbox import Outbox, OutboxError
from meter.persist import CounterStore, PersistError

VERSION = "0.1.0"
_MPY = sys.implementation.name == "micropython"
_BUF_BYTES = 8192  # the window buffer: 10 cycles at 4 kHz of 5 inputs fit
_CYCLES = 10  # mains cycles per window (fewer when fs * inputs would not fit the buffer)
_LOWEST_HZ = 45
_WDT_MS = 30000
_BACKOFF_MIN_MS = 2000
_BACKOFF_MAX_MS = 300000
_DRAIN_BATCHES = 4  # outbox batches per loop turn while draining (each costs a round trip)
_BATCH = 8
# tick counters wrap at 2**30; written as a literal: 1 << 30 is a big int on the chip
_TICKS_MASK = 0x3FFFFFFF
_CLOCK_RETRY_MS = 30000  # NTP attempts while the clock is unset
# HTTP answers that refuse the reading itself: resending cannot help, so it is dropped (and
# counted) instead of blocking the outbox. 401/403 (a token to fix) and 5xx/408/429 retry.
_REJECTED = (400, 413, 422)
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
        self.fs = fs or FlashFS("/" if sys.platform == "esp32" else ".")
        self.cfg = Config(self.fs)
        c = self.cfg.data
        self.problems = list(self.cfg.problems)
        chans = c["channels"]
        volt = c["voltage"]
        self.nchan = len(chans)
        self.vch = self.nchan if volt is not None else None
        self.fs_hz = c["sample_rate_hz"]
        self.board = board or make_board([ch["pin"] for ch in chans],
                                         volt["pin"] if volt else None, 11, self.fs_hz)
        self.nch = self.board.nch
        scales = []
        for ch in chans:
            scales.append(ch["amps_per_count"] or DEFAULT_AMPS_PER_COUNT)
        if volt is not None:
            scales.append(volt["volts_per_count"] or DEFAULT_VOLTS_PER_COUNT)
        self.calibs = []
        for i, ch in enumerate(chans + ([volt] if volt else [])):
            try:
                self.calibs.append(Calibration.from_dict(ch["calibration"]))
            except CalibrationError as exc:
                self.problems.append("channel %d calibration ignored: %s" % (i, exc))
                self.calibs.append(Calibration())
        mains = c["mains_hz"]
        self.acc = WindowAccumulator(self.nch, scales, vch=self.vch, calib=self.calibs,
                                     nominal_v=float(c["nominal_voltage"]),
                                     nominal_hz=50.0 if mains == "auto" else float(mains))
        cap = _BUF_BYTES // (2 * self.nch)
        self.cycles = max(1, min(_CYCLES, cap * _LOWEST_HZ // self.fs_hz))
        self.buf_frames = cap
        self.buf = array("H", bytes(2 * cap * self.nch))
        # persistence: 4 ints per channel (energy counter state)
        self.store = CounterStore(self.fs, interval_s=c["persist_interval_s"])
        self.store.load(channels=4 * self.nchan, now_ms=self.board.ticks_ms())
        self.problems += self.store.problems
        e = self.store.energy
        self.energy = [EnergyCounter(*e[4 * i:4 * i + 4]) for i in range(self.nchan)]
        self.outbox = Outbox(self.fs.subdir("outbox"))
        self.problems += self.outbox.problems
        self.intervals = [_Interval() for _ in range(self.nchan)]
        self.last = []  # latest window results
        self.windows = 0
        self.duty = 0.0
        self._duty_frames = 0
        self._duty_start_us = None
        self.post_result = "none yet"
        self.mqtt_result = "off" if not self.cfg.data["mqtt"]["enabled"] else "none yet"
        self.posts_ok = 0
        self.posts_failed = 0
        self._backoff_ms = 0
        self._retry_at = None
        self._http = None
        self._mqtt = None
        self._setup_publishers()
        self.console = Console(out=self._out, mode=c["console"]["mode"], channels=self.nchan,
                               inputs=self.nch, source=self.board.console_source(),
                               app_errors=(ConfigError, CalibrationError, EnergyError,
                                           MeterError, PersistError, OutboxError),
                               secrets=self._secrets, commands="meter.commands", context=self,
                               drop=_MPY)
        self.hook = None  # called after each window by commands that need live data
        self.mem_errors = 0
        self.rejected = 0
        self.clock_ok = False
        self._clock_try_ms = None
        self.last_raw = []
        self.uptime_ms = 0
        self.running = False

    # ---------------------------------------------------------------- setup
    def _secrets(self):
        return tuple(s for s in (self.cfg.secret("wifi.password"), self.cfg.secret("http.token"),
                                 self.cfg.secret("mqtt.password")) if s)

    def _out(self, line):
        print(line)

    def _setup_publishers(self):
        c = self.cfg.data
        cadata = None
        if c["tls"]["ca"]:
            try:
                cadata = self.fs.read(c["tls"]["ca"])
            except OSError:
                self.problems.append("tls.ca file not found on flash")
        if c["http"]["enabled"]:
            from meter.http_post import HttpPoster, PostError

            try:
                self._http = HttpPoster(
                    c["http"]["url"], self.cfg.secret("http.token") or None, cadata=cadata,
                    timeout_ms=int(c["http"]["timeout_s"] * 1000), default_path=c["http"]["path"])
            except PostError as exc:
                self.problems.append("http disabled: %s" % exc)
        if c["mqtt"]["enabled"]:
            try:
                from meter.mqtt_pub import MqttPublisher

                self._mqtt = MqttPublisher.from_url(
                    c["mqtt"]["url"], c["device_id"], cadata=cadata,
                    user=c["mqtt"]["user"] or None,
                    password=self.cfg.secret("mqtt.password") or None,
                    prefix=c["mqtt"]["prefix"], discovery=c["mqtt"]["discovery"],
                    channels=tuple(range(1, len(c["channels"]) + 1)),
                    voltage=c["voltage"] is not None)
            except ImportError as exc:
                self.problems.append("mqtt disabled: %s" % exc)
            except ValueError as exc:
                self.problems.append("mqtt disabled: %s" % exc)

    # ---------------------------------------------------------------- main loop
    def run(self):
        c = self.cfg.data
        self.board.wifi_connect(c["wifi"]["ssid"], self.cfg.secret("wifi.password"))
        self.clock_ok = self.board.sync_clock()
        print(BOOT_PREFIX + json.dumps({
            "version": VERSION, "device": c["device_id"], "platform": self.board.platform,
            "channels": self.nchan, "voltage": self.vch is not None,
            "sample_rate_hz": self.fs_hz, "boots": self.store.boots,
            "problems": self.problems}))
        self.board.wdt_start(_WDT_MS)
        self.running = True
        self._start_us = self.board.ticks_us()
        self._window_end_us = self._start_us
        self._interval_start_ms = self.board.ticks_ms()
        self._duty_start_us = self._start_us
        try:
            while self.running:
                try:
                    self.step()
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
        finally:
            self.shutdown()

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
        self.console.poll()
        self.board.wdt_feed()

    def _end_window(self):
        b = self.board
        acc = self.acc
        self.last_raw = [acc.raw_sums(c) for c in range(self.nch)]
        results = acc.finish(self.fs_hz)
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
        b.after_window()
        now_ms = b.ticks_ms()
        iv = self.cfg.data["interval_s"] * 1000
        if b.ticks_diff(now_ms, self._interval_start_ms) >= iv:
            # a fixed cadence: the next interval starts where this one was due, not where
            # the window happened to end (that slipped by up to a window per reading);
            # after a long stall the cadence restarts from now
            start = (self._interval_start_ms + iv) & _TICKS_MASK
            self._interval_start_ms = start if b.ticks_diff(now_ms, start) < iv else now_ms
            self._update_duty()
            self._make_readings()
        self._deliver(now_ms)
        if self.store.should_persist(now_ms):
            self.persist(now_ms)

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

    def _make_readings(self):
        c = self.cfg.data
        if not self._clock_ready():
            return
        ts = self.board.unix_time()
        out = []
        for i in range(self.nchan):
            a = self.intervals[i]
            if a.t <= 0:
                continue
            irms = math.sqrt(a.i2 / a.t)
            p = a.p / a.t
            s = a.s / a.t
            pf = p / s if s > 0 else 0.0
            v = math.sqrt(a.v2 / a.t)
            f = a.f / a.t
            body = reading.encode(c["device_id"], self.store.next_seq(), ts, i + 1, irms, v,
                                  p, s, pf, self.energy[i].mwh, f, a.t)
            out.append(body)
            a.reset()
        gc.collect()
        if self._http is not None and self._mqtt is not None:
            self._mqtt_publish(out)  # a live mirror; HTTP is the delivery that keeps order
        if self._http is None and self._mqtt is None:
            return
        if self.outbox.depth() == 0 and self._link_ready():
            if self._send(out):
                return
        for body in out:
            self.outbox.append(body)

    def _link_ready(self):
        if self._retry_at is None:
            return True
        return self.board.ticks_diff(self.board.ticks_ms(), self._retry_at) >= 0

    def _send(self, bodies):
        """Deliver in order over the delivering link: HTTP, or MQTT when HTTP is off (then
        readings that cannot be published wait in the outbox like HTTP's). True if done."""
        if self._http is not None:
            return self._post(bodies)
        try:
            self._mqtt.publish_readings(bodies)
        except OSError as exc:  # MqttError is an OSError. Bodies before the failure went
            # out; they go again from the outbox (QoS 1 is at-least-once anyway: receivers
            # deduplicate on seq)
            self.mqtt_result = "error: %s" % getattr(exc, "kind", "network")
            self._failed(self.mqtt_result)
            return False
        self.mqtt_result = "ok"
        self._delivered()
        return True

    def _post(self, bodies):
        from meter.http_post import PostError

        try:
            status = self._http.post_batch(bodies) if len(bodies) > 1 else \
                self._http.post(bodies[0])
        except PostError as exc:
            self._failed("error: %s" % exc.kind)
            return False
        if 200 <= status < 300:
            self.post_result = "ok %d" % status
            self._delivered()
            return True
        if status in _REJECTED:
            if len(bodies) > 1:  # a batch is all or nothing: find the refused ones
                for body in bodies:
                    if not self._post((body,)):
                        return False
                return True
            self.rejected += 1
            self.post_result = "rejected: http %d" % status
            return True
        self._failed("http %d" % status)
        return False

    def _delivered(self):
        self.posts_ok += 1
        self._backoff_ms = 0
        self._retry_at = None

    def _failed(self, why):
        self.post_result = why
        self.posts_failed += 1
        self._backoff_ms = min(_BACKOFF_MAX_MS, max(_BACKOFF_MIN_MS, self._backoff_ms * 2))
        self._retry_at = (self.board.ticks_ms() + self._backoff_ms) & _TICKS_MASK

    def _deliver(self, now_ms):
        """Drain the outbox, oldest first, while the link answers."""
        if (self._http is None and self._mqtt is None) or self.outbox.depth() == 0 \
                or not self._link_ready():
            return
        for _ in range(_DRAIN_BATCHES):
            batch = self.outbox.peek(_BATCH)
            if not batch:
                return
            if not self._send(batch):
                return
            self.outbox.ack(len(batch))

    def _mqtt_publish(self, bodies):
        try:
            self._mqtt.publish_readings(bodies)
            self.mqtt_result = "ok"
        except OSError as exc:  # MqttError is an OSError
            self.mqtt_result = "error: %s" % getattr(exc, "kind", "network")

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
        """Clean stop: persist the counters (Ctrl-C, reboot, end of a test run)."""
        self.persist(self.board.ticks_ms())


def main():
    Meter().run()
