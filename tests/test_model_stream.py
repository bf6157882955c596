# SPDX-License-Identifier: MIT
"""Sensor model stream: chunking, determinism, truth and energy (ctmeter.model)."""

import math

import numpy as np
import pytest
from ctmeter.model import (
    SMPS,
    Channel,
    Dimmer,
    Frontend,
    Inductive,
    Mains,
    Motor,
    Profile,
    Resistive,
    Standby,
    Stream,
    StreamError,
    irms_for_percent,
    load_for_percent,
    varying_profile,
)
from hypothesis import given, settings
from hypothesis import strategies as st


def four_channel_stream(seed=7, **kw):
    chans = [
        Channel(Frontend("sct013-030", seed=1), Resistive(watts=2000)),
        Channel(Frontend("sct013-000", seed=2), Inductive(pf=0.7, irms=20)),
        Channel(Frontend("zmct103c", seed=3), SMPS(watts=300)),
        Channel(Frontend("sct013-010", seed=4), Profile().add(Motor(watts=800), 0.3)),
    ]
    return Stream(chans, mains=Mains(seed=seed), voltage="zmpt101b", seed=seed, **kw)


def test_two_half_chunks_equal_one_chunk_bit_exact():
    whole = four_channel_stream().read(1000, 8000).codes
    s = four_channel_stream()
    halves = np.vstack([s.read(1000, 4000).codes, s.read(5000, 4000).codes])
    assert whole.dtype == np.uint16 and whole.shape == (8000, 5)
    assert np.array_equal(whole, halves)
    # odd sizes and a gap (the firmware's clock skipped time) give the same samples
    s = four_channel_stream()
    a = s.read(1000, 1234).codes
    b = s.read(1000 + 1234 + 999, 8000 - 1234 - 999).codes
    assert np.array_equal(a, whole[:1234]) and np.array_equal(b, whole[1234 + 999:])
    # and a different seed gives different noise
    other = Stream(four_channel_stream().channels, mains=Mains(seed=7), voltage="zmpt101b",
                   seed=8).read(1000, 8000).codes
    assert not np.array_equal(other, whole)


def test_codes_cover_the_expected_range_and_truth_matches_load():
    f = four_channel_stream().read(4000, 4000)
    c = f.codes.astype(float)
    assert np.all(c.max(axis=0) < 4095) and np.all(c.min(axis=0) > 0)
    t = f.truth
    assert t.irms[0] == pytest.approx(2000 / 230, rel=0.05)  # grid wanders around nominal
    assert t.pf[1] == pytest.approx(0.7, abs=0.01)
    assert 220 < t.vrms < 240 and abs(t.freq - 50) < 0.5
    assert np.allclose(t.s, t.vrms * t.irms)
    assert np.allclose(t.energy_wh * 3600, t.p * 1.0)


def test_rms_from_ideal_codes_matches_truth():
    for pct in (5, 50, 100):
        fe = Frontend("sct013-030", ideal=True)
        s = Stream([Channel(fe, load_for_percent("sct013-030", pct))], mains=Mains(seed=1))
        f = s.read(0, 4000)  # 1 s = 50 whole cycles at 50 Hz (plus drift)
        x = f.codes[:, 0].astype(float)
        irms = np.sqrt(np.mean((x - x.mean()) ** 2)) * fe.amps_per_count
        assert irms == pytest.approx(f.truth.irms[0], rel=0.01)
        assert f.truth.irms[0] == pytest.approx(irms_for_percent("sct013-030", pct), rel=0.03)


def test_constant_load_energy_is_power_times_time():
    s = Stream([Channel(Frontend("sct013-030"), Resistive(watts=1500.0))],
               mains=Mains.clean())
    assert s.energy_wh(0, 0.0, 3600.0) == pytest.approx(1500.0, rel=1e-9)
    assert s.energy_wh(0, 12.3456, 12.3456 + 7200.0) == pytest.approx(3000.0, rel=1e-9)
    assert s.energy_mwh(0, 0.0, 3600.0) in (1_500_000, 1_499_999)
    # a partial cycle holds the oscillating part of v*i: exactly, not the mean
    t1, t2 = 0.0, 0.005  # a quarter cycle
    t = np.linspace(t1, t2, 200_001)
    p = s.mains_voltage(t) * s.current(0, t)
    assert s.energy_wh(0, t1, t2) * 3600 == pytest.approx(np.trapezoid(p, t), rel=1e-6)


def test_truth_equals_brute_force_integration_with_overlapping_loads():
    m = Mains(seed=3, freq_drift_hz=0.4, voltage_wander=0.05)
    prof = (Profile()
            .add(Standby(watts=4))
            .add(Motor(watts=600, inrush_ratio=6, inrush_tau_s=0.1), 1.2371)
            .add(Dimmer(watts=300, firing_angle_deg=70), 1.3, 1.61234)
            .add(SMPS(watts=90, crest_factor=3.4), 1.5))
    s = Stream([Channel(Frontend("sct013-000"), prof)], mains=m)
    t1, t2 = 1.2003, 1.7777
    t = np.linspace(t1, t2, 1_000_001)
    i = s.current(0, t)
    v = s.mains_voltage(t)
    tr = s.truth(t1, t2)
    span = t2 - t1
    assert tr.energy_wh[0] * 3600 == pytest.approx(np.trapezoid(v * i, t), rel=2e-5)
    assert tr.irms[0] == pytest.approx(math.sqrt(np.trapezoid(i * i, t) / span), rel=2e-5)
    assert tr.vrms == pytest.approx(math.sqrt(np.trapezoid(v * v, t) / span), rel=1e-6)


def test_energy_over_long_ranges_matches_piecewise_sum_and_is_additive():
    s = Stream([Channel(Frontend("sct013-030"), varying_profile(days=1, seed=5))],
               mains=Mains(seed=5))
    total = s.energy_wh(0, 0, 86400)
    parts = sum(s.energy_wh(0, a, a + 3600) for a in range(0, 86400, 3600))
    assert parts == pytest.approx(total, rel=1e-9)
    edges = [0.0, 123.4, 5000.0, 40000.5, 86400.0]
    mwh = [s.energy_mwh(0, a, b) for a, b in zip(edges[:-1], edges[1:], strict=True)]
    assert sum(mwh) == s.energy_mwh(0, 0.0, 86400.0)
    assert abs(s.energy_mwh(0, 0.0, 86400.0) - total * 1000) <= 1
    assert s.energy_total_wh(0, 86400.0) == pytest.approx(total, rel=1e-9)


def test_set_load_switches_and_refuses_to_rewrite_history():
    s = Stream([Channel(Frontend("sct013-030", seed=1), Standby(watts=3))],
               mains=Mains.clean(), sample_rate=4000)
    s.read(0, 4000)
    heater = Resistive(watts=1000)
    s.set_load(0, heater, at_time=2.0)
    before, after = s.read(4000, 4000).truth, s.read(8000, 4000).truth
    assert before.p[0] == pytest.approx(3.0, rel=1e-6)
    assert after.p[0] == pytest.approx(1000.0, rel=1e-6)
    with pytest.raises(StreamError, match="already been delivered"):
        s.set_load(0, None, at_time=2.5)
    s.add_load(0, Standby(watts=3), at_time=3.0, until=4.0)
    assert s.truth(3.0, 4.0).p[0] == pytest.approx(1003.0, rel=1e-6)
    s.set_load(0, None, at_time=5.0)
    assert s.truth(5.0, 6.0).irms[0] == 0.0
    assert s.energy_wh(0, 2.0, 5.0) == pytest.approx(1000 * 3 / 3600 + 3 / 3600, rel=1e-6)


def test_varying_profile_is_deterministic_and_household_like():
    a, b = varying_profile(days=2, seed=11), varying_profile(days=2, seed=11)
    assert [(x.start, x.stop, repr(x.load)) for x in a.segments] == \
        [(x.start, x.stop, repr(x.load)) for x in b.segments]
    names = {x.load.name for x in a.segments}
    assert {"standby", "fridge", "kettle", "lights", "tv", "heater"} <= names
    s = Stream([Channel(Frontend("sct013-000"), a)], mains=Mains(seed=11))
    per_day = s.energy_wh(0, 0, 2 * 86400) / 2
    assert 2000 < per_day < 20000  # 2..20 kWh a day
    peak = max(s.truth(x.start, x.start + 0.02).irms[0] for x in a.segments[:200])
    assert peak < 60.0


def test_channel_skew_delays_later_columns():
    base = four_channel_stream().read(0, 4000).codes
    skewed = four_channel_stream(channel_skew_s=20e-6).read(0, 4000).codes
    assert np.array_equal(base[:, 0], skewed[:, 0])
    assert not np.array_equal(base[:, 1], skewed[:, 1])


def test_bad_requests_are_refused():
    s = four_channel_stream()
    with pytest.raises(StreamError):
        s.read(-1, 10)
    with pytest.raises(StreamError):
        s.read(0, 0)
    with pytest.raises(StreamError):
        s.truth(2.0, 1.0)
    with pytest.raises(StreamError):
        Stream([Channel(Frontend("sct013-030"), None)] * 5)
    with pytest.raises(StreamError):
        Channel(Frontend("zmpt101b"), None)


@settings(max_examples=25, deadline=None)
@given(k0=st.integers(0, 10**7), n=st.integers(2, 3000), cut=st.floats(0.0, 1.0),
       gap=st.integers(0, 5000))
def test_any_split_of_a_read_gives_the_same_codes(k0, n, cut, gap):
    m = max(1, min(n - 1, int(cut * n)))
    whole = SPLIT_STREAM.read(k0, n, truth=False).codes
    head = SPLIT_STREAM.read(k0, m, truth=False).codes
    tail = SPLIT_STREAM.read(k0 + m, n - m, truth=False).codes
    assert np.array_equal(whole, np.vstack([head, tail]))
    base = k0 + n + gap + 5  # after a gap, and read again overlapping from 5 samples earlier
    later = SPLIT_STREAM.read(base, 10, truth=False).codes
    assert np.array_equal(later, SPLIT_STREAM.read(base - 5, 15, truth=False).codes[5:])


SPLIT_STREAM = Stream(
    [Channel(Frontend("sct013-030", seed=1), varying_profile(days=1, seed=2)),
     Channel(Frontend("sct013-000", seed=2), Dimmer(watts=500, firing_angle_deg=60))],
    mains=Mains(seed=2), voltage="zmpt101b", seed=3)
