# SPDX-License-Identifier: MIT
"""The meter as a person at its serial port sees it: the same tests for a real board and here.

    make test-board PORT=/dev/ttyUSB0 BOARD=esp32    # a real board (pytest -m board --port)
    pytest tests/test_on_board.py                    # here: a virtual board stands in

Everything goes through the serial port only, with the host's own tools: `ctmeter deploy`
(this checkout's firmware, the board's config kept), the console (MeterLink), mpremote's
transport for the reset. Without --port a virtual board (the unmodified firmware on the
MicroPython unix port, fed by the sensor model: one current channel at 1150 W and a voltage
input) is deployed to exactly as a board would be.

For a bench board, not an installed meter: the tests reboot it and stop it at the REPL once
(it is reset back into the meter). Nothing is written to its config or energy counters.
The board's config must be one it starts with no problems (`ctmeter-boot` problems empty).

What a real board adds over the virtual one here: the true sample rate, jitter and duty of
the paced viper loop, real ADC codes and noise, littlefs, the chip's heap, its reset.
"""

import json
import time
from decimal import Decimal

import pytest
from ctmeter import deploy as api
from ctmeter import transport as tp
from ctmeter.boards import load_board
from ctmeter.diag import FAIL, diagnose
from ctmeter.meterlink import MeterLink
from ctmeter.model import Channel, Frontend, Mains, Resistive, Stream
from ctmeter.virtual.meter import SIM_HEAP, StreamSource, meter_config
from ctmeter.virtual.supervisor import VirtualBoard
from meter.app import VERSION

pytestmark = pytest.mark.board

WATTS = 1150.0
WINDOWS_SETTLED = 10  # windows measured before the rate, duty and readings are judged


class Meter:
    def __init__(self, port, board, boot, vb=None):
        self.port = port
        self.board = board
        self.boot = boot
        self.vb = vb

    @property
    def virtual(self):
        return self.vb is not None

    def link(self):
        return MeterLink.open(self.port, timeout=60)


def _stream():
    return Stream([Channel(Frontend("sct013-030", ideal=True), Resistive(watts=WATTS))],
                  mains=Mains.clean(), voltage=Frontend("zmpt101b", ideal=True),
                  sample_rate=4000, seed=11)


@pytest.fixture(scope="module")
def meter(request, tmp_path_factory):
    port = request.config.getoption("--port")
    vb = None
    if port:
        board = load_board(request.config.getoption("--board"))
    else:
        board = load_board("virtual")
        flash = tmp_path_factory.mktemp("on_board") / "flash"
        flash.mkdir(parents=True)
        (flash / "config.json").write_text(json.dumps(
            meter_config(_stream(), {"device_id": "bench-board"})))
        vb = VirtualBoard(flash, StreamSource(_stream()), firmware="flash",
                          heapsize=SIM_HEAP).start()
        port = vb.port
    try:
        result = api.deploy(board, port, timeout=90)
        yield Meter(port, board, result.boot, vb)
    finally:
        if vb is not None:
            vb.stop()


def _settled(link, windows=WINDOWS_SETTLED, timeout=60):
    """`status` once the meter has measured `windows` more windows."""
    first = link.cmd("status")["windows"]
    deadline = time.monotonic() + timeout
    while True:
        st = link.cmd("status")
        if st["windows"] >= first + windows:
            return st
        assert time.monotonic() < deadline, f"windows stuck at {st['windows']}"
        time.sleep(0.2)


def test_the_deployed_firmware_starts(meter):
    boot = meter.boot
    assert boot["version"] == VERSION  # this checkout's firmware is what runs
    assert boot["platform"] == ("unix" if meter.virtual else "esp32")
    assert boot["problems"] == []
    assert boot["channels"] >= 1 and boot["sample_rate_hz"] > 0


def test_it_samples_at_its_rate_and_keeps_up(meter):
    with meter.link() as link:
        st = _settled(link)
    fs = meter.boot["sample_rate_hz"]
    assert abs(st["sample_rate_hz"] - fs) <= 0.01 * fs, st
    assert st["duty"] >= 0.95, st  # the target: time covered by samples / elapsed
    assert st["mem_errors"] == 0 and st["errors"] == 0, st
    assert st["heap_free"] > 8192, st  # room left between windows
    assert st["platform"] == meter.boot["platform"] and st["version"] == VERSION


def test_adc_and_scope_give_live_codes(meter):
    inputs = meter.boot["channels"] + (1 if meter.boot["voltage"] else 0)
    with meter.link() as link:
        _settled(link, windows=2)
        adc = link.cmd("adc")
        scope = link.cmd("scope 0 400")
    assert sorted(adc) == [f"in{i}" for i in range(inputs)]
    for name, a in adc.items():
        assert 0 <= a["min"] <= a["mean"] <= a["max"] <= 4095, (name, a)
        assert a["clipped"] >= 0 and a["rms_codes"] >= 0, (name, a)
    assert scope["input"] == 0 and scope["n"] == 400 and len(scope["codes"]) == 400
    assert sum(scope["segments"]) == 400
    assert scope["sample_rate_hz"] == meter.boot["sample_rate_hz"]
    assert all(0 <= c <= 4095 for c in scope["codes"])
    assert len(set(scope["codes"])) > 1  # a live ADC, not a constant


def test_readings_are_physical_and_energy_only_grows(meter):
    with meter.link() as link:
        _settled(link, windows=2)
        first = link.cmd("read")
        _settled(link, windows=5)
        second = link.cmd("read")
    assert second["uptime_ms"] > first["uptime_ms"]
    chans = [k for k in second if k.startswith("ch")]
    assert len(chans) == meter.boot["channels"]
    for ch in chans:
        r = second[ch]
        assert r["irms"] >= 0 and -1.0 <= r["pf"] <= 1.0, r
        assert r["apparent"] >= abs(r["power"]) * 0.99 - 0.5, r
        assert Decimal(r["energy_kwh"]) >= Decimal(first[ch]["energy_kwh"]), (first, second)
    if meter.virtual:  # the model's load is known: 1150 W resistive at 230 V
        r = second["ch1"]
        assert r["power"] == pytest.approx(WATTS, rel=0.03), r
        assert r["pf"] == pytest.approx(1.0, abs=0.02) and r["frequency"] == pytest.approx(
            50.0, abs=0.1), r


BAD_LINES = ("nonsense", "config set", "config set sample_rate_hz banana",
             "config set no.such.key 1", "energy set 0 -5", "energy set 0 1.1234567",
             "scope 9 10", "scope 0 99999", "cal apply {", "cal apply {\"gain\": }",
             "status please", "adc sideways", "read 1 2 3")


def test_bad_lines_are_refused_and_change_nothing(meter):
    with meter.link() as link:
        before = link.cmd("config get")
        energy = link.cmd("status")["energy_kwh"]
        windows = link.cmd("status")["windows"]
        for line in BAD_LINES:
            answer = link.cmd_raw(line)
            assert answer["ok"] is False and answer["error"], (line, answer)
            for typed in ("banana", "1.1234567", "sideways", "please"):
                assert typed not in link.last_line, (line, link.last_line)  # never echoed
        after = link.cmd("config get")
        st = _settled(link, windows=2)
    assert after == before
    assert [Decimal(e) for e in st["energy_kwh"]] >= [Decimal(e) for e in energy]
    assert st["windows"] > windows and st["errors"] == 0  # it kept measuring


def test_secrets_are_masked(meter):
    with meter.link() as link:
        cfg = link.cmd("config get")
        pw = link.cmd("config get wifi.password")
    assert pw == {"wifi.password": "***"} or pw == {"wifi.password": ""}, pw
    for section, key in (("wifi", "password"), ("http", "token"), ("mqtt", "password")):
        assert cfg[section][key] in ("***", ""), (section, cfg[section])


def test_a_reboot_keeps_the_energy_and_counts_a_boot(meter):
    with meter.link() as link:
        st = _settled(link, windows=3)
        boot = link.reboot(timeout=90)
        after = link.cmd("status")
    assert boot["boots"] == st["boots"] + 1 == after["boots"]
    # a clean restart persists first: not one mWh lost, never backwards
    assert [Decimal(e) for e in after["energy_kwh"]] >= [Decimal(e) for e in st["energy_kwh"]]
    assert after["seq"] >= st["seq"]


def test_ctrl_c_gives_the_repl_and_a_reset_gives_the_meter_back(meter):
    with tp.open_serial(meter.port, timeout=0.5) as ser:  # as the host tools open it
        ser.write(b"\r\x03")
        time.sleep(1.0)
        ser.read(65536)
    with pytest.raises(tp.DeviceError) as err:
        MeterLink.open(meter.port, timeout=5)
    assert "REPL answered" in str(err.value)
    # what a deploy does after copying: reset, then the meter's boot line
    with tp.connect(meter.port) as transport:
        boot = api.reset_and_wait(transport, meter.port, timeout=90)
    assert boot["version"] == VERSION and boot["problems"] == []
    with meter.link() as link:
        assert link.cmd("status")["boots"] == boot["boots"]


def test_diag_finds_no_failure(meter):
    with meter.link() as link:
        _settled(link, windows=2)
        report = diagnose(link, meter.board)
    assert report.version == VERSION
    assert report.worst != FAIL, report.lines()


def test_make_test_board_selects_these_tests():
    # `make test-board` runs `pytest -m board`: it once selected nothing and passed
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "board"],
                          capture_output=True, text=True, cwd=root, timeout=120)
    assert proc.returncode == 0, proc.stdout[-800:] + proc.stderr[-800:]
    picked = [line for line in proc.stdout.splitlines() if "test_on_board.py::" in line]
    assert len(picked) >= 9, proc.stdout[-800:]
