# SPDX-License-Identifier: MIT
"""Sensor model: recorded waveforms through the front end (ctmeter.model.waveform)."""

from pathlib import Path

import numpy as np
import pytest
from ctmeter.model import WaveformError, codes_from_waveform, load_waveform, resample

DATA = Path("/work/shared/data/waveforms")
if not DATA.is_dir():  # the shared data set may live beside the repository instead
    DATA = Path(__file__).resolve().parents[1] / "data" / "waveforms"


def recording(name):
    path = DATA / f"voelkerb_{name}_2kHz.csv"
    if not path.is_file():
        pytest.fail(f"missing recorded waveform {path}")
    return load_waveform(path)


def test_kettle_recording_has_plausible_irms_and_power():
    w = recording("kettle")
    assert len(w.time_s) == 3000 and w.sample_rate == pytest.approx(2000.0)
    r = codes_from_waveform(w.time_s, w.current_a, w.voltage_v, sensor="sct013-000",
                            sample_rate=4000, seed=1)
    before, after = r.truth(0.0, 0.5), r.truth(0.7, 1.5)
    assert before["irms"] < 0.05  # off before 0.5 s
    assert 8.0 < after["irms"] < 9.0  # measured: 8.22 A
    assert 1800 < after["p"] < 2100 and after["pf"] > 0.99
    assert 225 < after["vrms"] < 240
    fe, fv = r.frontends
    sel = r.t >= 0.7
    x = r.codes[sel, 0].astype(float)
    irms = np.sqrt(np.mean((x - x.mean()) ** 2)) * fe.amps_per_count
    assert irms == pytest.approx(after["irms"], rel=0.03)  # uncalibrated unit, seed 1
    v = r.codes[sel, 1].astype(float)
    assert np.sqrt(np.mean((v - v.mean()) ** 2)) * fv.volts_per_count == pytest.approx(
        after["vrms"], rel=0.05)


def test_fridge_inrush_and_tv_smps_are_plausible():
    fridge = recording("fridge")
    t, i = fridge.time_s, fridge.current_a
    start = np.max(np.abs(i[(t >= 0.5) & (t < 0.6)]))
    assert 9.0 < start < 13.0  # inrush ~11 A peak
    assert np.sqrt(np.mean(i[t >= 1.0] ** 2)) < 0.5 * start / np.sqrt(2)
    tv = recording("television")
    r = codes_from_waveform(tv.time_s, tv.current_a, tv.voltage_v, sensor="zmct103c",
                            sample_rate=2000, seed=2)
    late = r.truth(1.0, 1.5)
    assert 0.1 < late["irms"] < 0.3 and late["pf"] < 0.9  # pulsed SMPS current
    sel = tv.time_s >= 1.0
    crest = np.max(np.abs(tv.current_a[sel])) / late["irms"]
    assert crest > 2.0


def test_ideal_replay_reproduces_the_recording():
    w = recording("kettle")
    r = codes_from_waveform(w.time_s, w.current_a, sensor="sct013-000", sample_rate=2000,
                            ideal=True)
    fe = r.frontends[0]
    back = (r.codes[:, 0].astype(float) - fe.bias_code) * fe.amps_per_count
    assert r.codes.shape == (3000, 1)
    assert np.max(np.abs(back - w.current_a)) <= 0.5 * fe.amps_per_count + 1e-9


def test_replay_is_deterministic_and_seeded():
    w = recording("kettle")
    a = codes_from_waveform(w.time_s, w.current_a, sensor="sct013-030", seed=5).codes
    b = codes_from_waveform(w.time_s, w.current_a, sensor="sct013-030", seed=5).codes
    c = codes_from_waveform(w.time_s, w.current_a, sensor="sct013-030", seed=6).codes
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_bandlimited_resampling_beats_linear():
    t = np.arange(0, 1, 1 / 2000)
    x = np.sin(2 * np.pi * 50 * t + 0.3) + 0.2 * np.sin(2 * np.pi * 350 * t)
    to = np.arange(0.1, 0.9, 1 / 4000)
    ref = np.sin(2 * np.pi * 50 * to + 0.3) + 0.2 * np.sin(2 * np.pi * 350 * to)
    sinc = np.max(np.abs(resample(t, x, to, "sinc") - ref))
    lin = np.max(np.abs(resample(t, x, to, "linear") - ref))
    assert sinc < 1e-3 < lin
    with pytest.raises(WaveformError):
        resample(t, x, to, "cubic")


def test_bad_waveform_files_are_refused(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("t,i\n0,1\n")
    with pytest.raises(WaveformError, match="header"):
        load_waveform(bad)
    bad.write_text("time_s,current_A\n0,1\n0,2\n")
    with pytest.raises(WaveformError, match="increasing"):
        load_waveform(bad)
    bad.write_text("time_s,current_A\n0,1\n0.1,abc\n")
    with pytest.raises(WaveformError, match="non-numeric"):
        load_waveform(bad)
    with pytest.raises(WaveformError, match="cannot read"):
        load_waveform(tmp_path / "missing.csv")
    good = tmp_path / "good.csv"
    good.write_text("# a comment\ntime_s,current_A\n0,1\n0.001,-1\n")
    w = load_waveform(good)
    assert w.voltage_v is None and list(w.current_a) == [1.0, -1.0]
