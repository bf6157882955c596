# SPDX-License-Identifier: MIT
"""Integer energy: exact after a simulated year at 20 kW, float32 power loses nothing,
state round trip, bad input rejected, and the same counter on the unix port."""

import json
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meter.energy import UNIT, EnergyCounter, EnergyError

YEAR_US = 365 * 24 * 3600 * 10**6
MWH_PER_WUS = Fraction(1, 3_600_000)  # 1 mWh = 3.6 J = 3.6e6 W*us


def exact_mwh(p32, dt_us):
    """Exact energy (Fraction, mWh) of float32 powers >= 0.5 W (exact integers at 2**-24 W)."""
    q = (p32.astype(np.float64) * 2**24).astype(np.int64)
    assert np.all(q.astype(np.float64) == p32.astype(np.float64) * 2**24)  # exact
    return Fraction(int(q.sum()), 2**24) * dt_us * MWH_PER_WUS


def test_year_at_20kw_10s_steps_with_float32_power():
    """3,153,600 steps of 10 s, power float32 around 20 kW: exact to the float32 inputs and
    within 1 Wh of the float64 truth; a float32 kWh total is visibly wrong."""
    steps = 365 * 24 * 360
    dt = 10_000_000
    rng = np.random.default_rng(7)
    p64 = 20000.0 + rng.normal(0.0, 150.0, steps)
    p32 = p64.astype(np.float32)
    e = EnergyCounter()
    add = e.add
    # Python floats holding the float32 values (fast); p * 2**24 is exact in float32 and
    # float64 alike, and the first day runs on numpy.float32 scalars to show it is the same.
    day = 24 * 360
    for p in p32[:day]:
        add(p, dt)
    for p in p32[day:].tolist():
        add(p, dt)
    exact = exact_mwh(p32, dt)
    assert 0 <= exact - e.mwh < 1  # exact to the milliwatt-hour (the rest is in e.rem)
    assert e.units() == exact / MWH_PER_WUS * 2**24
    truth_mwh = float(p64.sum()) * dt / 3.6e6
    assert abs(e.mwh - truth_mwh) < 1000  # within 1 Wh of the float64 truth
    assert e.mwh / 1e6 == pytest.approx(175_200, rel=0.001)  # ~175 MWh
    # the trap this avoids: a float32 kWh accumulator
    kwh = np.cumsum((p32 * np.float32(10 / 3.6e6)).astype(np.float32), dtype=np.float32)[-1]
    assert abs(float(kwh) * 1e6 - exact) > 1_000_000  # off by more than 1 kWh


def test_200ms_steps_lose_nothing():
    """A day of 200 ms steps (432,000) at varying float32 power: the invariant
    units == sum(int(p * 2**24) * dt) holds exactly, so no step loses anything and a year of
    them (789x as many) is exact for the same reason; checked at a year's magnitude below."""
    steps = 432_000
    dt = 200_000
    rng = np.random.default_rng(11)
    p32 = rng.uniform(0.5, 20000.0, steps).astype(np.float32)
    e = EnergyCounter()
    for p in p32:
        e.add(p, dt)
    exact = exact_mwh(p32, dt)
    assert e.units() == exact / MWH_PER_WUS * 2**24
    assert 0 <= exact - e.mwh < 1


def test_year_at_20kw_200ms_steps_constant_load_from_restored_state():
    """Start from the state a 20 kW year of 200 ms steps ends at, minus the last day, and
    run that day step by step: the total is exactly 20 kW * 1 year."""
    dt = 200_000
    steps_day = 432_000
    q = 20000 * 2**24
    before = q * dt * (365 * steps_day - steps_day)
    e = EnergyCounter(before // UNIT, before % UNIT)
    p = np.float32(20000.0)
    for _ in range(steps_day):
        e.add(p, dt)
    assert e.units() == q * YEAR_US
    assert e.mwh == 20000 * 365 * 24 * 1000 and e.rem == 0  # 175,200,000,000 mWh exactly


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(-30000.0, 30000.0, width=32),
                          st.integers(0, 60_000_000)), max_size=50))
def test_import_and_export_are_exact_for_any_float32_steps(steps):
    e = EnergyCounter()
    imp = exp = 0
    for p, dt in steps:
        e.add(np.float32(p), dt)
        q = int(float(np.float32(p)) * 2**24)
        if q >= 0:
            imp += q * dt
        else:
            exp += -q * dt
    assert e.units() == imp and e.export_units() == exp
    assert 0 <= e.rem < UNIT and 0 <= e.export_rem < UNIT
    # float32 values of at least 0.5 W convert exactly
    for p, _ in steps:
        if abs(p) >= 0.5:
            assert Fraction(float(np.float32(p))) * 2**24 == int(float(np.float32(p)) * 2**24)


def test_state_round_trip_through_json():
    e = EnergyCounter()
    for k in range(1000):
        e.add(1234.567 + k, 1_000_003)
        e.add(-17.25, 500_000)
    text = json.dumps(e.state())
    f = EnergyCounter.from_state(json.loads(text))
    assert (f.mwh, f.rem, f.export_mwh, f.export_rem) == (e.mwh, e.rem, e.export_mwh,
                                                          e.export_rem)
    f.add(100.0, 10**6)
    e.add(100.0, 10**6)
    assert f.units() == e.units()


@pytest.mark.parametrize("state", [
    None, [], {"mwh": 1}, {"v": 2, "mwh": 1}, {"v": 1, "mwh": -1}, {"v": 1, "mwh": 1.5},
    {"v": 1, "rem": UNIT}, {"v": 1, "mwh": True}, {"v": 1, "bogus": 3},
])
def test_bad_state_is_rejected(state):
    with pytest.raises(EnergyError):
        EnergyCounter.from_state(state)


@pytest.mark.parametrize("power,dt", [
    (float("nan"), 1), (float("inf"), 1), (-float("inf"), 1), (2e7, 1), (100.0, -1),
    (100.0, 1.5), (np.float32("nan"), 1),
])
def test_bad_steps_are_rejected_and_change_nothing(power, dt):
    e = EnergyCounter()
    e.add(100.0, 10**6)
    before = e.state()
    with pytest.raises(EnergyError):
        e.add(power, dt)
    assert e.state() == before


def test_energy_counter_on_unix_port(micropython):
    src = r"""
import json
from meter.energy import EnergyCounter, EnergyError
e = EnergyCounter()
for k in range(20000):
    e.add(19999.5 + (k % 7) * 0.25, 200000)
    e.add(-3.0, 100000)
try:
    e.add(float("nan"), 1)
except EnergyError:
    print("rejected")
print(json.dumps(e.state()))
"""
    out = micropython.run(src, heapsize="64k").splitlines()
    e = EnergyCounter()
    for k in range(20000):
        e.add(19999.5 + (k % 7) * 0.25, 200000)
        e.add(-3.0, 100000)
    assert out[0] == "rejected"
    assert json.loads(out[1]) == e.state()
