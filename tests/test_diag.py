# SPDX-License-Identifier: MIT
"""`ctmeter diag` against the virtual board with sensor-model streams, and its rules alone.

Boards: a healthy meter (5 A and an idle CT, a voltage sensor, posting to a local receiver:
every check passes, exit 0), an overloaded CT (60 A on a 30 A sensor: clipping fails,
exit 1), and two unplugged CTs modelled as floating ESP32 pins (one drifting near 0, one
with broadband noise at mid-scale: both fail "connected"). The rules are also run on model
codes directly: what the noise, periodicity and bias rules see for each kind of input.
"""

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from ctmeter import diag
from ctmeter.boards import load_board
from ctmeter.meterlink import MeterLink
from ctmeter.model import (
    SMPS,
    Channel,
    Frontend,
    Inductive,
    Mains,
    Resistive,
    Stream,
    noise_blocks,
)
from ctmeter.virtual.meter import SIM_HEAP, StreamSource, meter_config, start_virtual_meter
from ctmeter.virtual.supervisor import VirtualBoard

from tests.test_firmware_sim import wait_sim_time

ROOT = Path(__file__).resolve().parents[1]
FS = 4000


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "ctmeter", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def floating_pin(k0, n, level, seed):
    """Codes of a floating ESP32 ADC pin: the sampling capacitor's leftover charge wanders
    slowly (two incommensurate drifts, ~90 codes) under broadband noise far above a biased
    divider's (45 codes RMS vs 2); nothing repeats with the mains."""
    t = np.arange(k0, k0 + n) / FS
    drift = 80 * np.sin(2 * np.pi * 0.7 * t) + 40 * np.sin(2 * np.pi * 2.3 * t + 1)
    x = level + drift + 45 * noise_blocks(seed, 0, k0, n)
    return np.clip(np.rint(x), 0, 4095).astype(np.uint16)


class FloatingInputs:
    """A feed source: the stream's codes with some columns replaced by floating pins."""

    def __init__(self, stream, levels):
        self.base = StreamSource(stream)
        self.nch, self.sample_rate_hz = self.base.nch, self.base.sample_rate_hz
        self.levels = levels  # column -> the level the pin's charge wanders around

    def frames(self, k0, n):
        codes = np.array(self.base.frames(k0, n))
        for col, level in self.levels.items():
            codes[:, col] = floating_pin(k0, n, level, seed=50 + col)
        return codes


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(201)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/api/measurements"
    stream = Stream([Channel(Frontend("sct013-030", seed=1), Resistive(watts=1150)),
                     Channel(Frontend("sct013-030", seed=2), None)],
                    mains=Mains(seed=1), voltage=Frontend("zmpt101b", seed=5),
                    sample_rate=FS, seed=3)
    vb = start_virtual_meter(tmp_path_factory.mktemp("dh") / "flash", stream,
                             {"device_id": "dg1",
                              "http": {"enabled": True, "url": url, "token": "t0k"}})
    wait_sim_time(vb, 25, timeout=60)  # two reading intervals: duty measured, readings posted
    yield vb
    vb.stop()
    server.shutdown()


def test_healthy_meter_passes_everything(healthy):
    proc = run_cli("diag", "--port", healthy.port, "--board", "virtual")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("diag: dg1 (firmware")
    checks = [line for line in lines[1:-1]]
    assert all(line.startswith("PASS") for line in checks), proc.stdout
    assert lines[-1] == f"summary: {len(checks)} pass, 0 warn, 0 fail"
    for name in ("bias", "connected", "clipping", "noise", "sample rate", "jitter", "duty",
                 "wifi", "post", "heap"):
        assert any(line.split(None, 1)[1].startswith(name) for line in checks), name
    assert sum(1 for line in checks if " in2 " in line) == 4  # the voltage input too

    proc = run_cli("diag", "--port", healthy.port, "--board", "virtual", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is True and report["summary"]["fail"] == 0
    by = {(c["name"], c["input"]): c for c in report["checks"]}
    assert "CT connected" in by[("connected", 0)]["detail"]
    assert "no load" in by[("connected", 1)]["detail"]
    assert by[("connected", 0)]["value"]["residual"] < 0.05
    assert 1.0 < by[("noise", 1)]["value"] < 4.0  # the model's ADC noise: 2 codes RMS
    assert "ok 201" in by[("post", None)]["detail"]


@pytest.fixture(scope="module")
def overloaded(tmp_path_factory):
    stream = Stream([Channel(Frontend("sct013-030", seed=4), Resistive(irms=60))],
                    mains=Mains(seed=2), sample_rate=FS, seed=6)
    vb = start_virtual_meter(tmp_path_factory.mktemp("do") / "flash", stream,
                             {"device_id": "dg2"})
    yield vb
    vb.stop()


def test_overload_fails_on_clipping(overloaded):
    proc = run_cli("diag", "--port", overloaded.port, "--board", "virtual", "--json")
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is False and report["worst"] == "fail"
    by = {(c["name"], c["input"]): c for c in report["checks"]}
    assert by[("clipping", 0)]["status"] == "fail"
    assert by[("clipping", 0)]["value"]["clipped"] > 50
    assert by[("connected", 0)]["status"] == "pass"  # a real (if too large) load
    assert by[("post", None)]["status"] == "warn"  # no HTTP or MQTT configured
    failed = [c["name"] for c in report["checks"] if c["status"] == "fail"]
    assert failed == ["clipping"]


@pytest.fixture(scope="module")
def unplugged(tmp_path_factory):
    stream = Stream([Channel(Frontend("sct013-030", seed=7), Resistive(watts=500)),
                     Channel(Frontend("sct013-030", seed=8), None),
                     Channel(Frontend("sct013-030", seed=9), None)],
                    mains=Mains(seed=3), sample_rate=FS, seed=9)
    # input 1's charge wanders around 60 codes: a capture's mean stays under 170, within
    # diag's 200-code rail band wherever the capture falls (around 120 it reached 227)
    flash = tmp_path_factory.mktemp("du") / "flash"
    flash.mkdir()
    (flash / "config.json").write_text(json.dumps(meter_config(stream, {"device_id": "dg3"})))
    vb = VirtualBoard(flash, FloatingInputs(stream, {1: 60.0, 2: 1900.0}),
                      heapsize=SIM_HEAP).start()
    yield vb
    vb.stop()


def test_floating_inputs_fail_connected(unplugged):
    with MeterLink.open(unplugged.port) as link:
        report = diag.diagnose(link, board=load_board("virtual"))
    by = {(c.name, c.input): c for c in report.checks}
    assert by[("connected", 0)].status == "pass"  # the plugged-in CT with its load
    # near 0: not biased, and not a CT
    assert by[("bias", 1)].status == "fail"
    assert by[("connected", 1)].status == "fail" and "near 0" in by[("connected", 1)].detail
    # at mid-scale, so the bias passes, but noise that does not repeat with the mains
    assert by[("bias", 2)].status == "pass"
    assert by[("connected", 2)].status == "fail"
    assert "floating" in by[("connected", 2)].detail
    assert by[("noise", 2)].status == "fail"
    assert report.exit_code == 1


# ------------------------------------------------------------------ the rules on model codes


def _codes(load, sensor_seed=3, mains=None, n=1600, gap=5):
    """Two 800-code windows with a `gap`-sample hole between them, like a meter capture."""
    st = Stream([Channel(Frontend("sct013-030", seed=sensor_seed), load)],
                mains=mains or Mains(seed=1), sample_rate=FS, seed=4)
    half = n // 2
    a = st.read(40000, half, truth=False).codes[:, 0]
    b = st.read(40000 + half + gap, half, truth=False).codes[:, 0]
    return np.concatenate([a, b])


@pytest.mark.parametrize("mains", [Mains(seed=1), Mains.region("us", seed=2)],
                         ids=["50Hz", "60Hz"])
@pytest.mark.parametrize("load", [Resistive(watts=1150), Inductive(pf=0.7, watts=900),
                                  SMPS(watts=300)], ids=["resistive", "inductive", "smps"])
def test_loads_are_periodic_and_noise_is_the_adcs(load, mains):
    a = diag.analyse(_codes(load, mains=mains), FS)
    assert a["residual"] < 0.05
    assert 1.6 < a["noise"] < 2.6  # the model's ADC noise is 2 codes RMS
    assert a["mains_hz"] == pytest.approx(mains.freq_base, abs=0.3)
    check = diag.check_connected(0, a, 0.024, False)
    assert check.status == "pass" and "mains-periodic" in check.detail


def test_idle_ct_is_quiet_and_floating_pins_are_not():
    a = diag.analyse(_codes(None), FS)
    assert a["noise"] == pytest.approx(2.0, rel=0.15) and a["residual"] > diag.PERIODIC_MAX
    assert diag.check_connected(0, a, 0.024, False).status == "pass"
    assert diag.check_connected(0, a, 0.3, True).status == "fail"  # no mains on a V input
    for level in (120.0, 1900.0):
        f = diag.analyse(floating_pin(1000, 1600, level, seed=1), FS)
        assert f["residual"] > 0.5 and f["ac_rms"] > 40
        assert diag.check_connected(0, f, 0.024, False).status == "fail"
        assert diag.check_noise(0, f, 0.024, False).status == "fail"


def test_bias_band_holds_every_modelled_unit():
    band = diag.bias_band(load_board("esp32"))
    assert band[:2] == (1678, 2105)
    for seed in range(40):  # Vref drawn from 1000..1200 mV, divider within tolerance
        fe = Frontend("sct013-030", vref_mv=None, seed=seed)
        assert band[0] <= fe.bias_code <= band[1], seed
        assert diag.check_bias(0, fe.bias_code, band).status == "pass"
    assert diag.check_bias(0, 1500, band).status == "warn"
    assert diag.check_bias(0, 150, band).status == "fail"
    assert diag.check_bias(0, 3500, band).status == "fail"
    generic = diag.bias_band(load_board("esp32s3"))
    assert "no ADC characterisation" in generic[2]


def test_clipping_rules():
    board = load_board("esp32")
    a = {"clipped": 0, "min": 1500, "max": 2300}
    assert diag.check_clipping(0, {"clipped": 0, "min": 1500, "max": 2300}, a, board).status \
        == "pass"
    assert diag.check_clipping(0, {"clipped": 3}, a, board).status == "fail"
    high = {"clipped": 0, "min": 900, "max": 3000}
    assert diag.check_clipping(0, {}, high, board).status == "warn"  # above raw 2880
    mostly = diag.analyse(np.where(np.arange(1600) % 80 < 60, 4095, 0), FS)
    assert diag.check_noise(0, mostly, 0.024, False).status == "warn"  # not measurable


def _status(**kw):
    base = {"device": "x", "version": "0.1.0", "uptime_s": 3600, "heap_free": 80000,
            "wifi": "connected", "rssi": -55, "last_post": "ok 201", "mqtt": "off",
            "posts_ok": 10, "posts_failed": 0, "outbox": {"depth": 0}, "duty": 0.99,
            "sample_rate_hz": 4000, "jitter_us": 20, "problems": []}
    base.update(kw)
    return base


CFG = {"sample_rate_hz": 4000, "interval_s": 10, "wifi": {"ssid": "home"},
       "http": {"enabled": True}, "mqtt": {"enabled": False}}


@pytest.mark.parametrize("changes, name, status", [
    ({}, None, "pass"),
    ({"rssi": -72}, "wifi", "warn"),
    ({"rssi": -85}, "wifi", "fail"),
    ({"wifi": "down"}, "wifi", "fail"),
    ({"heap_free": 20000}, "heap", "warn"),
    ({"heap_free": 9000}, "heap", "fail"),
    ({"jitter_us": 100}, "jitter", "warn"),
    ({"jitter_us": 400}, "jitter", "fail"),
    ({"duty": 0.7}, "duty", "warn"),
    ({"duty": 0.3}, "duty", "fail"),
    ({"duty": 0.0, "uptime_s": 5}, "duty", "warn"),
    ({"sample_rate_hz": 3960}, "sample rate", "warn"),
    ({"sample_rate_hz": 3800}, "sample rate", "fail"),
    ({"last_post": "error: timeout"}, "post", "fail"),
    ({"last_post": "http 503"}, "post", "fail"),
    ({"last_post": "none yet", "uptime_s": 12}, "post", "warn"),
    ({"last_post": "none yet"}, "post", "fail"),
    ({"outbox": {"depth": 4}}, "post", "warn"),
    ({"problems": ["tls.ca file not found on flash"]}, "problems", "warn"),
])
def test_meter_rules(changes, name, status):
    checks = diag.meter_checks(_status(**changes), CFG, _status(**changes)["jitter_us"])
    worst = {c.name: c.status for c in checks}
    if name is None:
        assert set(worst.values()) == {"pass"}, checks
    else:
        assert worst[name] == status, checks
        others = {k: v for k, v in worst.items() if k != name}
        assert set(others.values()) == {"pass"}, checks


def test_no_wifi_or_publisher_configured_warns():
    cfg = {**CFG, "wifi": {"ssid": ""}, "http": {"enabled": False}}
    worst = {c.name: c.status for c in diag.meter_checks(_status(wifi="down"), cfg, 0)}
    assert worst["wifi"] == "warn" and worst["post"] == "warn"
    cfg = {**CFG, "mqtt": {"enabled": True}}
    worst = {c.name: c.status for c in diag.meter_checks(_status(mqtt="error: network"), cfg, 0)}
    assert worst["mqtt"] == "fail"
