# SPDX-License-Identifier: MIT
"""Sensor model physics: mains, loads and their waveforms (ctmeter.model)."""

import math

import numpy as np
import pytest
from ctmeter.model import (
    SMPS,
    Channel,
    Dimmer,
    Frontend,
    Inductive,
    LoadError,
    Mains,
    MainsError,
    Motor,
    Resistive,
    Standby,
    Stream,
)


def physical(load, mains=None, t0=5.0, span=1.0, rate=200_000):
    """Dense physical current and voltage of one load (and the stream for its truth)."""
    s = Stream([Channel(Frontend("sct013-000", ideal=True), load)],
               mains=mains or Mains.clean())
    t = t0 + np.arange(int(span * rate)) / rate
    return s, t, s.current(0, t), s.mains_voltage(t)


def test_sine_irms_is_peak_over_sqrt2():
    s, t, i, v = physical(Resistive(irms=12.5))
    assert np.max(np.abs(i)) / math.sqrt(2) == pytest.approx(12.5, rel=1e-4)
    assert np.sqrt(np.mean(i * i)) == pytest.approx(12.5, rel=1e-4)
    assert s.truth(5.0, 6.0).irms[0] == pytest.approx(12.5, rel=1e-9)
    assert np.sqrt(np.mean(v * v)) == pytest.approx(230.0, rel=1e-4)


@pytest.mark.parametrize("pf", [0.5, 0.7, 0.9])
def test_inductive_pf_matches_configured(pf):
    s, t, i, v = physical(Inductive(pf=pf, irms=10.0))
    measured = np.mean(v * i) / (np.sqrt(np.mean(v * v)) * np.sqrt(np.mean(i * i)))
    assert measured == pytest.approx(pf, abs=1e-3)
    assert s.truth(5.0, 6.0).pf[0] == pytest.approx(pf, abs=1e-6)
    # the current lags: its rising zero crossing comes phi/(2 pi f) after the voltage's
    rise_v = t[1:][(v[:-1] < 0) & (v[1:] >= 0)][0]
    rise_i = t[1:][(i[:-1] < 0) & (i[1:] >= 0)]
    lag = rise_i[rise_i > rise_v][0] - rise_v
    assert lag == pytest.approx(math.acos(pf) / (2 * math.pi * 50), abs=2e-5)


def test_smps_crest_factor_at_least_3_and_power_kept():
    for crest in (3.0, 3.5, 4.5):
        s, t, i, v = physical(SMPS(watts=80, crest_factor=crest), mains=Mains(seed=4))
        measured = np.max(np.abs(i)) / np.sqrt(np.mean(i * i))
        assert measured >= 3.0
        assert measured == pytest.approx(crest, rel=0.05)
        assert np.mean(v * i) == pytest.approx(80.0, rel=0.03)  # grid wander is slight
        assert s.truth(5.0, 6.0).pf[0] < 0.75  # pulsed current: poor power factor


@pytest.mark.parametrize("angle", [0.0, 45.0, 90.0, 135.0])
def test_dimmer_firing_angle_reduces_power_as_expected(angle):
    a = math.radians(angle)
    expected = 300.0 * (1 - a / math.pi + math.sin(2 * a) / (2 * math.pi))
    s, t, i, v = physical(Dimmer(watts=300.0, firing_angle_deg=angle))
    assert np.mean(v * i) == pytest.approx(expected, rel=2e-3, abs=0.05)
    assert s.truth(5.0, 6.0).p[0] == pytest.approx(expected, rel=1e-4, abs=1e-3)
    # no current flows in the first `angle` degrees of each half cycle
    cyc = s.mains.cycles(t)
    half = (cyc * 2) % 1.0
    early = half < (angle / 180.0) - 0.01
    if early.any():
        assert np.max(np.abs(i[early])) < 1e-9


def test_motor_inrush_decays_to_run_current():
    m = Motor(irms=4.0, pf=0.75, inrush_ratio=6.0, inrush_tau_s=0.1)
    s = Stream([Channel(Frontend("sct013-000", ideal=True), None)], mains=Mains.clean())
    s.add_load(0, m, at_time=1.0)
    first = s.truth(1.0, 1.02).irms[0]
    late = s.truth(2.0, 3.0).irms[0]
    assert late == pytest.approx(4.0, rel=1e-3)
    assert 4.0 < first / late < 6.0  # averaged over the first cycle of the decay
    assert s.truth(0.0, 1.0).irms[0] == 0.0


def test_standby_is_a_few_watts():
    s, t, i, v = physical(Standby(watts=2.5))
    assert np.mean(v * i) == pytest.approx(2.5, rel=1e-3)
    assert np.sqrt(np.mean(i * i)) < 0.05


def test_frequency_drift_stays_within_half_hertz():
    for seed in range(5):
        m = Mains(freq_offset_hz=0.2, freq_drift_hz=0.3, seed=seed)
        t = np.linspace(0, 3 * 86400, 200_001)
        f = m.freq(t)
        assert np.all(np.abs(f - 50.0) <= 0.5 + 1e-12)
        assert np.ptp(f) > 0.1  # it does drift
    with pytest.raises(MainsError):
        Mains(freq_offset_hz=0.3, freq_drift_hz=0.3)
    for seed in range(20):
        r = Mains.region("us", seed=seed)
        assert 108.0 <= r.vrms <= 132.0 and abs(r.freq_base - 60.0) <= 0.5


def test_phase_is_continuous_and_matches_zero_crossings():
    m = Mains(freq_offset_hz=-0.3, freq_drift_hz=0.2, harmonics=(), seed=9)
    s = Stream([Channel(Frontend("sct013-000", ideal=True), None)], mains=m)
    t = 1000.0 + np.arange(200_000) / 20_000.0  # 10 s
    v = s.mains_voltage(t)
    rises = t[1:][(v[:-1] < 0) & (v[1:] >= 0)]
    measured = (len(rises) - 1) / (rises[-1] - rises[0])
    assert measured == pytest.approx(s.truth(rises[0], rises[-1]).freq, abs=2e-3)
    assert abs(measured - 50.0) <= 0.5
    # the closed-form cycle count is the integral of the frequency
    a, b = 500.0, 620.0
    tt = np.linspace(a, b, 100_001)
    integral = np.trapezoid(m.freq(tt), tt)
    assert m.cycles(b) - m.cycles(a) == pytest.approx(integral, abs=1e-6)


def test_bad_loads_are_refused():
    with pytest.raises(LoadError):
        Resistive()
    with pytest.raises(LoadError):
        Resistive(irms=1.0, watts=100.0)
    with pytest.raises(LoadError):
        Inductive(pf=1.5, irms=1.0)
    with pytest.raises(LoadError):
        SMPS(watts=10, crest_factor=1.0)
    with pytest.raises(LoadError):
        Resistive(irms=float("nan"))
