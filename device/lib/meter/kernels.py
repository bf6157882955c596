# SPDX-License-Identifier: MIT
"""Viper kernels over the interleaved sample buffer (one source for the chip and CPython).

The buffer is a preallocated array('H') of frames: frame k holds channel c at buf[k*nch + c],
each a 12-bit ADC code 0..4095. The kernels add one block of frames into per-channel
accumulators held in preallocated array('i') objects, walk the buffer through ptr16/ptr32,
and allocate nothing (tests run them under micropython.heap_lock()).

    channel_stats(buf, start, n, nch, ch, st)            st: array('i', ST_LEN)
    product_sums(buf, start, n, nch, ich, vch, vprev, pr) -> last v code   pr: array('i', PR_LEN)
    rising_edges(buf, start, n, nch, ch, level, hyst, frame0, xs)          xs: array('i', XS_LEN)

Word size (the bound the tests prove): on ESP32/C3 a viper int is 32-bit and wraps. Codes are
clamped to 0..4095 on load, so one product is at most 4095**2 = 16_769_025 < 2**24. The inner
loops sum at most _BLOCK = 64 frames: 64 * 4095**2 = 1_073_217_600 < 2**30. Each block sum is
then folded into a (lo, hi) pair with lo kept in 0..2**30-1, so lo + block < 2**31 and
hi += carry; value = lo + hi * 2**30. All stored words are non-negative (so sign/zero extension
of ptr32 loads on 64-bit ports cannot matter), returns are codes (< 2**12), and no raw code
sums are needed: metering.py removes the DC offset exactly from these integer sums.
"""

try:
    import micropython
    from micropython import const
except ImportError:
    from meter.cpython_shims import const, micropython, ptr16, ptr32  # noqa: F401

FULL_SCALE = const(4095)
BLOCK = const(64)

# channel_stats accumulator layout (array('i'))
S_LO = const(0)  # sum of codes, low 30 bits
S_HI = const(1)  # sum of codes, multiples of 2**30
Q_LO = const(2)  # sum of squared codes, low 30 bits
Q_HI = const(3)
MIN = const(4)  # smallest code (start at 4095)
MAX = const(5)  # largest code (start at 0)
CLIP = const(6)  # samples at 0 or 4095
ST_LEN = const(7)

# product_sums layout: sum i[k]*v[k] and sum i[k]*v[k-1]
P0_LO = const(0)
P0_HI = const(1)
P1_LO = const(2)
P1_HI = const(3)
PR_LEN = const(4)

# rising_edges state: a rising crossing of `level` after the signal was at or below
# level - hyst; its time is frame (k + num/den) with k the frame before the crossing.
X_ARMED = const(0)
X_COUNT = const(1)
X_FIRST_K = const(2)
X_FIRST_NUM = const(3)
X_FIRST_DEN = const(4)
X_LAST_K = const(5)
X_LAST_NUM = const(6)
X_LAST_DEN = const(7)
X_PREV = const(8)  # last code seen (for a crossing that straddles two blocks)
XS_LEN = const(9)

_LOW30 = const(0x3FFFFFFF)
_FULL = const(4095)
_BLK = const(64)


@micropython.viper
def channel_stats(buf: ptr16, start: int, n: int, nch: int, ch: int, st: ptr32):
    """Add frames start..start+n-1 of column ch to st: sums, min, max, clipped count."""
    i = start * nch + ch
    end = i + n * nch
    mn = st[4]
    mx = st[5]
    clip = st[6]
    while i < end:
        stop = i + _BLK * nch
        if stop > end:
            stop = end
        s = 0
        q = 0
        while i < stop:
            x = buf[i]
            if x >= _FULL:
                x = _FULL
                clip += 1
            elif x == 0:
                clip += 1
            if x < mn:
                mn = x
            if x > mx:
                mx = x
            s += x
            q += x * x
            i += nch
        lo = st[0] + s
        st[1] = st[1] + (lo >> 30)
        st[0] = lo & _LOW30
        lo = st[2] + q
        st[3] = st[3] + (lo >> 30)
        st[2] = lo & _LOW30
    st[4] = mn
    st[5] = mx
    st[6] = clip


@micropython.viper
def product_sums(
    buf: ptr16, start: int, n: int, nch: int, ich: int, vch: int, vprev: int, pr: ptr32
) -> int:
    """Add sum i[k]*v[k] and sum i[k]*v[k-1] over the block to pr; returns the last v code.

    vprev is v[start-1] (the caller carries it from the previous block)."""
    base = start * nch
    i = base + ich
    j = base + vch
    end = i + n * nch
    vp = vprev
    if vp > _FULL:
        vp = _FULL
    if vp < 0:
        vp = 0
    while i < end:
        stop = i + _BLK * nch
        if stop > end:
            stop = end
        p0 = 0
        p1 = 0
        while i < stop:
            a = buf[i]
            if a > _FULL:
                a = _FULL
            v = buf[j]
            if v > _FULL:
                v = _FULL
            p0 += a * v
            p1 += a * vp
            vp = v
            i += nch
            j += nch
        lo = pr[0] + p0
        pr[1] = pr[1] + (lo >> 30)
        pr[0] = lo & _LOW30
        lo = pr[2] + p1
        pr[3] = pr[3] + (lo >> 30)
        pr[2] = lo & _LOW30
    return vp


@micropython.viper
def rising_edges(
    buf: ptr16, start: int, n: int, nch: int, ch: int, level: int, hyst: int, frame0: int,
    xs: ptr32,
):
    """Record rising crossings of `level` (with hysteresis) in column ch into xs.

    frame0 is the window-relative frame number of `start`; xs[X_PREV] must hold the code
    before `start` (any value when xs[X_ARMED] is 0, as at the start of a window)."""
    i = start * nch + ch
    end = i + n * nch
    k = frame0
    low = level - hyst
    armed = xs[0]
    count = xs[1]
    prev = xs[8]
    while i < end:
        x = buf[i]
        if x > _FULL:
            x = _FULL
        if armed:
            if x >= level:
                # prev < level here: prev was the arming sample or a later one below level
                if count == 0:
                    xs[2] = k - 1
                    xs[3] = level - prev
                    xs[4] = x - prev
                xs[5] = k - 1
                xs[6] = level - prev
                xs[7] = x - prev
                count += 1
                armed = 0
        elif x <= low:
            armed = 1
        prev = x
        i += nch
        k += 1
    xs[0] = armed
    xs[1] = count
    xs[8] = prev
