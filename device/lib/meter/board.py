# SPDX-License-Identifier: MIT
"""The board layer: the only code that touches `machine`, `network` or `esp32`.

    from meter.board import make_board
    board = make_board(channel_pins, voltage_pin, atten_db, sample_rate_hz)

Two implementations with one interface:
- `board_esp32.Esp32Board`: ADC1 pins with explicit attenuation, paced sampling in viper,
  `machine.WDT`, Wi-Fi, littlefs at "/".
- `board_unix.UnixBoard`: the virtual board on the MicroPython unix port. ADC codes come from
  the sensor model through a feed (see host/ctmeter/virtual/feed.py), the clock is simulated
  (tests run hours in seconds), flash is the current directory.

Interface (all boards):
    nch, sample_rate_hz            frame width (current channels + optional voltage) and rate
    read_frames(buf, start, n)     fill frames [start, start+n) of an array('H') of nch-wide
                                   frames with 12-bit codes at the fixed rate; allocates nothing
    sampling(on)                   called before (True) and after (False) each burst and its
                                   accumulation (unix: optional heap lock; ESP32: nothing)
    sampling_stats()               (achieved rate Hz, worst lateness µs) of the last bursts
    after_window()                 hook after each measured window (unix: optional time-lapse)
    ticks_ms() / ticks_us()        wrapping tick counters (period 2**30, like the chip)
    ticks_diff(a, b)               signed difference, wrap-safe
    unix_time()                    seconds since 1970 (UTC)
    clock_set()                    True once unix_time() is real (after 2020), e.g. from NTP
    sync_clock()                   try to set the clock (ESP32: NTP, needs Wi-Fi); True if set
    sleep_ms(ms)
    wdt_start(timeout_ms) / wdt_feed()
    wdt_hold()                     the meter was stopped on purpose (Ctrl-C): keep the
                                   watchdog from firing for a while (ESP32: 15 min)
    wifi_connect(ssid, password)   starts a connection attempt, never blocks long
    wifi_status()                  "connected" | "connecting" | "down" | "sim"
    rssi()                         dBm or None
    mem_free() / mem_alloc()
    console_source()               object with any() -> bool and read1() -> int byte or -1
    reset()                        hard reset (power-on path: boot.py and main.py again)
    root                           directory holding config.json, counters, outbox

And for main.py, usable when no board could be made:
    board_module()                 this platform's board module, loaded first; it has
                                   restart_later(s) and hold_watchdog() for stopped()
    stopped(exc)                   the meter could not start or stopped on an error: say
                                   why (STOP_PREFIX line), restart the board RESTART_S later
                                   (longer after stops in a row: STOPS)
"""

import sys

try:
    from micropython import const
except ImportError:  # CPython
    from meter.cpython_shims import const

_TICKS_PERIOD = const(1 << 30)
_TICKS_HALF = const(1 << 29)
_CLOCK_VALID_AFTER = const(1600000000)  # 2020-09-13: a clock before this was never set
HOLD_MIN = const(15)  # the watchdog is held off this long after Ctrl-C (deploys, mpremote sessions)
STOP_PREFIX = const("ctmeter-stopped ")  # + "<error>: <message>" + STOP_NOTE, printed by stopped()
STOP_NOTE = const(" (restart in %d s, Ctrl-C for the REPL)")
RESTART_S = const(20)  # stopped(): the wait before the restart after a first stop
RESTART_MAX_S = const(640)  # ... doubled for each stop in a row: 20, 40, 80, ... 640 s at most
STOPS = const("stops")  # file counting the stops in a row (a meter that cannot start, for good)
RUN_OK_S = const(600)  # a meter that has run this long is well again: the count starts over


def ticks_diff(a, b):
    """a - b on the wrapping 2**30 tick counter (same rule as time.ticks_diff)."""
    d = (a - b) & (_TICKS_PERIOD - 1)
    if d >= _TICKS_HALF:
        d -= _TICKS_PERIOD
    return d


class BoardBase:
    """What every board does the same way: heap figures, the stdin console, wrapping ticks."""

    ticks_diff = staticmethod(ticks_diff)
    _stdin = None

    def mem_free(self):
        import gc

        return gc.mem_free()

    def mem_alloc(self):
        import gc

        return gc.mem_alloc()

    def console_source(self):
        if self._stdin is None:
            from meter.stdin_source import StdinSource

            self._stdin = StdinSource()
        return self._stdin

    def after_window(self):
        pass

    def sampling(self, on):
        pass

    def wdt_hold(self):
        pass

    def clock_set(self):
        return self.unix_time() > _CLOCK_VALID_AFTER

    def sync_clock(self):
        return self.clock_set()


def make_board(channel_pins, voltage_pin=None, atten_db=11, sample_rate_hz=4000):
    """The board for this platform, with its ADC set up for the given pins."""
    if sys.platform == "esp32":
        from meter.board_esp32 import Esp32Board

        return Esp32Board(channel_pins, voltage_pin, atten_db, sample_rate_hz)
    from meter.board_unix import UnixBoard

    return UnixBoard(channel_pins, voltage_pin, atten_db, sample_rate_hz)


def board_module():
    """This platform's board module (meter.board_esp32 or meter.board_unix). main.py loads
    it first, while the heap is empty: stopped() needs it when nothing else fits."""
    if sys.platform == "esp32":
        import meter.board_esp32 as mod
    else:
        import meter.board_unix as mod
    return mod


def _stops_in_a_row():
    """This stop's number in a row, counted in the file STOPS (1: the first since the meter
    last ran RUN_OK_S); 1 when the flash cannot say. A meter that cannot start at all
    (a broken ADC, a heap too small) then restarts less and less often, instead of every
    20 s for good (each start writes the counters' slots and prints its traceback)."""
    n = 0
    try:
        with open(STOPS) as f:
            n = int(f.read())
    except Exception:  # noqa: BLE001 - none yet, unreadable, garbage, out of memory
        pass
    n = min(max(n, 0), 99) + 1
    try:
        with open(STOPS, "w") as f:
            f.write("%d" % n)
    except Exception:  # noqa: BLE001 - a flash that fails: the next stop waits as this one
        pass
    return n


def stopped(exc, restart_s=RESTART_S):
    """main.py's last resort: the meter could not start (out of memory, an ADC or flash that
    fails) or stopped on an error. Prints the traceback and one STOP_PREFIX line saying why,
    then restarts the board after restart_s (board_module().restart_later), doubled for each
    stop in a row up to RESTART_MAX_S. Ctrl-C in that time reaches the REPL (a deploy,
    someone at the console). Without this a meter that fails before its watchdog is armed
    waits at the REPL until someone comes; after, it tries again and again."""
    try:
        mod = board_module()
    except MemoryError:  # main.py did not load it first
        mod = None
    wait = restart_s
    try:
        wait = min(RESTART_MAX_S, restart_s << min(_stops_in_a_row() - 1, 6))
        try:
            sys.print_exception(exc)
            print("%s%s: %s" % (STOP_PREFIX, type(exc).__name__, exc) + STOP_NOTE % wait)
        except MemoryError:
            pass  # the restart matters more than the words
    except KeyboardInterrupt:
        # Ctrl-C while the reason is printed reaches the REPL too: as in the wait, the
        # watchdog the meter armed must not reset the board under it
        if mod is not None:
            mod.hold_watchdog()
        raise
    if mod is None:  # restart at once
        import machine  # (the virtual chip's has reset() too)

        machine.reset()
    mod.restart_later(wait)
