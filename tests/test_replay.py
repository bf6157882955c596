# SPDX-License-Identifier: MIT
"""`ctmeter replay`: waveform files through the unmodified firmware on the virtual board.

References are computed over exactly the windows the firmware measured (Result.windows):
a reading averages whole-cycle windows, and the RMS over any other span (say, the reading's
first to last sample) differs from it by up to ~0.1 % for a pure sine, because that span
ends inside a cycle.

Replay runs the virtual board's "exact" clock: simulated time advances only by the samples
the firmware measures, so its windows are back to back from the file's first frame and the
counts of readings and windows follow from the file's length alone (expected_readings), on
any machine load.
"""

import json
import math
import select
import struct
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from ctmeter.cli import main as cli_main
from ctmeter.model import SMPS, Channel, Frontend, Inductive, Mains, Resistive, Stream
from ctmeter.paths import ROOT
from ctmeter.replay import ReplayError, load_input, replay, write_capture
from ctmeter.virtual.feed import SensorFeed

WAVEFORMS = Path("/work/shared/data/waveforms")
RECORDINGS = ["kettle", "fridge", "television"]
FS = 4000
SECONDS = 6.0
SEED = 7
WINDOW = 800  # frames: the firmware's 10 mains cycles at 50 Hz and 4 kHz (200 ms)


def expected_readings(seconds, interval_s, fs=FS, window=WINDOW):
    """Readings the firmware makes over a file of `seconds` of 50 Hz signal.

    On the exact clock window k (k = 1, 2, ...) ends at simulated time k * window / fs, and
    the feed serves no partial window at the end of the file, so the firmware measures
    int(seconds * fs) // window windows. Its reading cadence is fixed (the interval after
    the one before, not after the window that made it), so a reading is made at the end of
    the first window at or past each multiple of the interval: over the whole windows'
    duration that is floor(windows * window / fs / interval_s) readings. With 200 ms windows
    and a 1 s interval: a reading every 5 windows, 6 s -> 30 windows -> 6 readings.

    10 cycles at a measured f are round(10 * fs / f) frames: 800 for 49.97 < f < 50.03 Hz,
    which holds for Mains.clean() and for Mains(seed=7) over these few seconds (50.02 Hz).
    """
    windows = int(round(seconds * fs)) // window
    return windows * window // (fs * interval_s)


def back_to_back(result, window=WINDOW):
    """The windows the firmware measured cover the file from its first frame without gaps."""
    return result.windows == [(k * window, window) for k in range(len(result.windows))]


def reading_windows(result, channel=1):
    """(reading, [(first file frame, frames), ...]) for each reading of one channel."""
    out, k = [], 0
    for r in (r for r in result.readings if r["channel"] == channel):
        out.append((r, result.windows[k:k + r["windows"]]))
        k += r["windows"]
    return out


def model_reference(stream, windows, fs=FS):
    """The model's true Irms over the windows, weighted by their length."""
    i2 = sum(stream.truth(i0 / fs, (i0 + n) / fs).irms[0] ** 2 * n for i0, n in windows)
    return math.sqrt(i2 / sum(n for _, n in windows))


def unit(seed=SEED, ideal=False):
    return Frontend("sct013-030", seed=seed, ideal=ideal)


def model_stream(load, voltage=False, ideal=False):
    return Stream([Channel(unit(ideal=ideal), load)],
                  mains=Mains.clean() if ideal else Mains(seed=SEED),
                  voltage=Frontend("zmpt101b", seed=SEED + 1, ideal=ideal) if voltage else None,
                  sample_rate=FS, seed=SEED)


def capture_of(path, stream, amps_per_count, seconds=SECONDS):
    codes = stream.read(0, int(seconds * FS), truth=False).codes
    vpc = stream.voltage.volts_per_count if stream.voltage is not None else None
    write_capture(path, codes, FS, amps_per_count, volts_per_count=vpc, mains_hz=50,
                  device="model", sensor="sct013-030")


def physical_of(path, stream, seconds=SECONDS, rate=8000):
    """A physical CSV of the model's true current and voltage (the truth, not codes)."""
    t = np.arange(int(seconds * rate)) / rate
    i = stream.current(0, t)
    v = stream.mains_voltage(t)
    lines = ["time_s,current_A,voltage_V"]
    lines += [f"{a:.9f},{b:.9g},{c:.9g}" for a, b, c in zip(t, i, v, strict=True)]
    Path(path).write_text("\n".join(lines) + "\n")


def one_point_scale(result, stream, nominal):
    """amps_per_count from one calibration point: nominal * true / measured Irms."""
    pairs = [(r["current"], model_reference(stream, w)) for r, w in reading_windows(result)]
    true = math.sqrt(sum(t * t for _, t in pairs) / len(pairs))
    measured = math.sqrt(sum(m * m for m, _ in pairs) / len(pairs))
    return nominal * true / measured


# ---------------------------------------------------------------- the model's own streams
TEST_LOADS = [Resistive(irms=3.0), Inductive(pf=0.7, irms=6.0),
              SMPS(crest_factor=2.5, irms=2.0), Resistive(irms=15.0)]


def test_capture_of_model_stream_one_point_calibrated_within_0_3_percent(tmp_path):
    nominal = unit().amps_per_count
    cal_stream = model_stream(Resistive(irms=10.0))
    capture_of(tmp_path / "cal.csv", cal_stream, nominal)
    cal = replay(tmp_path / "cal.csv")
    assert len(cal.readings) == expected_readings(SECONDS, 1) == 6
    assert back_to_back(cal) and cal.summary["uncovered"] == 0
    # uncalibrated, this unit reads low by its ratio error (model: -0.5 +- 1 %)
    uncal = [r["current"] / model_reference(cal_stream, w) - 1 for r, w in reading_windows(cal)]
    assert all(-0.02 < e < -0.002 for e in uncal), uncal
    scale = one_point_scale(cal, cal_stream, nominal)
    for load in TEST_LOADS:
        stream = model_stream(load, voltage=True)
        capture_of(tmp_path / "load.csv", stream, scale)
        result = replay(tmp_path / "load.csv")
        assert len(result.readings) == expected_readings(SECONDS, 1)
        for r, w in reading_windows(result):
            ref = model_reference(stream, w)
            assert r["current"] == pytest.approx(ref, rel=0.003), (load, r, ref)


def test_physical_csv_of_model_truth_one_point_calibrated_within_0_3_percent(tmp_path):
    # The physical path builds the same unit (sensor + seed) as the model stream's frontend.
    cal_stream = model_stream(Resistive(irms=10.0), voltage=True)
    physical_of(tmp_path / "cal.csv", cal_stream)
    cal = replay(tmp_path / "cal.csv", seed=SEED)
    assert cal.input.amps_per_count == [pytest.approx(unit().amps_per_count)]
    # the model's 6 s at 8 kHz end at 5.999875 s: 24000 codes at 4 kHz, as a capture's
    assert len(cal.input.codes) == SECONDS * FS
    assert len(cal.readings) == expected_readings(SECONDS, 1) and back_to_back(cal)
    scale = one_point_scale(cal, cal_stream, unit().amps_per_count)
    for load in (Inductive(pf=0.8, irms=4.0), Resistive(irms=18.0)):
        stream = model_stream(load, voltage=True)
        physical_of(tmp_path / "load.csv", stream)
        result = replay(tmp_path / "load.csv", seed=SEED, amps_per_count=scale)
        assert len(result.readings) == expected_readings(SECONDS, 1)
        for r, w in reading_windows(result):
            ref = model_reference(stream, w)
            assert r["current"] == pytest.approx(ref, rel=0.003), (load, r, ref)


def test_ideal_chain_readings_power_energy_and_summary(tmp_path):
    stream = model_stream(Resistive(watts=2300), voltage=True, ideal=True)
    capture_of(tmp_path / "ideal.csv", stream, unit(ideal=True).amps_per_count, seconds=8.5)
    result = replay(tmp_path / "ideal.csv", interval_s=2)
    readings = result.readings
    n = len(readings)
    # 8.5 s = 34000 frames = 42 whole windows (8.4 s): 4 readings of 10 windows (2 s); the
    # file's last 0.5 s (2 windows and a partial one) is in no reading
    assert n == expected_readings(8.5, 2) == 4
    assert [r["seq"] for r in readings] == list(range(readings[0]["seq"],
                                                      readings[0]["seq"] + n))
    # the firmware measured the file in order, every sample once, from its first frame
    assert back_to_back(result) and len(result.windows) == 42
    for k, (r, w) in enumerate(reading_windows(result)):
        assert r["windows"] == len(w) == 10
        assert (r["fileStart"], r["fileEnd"]) == (2.0 * k, 2.0 * k + 2)
        assert w[0][0] == r["fileStart"] * FS and w[-1][0] + w[-1][1] == r["fileEnd"] * FS
        assert r["ts"] == r["fileEnd"]  # simulated seconds since the start of the replay
    for r, w in reading_windows(result):
        truth = stream.truth(r["fileStart"], r["fileEnd"])
        assert r["current"] == pytest.approx(model_reference(stream, w), rel=0.001)
        assert r["power"] == pytest.approx(truth.p[0], rel=0.003)
        assert r["powerFactor"] == pytest.approx(1.0, abs=0.002)
        assert r["frequency"] == pytest.approx(50.0, abs=0.01)
        assert r["interval"] == pytest.approx(r["fileEnd"] - r["fileStart"], abs=1e-6)
    # energy integrates all elapsed time; here every instant of it was measured
    last = readings[-1]
    true_kwh = stream.energy_wh(0, 0, last["fileEnd"]) / 1000
    # (measured: 2e-5 off; the reading's six decimals of kWh are 2e-4 of this one)
    assert last["energyKwh"] == pytest.approx(true_kwh, rel=0.001)
    s = result.summary
    ch = s["channels"][0]
    assert ch["readings"] == n and s["readings"] == n
    assert ch["windows"] == sum(r["windows"] for r in readings) == 40
    assert ch["energyKwh"] == last["energyKwh"]
    t = sum(r["interval"] for r in readings)
    assert ch["duration"] == pytest.approx(t, abs=0.002)
    assert ch["current"] == pytest.approx(
        math.sqrt(sum(r["current"] ** 2 * r["interval"] for r in readings) / t), abs=1e-4)
    assert ch["power"] == pytest.approx(2300 * (stream.truth(0, 6).vrms / 230) ** 2, rel=0.01)
    # the file ran out inside an interval: what it held is in no reading
    assert s["fileDuration"] == 8.5
    assert s["covered"] == last["fileEnd"] == 8.0
    assert s["uncovered"] == pytest.approx(0.5)
    used = sum(n for _, w in reading_windows(result) for _, n in w)
    assert used == 8 * FS  # no gaps between windows
    assert s["samplesUsed"] == pytest.approx(used / (8.5 * FS), abs=1e-4)
    assert s["missing"] == 0
    assert result.boot["problems"] == [] and result.boot["sample_rate_hz"] == FS


def test_two_current_channels_and_per_column_scales(tmp_path):
    fe1, fe2 = unit(ideal=True), Frontend("sct013-000", ideal=True)
    stream = Stream([Channel(fe1, Resistive(irms=5.0)), Channel(fe2, Inductive(pf=0.6, irms=20))],
                    mains=Mains.clean(), sample_rate=FS, seed=2)
    codes = stream.read(0, 3 * FS, truth=False).codes
    write_capture(tmp_path / "two.csv", codes, FS, [fe1.amps_per_count, fe2.amps_per_count])
    result = replay(tmp_path / "two.csv")
    assert result.input.ncurrent == 2 and not result.input.has_voltage
    for ch, expect in ((1, 5.0), (2, 20.0)):
        rs = [r for r in result.readings if r["channel"] == ch]
        assert len(rs) == expected_readings(3, 1) == 3  # 15 windows of 200 ms
        for r in rs:
            assert r["current"] == pytest.approx(expect, rel=0.003)
            # no voltage column: power at the nominal voltage and PF 1, as the meter does
            assert r["power"] == pytest.approx(expect * 230, rel=0.003)
    counts = [c["readings"] for c in result.summary["channels"]]
    assert counts[0] == counts[1] == len(result.readings) // 2


def test_same_file_gives_identical_readings_on_every_run(tmp_path):
    # On the exact clock a replay is a function of the file alone: a run on its own and two
    # runs side by side (each slowing the other down on the host) give identical readings,
    # times and kWh included, from identical windows. On the fast clock the host's time
    # between windows moved fileStart/fileEnd and kWh from run to run.
    stream = model_stream(SMPS(crest_factor=2.5, irms=4.0), voltage=True)
    capture_of(tmp_path / "cap.csv", stream, unit().amps_per_count)
    alone = replay(tmp_path / "cap.csv")
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(lambda _: replay(tmp_path / "cap.csv"), range(2)))
    assert len(alone.readings) == expected_readings(SECONDS, 1) and back_to_back(alone)
    for other in together:
        # seen once in a full CI run (not reproduced since): two readings fewer at the end;
        # windows and summary say whether the firmware measured less or delivered less
        assert other.readings == alone.readings, (len(other.windows), len(alone.windows),
                                                  other.summary, alone.summary)
        assert other.windows == alone.windows
        assert other.summary == alone.summary


# ---------------------------------------------------------------- real recordings
def recorded_reference(waveform, windows, t0, fs, remove_dc):
    """RMS of the recorded current over the samples inside the windows (length-weighted);
    with remove_dc each window's mean is removed first, as the meter (and a CT) does."""
    t = waveform.time_s
    i2 = total = 0.0
    for i0, n in windows:
        m = (t >= t0 + i0 / fs - 1e-9) & (t < t0 + (i0 + n) / fs - 1e-9)
        x = waveform.current_a[m]
        if remove_dc:
            x = x - x.mean()
        i2 += np.mean(x * x) * n
        total += n
    return math.sqrt(i2 / total)


@pytest.mark.parametrize("name", RECORDINGS)
def test_real_recordings_ideal_chain_match_numpy_rms(name):
    # At the recording's own rate (2 kHz) the ideal chain only quantizes the samples.
    path = WAVEFORMS / f"voelkerb_{name}_2kHz.csv"
    result = replay(path, ideal=True, sample_rate_hz=2000)
    inp = result.input
    w = inp.waveform
    # 1.5 s of recording: 3000 codes at 2 kHz, 7 windows of 400 (10 cycles), 1.4 s -> 1
    assert len(result.readings) == expected_readings(1.5, 1, fs=2000, window=400) == 1
    r, windows = reading_windows(result)[0]
    # the meter's own quantity: AC RMS over whole-cycle windows -> within 0.3 %
    ac = recorded_reference(w, windows, inp.t0, 2000, remove_dc=True)
    assert r["current"] == pytest.approx(ac, rel=0.003), (name, r["current"], ac)
    # plain numpy RMS of the recorded current over the span the reading covers: within
    # 0.5 % for the kettle and fridge; the television's current carries a DC part (window
    # means up to 0.06 A of 0.2 A rms, during the inrush and after) that no CT passes, 3 %.
    m = (w.time_s >= r["fileStart"]) & (w.time_s < r["fileEnd"])
    plain = float(np.sqrt(np.mean(w.current_a[m] ** 2)))
    tol = 0.03 if name == "television" else 0.005
    assert r["current"] == pytest.approx(plain, rel=tol), (name, r["current"], plain)
    assert r["power"] == pytest.approx(float(np.mean(w.current_a[m] * w.voltage_v[m])),
                                       rel=tol)
    assert result.summary["channels"][0]["current"] == r["current"]


@pytest.mark.parametrize("name", ["kettle", "fridge"])
def test_real_recordings_realistic_unit_within_its_ratio_error(name):
    # A real SCT-013-030 unit (seed 0) at 4 kHz, uncalibrated: its ratio error (model:
    # -0.5 +- 1 %), ADC INL and noise -> within 2 % of the recorded AC RMS.
    path = WAVEFORMS / f"voelkerb_{name}_2kHz.csv"
    result = replay(path)
    inp = result.input
    assert inp.sample_rate_hz == 4000 and inp.info["sensor"] == "sct013-030"
    # 5999 codes at 4 kHz: 7 windows of 800 or 801 frames (49.97 Hz), 1.4 s -> 1 reading
    assert len(result.readings) == expected_readings(1.5, 1) == 1
    r, windows = reading_windows(result)[0]
    ac = recorded_reference(inp.waveform, windows, inp.t0, 4000, remove_dc=True)
    assert r["current"] == pytest.approx(ac, rel=0.02)


# ---------------------------------------------------------------- bad files and options
GOOD_HEAD = "# ctmeter capture v1\n# sample_rate_hz=4000\n# amps_per_count=0.01\n"
ROWS = "".join(f"{2048 + int(500 * math.sin(k / 80 * 2 * math.pi))}\n" for k in range(4400))

BAD_CAPTURES = [
    ("# ctmeter capture v1\n# amps_per_count=0.01\ncode\n" + ROWS, "sample_rate_hz"),
    ("# sample_rate_hz=4000\ncode\n" + ROWS, "amps_per_count"),
    (GOOD_HEAD + "code\n2048\n2051.5\n", ":6: codes must be integers"),
    (GOOD_HEAD + "code\n2048\nabc\n", ":6: codes must be integers"),
    (GOOD_HEAD + "code\n2048\n4096\n", ":6: code 4096 is outside 0..4095"),
    (GOOD_HEAD + "code\n-1\n", ":5: code -1 is outside"),
    (GOOD_HEAD + "codes\n2048\n", ":4: header must be"),
    (GOOD_HEAD + "code_i2,code_v\n2048,2048\n", ":4: header must be"),
    (GOOD_HEAD + "code_i1,code_i2\n2048,2048\n2048\n", ":6: 1 values, the header has 2"),
    (GOOD_HEAD + "code_i1,code_v\n2048,2048\n", "code_v column needs a `# volts_per_count"),
    (GOOD_HEAD + "# sample_rate_hz=2000\ncode\n" + ROWS, ":4: sample_rate_hz is given twice"),
    ("# sample_rate_hz=4k\n# amps_per_count=0.01\ncode\n2048\n", ":1: sample_rate_hz='4k'"),
    ("# sample_rate_hz=500\n# amps_per_count=0.01\ncode\n2048\n", "outside the firmware's"),
    (GOOD_HEAD + "# amps_per_count_i2=0.02\ncode\n2048\n", ":4: amps_per_count_i2 but"),
    (GOOD_HEAD + "# mains_hz=55\ncode\n" + ROWS, ":4: mains_hz must be 50, 60 or auto"),
    ("# ctmeter capture v2\n# sample_rate_hz=4000\ncode\n2048\n", ":1: capture format v2"),
    (GOOD_HEAD + "code\n", ":4: no codes after the header"),
    (GOOD_HEAD, "no header row"),
    ("volts,amps\n1,2\n", "neither a physical waveform"),
    ("time_s,current_A\n0,1\n0.001,x\n", "non-numeric value"),
    (GOOD_HEAD + "code\n" + ROWS[:2000], "less than one reading interval (1 s) (try --repeat"),
    (GOOD_HEAD + "# volts_per_count=0.4\ncode_v\n2048\n", ":5: a capture of the voltage input"),
]


@pytest.mark.parametrize("text,message", BAD_CAPTURES)
def test_bad_files_are_refused_with_file_line_and_problem(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ReplayError) as info:
        replay(path)  # refused before the firmware starts
    assert info.value.exit_code == 2
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_bad_options_are_refused(tmp_path):
    path = tmp_path / "cap.csv"
    path.write_text(GOOD_HEAD + "code\n" + ROWS)
    cases = [
        (dict(sensor="sct013-000"), "sensor model options (sensor) do not apply"),
        (dict(board="esp33"), "no board named 'esp33'"),
        (dict(amps_per_count=-1.0), "must be above 0"),
        (dict(interval_s=0), "interval 0 must be a whole number"),
    ]
    for options, message in cases:
        with pytest.raises(ReplayError) as info:
            replay(path, **options)
        assert info.value.exit_code == 2 and message in str(info.value), options
    recording = WAVEFORMS / "voelkerb_kettle_2kHz.csv"
    for options, message in [(dict(sensor="nope"), "nope"),
                             (dict(sensor="zmpt101b"), "measures voltage"),
                             (dict(sensor="sct013-030", burden_ohm=22), "takes no burden"),
                             (dict(sample_rate_hz=50000), "outside the firmware's")]:
        with pytest.raises(ReplayError) as info:
            load_input(recording, **options)
        assert message in str(info.value), options
    with pytest.raises(ReplayError, match="cannot read"):
        load_input(tmp_path / "missing.csv")


def test_capture_reader_keeps_info_and_reads_overrides(tmp_path):
    path = tmp_path / "cap.csv"
    path.write_text("# ctmeter capture v1\n# a comment without a key\n# sample_rate_hz=2000\n"
                    "# amps_per_count=0.02\n# amps_per_count_i2=0.03\n# volts_per_count=0.4\n"
                    "# mains_hz=60\n# nominal_voltage=120\n# device=kitchen\n"
                    "# captured=2026-01-01 12:00\ncode_i1,code_i2,code_v\n"
                    "2048, 2049 ,2050\n\n2051,2052,2053\n")
    inp = load_input(path)
    assert inp.kind == "capture" and inp.sample_rate_hz == 2000
    assert inp.amps_per_count == [0.02, 0.03] and inp.volts_per_count == 0.4
    assert inp.mains_hz == 60 and inp.nominal_voltage == 120
    assert inp.info["device"] == "kitchen" and inp.info["captured"] == "2026-01-01 12:00"
    assert inp.codes.tolist() == [[2048, 2049, 2050], [2051, 2052, 2053]]


def test_scope_capture_replays_with_repeat(tmp_path):
    # `ctmeter scope` writes at most 2000 codes (0.5 s): shorter than one reading interval.
    # 25 whole cycles loop seamlessly, so --repeat gives the meter a steady signal.
    from ctmeter.scope import Capture, write_csv

    fe = unit(ideal=True)
    stream = Stream([Channel(fe, Inductive(pf=0.9, irms=8.0))], mains=Mains.clean(),
                    sample_rate=FS, seed=1)
    codes = stream.read(0, 2000, truth=False).codes[:, 0]
    path = write_csv(Capture(codes=codes, sample_rate_hz=FS, input=0, scale=fe.amps_per_count,
                             device="sim", board="esp32", sensor="sct013-030",
                             captured="2026-05-01T12:00:00+00:00"), tmp_path / "scope.csv")
    with pytest.raises(ReplayError, match="--repeat 3"):
        replay(path)
    result = replay(path, repeat=4)
    assert result.input.info["device"] == "sim" and result.input.info["input"] == "0"
    s = result.summary
    assert s["repeat"] == 4 and s["fileDuration"] == 0.5 and s["played"] == 2.0
    assert s["readings"] == expected_readings(2.0, 1) == 2 and s["uncovered"] == 0
    for r in result.readings:
        assert r["current"] == pytest.approx(8.0, rel=0.002)
    with pytest.raises(ReplayError, match="repeat 0 must be"):
        replay(path, repeat=0)


# ---------------------------------------------------------------- the feed's end of file
class ShortSource:
    nch = 2
    sample_rate_hz = 4000

    def __init__(self, frames):
        self.codes = np.arange(2 * frames, dtype=np.uint16).reshape(frames, 2)

    def frames(self, k0, n):
        return self.codes[k0:k0 + n]


def test_feed_holds_a_request_past_the_end_and_says_so(tmp_path):
    feed = SensorFeed(ShortSource(8), str(tmp_path)).start()
    try:
        with open(feed.req_path, "wb", buffering=0) as req, \
                open(feed.resp_path, "rb", buffering=0) as resp:
            req.write(struct.pack("<QI", 0, 4))
            assert np.frombuffer(resp.read(16), "<u2").tolist() == list(range(8))
            assert not feed.exhausted.is_set()
            req.write(struct.pack("<QI", 4, 6))  # only 4 frames left
            assert feed.exhausted.wait(5)
            ready, _, _ = select.select([resp], [], [], 0.3)
            assert not ready  # left unanswered: the firmware waits, makes no partial window
            assert feed.error is None and feed.frames_served == 4
            t = time.monotonic()
            feed.stop()
            assert time.monotonic() - t < 2
    finally:
        feed.stop()


# ---------------------------------------------------------------- the command line
CTMETER = str(ROOT / ".venv" / "bin" / "ctmeter")


def test_cli_end_to_end(tmp_path):
    stream = model_stream(Inductive(pf=0.8, irms=7.0), voltage=True, ideal=True)
    capture_of(tmp_path / "cap.csv", stream, unit(ideal=True).amps_per_count, seconds=3.5)
    proc = subprocess.run([CTMETER, "replay", str(tmp_path / "cap.csv")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    readings, summary = lines[:-1], lines[-1]["summary"]
    # 3.5 s: 17 windows (3.4 s) -> 3 readings, and the last 0.5 s in none
    assert len(readings) == expected_readings(3.5, 1) == 3 == summary["readings"]
    assert summary["uncovered"] == 0.5
    for r in readings:
        assert set(r) >= {"deviceId", "seq", "ts", "channel", "current", "voltage", "power",
                          "apparentPower", "powerFactor", "energyKwh", "frequency",
                          "interval", "fileStart", "fileEnd", "windows"}
        assert r["current"] == pytest.approx(7.0, rel=0.003)
        assert r["powerFactor"] == pytest.approx(0.8, abs=0.01)
    assert summary["channels"][0]["current"] == pytest.approx(7.0, rel=0.003)
    assert summary["channels"][0]["energyKwh"] == readings[-1]["energyKwh"] > 0
    assert "the last 0.500 s are in no complete reading" in proc.stderr


def test_cli_bad_file_exit_2_and_message(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(GOOD_HEAD + "code\n2048\n99999\n")
    proc = subprocess.run([CTMETER, "replay", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"ctmeter: {path}:6: code 99999 is outside 0..4095"
    assert proc.stdout == ""


def test_cli_help_has_an_example(capsys):
    with pytest.raises(SystemExit) as info:
        cli_main(["replay", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "ctmeter replay kettle.csv" in out and "--interval" in out and "exit codes" in out
