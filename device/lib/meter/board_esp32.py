# SPDX-License-Identifier: MIT
"""The ESP32-family board: ADC1 with explicit attenuation, paced sampling, WDT, Wi-Fi, littlefs.

Created once by meter.board.make_board(); nothing here runs at import time.
Every ADC() gets `atten=` explicitly: since MicroPython 1.26 an ADC()/init() without it
resets the attenuation to the default. Only ADC1 pins are accepted (the config validator
checks against the board file; ADC2 reads fail or read 0 while Wi-Fi is on).
"""

import array
import time

import machine

from meter.board import HOLD_MIN, BoardBase
from meter.paced import paced_read

# MicroPython's epoch on the ESP32 port (time.gmtime(0)); 1970 on newer builds.
_EPOCH_OFFSET = 946684800 if time.gmtime(0)[0] == 2000 else 0


class Esp32Board(BoardBase):
    root = "/"
    platform = "esp32"

    def __init__(self, channel_pins, voltage_pin=None, atten_db=11, sample_rate_hz=4000):
        atten = {0: machine.ADC.ATTN_0DB, 2.5: machine.ADC.ATTN_2_5DB,
                 6: machine.ADC.ATTN_6DB, 11: machine.ADC.ATTN_11DB}[atten_db]
        pins = list(channel_pins)
        if voltage_pin is not None:
            pins.append(voltage_pin)
        self._adcs = [machine.ADC(machine.Pin(p), atten=atten) for p in pins]
        self._reads = tuple(a.read_u16 for a in self._adcs)
        self.nch = len(pins)
        self.sample_rate_hz = sample_rate_hz
        self._params = array.array("i", [self.nch, 1000000 // sample_rate_hz, 0])
        self._late_max = 0
        self._wdt = None
        self._wlan = None

    # sampling
    def read_frames(self, buf, start, n):
        paced_read(buf, start, n, self._params, self._reads, time.ticks_us)
        if self._params[2] > self._late_max:
            self._late_max = self._params[2]

    def sampling_stats(self):
        late, self._late_max = self._late_max, 0
        return 1000000 / self._params[1], late

    # clock
    def ticks_ms(self):
        return time.ticks_ms()

    def ticks_us(self):
        return time.ticks_us()

    def unix_time(self):
        return time.time() + _EPOCH_OFFSET

    def sleep_ms(self, ms):
        time.sleep_ms(ms)

    def sync_clock(self):
        # NTP over Wi-Fi (one UDP round trip, ~1 s timeout in ntptime); the RTC keeps the
        # time across soft resets, not across power cuts
        if self.wifi_status() == "connected":
            try:
                import ntptime

                ntptime.settime()
            except (OSError, OverflowError, ImportError):
                pass
        return self.clock_set()

    # watchdog: armed only by the running meter, so deploy sessions (main.py skipped) are safe
    def wdt_start(self, timeout_ms):
        self._wdt = machine.WDT(timeout=timeout_ms)

    def wdt_hold(self, minutes=HOLD_MIN):
        # The meter was stopped on purpose (Ctrl-C: mpremote, a deploy). The ESP32's task
        # watchdog cannot be stopped, but a new WDT() reconfigures its timeout, and that
        # survives the soft resets mpremote does (a Timer feeding it would not: soft reset
        # stops timers). After `minutes` in the REPL the board resets back into the meter,
        # so a forgotten session does not leave it unmeasured for good.
        if self._wdt is not None:
            self._wdt = machine.WDT(timeout=minutes * 60000)

    def wdt_feed(self):
        if self._wdt is not None:
            self._wdt.feed()

    # Wi-Fi
    def wifi_connect(self, ssid, password):
        import network

        if self._wlan is None:
            self._wlan = network.WLAN(network.STA_IF)
            self._wlan.active(True)
        if not self._wlan.isconnected():
            try:
                if self._wlan.status() == network.STAT_CONNECTING:
                    self._wlan.disconnect()  # a stuck attempt: the meter backed off, start over
                self._wlan.connect(ssid, password)
            except OSError:
                pass  # the driver refused (busy); the meter tries again after its backoff

    def wifi_status(self):
        if self._wlan is None:
            return "down"
        if self._wlan.isconnected():
            return "connected"
        import network

        st = self._wlan.status()
        return "connecting" if st == network.STAT_CONNECTING else "down"

    def rssi(self):
        try:
            return self._wlan.status("rssi") if self._wlan and self._wlan.isconnected() else None
        except (OSError, ValueError):
            return None

    # system
    def reset(self):
        machine.reset()


def restart_later(seconds):
    """meter.board.stopped on a chip: reset after `seconds`. Ctrl-C meanwhile reaches the
    REPL with the watchdog set as by wdt_hold: one the meter armed must not reset the board
    under a deploy, and a forgotten session (or a meter that failed before arming one) still
    ends in the meter HOLD_MIN minutes later."""
    try:
        # the meter's watchdog (30 s) must not cut a longer wait short: set past its end
        machine.WDT(timeout=(seconds + 30) * 1000)
        time.sleep(seconds)
    except KeyboardInterrupt:
        hold_watchdog()
        raise
    machine.reset()


def hold_watchdog():
    """Ctrl-C after the meter stopped: the watchdog set as by wdt_hold (whether or not the
    meter had armed it), so that the REPL the interrupt reaches is not reset under it."""
    machine.WDT(timeout=HOLD_MIN * 60000)
