# SPDX-License-Identifier: MIT
"""`ctmeter console` end to end: the real CLI in a subprocess against the virtual board.

One-shot commands (pretty JSON, --json raw line, the meter's error and exit code), secrets
masked, commands from a pipe, and an interactive session on a pseudo-terminal (readline
prompt, history file without the secret-setting line, Ctrl-D). Formatting helpers directly.
"""

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ctmeter.console_cmd import closest_key, config_keys, pretty, sets_secret
from ctmeter.model import Channel, Frontend, Mains, Resistive, Stream
from ctmeter.transport import EXIT_DEVICE, EXIT_PORT, EXIT_USAGE
from ctmeter.virtual.meter import start_virtual_meter

ROOT = Path(__file__).resolve().parents[1]
SECRET = "hunter2-Wifi-pw"


def run_cli(*args, input=None, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "ctmeter", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, input=input,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    stream = Stream([Channel(Frontend("sct013-030", ideal=True), Resistive(watts=1150))],
                    mains=Mains.clean(), sample_rate=4000, seed=5)
    vb = start_virtual_meter(tmp_path_factory.mktemp("con") / "flash", stream,
                             {"device_id": "con1",
                              "wifi": {"ssid": "home", "password": SECRET}})
    yield vb
    vb.stop()


def test_one_shot_pretty_and_json(board):
    proc = run_cli("console", "--port", board.port, "status")
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)  # pretty, but still JSON
    assert status["device"] == "con1" and "ok" not in status
    assert proc.stdout.count("\n") > 5  # spread over lines

    proc = run_cli("console", "--port", board.port, "--json", "config", "get", "wifi.ssid")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1
    assert json.loads(proc.stdout) == {"ok": True, "cmd": "config get", "wifi.ssid": "home"}


def test_one_shot_device_error_exits_non_zero(board):
    proc = run_cli("console", "--port", board.port, "cal", "zero", "5")
    assert proc.returncode == EXIT_DEVICE
    assert "ctmeter: cal zero: ch: no channel 5" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_cli("console", "--port", board.port, "--json", "frobnicate")
    assert proc.returncode == EXIT_DEVICE
    assert json.loads(proc.stdout) == {"ok": False, "error": "unknown command (try help)"}
    # a typo gets the meter's own command as a hint (from its `help`), never the typed words
    proc = run_cli("console", "--port", board.port, "cnofig", "set", "wifi.password", "hunter2")
    assert proc.returncode == EXIT_DEVICE
    assert proc.stdout.splitlines() == ["error: unknown command (try help)",
                                        "did you mean `config set`?"]
    assert "hunter2" not in proc.stdout + proc.stderr
    proc = run_cli("console", "--port", board.port, "cal", "zeor", "1")
    assert "did you mean `cal zero`?" in proc.stdout
    proc = run_cli("console", "--port", board.port, "frobnicate")
    assert "did you mean" not in proc.stdout  # nothing close: no guess
    proc = run_cli("console", "--port", board.port, "cal", "apply", "0", '{"gian": 1}')
    assert "unknown calibration key" in proc.stdout  # a known command refusing its input:
    assert "did you mean" not in proc.stdout  # no command to guess
    # and a mistyped config key, the closest key of the meter's own config
    proc = run_cli("console", "--port", board.port, "config", "set", "intervl_s", "30")
    assert proc.returncode == EXIT_DEVICE
    assert proc.stdout.splitlines() == ["error: config: intervl_s is not a known key",
                                        "did you mean `interval_s`?"]
    proc = run_cli("console", "--port", board.port, "config", "get", "channels.0.sensr")
    assert proc.stdout.splitlines()[-1] == "did you mean `channels.0.sensor`?"
    proc = run_cli("console", "--port", board.port, "--json", "config", "get", "intervl_s")
    assert len(proc.stdout.splitlines()) == 1  # --json: the meter's answer line only


def test_secrets_stay_masked(board):
    proc = run_cli("console", "--port", board.port, "config", "get")
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads(proc.stdout)
    assert cfg["wifi"]["password"] == "***" and cfg["wifi"]["ssid"] == "home"
    proc = run_cli("console", "--port", board.port, "--json", "config", "get", "wifi.password")
    assert SECRET not in proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["wifi.password"] == "***"


def test_bad_input_and_ports(board, tmp_path):
    proc = run_cli("console", "--port", board.port, "x" * 300)
    assert proc.returncode == EXIT_USAGE and "240-byte" in proc.stderr
    proc = run_cli("console", "--port", str(tmp_path / "ttyUSB3"), "status")
    assert proc.returncode == EXIT_PORT and "no such port" in proc.stderr


def test_commands_from_a_pipe(board):
    proc = run_cli("console", "--port", board.port, input="read\n\nmode\nadc\n")
    assert proc.returncode == 0, proc.stderr
    assert '"ch1"' in proc.stdout and '"in0"' in proc.stdout
    assert '"mode": "human"' in proc.stdout  # the mode the meter is left in
    proc = run_cli("console", "--port", board.port, "--json", input="status\nbogus\n")
    lines = proc.stdout.splitlines()
    assert proc.returncode == EXIT_DEVICE  # one command failed
    assert json.loads(lines[0])["cmd"] == "status" and json.loads(lines[1])["ok"] is False


def _read_until(fd, marker, timeout=30):
    buf = b""
    deadline = time.monotonic() + timeout
    while marker not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {marker!r} in {buf[-800:]!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                buf += os.read(fd, 4096)
            except OSError:
                break
    return buf


def test_interactive_session_with_history(board, tmp_path):
    master, slave = pty.openpty()
    env = {**os.environ, "CTMETER_CACHE": str(tmp_path / "cache"), "TERM": "dumb"}
    proc = subprocess.Popen([sys.executable, "-m", "ctmeter", "console", "--port", board.port],
                            stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=env)
    os.close(slave)
    try:
        _read_until(master, b"con1> ")
        os.write(master, b"config get device_id\r")
        out = _read_until(master, b"con1> ")
        assert b'"device_id": "con1"' in out
        os.write(master, b"config set wifi.password " + SECRET.encode() + b"\r")
        out = _read_until(master, b"con1> ")
        assert b"after reboot" in out  # set, and the answer masks the value
        os.write(master, b"cal zero 9\r")
        assert b"error: ch: no channel 9" in _read_until(master, b"con1> ")
        os.write(master, b"\x04")  # Ctrl-D
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    history = (tmp_path / "cache" / "console_history").read_text()
    assert "config get device_id" in history and "cal zero 9" in history
    assert SECRET not in history and "wifi.password" not in history
    assert (tmp_path / "cache" / "console_history").stat().st_mode & 0o077 == 0


def test_pretty_wraps_long_lists_and_keeps_json():
    obj = {"b": 1, "codes": list(range(2000, 2100)), "a": {"x": [1, 2], "y": "z"}}
    text = pretty(obj)
    assert json.loads(text) == obj
    assert max(len(line) for line in text.splitlines()) <= 100
    assert text.index('"a"') < text.index('"b"')  # sorted keys
    assert pretty({"n": 1}) == '{"n": 1}'


def test_config_keys_are_dotted_paths():
    cfg = {"interval_s": 10, "http": {"url": "x", "token": "***"},
           "channels": [{"pin": 34, "calibration": None}]}
    assert config_keys(cfg) == ["interval_s", "http", "http.url", "http.token", "channels",
                                "channels.0", "channels.0.pin", "channels.0.calibration"]
    assert closest_key("htp.url", config_keys(cfg)) == "http.url"
    assert closest_key("banana", config_keys(cfg)) is None


def test_secret_lines_detected():
    assert sets_secret("config set wifi.password x")
    assert sets_secret("config set http.token abc")
    assert sets_secret("config  set mqtt.pass y")
    assert not sets_secret("config set wifi.ssid home")
    assert not sets_secret("config get wifi.password")
    # mistyped: refused by the meter, but the value is still the secret
    assert sets_secret("config set wifi.pasword hunter2")
    assert sets_secret("config set http.tokn abc")
    assert sets_secret("confg set mqtt.password y")
    assert sets_secret("config set mqtt.passwrd y")
    assert sets_secret('config set wifi {"ssid": "home", "password": "hunter2"}')
    for line in ("config set interval_s 30", "cal apply 0 {\"gain\": 1.02}", "scope 0 400",
                 "energy set 1 12.5", "config set device_id kitchen", "mode json", "status"):
        assert not sets_secret(line), line
