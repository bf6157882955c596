# SPDX-License-Identifier: MIT
"""The ESP32 board layer on the MicroPython unix port, with `machine` and `network` faked at
their Python API (the lowest boundary reachable without a chip): ADC set-up, the paced viper
sampling loop, the watchdog (armed, fed, held off after Ctrl-C for a deploy), NTP, Wi-Fi, and
the wait and reset after the meter stopped (meter.board.stopped).

Not covered here (needs a board, `make test-board`): real ADC timing and noise, the real
task watchdog, the Wi-Fi driver.
"""

import json

import pytest

SCRIPT = r"""
import sys, json

log = []

class Pin:
    def __init__(self, n):
        self.n = n

class ADC:
    ATTN_0DB, ATTN_2_5DB, ATTN_6DB, ATTN_11DB = 0, 1, 2, 3
    def __init__(self, pin, atten):
        log.append(["adc", pin.n, atten])
        self.k = pin.n
    def read_u16(self):
        self.k += 1
        return ((self.k * 37) % 4096) << 4 | 0xF   # 12-bit code, low bits as the ADC fills

class WDT:
    def __init__(self, timeout):
        log.append(["wdt", timeout])
    def feed(self):
        log.append(["feed"])

class machine:
    Pin = Pin
    ADC = ADC
    WDT = WDT
    def reset():
        log.append(["reset"])

class WLAN:
    def __init__(self, mode):
        self.connected = False
        self.st = 1000  # STAT_IDLE
    def active(self, on):
        log.append(["active", on])
    def isconnected(self):
        return self.connected
    def connect(self, ssid, password):
        log.append(["connect", ssid])
        self.st = 1001
    def disconnect(self):
        log.append(["disconnect"])
        self.st = 1000
    def status(self, what=None):
        return -60 if what == "rssi" else self.st

class network:
    STA_IF = 0
    STAT_CONNECTING = 1001
    WLAN = WLAN

class ntptime:
    def settime():
        log.append(["ntp"])

sys.modules["machine"] = machine
sys.modules["network"] = network
sys.modules["ntptime"] = ntptime

from array import array
from meter.board_esp32 import Esp32Board

b = Esp32Board([34, 35], voltage_pin=36, atten_db=11, sample_rate_hz=4000)
buf = array("H", bytes(2 * 3 * 50))
b.read_frames(buf, 0, 50)
rate, late = b.sampling_stats()
codes = list(buf[:9])
out = {"nch": b.nch, "codes": codes, "rate": rate, "late": late}
out["wifi_before"] = b.wifi_status()
b.wifi_connect("home", "hunter2-wifi-PASS")
out["wifi_connecting"] = b.wifi_status()
b.wifi_connect("home", "hunter2-wifi-PASS")   # the meter's retry while still connecting
out["wifi_log"] = [e for e in log if e[0] in ("connect", "disconnect")]
b.sync_clock()
out["ntp_offline"] = ["ntp"] in log
b._wlan.connected = True
out["wifi_up"] = b.wifi_status()
out["rssi"] = b.rssi()
b.sync_clock()
b.wdt_hold()            # before the meter armed it: nothing to hold
b.wdt_start(30000)
b.wdt_feed()
b.wdt_hold()
out["log"] = log
print(json.dumps(out))
"""


@pytest.mark.micropython
def test_esp32_board_layer_with_machine_faked(micropython):
    out = json.loads(micropython.run(SCRIPT, heapsize="64k").strip().splitlines()[-1])
    log = out["log"]
    assert out["nch"] == 3
    # ADC1 pins at 11 dB (ATTN_11DB = 3 in the fake), voltage input last
    assert log[:3] == [["adc", 34, 3], ["adc", 35, 3], ["adc", 36, 3]]
    # read_u16 >> 4: the 12-bit code, frame-major, one read per input per frame
    assert out["codes"] == [((34 + 1 + k) * 37) % 4096 for k in range(3)] + \
        [((35 + 1 + k) * 37) % 4096 for k in range(3)] + \
        [((36 + 1 + k) * 37) % 4096 for k in range(3)]
    assert out["rate"] == 4000 and out["late"] >= 0
    assert out["wifi_before"] == "down" and out["wifi_connecting"] == "connecting"
    # a retry (after the meter's backoff) drops a stuck attempt and starts over
    assert out["wifi_log"] == [["connect", "home"], ["disconnect"], ["connect", "home"]]
    assert out["ntp_offline"] is False  # no NTP attempt without Wi-Fi
    assert out["wifi_up"] == "connected" and out["rssi"] == -60
    assert ["ntp"] in log  # with Wi-Fi up, sync_clock asks NTP
    wdts = [e for e in log if e[0] == "wdt"]
    # armed at 30 s by the meter, then re-armed long (15 min) after Ctrl-C for a deploy
    assert wdts == [["wdt", 30000], ["wdt", 15 * 60000]]
    assert ["feed"] in log
    assert "hunter2" not in json.dumps(out)


RESTART_SCRIPT = SCRIPT[:SCRIPT.index("from array import array")] + r"""
import meter.board_esp32 as board_esp32

class Sleeper:
    # stands in for the module's `time`: records the wait, or is interrupted by Ctrl-C
    ctrl_c = False
    def sleep(s):
        log.append(["sleep", s])
        if Sleeper.ctrl_c:
            raise KeyboardInterrupt

board_esp32.time = Sleeper
board_esp32.restart_later(20)
Sleeper.ctrl_c = True
try:
    board_esp32.restart_later(20)
    log.append(["returned"])
except KeyboardInterrupt:
    log.append(["repl"])
print(json.dumps(log))
"""


@pytest.mark.micropython
def test_esp32_restart_after_a_stop_waits_and_ctrl_c_holds_the_watchdog(micropython):
    log = json.loads(micropython.run(RESTART_SCRIPT, heapsize="64k").strip().splitlines()[-1])
    # meter.board.stopped's wait on a chip: the watchdog set past its end (the meter's 30 s
    # must not cut a longer wait short), 20 s, then a hard reset
    assert log[:3] == [["wdt", 50000], ["sleep", 20], ["reset"]]
    # Ctrl-C in the wait: no reset, the watchdog set to 15 minutes (a deploy gets its
    # time, a forgotten REPL still ends in the meter), and the REPL gets the interrupt
    assert log[3:] == [["wdt", 50000], ["sleep", 20], ["wdt", 15 * 60000], ["repl"]]


STOPS_SCRIPT = SCRIPT[:SCRIPT.index("from array import array")] + r"""
import os
import meter.board as board
import meter.board_esp32 as board_esp32

os.chdir(sys.argv[1])  # the board's flash root
board.board_module = lambda: board_esp32  # as main.py loads it first on a chip

class Sleeper:
    def sleep(s):
        log.append(["sleep", s])

board_esp32.time = Sleeper
for i in range(8):  # a meter that cannot start, for good
    board.stopped(OSError("no ADC"))
with open(board.STOPS) as f:
    log.append(["stops", f.read()])
with open(board.STOPS, "w") as f:
    f.write("garbage")  # a count the flash mangled: taken as none
board.stopped(OSError("no ADC"))
print(json.dumps(log))
"""


@pytest.mark.micropython
def test_esp32_stops_in_a_row_wait_longer_each_time(micropython, tmp_path):
    out = micropython.run(STOPS_SCRIPT, heapsize="64k", args=[tmp_path])
    log = json.loads(out.strip().splitlines()[-1])
    sleeps = [e[1] for e in log if e[0] == "sleep"]
    assert sleeps == [20, 40, 80, 160, 320, 640, 640, 640, 20]
    assert ["stops", "8"] in log and log.count(["reset"]) == 9
    assert "(restart in 640 s, Ctrl-C for the REPL)" in out


STOPPED_SCRIPT = SCRIPT[:SCRIPT.index("from array import array")] + r"""
import os
import meter.board as board
import meter.board_esp32 as board_esp32

os.chdir(sys.argv[1])  # the board's flash root (stopped() counts stops there)

board.board_module = lambda: board_esp32  # as main.py loads it first on a chip

class Interrupted(Exception):
    # Ctrl-C arriving while stopped() prints why the meter stopped
    def __str__(self):
        raise KeyboardInterrupt

try:
    board.stopped(Interrupted())
    log.append(["returned"])
except KeyboardInterrupt:
    log.append(["repl"])
print(json.dumps(log))
"""


@pytest.mark.micropython
def test_esp32_ctrl_c_while_the_stop_is_printed_holds_the_watchdog(micropython, tmp_path):
    log = json.loads(micropython.run(STOPPED_SCRIPT, heapsize="64k",
                                     args=[tmp_path]).strip().splitlines()[-1])
    # no reset and no wait: the REPL gets the interrupt, the watchdog set to 15 minutes
    assert log == [["wdt", 15 * 60000], ["repl"]]
