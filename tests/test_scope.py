# SPDX-License-Identifier: MIT
"""`ctmeter scope` and ctmeter.scope against the virtual board and the sensor model.

A 5 A resistive load on an ideal SCT-013-030 and a ZMPT101B on clean 230 V mains: the
captured codes' RMS must be what the model predicts (truth Irms / Vrms, and the RMS of the
model's own codes), the capture file must be the shared `ctmeter capture v1` format, the
PNG a PNG. Captures of 800 codes are 10 whole mains cycles, also when the meter delivers
them in two pieces of 400 (5 cycles each), so their RMS is exact for a pure sine.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ctmeter import scope
from ctmeter.meterlink import MeterError, MeterLink, OutOfMemory
from ctmeter.model import Channel, Frontend, Mains, Resistive, Stream
from ctmeter.transport import EXIT_DEVICE, EXIT_USAGE
from ctmeter.virtual.meter import start_virtual_meter

ROOT = Path(__file__).resolve().parents[1]
N = 800


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "ctmeter", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def meter(tmp_path_factory):
    stream = Stream([Channel(Frontend("sct013-030", ideal=True), Resistive(watts=1150))],
                    mains=Mains.clean(), voltage=Frontend("zmpt101b", ideal=True),
                    sample_rate=4000, seed=11)
    vb = start_virtual_meter(tmp_path_factory.mktemp("scope") / "flash", stream,
                             {"device_id": "sc1", "mains_hz": 50})
    yield vb, stream
    vb.stop()


def _model_rms(stream, col, n=N):
    codes = stream.read(12345, n, truth=False).codes[:, col].astype(float)
    return float(np.sqrt(np.mean((codes - codes.mean()) ** 2)))


def test_capture_rms_matches_the_model(meter):
    vb, stream = meter
    truth = stream.truth(0, 1)
    with MeterLink.open(vb.port) as link:
        cur = scope.capture(link, 0, N, board="virtual")
        volt = scope.capture(link, 1, N, board="virtual")
    assert len(cur.codes) == N and cur.sample_rate_hz == 4000 and not cur.voltage
    st = cur.stats()
    assert st["clipped"] == 0
    assert st["rms_A"] == pytest.approx(truth.irms[0], rel=0.003)  # 5 A
    assert st["rms_codes"] == pytest.approx(_model_rms(stream, 0), rel=0.003)
    assert st["mean"] == pytest.approx(stream.channels[0].frontend.bias_code, abs=1.0)
    assert cur.scale == pytest.approx(stream.channels[0].frontend.amps_per_count)
    assert (cur.device, cur.sensor, cur.mains_hz) == ("sc1", "sct013-030", 50)

    assert volt.voltage and volt.sensor == "zmpt101b"
    assert volt.stats()["rms_V"] == pytest.approx(truth.vrms, rel=0.003)  # 230 V
    assert volt.stats()["rms_codes"] == pytest.approx(_model_rms(stream, 1), rel=0.003)


def test_cli_writes_capture_file_and_png(meter, tmp_path):
    vb, stream = meter
    csv, png = tmp_path / "cap.csv", tmp_path / "cap.png"
    proc = run_cli("scope", "--port", vb.port, "0", str(N), "--board", "virtual",
                   "--save", str(csv), "--png", str(png))
    assert proc.returncode == 0, proc.stderr
    assert "800 codes at 4000 Hz" in proc.stdout and "clipped 0" in proc.stdout
    assert sum(1 for line in proc.stdout.splitlines() if "\u2502" in line) == 12  # the plot
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000

    lines = csv.read_text().splitlines()
    assert lines[0] == "# ctmeter capture v1"
    keys = [line[2:].split("=", 1)[0] for line in lines[1:10]]
    assert keys == ["sample_rate_hz", "amps_per_count", "mains_hz", "nominal_voltage",
                    "device", "board", "sensor", "input", "captured"]
    assert lines[1] == "# sample_rate_hz=4000" and lines[3] == "# mains_hz=50"
    assert lines[4] == "# nominal_voltage=230" and lines[5] == "# device=sc1"
    assert lines[6] == "# board=virtual" and lines[8] == "# input=0"
    head = lines.index("code")
    assert all(line.startswith("# ") and "=" in line for line in lines[1:head])
    codes = [int(x) for x in lines[head + 1:]]
    assert len(codes) == N and all(0 <= c <= 4095 for c in codes)

    cap = scope.read_csv(csv)
    assert cap.scale == pytest.approx(stream.channels[0].frontend.amps_per_count, rel=1e-12)
    assert cap.stats()["rms_A"] == pytest.approx(stream.truth(0, 1).irms[0], rel=0.003)


def test_voltage_input_file(meter, tmp_path):
    vb, stream = meter
    csv = tmp_path / "v.csv"
    proc = run_cli("scope", "--port", vb.port, "1", str(N), "--save", str(csv), "--no-plot")
    assert proc.returncode == 0, proc.stderr
    text = csv.read_text()
    assert "# volts_per_count=" in text and "amps_per_count" not in text
    assert "\ncode_v\n" in text and "# sensor=zmpt101b" in text and "# board=esp32" in text
    assert scope.read_csv(csv).stats()["rms_V"] == pytest.approx(230.0, rel=0.003)


def test_bad_arguments(meter, tmp_path):
    vb, _ = meter
    proc = run_cli("scope", "--port", vb.port, "5")
    assert proc.returncode == EXIT_USAGE and "no input 5" in proc.stderr
    assert "inputs: 0..1, the last is the voltage input" in proc.stderr
    # refused before the port is opened (the port does not exist)
    proc = run_cli("scope", "--port", str(tmp_path / "nope"), "0", "2001")
    assert proc.returncode == EXIT_USAGE and "1..2000" in proc.stderr


class PieceMeter:
    """A MeterLink stand-in whose meter runs out of heap above 300 codes (in the handler
    above 500, while printing the answer above 300)."""

    def __init__(self):
        self.asked = []
        self.k = 0

    def cmd(self, line, progress=None, retries=3):
        if line == "config get":
            return {"device_id": "f", "sample_rate_hz": 4000, "mains_hz": "auto",
                    "nominal_voltage": 120.0, "voltage": None,
                    "channels": [{"sensor": "sct013-000", "amps_per_count": None}]}
        _, _, n = line.split()
        n = int(n)
        self.asked.append(n)
        if n > 500:
            raise MeterError("scope", "internal error: MemoryError")  # in the handler
        if n > 300:
            raise OutOfMemory("dropped")  # building the answer line: the line was dropped
        codes = [2000 + (self.k + i) % 7 for i in range(n)]
        self.k += n
        if progress:
            progress(6 * n)
        return {"input": 0, "n": n, "sample_rate_hz": 4000, "codes": codes}


def test_capture_in_pieces_when_the_meter_runs_out_of_heap(tmp_path):
    link = PieceMeter()
    seen = []
    cap = scope.capture(link, 0, 1000, progress=lambda done, total: seen.append((done, total)))
    assert link.asked == [1000, 500, 250, 250, 250, 250]
    assert cap.segments == [250, 250, 250, 250]
    assert list(cap.codes) == [2000 + i % 7 for i in range(1000)]
    assert cap.scale == pytest.approx(30.0 * 3.3 / 4096)  # the firmware's default scale
    assert seen[-1] == (6000, 6000) and all(d <= t for d, t in seen)
    path = scope.write_csv(cap, tmp_path / "p.csv")
    assert "# segments=250,250,250,250\n" in path.read_text()
    assert "# nominal_voltage=120\n" in path.read_text()
    assert scope.read_csv(path).segments == [250, 250, 250, 250]


SCOPE_IN_A_TIGHT_HEAP = r"""
import gc
from array import array
from meter import commands

class Board:
    def read_frames(self, buf, start, n):
        for i in range(2 * n):
            buf[2 * start + i] = 2048 + i % 7
    def wdt_feed(self):
        pass

class M:
    nch = 2
    buf_frames = 400
    fs_hz = 4000
    board = Board()
m = M()
m.buf = array("H", range(800))
gc.collect()
room = bytearray(ROOM)  # kept free for the command, in one piece: everything else is taken
hog = []
for size in (512, 64, 16):
    try:
        while True:
            hog.append(bytearray(size))
    except MemoryError:
        pass
room = None
gc.collect()
try:
    r = commands.scope(m, 0, 2000)
    print("codes", len(r["codes"]), sum(r["segments"]))
except MemoryError:
    print("MemoryError")
"""


@pytest.mark.micropython
def test_scope_needs_no_more_than_its_answer(micropython):
    # scope 0 2000 on the device: the answer's list of 2000 codes (16 KB on this port) and
    # little else; it used to make a zeroed bytes and an array of 2n bytes each besides
    room = 2000 * 8 + 2 * 1024  # the list and 2 KB; the old way needed 4 KB more
    out = micropython.run(SCOPE_IN_A_TIGHT_HEAP.replace("ROOM", str(room)), heapsize="256k")
    assert out.strip().splitlines()[-1] == "codes 2000 2000", out


def test_other_device_errors_are_not_retried():
    class Refusing(PieceMeter):
        def cmd(self, line, progress=None, retries=3):
            if line.startswith("scope"):
                raise MeterError("scope", "n: must be 1..2000")
            return super().cmd(line)

    with pytest.raises(MeterError) as err:
        scope.capture(Refusing(), 0, 100)
    assert err.value.exit_code == EXIT_DEVICE


def test_text_plot():
    t = np.arange(400)
    codes = (2000 + 500 * np.sin(2 * np.pi * t / 80)).astype(int)
    text = scope.plot_text(codes, width=40, height=8, sample_rate_hz=4000)
    rows = text.splitlines()
    assert len(rows) == 9 and rows[0].startswith("2500 \u2502") and rows[-2].startswith("1500")
    assert rows[-1] == " " * 6 + "0 ms" + "100 ms".rjust(36)  # under the plot's 40 columns
    plot = [row.split("\u2502", 1)[1] for row in rows[:-1]]
    assert all(len(row) == 40 for row in plot)
    # five cycles: the top row is marked about five times, with gaps between
    marked = [c != " " for c in plot[0]]
    assert 4 <= sum(1 for i in range(1, 40) if marked[i] and not marked[i - 1]) <= 6
    ascii_text = scope.plot_text(codes, width=40, height=8, unicode=False)
    assert ascii_text.isascii() and "*" in ascii_text
    assert scope.plot_text([2048] * 10).count("\n") == 12  # flat input still plots


def test_read_csv_refuses_other_files(tmp_path):
    bad = tmp_path / "x.csv"
    bad.write_text("time_s,current_A\n0,1\n")
    with pytest.raises(scope.ScopeError):
        scope.read_csv(bad)


def test_config_read_key_by_key_when_the_whole_does_not_fit():
    full = {"device_id": "k", "sample_rate_hz": 4000, "mains_hz": 60, "interval_s": 10,
            "channels": [{"sensor": "sct013-030", "amps_per_count": 0.02}], "voltage": None,
            "wifi": {"ssid": "home", "password": "***"}, "http": {"enabled": True}}

    class SmallHeap:
        asked = []

        def cmd(self, line, progress=None, retries=3):
            self.asked.append(line)
            if line == "config get":
                raise OutOfMemory("dropped")
            key = line.split()[2]
            node = full
            for part in key.split("."):
                if part not in node:
                    raise MeterError("config get", "no such key")
                node = node[part]
            return {key: node}

    cfg = scope.read_config(SmallHeap())
    assert cfg["channels"] == full["channels"] and cfg["mains_hz"] == 60
    assert cfg["wifi"] == {"ssid": "home"} and cfg["http"] == {"enabled": True}
    assert "nominal_voltage" not in cfg and "mqtt" not in cfg  # keys the meter lacks
    assert "config get wifi.password" not in SmallHeap.asked
