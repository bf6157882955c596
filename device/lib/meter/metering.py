# SPDX-License-Identifier: MIT
"""Windows of whole mains cycles -> Irms, P, S, PF and frequency per channel.

API (the sampler creates one accumulator and reuses it; add() allocates nothing):

    acc = WindowAccumulator(nch, scales, vch=None, calib=None, nominal_v=230.0,
                            nominal_hz=50.0, pf_assumed=1.0, end_correction=True)
        nch     columns per frame in the sample buffer (frame k, channel c: buf[k*nch + c])
        scales  per column: A per code for a current column, V per code for the voltage
                column (after bias removal; the caller derives it from sensor, burden, ADC)
        vch     index of the voltage column, or None
        calib   per column: meter.calib.Calibration or None (identity)
    n = acc.window_frames(sample_rate_hz, cycles=10)   # frames for whole cycles at the
                                                       # frequency measured so far
    acc.add(buf, start_frame, nframes)   # any number of times; calls the viper kernels
    results = acc.finish(sample_rate_hz) # list of ChannelResult, one per column; resets
    acc.frequency                        # latest estimate (Hz), used by window_frames

ChannelResult fields: channel, is_voltage, irms (A), voltage (V: measured Vrms, or the nominal
voltage without a voltage column), power (W), apparent (VA), pf, frequency (Hz), frames,
duration (s), and raw stats of the column's codes: min, max, mean, clipped (samples at 0 or
4095).

The math, all from exact integer sums over the window (kernels.py):
  Irms = scale * sqrt(N*Sum(x^2) - Sum(x)^2) / N   (the DC offset is removed by the window
  mean, exactly, in integers: no provisional bias, no slow filter, no float cancellation).
  With a voltage column: P = scale_i*scale_v*(a*C0 + b*C1)/N^2 where C0 = N*Sum(i*v)-Sum(i)Sum(v)
  and C1 is the same with v delayed one frame (circularly within the window); a and b rotate
  the product by -phase_deg at the measured frequency (exact for the fundamental:
  a = sin(t+p)/sin(t), b = -sin(p)/sin(t), t = 360*f/fs degrees, p = phase_deg).
  S = Vrms*Irms, PF = P/S.
  Whole cycles: a window of N frames covers N*f/fs cycles, which is whole only to within half
  a frame. With end_correction (default) and a frequency measured in the window, the variance
  and covariances are extended to the nearest whole number of cycles, N + r frames (|r| < 1),
  by r times the value at the wrap-around edge (mean of first and last frame): this removes
  the first-order error (10x smaller P error at PF 0.5). The integer sums stay exact;
  end_correction=False gives the plain statistics of the N frames.
  Without a voltage column there is no phase information: S = Irms * nominal_v and
  P = S * pf_assumed (1.0 by default), PF = pf_assumed. Say so wherever P is shown.
Calibration (calib.py) maps the raw Irms/Vrms; P is scaled by the same ratios. A current below
its noise floor reads 0 and so do its P, S and PF.
Frequency: rising crossings of the previous window's mean level, with hysteresis (a quarter of
the previous RMS, at least 8 codes), on the voltage column when there is one, else on the
current column that was strongest in the previous window; interpolated between samples. A
window with fewer than two crossings, or an estimate outside 40..70 Hz, keeps the last value
(nominal_hz at first).
"""

import math
from array import array

from meter import kernels as K
from meter.calib import IDENTITY
from meter.window import (  # noqa: F401 - re-exported: metering is the public entry point
    ChannelResult,
    MeterError,
    corrected,
    phase_coefficients,
    rms_counts,
    variance_num,
    window_frames,
)

MIN_HZ = 40.0
MAX_HZ = 70.0
MIN_HYST = 8
DEFAULT_LEVEL = 2048


def _sum(lo, hi):
    return lo + (hi << 30)


class WindowAccumulator:
    def __init__(self, nch, scales, vch=None, calib=None, nominal_v=230.0, nominal_hz=50.0,
                 pf_assumed=1.0, end_correction=True):
        if not isinstance(nch, int) or nch < 1 or nch > 16:
            raise MeterError("nch must be 1..16, got %r" % (nch,))
        if len(scales) != nch:
            raise MeterError("scales needs one value per column (%d), got %d"
                             % (nch, len(scales)))
        for s in scales:
            if not (s > 0.0) or s > 1e6:
                raise MeterError("scale %r is not a positive number" % (s,))
        if vch is not None and (not isinstance(vch, int) or vch < 0 or vch >= nch):
            raise MeterError("vch %r is not a column index" % (vch,))
        if vch is not None and nch < 2:
            raise MeterError("a voltage column needs at least one current column beside it")
        if calib is None:
            calib = [None] * nch
        if len(calib) != nch:
            raise MeterError("calib needs one entry per column")
        if not (nominal_v > 0.0) or not (MIN_HZ <= nominal_hz <= MAX_HZ):
            raise MeterError("nominal voltage must be > 0 and frequency within 40..70 Hz")
        if not (-1.0 <= pf_assumed <= 1.0):
            raise MeterError("pf_assumed must be within -1..1")
        self.nch = nch
        self.scales = [float(s) for s in scales]
        self.vch = vch
        self.calib = [c if c is not None else IDENTITY for c in calib]
        self.nominal_v = float(nominal_v)
        self.nominal_hz = float(nominal_hz)
        self.pf_assumed = float(pf_assumed)
        self.end_correction = end_correction
        self.frequency = self.nominal_hz
        self._st = [array("i", [0] * K.ST_LEN) for _ in range(nch)]
        self._pr = [array("i", [0] * K.PR_LEN) for _ in range(nch)]
        self._xs = array("i", [0] * K.XS_LEN)
        self._first = array("i", [0] * nch)  # codes of the window's first frame
        self._last = array("i", [0] * nch)  # codes of the latest frame
        self._vlast2 = 0  # voltage code of the frame before the latest
        self._vlast = 0
        self._frames = 0
        # crossing detector: column, level and hysteresis (codes) for the current window
        self._ref = vch if vch is not None else 0
        self._level = DEFAULT_LEVEL
        self._hyst = MIN_HYST
        self.reset()

    def reset(self):
        """Start a new window (finish() does this itself)."""
        for st in self._st:
            for k in range(K.ST_LEN):
                st[k] = 0
            st[K.MIN] = K.FULL_SCALE
        for pr in self._pr:
            for k in range(K.PR_LEN):
                pr[k] = 0
        xs = self._xs
        for k in range(K.XS_LEN):
            xs[k] = 0
        self._frames = 0

    def window_frames(self, sample_rate, cycles=10):
        return window_frames(self.frequency, sample_rate, cycles)

    @property
    def frames(self):
        return self._frames

    def add(self, buf, start_frame, nframes):
        """Fold frames start_frame..start_frame+nframes-1 of buf into the window.

        Allocates nothing (the kernels write into preallocated arrays; only small ints here).
        """
        nch = self.nch
        if start_frame < 0 or nframes < 0 or (start_frame + nframes) * nch > len(buf):
            raise MeterError("frames %d+%d outside the buffer" % (start_frame, nframes))
        if nframes == 0:
            return
        base = start_frame * nch
        last = base + (nframes - 1) * nch
        first_frames = self._frames == 0
        for c in range(nch):
            K.channel_stats(buf, start_frame, nframes, nch, c, self._st[c])
            if first_frames:
                x = buf[base + c]
                self._first[c] = x if x < K.FULL_SCALE else K.FULL_SCALE
        vch = self.vch
        if vch is not None:
            vprev = self._first[vch] if first_frames else self._vlast
            for c in range(nch):
                if c != vch:
                    K.product_sums(buf, start_frame, nframes, nch, c, vch, vprev, self._pr[c])
            self._vlast2 = buf[last - nch + vch] if nframes > 1 else vprev
            if self._vlast2 > K.FULL_SCALE:
                self._vlast2 = K.FULL_SCALE
        for c in range(nch):
            x = buf[last + c]
            self._last[c] = x if x < K.FULL_SCALE else K.FULL_SCALE
        if vch is not None:
            self._vlast = self._last[vch]
        K.rising_edges(buf, start_frame, nframes, nch, self._ref, self._level, self._hyst,
                       self._frames, self._xs)
        self._frames += nframes

    def raw_sums(self, c):
        """(N, Sum(x), Sum(x^2), min, max, clipped) of column c in the current window."""
        st = self._st[c]
        return (self._frames, _sum(st[K.S_LO], st[K.S_HI]), _sum(st[K.Q_LO], st[K.Q_HI]),
                st[K.MIN], st[K.MAX], st[K.CLIP])

    def raw_products(self, c):
        """(Sum(i[k]*v[k]), Sum(i[k]*v[k-1 mod N])) of current column c with the voltage."""
        pr = self._pr[c]
        p0 = _sum(pr[K.P0_LO], pr[K.P0_HI])
        p1 = _sum(pr[K.P1_LO], pr[K.P1_HI])
        # the first frame was paired with itself; circularly it pairs with the last frame
        p1 += self._first[c] * (self._vlast - self._first[self.vch])
        return p0, p1

    def _measure_frequency(self, sample_rate):
        xs = self._xs
        count = xs[K.X_COUNT]
        if count < 2:
            return None
        t0 = xs[K.X_FIRST_K] + xs[K.X_FIRST_NUM] / xs[K.X_FIRST_DEN]
        t1 = xs[K.X_LAST_K] + xs[K.X_LAST_NUM] / xs[K.X_LAST_DEN]
        if not t1 > t0:
            return None
        f = sample_rate * (count - 1) / (t1 - t0)
        if f < MIN_HZ or f > MAX_HZ:
            return None
        return f

    def _residual(self, measured, sample_rate):
        """Frames missing (+) or extra (-) against whole cycles, or 0.0 if not correcting."""
        if not (self.end_correction and measured) or self._frames < 2:
            return 0.0
        per_cycle = sample_rate / self.frequency
        m = int(self._frames / per_cycle + 0.5)
        if m < 1:
            return 0.0
        r = m * per_cycle - self._frames
        return r if -0.75 < r < 0.75 else 0.0

    def finish(self, sample_rate, into=None):
        """Results of the window (one ChannelResult per column), then start a new window.

        `into`: the previous window's results, to be overwritten with this one's (the meter
        passes them): a result's attribute table is the one block per window the meter
        would otherwise need in one piece, and in a heap cut into pieces by days of work it
        was what could not be found (bench/heap_floor.py). Whoever keeps `into` sees the
        new window."""
        n = self._frames
        if n == 0:
            raise MeterError("finish() on an empty window")
        if not sample_rate > 0.0:
            raise MeterError("sample rate must be > 0")
        f = self._measure_frequency(sample_rate)
        if f is not None:
            self.frequency = f
        r_end = self._residual(f is not None, sample_rate)
        f = self.frequency
        nch = self.nch
        vch = self.vch
        n2 = n * n
        if into is not None and len(into) == nch:
            results = into
            for c in range(nch):
                results[c].__init__(c, c == vch)  # every field back to its start value
        else:
            results = [ChannelResult(c, c == vch) for c in range(nch)]
        var = [0.0] * nch  # variance (codes^2) over whole cycles
        dev0 = [0.0] * nch  # first and last frame minus the window mean
        devn = [0.0] * nch
        for c in range(nch):
            _, s, q, mn, mx, clip = self.raw_sums(c)
            res = results[c]
            res.frames = n
            res.duration = n / sample_rate
            res.frequency = f
            res.min = mn
            res.max = mx
            mean = s / n
            res.mean = mean
            res.clipped = clip
            vn = variance_num(n, s, q)
            var[c] = vn / n2 if vn > 0 else 0.0
            dev0[c] = self._first[c] - mean
            devn[c] = self._last[c] - mean
            if r_end != 0.0:
                var[c] = corrected(var[c], n, r_end, dev0[c] * dev0[c] + devn[c] * devn[c],
                                    dev0[c] + devn[c], dev0[c] + devn[c])
        rms = [math.sqrt(v) if v > 0.0 else 0.0 for v in var]

        if vch is not None:
            s_v = self.raw_sums(vch)[1]
            v_raw = rms[vch] * self.scales[vch]
            vrms = self.calib[vch].apply(v_raw)
            kv = vrms / v_raw if v_raw > 0.0 else 0.0
            results[vch].voltage = vrms
            dvn2 = self._vlast2 - s_v / n
        else:
            vrms = self.nominal_v
        for c in range(nch):
            if c == vch:
                continue
            res = results[c]
            res.voltage = vrms
            cal = self.calib[c]
            i_raw = rms[c] * self.scales[c]
            irms = cal.apply(i_raw)
            if irms <= 0.0:
                continue  # below the noise floor: I, P, S, PF all 0
            res.irms = irms
            res.apparent = vrms * irms
            if vch is None:
                res.pf = self.pf_assumed
                res.power = res.apparent * self.pf_assumed
                continue
            s_i = self.raw_sums(c)[1]
            p0, p1 = self.raw_products(c)
            ss = s_i * s_v
            cov = (n * p0 - ss) / n2
            if r_end != 0.0:
                cov = corrected(cov, n, r_end, dev0[c] * dev0[vch] + devn[c] * devn[vch],
                                 dev0[c] + devn[c], dev0[vch] + devn[vch])
            a, b = phase_coefficients(f, sample_rate, cal.phase_deg)
            if b != 0.0:
                cov1 = (n * p1 - ss) / n2  # v delayed one frame, circularly
                if r_end != 0.0:
                    cov1 = corrected(cov1, n, r_end, dev0[c] * devn[vch] + devn[c] * dvn2,
                                      dev0[c] + devn[c], devn[vch] + dvn2)
                cov = a * cov + b * cov1
            ki = irms / i_raw
            res.power = cov * self.scales[c] * self.scales[vch] * ki * kv
            if res.apparent > 0.0:
                pf = res.power / res.apparent
                res.pf = 1.0 if pf > 1.0 else (-1.0 if pf < -1.0 else pf)

        self._next_reference(results, rms)
        self.reset()
        return results

    def _next_reference(self, results, rms):
        ref = self.vch
        if ref is None:
            ref = 0
            for c in range(self.nch):
                if rms[c] > rms[ref]:
                    ref = c
        self._ref = ref
        self._level = int(results[ref].mean + 0.5)
        h = int(rms[ref] / 4)
        self._hyst = h if h > MIN_HYST else MIN_HYST
