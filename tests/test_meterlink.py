# SPDX-License-Identifier: MIT
"""MeterLink: the JSON console client, against the virtual board and against scripted ports.

The virtual board runs the unmodified firmware behind a pty: mode switching and restoring,
answers, device errors, a busy meter (cal zero, scope), reboot, the REPL instead of the
meter, missing, busy and silent ports. A scripted fake port checks the answer matching
against interleaved boot lines, chatter, stale answers and partial lines.
"""

import json
import os
import pty
import time

import pytest
import serial
from ctmeter.errors import CommandError
from ctmeter.meterlink import NO_MEMORY_ERROR, NO_MEMORY_LINE, MeterError, MeterLink, command_name
from ctmeter.model import Channel, Frontend, Mains, Resistive, Stream
from ctmeter.transport import EXIT_DEVICE, EXIT_PORT, EXIT_USAGE, DeviceError, PortError
from ctmeter.virtual.meter import start_virtual_meter


def _stream():
    return Stream([Channel(Frontend("sct013-030", ideal=True), Resistive(watts=2300))],
                  mains=Mains.clean(), sample_rate=4000, seed=3)


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    vb = start_virtual_meter(tmp_path_factory.mktemp("ml") / "flash", _stream(),
                             {"device_id": "ml1"})
    yield vb
    vb.stop()


def raw_mode(port, timeout=20):
    """The console mode as a plain terminal user sees it (`mode` typed by hand)."""
    with serial.Serial(port, timeout=0.1) as ser:
        ser.write(b"mode\r\n")
        deadline = time.monotonic() + timeout
        buf = b""
        while time.monotonic() < deadline:
            buf += ser.read(256)
            for line in buf.split(b"\n"):
                line = line.strip()
                if NO_MEMORY_ERROR.encode() in line:  # the meter dropped it: type it again
                    buf = b""
                    time.sleep(0.3)
                    ser.write(b"mode\r\n")
                    break
                if line.startswith(b"mode: "):
                    return line[6:].decode()
                if line.startswith(b"{") and b'"mode"' in line:
                    return json.loads(line)["mode"]
    raise AssertionError(f"no mode answer: {buf!r}")


def test_json_mode_while_open_and_restored_after(board):
    assert raw_mode(board.port) == "human"
    with MeterLink.open(board.port, timeout=30) as link:
        assert link.previous_mode == "human"
        status = link.cmd("status")
        assert "ok" not in status and "cmd" not in status
        assert status["device"] == "ml1" and status["sample_rate_hz"] == 4000
        raw = link.cmd_raw("status")
        assert raw["ok"] is True and raw["cmd"] == "status"
        assert json.loads(link.last_line) == raw
    assert link.ser is None  # closed
    assert raw_mode(board.port) == "human"


def test_restore_mode_can_be_chosen(board):
    with MeterLink.open(board.port) as link:
        link.restore_mode = "json"
    assert raw_mode(board.port) == "json"
    with MeterLink.open(board.port) as link:
        assert link.previous_mode == "json"
        assert link.cmd("config get device_id") == {"device_id": "ml1"}
        link.restore_mode = "human"
    assert raw_mode(board.port) == "human"


def test_device_errors(board):
    with MeterLink.open(board.port) as link:
        with pytest.raises(MeterError) as err:
            link.cmd("cal zero 7")
        assert err.value.exit_code == EXIT_DEVICE
        assert err.value.error == "ch: no channel 7 (channels: 0..0)"
        assert str(err.value) == "cal zero: ch: no channel 7 (channels: 0..0)"
        assert err.value.answer["ok"] is False
        # cmd_raw never raises on ok:false; an unknown command has no "cmd" in its answer
        assert link.cmd_raw("frobnicate") == {"ok": False, "error": "unknown command (try help)"}
        assert link.cmd_raw("config nope")["ok"] is False
        # the link still works after errors
        assert link.cmd("config get interval_s") == {"interval_s": 10}


def test_refused_before_sending(board):
    with MeterLink.open(board.port) as link:
        for line in ("", "status\nreboot", "x" * 300, "mode human", "reboot"):
            with pytest.raises(CommandError) as err:
                link.cmd(line)
            assert err.value.exit_code == EXIT_USAGE, line
        assert link.cmd("read")["uptime_ms"] > 0


def test_busy_meter_long_commands(board):
    with MeterLink.open(board.port) as link:
        seen = []
        zero = link.cmd("cal zero 0")  # 25 windows of measurement before the answer
        assert zero["windows"] == 25 and zero["ch"] == 0
        # (400: larger answers may not fit the virtual board's heap, see ctmeter.scope)
        scope = link.cmd("scope 0 400", progress=seen.append)
        assert scope["n"] == 400 and len(scope["codes"]) == 400
        assert seen and seen[-1] >= len(link.last_line)  # bytes counted as they arrived
        assert link.cmd("status")["windows"] > 0


def test_missing_port(tmp_path):
    with pytest.raises(PortError) as err:
        MeterLink.open(str(tmp_path / "ttyUSB9"))
    assert err.value.exit_code == EXIT_PORT and "no such port" in str(err.value)


def test_busy_port(board):
    holder = serial.Serial(board.port, exclusive=True)
    try:
        with pytest.raises(PortError) as err:
            MeterLink.open(board.port)
    finally:
        holder.close()
    assert err.value.exit_code == EXIT_PORT and "busy" in str(err.value)


def test_silent_port():
    master, slave = pty.openpty()
    try:
        t0 = time.monotonic()
        with pytest.raises(DeviceError) as err:
            MeterLink.open(os.ttyname(slave), timeout=1)
        assert time.monotonic() - t0 < 5
    finally:
        os.close(master)
        os.close(slave)
    assert err.value.exit_code == EXIT_DEVICE and "no meter console" in str(err.value)


def test_reboot_and_repl(tmp_path):
    vb = start_virtual_meter(tmp_path / "flash", _stream(), {"device_id": "ml2"})
    try:
        with MeterLink.open(vb.port) as link:
            first = link.cmd("status")["boots"]
            boot = link.reboot()
            assert boot["device"] == "ml2" and boot["boots"] == first + 1
            assert link.cmd("status")["boots"] == first + 1  # JSON mode again
        assert raw_mode(vb.port) == "human"
        # Ctrl-C stops the meter: MicroPython's REPL, not the console, is on the port now
        with serial.Serial(vb.port, timeout=0.5) as ser:
            ser.write(b"\r\x03")
            time.sleep(1.0)
            ser.read(4096)
        with pytest.raises(DeviceError) as err:
            MeterLink.open(vb.port, timeout=5)
        assert "REPL answered" in str(err.value)
    finally:
        vb.stop()


# ------------------------------------------------------------------ scripted port


class ScriptedPort:
    """A pyserial-like port: each line written gets the bytes `answer(line)` returns."""

    def __init__(self, answer):
        self.answer = answer
        self.out = bytearray()
        self.sent = []
        self.closed = False

    def write(self, data):
        line = data.decode().strip()
        self.sent.append(line)
        self.out += self.answer(line)

    def flush(self):
        pass

    @property
    def in_waiting(self):
        return len(self.out)

    def read(self, n):
        if not self.out:
            time.sleep(0.01)
            return b""
        n = min(n, 7)  # arrive in small pieces, like a slow UART
        chunk = bytes(self.out[:n])
        del self.out[:n]
        return chunk

    def close(self):
        self.closed = True


def test_answers_matched_through_noise():
    state = {"mode": "human"}

    def meter(line):
        if line == "mode":
            # booting: a boot line, then the console answers the repeated question
            if state.setdefault("asked", 0) == 0:
                state["asked"] = 1
                return b'ctmeter-boot {"device": "x", "boots": 3}\n'
            return b"mode: human\n"
        if line == "mode json":
            state["mode"] = "json"
            return b'chatter\n{"ok": true, "cmd": "mode", "mode": "json"}\r\n'
        if line == "mode human":
            return b"mode: human\n"
        if line == "status":
            return (b'{"ok": true, "cmd": "read", "uptime_ms": 5}\n'  # someone else's
                    b'{"ok": true, "cmd": "stat\n'  # a partial line (bytes lost)
                    b'{"not": "an answer"}\n'
                    b'in0.min: 12\n'
                    b'{"ok": true, "cmd": "status", "uptime_s": 42}\r\n')
        if line == "cal zero 0":
            return b'{"ok": true, "cmd": "cal show"}\n{"ok": false, "cmd": "cal zero", ' \
                   b'"error": "busy"}\n'
        return b'{"ok": false, "error": "unknown command (try help)"}\n'

    # the first `mode` is answered by a boot line only: MeterLink asks again
    port = ScriptedPort(meter)
    link = MeterLink(port, "fake", timeout=10)
    link._handshake()
    assert link.boot == {"device": "x", "boots": 3}
    assert port.sent == ["mode", "mode", "mode json"]
    assert link.cmd("status") == {"uptime_s": 42}
    with pytest.raises(MeterError) as err:
        link.cmd("cal zero 0")
    assert err.value.error == "busy"
    assert link.cmd_raw("bogus")["error"] == "unknown command (try help)"
    link.close()
    assert port.sent[-1] == "mode human" and port.closed


def test_line_dropped_for_lack_of_memory_is_sent_again():
    tries = {"status": 0, "read": 0}

    def meter(line):
        tries[line] += 1
        if line == "status" and tries[line] < 3:
            return NO_MEMORY_LINE.encode() + b"\r\n"
        if line == "read":  # the JSON form of the notice
            return b'{"ok": false, "error": "out of memory, line dropped"}\n'
        return b'{"ok": true, "cmd": "status", "n": 1}\n'

    link = MeterLink(ScriptedPort(meter), "fake", timeout=5)
    link._json = True
    assert link.cmd("status") == {"n": 1} and tries["status"] == 3
    with pytest.raises(DeviceError) as err:
        link.cmd("read")
    assert "out of memory" in str(err.value) and tries["read"] == 4


def test_stale_input_is_skipped_before_a_command():
    answers = {"status": b'{"ok": true, "cmd": "status", "n": 2}\n'}
    port = ScriptedPort(lambda line: answers.get(line, b""))
    link = MeterLink(port, "fake", timeout=2)
    link._json = True
    port.out += b'{"ok": true, "cmd": "status", "n": 1}\n'  # an old answer nobody read
    assert link.cmd("status") == {"n": 2}


def test_no_answer_times_out_naming_the_command_not_the_line():
    port = ScriptedPort(lambda line: b"")
    link = MeterLink(port, "fake", timeout=0.3)
    with pytest.raises(DeviceError) as err:
        link.cmd("config set wifi.password hunter2")
    assert "`config set`" in str(err.value) and "hunter2" not in str(err.value)


def test_command_names():
    assert command_name("status") == "status"
    assert command_name("  cal   zero 0") == "cal zero"
    assert command_name("config get wifi.ssid") == "config get"
    assert command_name("config") == "config"
    assert command_name("scope 1 100") == "scope"


def test_reboot_opens_a_port_that_went_away_again(monkeypatch):
    """A native-USB board (ESP32-S2/S3/C3/C6) re-enumerates when it resets: its port fails
    under the link and comes back a moment later. reboot() opens it again and finds the
    boot line there."""
    class Vanishing(ScriptedPort):
        def read(self, n):
            if "reboot" in self.sent:
                raise serial.SerialException("device reports readiness to read but "
                                             "returned no data (device disconnected?)")
            return super().read(n)

    old = Vanishing(lambda line: b"")
    link = MeterLink(old, "/dev/ttyACM0", timeout=10)
    link._json = True
    link.previous_mode = "human"

    def back(line):
        if line == "mode":
            return b"mode: human\n"
        if line == "mode json":
            return b'{"ok": true, "cmd": "mode", "mode": "json"}\n'
        if line == "status":
            return b'{"ok": true, "cmd": "status", "boots": 8}\n'
        return b""

    new = ScriptedPort(back)
    new.out += b"ets Jun  8 2016 00:22:57\r\nctmeter-boot {\"device\": \"x\", \"boots\": 8}\r\n"
    opened = []

    def serial_for_url(port, **kwargs):
        opened.append(port)
        if len(opened) < 3:  # not enumerated yet
            raise serial.SerialException(f"could not open port {port}")
        return new

    monkeypatch.setattr(serial, "serial_for_url", serial_for_url)
    boot = link.reboot(timeout=10)
    assert boot == {"device": "x", "boots": 8}
    assert opened == ["/dev/ttyACM0"] * 3 and old.closed
    assert link.cmd("status") == {"boots": 8}  # JSON mode again, on the new port
    link.close()
    assert new.sent[-1] == "mode human" and new.closed


def test_reboot_gives_up_when_the_port_stays_away(monkeypatch):
    class Vanishing(ScriptedPort):
        def read(self, n):
            raise serial.SerialException("device disconnected")

    link = MeterLink(Vanishing(lambda line: b""), "/dev/ttyACM0", timeout=1)
    link._json = True

    def never(port, **kwargs):
        raise serial.SerialException(f"could not open port {port}")

    monkeypatch.setattr(serial, "serial_for_url", never)
    t0 = time.monotonic()
    with pytest.raises(DeviceError) as err:
        link.reboot(timeout=1.0)
    assert "serial link to /dev/ttyACM0 lost" in str(err.value)
    assert time.monotonic() - t0 < 5
