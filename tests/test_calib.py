# SPDX-License-Identifier: MIT
"""Calibration record: apply order, table interpolation, dict/JSON form, validation, and the
same results on the unix port."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meter.calib import IDENTITY, Calibration, CalibrationError


def test_identity_and_apply_order():
    assert IDENTITY.apply(3.25) == 3.25
    cal = Calibration(gain=2.0, offset=0.5, noise_floor=1.0)
    assert cal.apply(1.0) == 2.5  # gain then offset
    assert cal.apply(0.2) == 0.0  # 0.9 is below the noise floor
    assert cal.apply(0.0) == 0.0
    assert Calibration(offset=-1.0).apply(0.5) == 0.0  # never negative


def test_table_interpolates_and_extends_end_segments():
    cal = Calibration(table=[[0.0, 0.0], [1.0, 0.9], [10.0, 10.0]])
    assert cal.apply(0.5) == pytest.approx(0.45)
    assert cal.apply(1.0) == pytest.approx(0.9)
    assert cal.apply(5.5) == pytest.approx(0.9 + 4.5 * 9.1 / 9.0)
    assert cal.apply(20.0) == pytest.approx(10.0 + 10.0 * 9.1 / 9.0)  # last segment's slope
    low = Calibration(table=[[1.0, 2.0], [2.0, 3.0]])
    assert low.apply(0.5) == pytest.approx(1.5)  # first segment extended downwards


finite = st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def tables(draw):
    n = draw(st.integers(2, 8))
    xs = []
    for x in sorted(draw(st.lists(st.floats(0.0, 100.0), min_size=n, max_size=n))):
        if not xs or x >= xs[-1] + 1e-6:
            xs.append(x)
    if len(xs) < 2:
        xs = [0.0, 1.0]
    ys = draw(st.lists(st.floats(0.0, 120.0), min_size=len(xs), max_size=len(xs)))
    return [[x, y] for x, y in zip(xs, ys, strict=True)]


@settings(max_examples=100, deadline=None)
@given(tables(), st.floats(0.0, 100.0))
def test_table_matches_numpy_interp_inside_the_table(table, x):
    xs, ys = np.array(table).T
    cal = Calibration(table=table)
    if xs[0] <= x <= xs[-1]:
        assert cal.correct(x) == pytest.approx(float(np.interp(x, xs, ys)), rel=1e-9,
                                               abs=1e-9)
    for xk, yk in table:
        assert cal.correct(xk) == pytest.approx(yk, rel=1e-9, abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(st.floats(0.01, 100.0), st.floats(-5.0, 5.0), st.one_of(st.just([]), tables()),
       st.floats(-30.0, 30.0), st.floats(0.0, 10.0))
def test_dict_and_json_round_trip(gain, offset, table, phase, floor):
    cal = Calibration(gain=gain, offset=offset, table=table, phase_deg=phase,
                      noise_floor=floor)
    d = json.loads(json.dumps(cal.to_dict()))
    again = Calibration.from_dict(d)
    assert again == cal
    for x in (0.0, 0.3, 7.0, 150.0):
        assert again.apply(x) == cal.apply(x)


@pytest.mark.parametrize("d,field", [
    ({"gain": 0}, "gain"), ({"gain": -1.0}, "gain"), ({"gain": "1"}, "gain"),
    ({"gain": True}, "gain"), ({"gain": float("nan")}, "gain"), ({"offset": float("inf")},
                                                                  "offset"),
    ({"phase_deg": 45.0}, "phase_deg"), ({"noise_floor": -0.1}, "noise_floor"),
    ({"table": [[0, 0]]}, "table"), ({"table": [[1, 1], [1, 2]]}, "increase"),
    ({"table": [[2, 1], [1, 2]]}, "increase"),
    ({"table": [[0, 0], [1e-9, 1]]}, "increase"), ({"table": [[0, 0], [1]]}, "table"),
    ({"table": [[0, 0], [1, -1]]}, "negative"), ({"table": "0,0;1,1"}, "table"),
    ({"table": [[0, 0], [1, float("nan")]]}, "finite"), ({"gian": 1.0}, "gian"),
    ([1, 2], "object"),
])
def test_bad_values_raise_calibration_error_naming_the_field(d, field):
    with pytest.raises(CalibrationError, match=field):
        Calibration.from_dict(d)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(["gain", "offset", "phase_deg", "noise_floor"]),
                       st.one_of(finite, st.text(max_size=3), st.none(), st.booleans(),
                                 st.floats())))
def test_any_dict_either_loads_valid_or_raises_calibration_error(d):
    try:
        cal = Calibration.from_dict(d)
    except CalibrationError:
        return
    assert cal.gain > 0 and math.isfinite(cal.offset) and abs(cal.phase_deg) <= 30
    assert cal.noise_floor >= 0


def test_calibration_on_unix_port_matches_cpython(micropython):
    d = {"gain": 1.013, "offset": -0.02, "table": [[0.0, 0.0], [0.5, 0.47], [30.0, 30.2]],
         "phase_deg": 2.5, "noise_floor": 0.04}
    xs = [0.0, 0.03, 0.1, 0.49, 0.5, 3.3, 29.9, 45.0]
    src = r"""
import json
from meter.calib import Calibration, CalibrationError
cal = Calibration.from_dict(json.loads(%r))
print(json.dumps([cal.apply(x) for x in %r]))
print(json.dumps(cal.to_dict()))
try:
    Calibration.from_dict({"gain": float("nan")})
except CalibrationError as e:
    print("rejected:", e)
""" % (json.dumps(d), xs)
    out = micropython.run(src, heapsize="64k").splitlines()
    cal = Calibration.from_dict(d)
    assert json.loads(out[0]) == pytest.approx([cal.apply(x) for x in xs], rel=1e-12)
    assert Calibration.from_dict(json.loads(out[1])) == cal
    assert out[2].startswith("rejected: calibration gain must be finite")
