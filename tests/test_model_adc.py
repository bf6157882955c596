# SPDX-License-Identifier: MIT
"""Sensor model: ESP32 ADC transfer, sensor front end, sensor profiles (ctmeter.model)."""

import json

import numpy as np
import pytest
from ctmeter.model import (
    AdcError,
    Esp32Adc,
    Frontend,
    FrontendError,
    ProfileError,
    load_profile,
    profile_names,
)
from ctmeter.model.adc import NONLINEAR_ABOVE_RAW
from ctmeter.model.profiles import profile_from_dict

SENSORS = ["sct013-000", "sct013-010", "sct013-020", "sct013-030", "zmct103c", "zmpt101b"]


def test_all_profiles_present_and_valid():
    assert set(SENSORS) <= set(profile_names())
    for name in SENSORS:
        p = load_profile(name)
        assert p.name == name and p.rating > 0 and p.saturation_peak > 0
    assert load_profile("sct013-000").output == "current"
    assert load_profile("sct013-000").nominal_volts_per_unit() == pytest.approx(10 / 2000)
    assert load_profile("sct013-030").nominal_volts_per_unit() == pytest.approx(1 / 30)
    assert load_profile("zmpt101b").measures == "voltage"


def test_profile_loader_rejects_bad_data(tmp_path):
    with pytest.raises(ProfileError, match="no sensor profile"):
        load_profile("sct999")
    with pytest.raises(ProfileError):
        load_profile("../etc/passwd")
    good = load_profile("sct013-030").raw
    for key, value in [("rating", -1), ("output", "magic"), ("format", 2), ("bias", 3)]:
        with pytest.raises(ProfileError):
            profile_from_dict({**good, key: value})
    with pytest.raises(ProfileError, match="missing"):
        profile_from_dict({k: v for k, v in good.items() if k != "turns"})
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ProfileError, match="JSON"):
        load_profile("broken", directory=tmp_path)
    (tmp_path / "other.json").write_text(json.dumps(good))
    with pytest.raises(ProfileError, match="does not match"):
        load_profile("other", directory=tmp_path)
    with pytest.raises(ProfileError, match="burden"):
        load_profile("sct013-030").nominal_volts_per_unit(burden_ohm=33)


@pytest.mark.parametrize("atten", [0, 2.5, 6, 11])
def test_adc_transfer_monotonic_and_clips_at_rails(atten):
    adc = Esp32Adc(atten, vref_mv=1150, seed=2, noise_lsb=0)
    v = np.linspace(-0.5, 3.6, 200_001)
    codes = adc.convert(v).astype(np.int64)
    assert np.all(np.diff(codes) >= 0)
    assert codes[0] == 0 and codes[-1] == 4095
    assert codes.min() == 0 and codes.max() == 4095  # clip, never wrap
    lo, hi = adc.usable_v
    inside = adc.convert(np.array([lo, hi])).astype(int)
    assert 0 < inside[0] < inside[1] < 4095


def test_11db_top_end_is_nonlinear_above_2880():
    # Espressif's characterisation (esp_adc_cal LUT): above raw 2880 the codes leave the
    # straight line and the whole 2.45..~3.1 V span is squeezed into the top ~1200 codes.
    for vref in (1000, 1100, 1200):
        adc = Esp32Adc(11, vref_mv=vref, ideal=False, seed=0, noise_lsb=0, inl_lsb=0)
        v = np.linspace(0.3, 3.5, 32_001)
        x = adc.transfer(v)
        slope = np.gradient(x, v)
        lin = slope[(x > 500) & (x < 2500)]
        assert np.ptp(lin) / lin.mean() < 1e-6  # straight below the knee
        line = (v - 0.142) * lin.mean()  # the straight line, extended
        above = x > NONLINEAR_ABOVE_RAW + 64
        assert np.max(np.abs(x[above] - line[above])) > 60  # codes off the line
        top = slope[above & (x < 4000)]
        assert np.ptp(top) / lin.mean() > 0.2  # the slope is not constant up there
        full = v[np.argmax(x >= 4095.0)]
        assert 3.0 < full < 3.25  # 4095 arrives near 3.1 V ...
        assert (4095 / lin.mean()) + 0.142 > full + 0.05  # ... before the line says
    ideal = Esp32Adc(11, ideal=True)
    v = np.linspace(0.3, 3.3, 3001)
    assert np.ptp(np.gradient(ideal.transfer(v), v)) < 1e-6


def test_vref_spread_is_a_gain_error():
    v = np.array([0.5, 2.0])
    lo = np.diff(Esp32Adc(11, vref_mv=1000, ideal=False, noise_lsb=0, inl_lsb=0).transfer(v))
    hi = np.diff(Esp32Adc(11, vref_mv=1200, ideal=False, noise_lsb=0, inl_lsb=0).transfer(v))
    assert lo[0] / hi[0] == pytest.approx(1.2, rel=1e-9)
    with pytest.raises(AdcError):
        Esp32Adc(11, vref_mv=900)
    with pytest.raises(AdcError):
        Esp32Adc(7)
    drawn = {Esp32Adc(11, vref_mv=None, seed=s).vref_mv for s in range(10)}
    assert len(drawn) == 10 and all(1000 <= x <= 1200 for x in drawn)


def test_noise_inl_dnl_present_only_when_not_ideal():
    rng = np.random.default_rng(1)
    v = np.full(50_000, 1.2)
    noisy = Esp32Adc(11, seed=3, noise_lsb=2.0).convert(v, rng.standard_normal(v.size))
    assert 1.5 < noisy.astype(float).std() < 2.5
    ideal = Esp32Adc(11, ideal=True).convert(v, rng.standard_normal(v.size))
    assert np.ptp(ideal) == 0
    # INL bow: mid-scale shifted by about inl_lsb against the ideal straight line
    a = Esp32Adc(11, vref_mv=1100, seed=5, noise_lsb=0, inl_lsb=3.0, dnl_lsb=0)
    b = Esp32Adc(11, vref_mv=1100, ideal=True)
    mid = 0.142 + 2048 * b.nominal_volts_per_count
    assert abs(int(a.convert(mid)) - int(b.convert(mid))) == 3
    # DNL: code widths of a fine ramp are uneven, but no code is missing at dnl 0.25
    ramp = np.linspace(0.4, 2.0, 400_000)
    counts = np.bincount(Esp32Adc(11, seed=6, noise_lsb=0, inl_lsb=0, dnl_lsb=0.25)
                         .convert(ramp))[400:2300]
    assert counts.min() > 0 and counts.std() / counts.mean() > 0.1


def test_frontend_nominal_conversion():
    fe = Frontend("sct013-030", seed=1)
    assert fe.adc_volts_per_count == pytest.approx(1.1 * 196602 / 65536 / 4096)
    assert fe.amps_per_count == pytest.approx(fe.adc_volts_per_count * 30.0)
    assert Frontend("sct013-000", burden_ohm=22).amps_per_count == pytest.approx(
        fe.adc_volts_per_count * 2000 / 22)
    assert Frontend("zmpt101b").volts_per_count == pytest.approx(
        fe.adc_volts_per_count * 230 / 0.5)
    with pytest.raises(FrontendError):
        _ = Frontend("zmpt101b").amps_per_count
    with pytest.raises(FrontendError):
        Frontend("sct013-030", burden_ohm=10)
    assert abs(fe.bias_code - fe.nominal_bias_code) < 40  # 1 % divider, Vref 1100


def test_ideal_frontend_is_exact_conversion_plus_quantization():
    fe = Frontend("sct013-030", ideal=True)
    x = np.linspace(-40, 40, 10_001)
    codes = fe.codes(x).astype(float)
    expected = fe.nominal_bias_code + x / fe.amps_per_count
    ok = (expected > 0.5) & (expected < 4094.5)
    assert np.max(np.abs(codes[ok] - expected[ok])) <= 0.5 + 1e-9
    assert fe.bias_code == pytest.approx(fe.nominal_bias_code)


def test_unit_errors_drawn_within_profile_tolerance():
    p = load_profile("sct013-000")
    for seed in range(20):
        fe = Frontend("sct013-000", seed=seed)
        assert abs(fe.ratio_error * 100 - p.ratio_error_pct) <= p.ratio_tolerance_pct
        assert abs(fe.phase_lead_deg - p.phase_lead_deg) <= p.phase_tolerance_deg
        assert 1.65 * 0.98 < fe.bias_v < 1.65 * 1.02
    a, b = Frontend("sct013-000", seed=3), Frontend("sct013-000", seed=3)
    assert a.describe() == b.describe()


def test_saturation_reduces_peaks_at_high_current():
    fe = Frontend("sct013-000", burden_ohm=10, seed=1)
    ideal_gain = fe.v_per_unit
    for peak, max_loss in [(50.0, 1e-6), (170.0, 1e-3)]:
        out = fe.pin_volts(np.array([peak])) - fe.bias_v
        assert out[0] == pytest.approx(ideal_gain * peak, rel=max_loss)
    big = fe.pin_volts(np.array([1000.0]))[0] - fe.bias_v
    assert big < 0.5 * ideal_gain * 1000.0  # deep saturation at 2.5x the knee
    assert big == pytest.approx(ideal_gain * fe.saturation_peak, rel=0.01)
    # a bigger burden saturates earlier
    assert Frontend("sct013-000", burden_ohm=33, seed=1).saturation_peak < fe.saturation_peak
    assert Frontend("sct013-000", ideal=True).saturate(np.array([1e5]))[0] == 1e5


def test_bias_code_is_the_true_mean_code_at_zero_current():
    fe = Frontend("sct013-000", seed=9, vref_mv=None)
    noise = np.random.default_rng(0).standard_normal(40_000)
    codes = fe.codes(np.zeros(40_000), noise).astype(float)
    assert codes.mean() == pytest.approx(fe.bias_code, abs=0.3)
    assert abs(fe.bias_code - fe.nominal_bias_code) > 0.3  # the unit differs from nominal
