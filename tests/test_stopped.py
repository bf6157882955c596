# SPDX-License-Identifier: MIT
"""A meter that cannot start says why and restarts the board, and the host's tools say so.

device/main.py hands whatever stopped the meter to meter.board.stopped: the traceback, one
`ctmeter-stopped <error>: <message>` line, then a reset RESTART_S later (Ctrl-C in that time
reaches the REPL). Before, a start-up that failed left the meter at the REPL until someone
came: no watchdog is armed that early. The real, deployed firmware is made to fail here the
way it fails on a board short of memory: in a heap too small for its start-up (64 KB on the
64-bit unix port). The ESP32's side of the wait (the watchdog held off after Ctrl-C, then
machine.reset) is in test_board_esp32.py.
"""

import os
import re
import select
import time

import pytest
import serial
from ctmeter import deploy as api
from ctmeter.boards import load_board
from ctmeter.meterlink import MeterLink
from ctmeter.model import Channel, Frontend, Mains, Resistive, Stream
from ctmeter.transport import EXIT_DEVICE, DeviceError
from ctmeter.virtual.meter import StreamSource, deploy_to_flash, meter_config
from ctmeter.virtual.supervisor import HARD_RESET, VirtualBoard
from meter.board import RESTART_MAX_S, STOP_PREFIX, STOPS

TOO_SMALL = "64k"  # the start-up needs ~100 KB here (docs/BENCHMARKS.md)
SECRET = "hunter2-stopped-wifi"
TOKEN = "tok-stopped-5e6f"
STOP_LINE = re.compile(re.escape(STOP_PREFIX).encode() + rb"([^\r\n]*)\r?\n")


def _stream():
    return Stream([Channel(Frontend("sct013-030", ideal=True), Resistive(watts=1150))],
                  mains=Mains.clean(), sample_rate=4000, seed=9)


def _read_until(fd, pattern, timeout, count=1):
    """The port's output until `pattern` has matched `count` times (AssertionError if not)."""
    out = b""
    deadline = time.monotonic() + timeout
    while len(re.findall(pattern, out)) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"{pattern!r} x{count} not seen in {timeout} s: {out[-1500:]!r}"
        if select.select([fd], [], [], min(left, 0.2))[0]:
            out += os.read(fd, 65536)
    return out


def _stops_on_flash(vb):
    # the chip rewrites the file at every stop (truncate, then write): read it between two
    for _ in range(100):
        text = (vb.flash_dir / STOPS).read_text()
        if text.isdigit():
            return int(text)
        time.sleep(0.02)
    raise AssertionError(f"{STOPS} holds {text!r}")


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """A virtual board with too little heap, given the real firmware by `deploy` (the deploy's
    error is kept for the test about it)."""
    flash = tmp_path_factory.mktemp("stopped") / "flash"
    vb = VirtualBoard(flash, StreamSource(_stream()), firmware="flash",
                      heapsize=TOO_SMALL).start()
    cfg = api.make_config(None, {"device_id": "tight", "wifi.ssid": "home",
                                 "wifi.password": SECRET, "http.url": "http://127.0.0.1:9/",
                                 "http.token": TOKEN})
    try:
        api.deploy(load_board("virtual"), vb.port, config=cfg, timeout=60)
    except Exception as exc:  # noqa: BLE001 - the test below asserts what it was
        vb.deploy_error = exc
    else:
        vb.deploy_error = None
    yield vb
    vb.stop()


def test_deploy_reports_why_the_meter_could_not_start(deployed):
    err = deployed.deploy_error
    assert isinstance(err, DeviceError), err
    assert err.exit_code == EXIT_DEVICE
    assert f"the meter on {deployed.port} stopped: MemoryError: memory allocation failed" \
        in str(err)
    assert re.search(r' at "meter\.\w+", line \d+', str(err)), str(err)  # where
    assert "restarts after 20 s, waiting twice as long after each stop in a row (up to 640 s)" \
        in err.hint and "serial.tools.miniterm" in err.hint
    assert SECRET not in str(err) + err.hint and TOKEN not in str(err) + err.hint


def test_it_says_why_and_restarts_by_itself(deployed):
    fd = os.open(deployed.port, os.O_RDWR | os.O_NOCTTY)
    try:
        resets = len(deployed.resets)
        out = _read_until(fd, STOP_LINE, timeout=30, count=2)
    finally:
        os.close(fd)
    why = STOP_LINE.search(out).group(1).decode()
    assert why.startswith("MemoryError: memory allocation failed, allocating ")
    assert why.endswith(" s, Ctrl-C for the REPL)")
    # stops in a row wait twice as long each time (the deploy's start was the first, 20 s;
    # the virtual board's fast clock waits 1 s whatever the line says)
    waits = [int(w) for w in re.findall(rb"\(restart in (\d+) s, Ctrl-C", out)]
    assert len(waits) >= 2 and waits[0] >= 40, waits
    pairs = zip(waits, waits[1:], strict=False)
    assert all(b == min(RESTART_MAX_S, 2 * a) for a, b in pairs), waits
    assert _stops_on_flash(deployed) >= 1 + len(waits)  # counted on flash
    # the traceback comes first, naming where the start-up ran out
    before = out[:out.index(STOP_PREFIX.encode())].decode(errors="replace")
    assert "Traceback (most recent call last):" in before and 'File "main.py"' in before
    # twice: the board reset itself (a hard reset: boot.py and main.py again) and failed
    # the same way, never stopping at the REPL
    assert len(deployed.resets) > resets and set(deployed.resets[resets:]) == {HARD_RESET}
    assert b">>> " not in out
    assert SECRET.encode() not in out and TOKEN.encode() not in out


def test_meterlink_reports_the_stop(deployed):
    t0 = time.monotonic()
    with pytest.raises(DeviceError) as err:
        MeterLink.open(deployed.port, timeout=20)
    assert "stopped: MemoryError: memory allocation failed" in str(err.value)
    assert "(restart in" not in str(err.value)  # said by the hint
    assert err.value.exit_code == EXIT_DEVICE
    assert time.monotonic() - t0 < 20  # the stop line, not a timeout


def test_ctrl_c_in_the_wait_reaches_the_repl(tmp_path):
    """With the clock in real time (as in `make sim`) the wait is the board's 20 s: Ctrl-C
    then leaves the REPL for a deploy or a person, and the board does not reset under it."""
    flash = tmp_path / "flash"
    deploy_to_flash(flash, meter_config(_stream()))
    vb = VirtualBoard(flash, StreamSource(_stream()), firmware="flash", heapsize=TOO_SMALL,
                      clock="realtime").start()
    try:
        with serial.Serial(vb.port, timeout=0.2) as ser:
            fd = ser.fileno()
            _read_until(fd, STOP_LINE, timeout=30)
            ser.write(b"\x03")
            _read_until(fd, rb">>> ", timeout=10)
            ser.write(b"print(6 * 7)\r")
            _read_until(fd, rb"\n42\r?\n", timeout=10)
            time.sleep(1.0)
        assert vb.resets == []  # the board never reset: the REPL is still there
        assert vb.safe_interrupts >= 1
    finally:
        vb.stop()
