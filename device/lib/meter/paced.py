# SPDX-License-Identifier: MIT
"""Fixed-rate sampling loop (viper) for boards whose ADC is read by a Python-callable method.

    params = array('i', [nch, period_us, 0])      # params[2] <- worst lateness (µs)
    paced_read(buf, start, n, params, reads, ticks_us)

Takes n frames of nch channels on a fixed time grid (one frame every period_us, from the
first call of `ticks_us`), storing `read() >> 4` (the 12-bit code of `ADC.read_u16()`)
into the array('H') `buf` at frames [start, start+n). A late frame does not shift the grid:
the next ones follow at their scheduled times, so the mean rate stays exact and the lateness
is reported as jitter. Allocates nothing. Callers keep bursts short (≲ 50 ms) so Ctrl-C, the
scheduler and the watchdog get through between them: a viper loop cannot be interrupted.

Tick arithmetic is modulo 2**30 like time.ticks_us on the chip, in 32-bit viper ints.
"""

try:
    import micropython
except ImportError:  # CPython: the same body runs through the shims
    from meter.cpython_shims import micropython, ptr16, ptr32  # noqa: F401

try:
    from micropython import const
except ImportError:  # CPython
    from meter.cpython_shims import const

_MASK = const(0x3FFFFFFF)
_HALF = const(0x20000000)


@micropython.viper
def paced_read(buf: ptr16, start: int, n: int, params: ptr32, reads, ticks_us) -> int:
    nch = params[0]
    period = params[1]
    t_next = int(ticks_us()) & 0x3FFFFFFF
    late_max = 0
    i = 0
    while i < n:
        d = 0
        while True:
            d = (int(ticks_us()) - t_next) & 0x3FFFFFFF
            if d < 0x20000000:
                break
        if d > late_max:
            late_max = d
        base = (start + i) * nch
        c = 0
        while c < nch:
            buf[base + c] = (int(reads[c]()) >> 4) & 0xFFF
            c += 1
        t_next = (t_next + period) & 0x3FFFFFFF
        i += 1
    params[2] = late_max
    return i
