# SPDX-License-Identifier: MIT
"""The calibration fit: from a zero step and reference points (uncalibrated Irms and a raw
capture of the top point's waveform) to the Calibration the meter applies.

    tr = measure_transfer(codes, knee)           # the ADC's deviation above its knee
    fit = fit_points(points, zero, amps_per_count, knee)
    fit.calibration, fit.residuals               # what `cal apply` sends, and how well it fits
    apply_line(channel, fit.calibration)         # that console line

The method (gain and noise in quadrature, the ADC's top end from the mirrored half-cycles,
a calibration table that stays within the console's line) is described in ctmeter.calibrate,
which runs the session around it. Numbers only here: no meter, no files.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np
from meter.calib import Calibration, CalibrationError

from ctmeter.errors import CommandError
from ctmeter.meterlink import MAX_LINE

CAPTURE_CHUNK = 500  # codes per `scope` call: less than a window, so one contiguous run
NOISE_FLOOR_FACTOR = 0.5  # noise_floor = 0.5 x noise Irms: no load reads 0
KNEE_MARGIN = 32  # codes below the board's knee where the deviation may start
BIN_CODES = 16  # the transfer's deviation is averaged over bins of this many codes
LOW_CODE = 16  # the lower half must stay above this code (ESP32 11 dB: ~150 mV)
TOP_EXTENT = 1.1  # the table covers up to 110 % of the top point
TABLE_TOLERANCE = 2e-4  # knots are dropped while the table stays within 0.02 %


class CalibrateError(CommandError):
    """A calibration step cannot go on; the message says why and what to do."""


# ---------------------------------------------------------------- the ADC's top end


@dataclass
class Transfer:
    """The ADC's deviation from its straight line above the knee, measured from a capture:
    code(x) = x + D(x) with D given at codes `xs` (0 at xs[0], linear beyond xs[-1])."""

    bias: float  # centre of the waveform (code)
    knee: float  # where D may start (code)
    xs: list = field(default_factory=list)
    ds: list = field(default_factory=list)

    @property
    def linear(self):
        return len(self.xs) < 2

    def __call__(self, x):
        x = np.asarray(x, dtype=np.float64)
        if self.linear:
            return x
        xs, ds = np.asarray(self.xs), np.asarray(self.ds)
        d = np.interp(x, xs, ds)
        tail = x > xs[-1]
        if tail.any():
            k = max(0, len(xs) - 4)
            slope = (ds[-1] - ds[k]) / (xs[-1] - xs[k]) if xs[-1] > xs[k] else 0.0
            d = np.where(tail, ds[-1] + slope * (x - xs[-1]), d)
        return x + np.where(x > xs[0], d, 0.0)

    def inverse(self, y):
        y = np.asarray(y, dtype=np.float64)
        if self.linear:
            return y
        grid = np.linspace(self.xs[0], self.xs[-1] + 2048.0, 8192)
        fwd = np.maximum.accumulate(self(grid))
        return np.where(y > self.xs[0], np.interp(y, fwd, grid), y)


def _lobes(chunk, bias, h):
    """|code - bias| of the complete positive and negative half-cycles ("lobes") of one
    contiguous chunk; samples within +-h of the bias are left out (noise would split lobes),
    the first and last lobe may be cut by the chunk's ends and are dropped."""
    y = chunk - bias
    s = np.where(y > h, 1, np.where(y < -h, -1, 0))
    idx = np.nonzero(s)[0]
    pos, neg = [], []
    if idx.size == 0:
        return pos, neg
    sv = s[idx]
    groups = np.split(np.arange(idx.size), np.nonzero(np.diff(sv))[0] + 1)
    for g in groups[1:-1]:
        if sv[g[0]] > 0:
            pos.append(y[idx[g]])
        else:
            neg.append(-y[idx[g]])
    return pos, neg


def measure_transfer(codes, knee, segments=None):
    """Transfer from a capture of a half-wave symmetric (resistive) waveform made of
    contiguous runs of `segments` codes (default: runs of CAPTURE_CHUNK). Over whole
    half-cycles the upper lobes mirror the lower ones, level by level, except where the
    ADC's top end bends them. `knee` None (no known nonlinear top): the identity."""
    r = np.asarray(codes, dtype=np.float64)
    if r.size < 200:
        raise CalibrateError(f"capture too short ({r.size} codes)")
    start = (knee - KNEE_MARGIN) if knee is not None else math.inf
    bias = float(np.median(r))
    amp = (np.percentile(r, 99.5) - np.percentile(r, 0.5)) / 2
    if knee is None or r.max() < start:
        return Transfer(bias, start if knee is not None else 0.0)
    h = max(8.0, 0.05 * amp)
    if not segments:
        segments = [CAPTURE_CHUNK] * -(-r.size // CAPTURE_CHUNK)
    runs = np.split(r, np.cumsum(segments)[:-1])
    for _ in range(6):  # refine the bias: the lobes must agree below the knee
        pos, neg = [], []
        for run in runs:
            a, b = _lobes(run, bias, h)
            pos += a
            neg += b
        if len(pos) < 4 or len(neg) < 4:
            raise CalibrateError("the capture has too few whole mains half-cycles",
                                 "is the reference load on and steady?")
        # level reached for c samples per half-cycle: counted per lobe, not per sample, so
        # that a bias error (one side's lobes longer) shows as a difference of levels
        top = np.sort(np.concatenate(pos))[::-1]
        bot = np.sort(np.concatenate(neg))[::-1]
        c = np.linspace(0.0, min(top.size / len(pos), bot.size / len(neg)), 801)[:-1]
        tq = np.interp(c * len(pos), np.arange(top.size), top)
        bq = np.interp(c * len(neg), np.arange(bot.size), bot)
        lin = (bias + tq < start) & (c < 0.9 * c[-1])
        if not lin.any():
            raise CalibrateError("the waveform's centre is above the ADC's linear range",
                                 "is the bias divider right? `ctmeter diag` checks it")
        shift = float(np.median(tq[lin] - bq[lin])) / 2
        bias += shift
        if abs(shift) < 0.02:
            break
    x = bias + bq  # where the upper lobe would be on the straight line
    d = tq - bq
    sel = x > start
    xs, ds = [start], [0.0]
    if sel.any():
        edges = np.arange(start, x[sel].max() + BIN_CODES, BIN_CODES)
        idx = np.digitize(x[sel], edges)
        for i in np.unique(idx):
            m = idx == i
            xs.append(float(x[sel][m].mean()))
            ds.append(float(d[sel][m].mean()))
    xs, ds = np.asarray(xs), np.asarray(ds)
    keep = np.concatenate(([True], np.diff(xs) > 1e-6))
    xs, ds = xs[keep], ds[keep]
    ys = np.maximum.accumulate(xs + ds)  # a transfer is monotonic; noise is not
    return Transfer(round(bias, 3), start, [round(float(v), 3) for v in xs],
                    [round(float(v), 3) for v in ys - xs])


def top_end_curve(codes, transfer, scale, extent=TOP_EXTENT, steps=240):
    """(a, m) arrays: the linear Irms a of the capture's waveform scaled from 0 to `extent`
    times itself, and the Irms m the meter computes after the ADC's top end (no noise)."""
    r = np.asarray(codes, dtype=np.float64)
    x = np.where(r > transfer.knee, transfer.inverse(r), r) if not transfer.linear else r
    c = x - transfer.bias
    s = np.linspace(0.0, extent, steps + 1)[1:]
    a = np.empty(steps)
    m = np.empty(steps)
    for i, k in enumerate(s):
        xk = transfer.bias + k * c
        a[i] = np.std(xk)
        m[i] = np.std(transfer(xk))
    return np.concatenate(([0.0], a * scale)), np.concatenate(([0.0], m * scale))


# ---------------------------------------------------------------- the fit


@dataclass
class Zero:
    raw_irms: float  # A, uncalibrated, over the windows
    rms_codes: float
    windows: int
    bias_code: float
    min_code: int
    max_code: int


@dataclass
class Point:
    true_amps: float
    raw_irms: float
    windows: int
    reference: dict  # what the user gave: {"amps": x} or {"watts": w, "volts": v}
    codes: list = field(default_factory=list, repr=False)
    min_code: int = 0
    max_code: int = 0
    segments: list = field(default_factory=list)  # contiguous runs of `codes`

    @property
    def ratio(self):
        return self.true_amps / self.raw_irms if self.raw_irms > 0 else math.inf


@dataclass
class Fit:
    calibration: Calibration
    gain: float
    noise_irms: float
    transfer: Transfer
    residuals: list  # per point: dict(true_amps, raw_irms, calibrated, error_pct)
    table_error_pct: float  # worst deviation of the sent table from the exact curve

    def to_dict(self):
        return {
            "method": "gain + noise in quadrature + ADC top end from the top point's "
                      "waveform (upper half-cycles against the mirrored lower ones)",
            "calibration": self.calibration.to_dict(), "gain": self.gain,
            "noise_irms": self.noise_irms, "transfer": asdict(self.transfer),
            "residuals": self.residuals, "table_error_pct": self.table_error_pct,
        }


def short_number(x):
    """x with 5 significant digits but at most 4 decimals (0.1 mA): short console lines."""
    v = float(f"{x:.5g}")
    v = round(v, 4)
    return int(v) if v == int(v) and abs(v) < 1e6 else v


def apply_line(channel, cal):
    """The console line that sends `cal` to channel `channel` (0-based)."""
    d = cal.to_dict()
    body = {"gain": short_number(d["gain"])}
    if d["table"]:
        body["table"] = [[short_number(x), short_number(y)] for x, y in d["table"]]
    for key in ("offset", "phase_deg", "noise_floor"):
        if d[key]:
            body[key] = short_number(d[key])
    return f"cal apply {channel} " + json.dumps(body, separators=(",", ":"))


def _candidates(a, m_total, noise, a_top, onset):
    """Candidate knots (measured, linear): the noise region geometrically, the bend densely."""
    hi = min(TOP_EXTENT * a_top, float(a[-1]))
    want = [0.0]
    if noise > 0:
        want += list(np.geomspace(0.3 * noise, max(0.05 * a_top, 0.6 * noise), 24))
    if onset is not None and onset < hi:
        want += list(np.linspace(0.05 * a_top, onset, 6)) + list(np.linspace(onset, hi, 40))
    else:
        want += list(np.linspace(0.05 * a_top, hi, 6))
    want = np.unique(np.clip(want, 0.0, hi))
    ms = np.interp(want, a, m_total)
    keep = np.concatenate(([True], np.diff(ms) > 1e-5 * max(ms[-1], 1e-9)))
    return ms[keep], want[keep]


def _optimal_table(cm, ca, m_eval, a_eval, floor, fits):
    """The fewest knots (from the candidates, ends included) within TABLE_TOLERANCE that
    fit the line, else the most accurate table that fits (min-max error, dynamic
    programming over the candidates)."""
    n = len(cm)
    w = np.maximum(a_eval, floor)
    err = np.full((n, n), np.inf)
    pos = np.searchsorted(m_eval, cm)
    for i in range(n - 1):
        for j in range(i + 1, n):
            lo, hi_ = pos[i], pos[j]
            if hi_ <= lo:
                err[i, j] = 0.0
                continue
            mm = m_eval[lo:hi_]
            y = ca[i] + (mm - cm[i]) * ((ca[j] - ca[i]) / (cm[j] - cm[i]))
            err[i, j] = float(np.max(np.abs(y - a_eval[lo:hi_]) / w[lo:hi_]))
    best = np.full(n, np.inf)  # best[j]: min max error of a table from knot 0 to j
    best[0] = 0.0
    parents = []
    chosen = None
    for _k in range(2, n + 1):
        cand = np.maximum(best[:, None], err)  # [i, j]
        parent = np.argmin(cand, axis=0)
        best = cand[parent, np.arange(n)]
        parents.append(parent)
        path = [n - 1]
        for par in reversed(parents):
            path.append(int(par[path[-1]]))
        path = path[::-1]
        knots = [(float(cm[i]), float(ca[i])) for i in path]
        if not fits(knots):
            break
        chosen = (knots, float(best[n - 1]))
        if best[n - 1] <= TABLE_TOLERANCE:
            break
    if chosen is None:
        raise CalibrateError("the calibration table does not fit the console's line")
    return chosen


def fit_points(points, zero=None, amps_per_count=None, knee=None, phase_deg=0.0,
               channel=0, max_line=MAX_LINE, reserve=0):
    """The Fit for reference `points` (and the `zero` step, if done) - pure, no device."""
    if not points:
        raise CalibrateError("no reference points to fit", "measure at least one reference "
                             "load (`point`), better three: ~10 %, ~50 % and ~100 % of rating")
    noise = zero.raw_irms if zero is not None else 0.0
    top = max(points, key=lambda p: (p.max_code, p.raw_irms))
    scale = amps_per_count
    if scale is None and zero is not None and zero.rms_codes > 0:
        scale = zero.raw_irms / zero.rms_codes
    transfer = Transfer(0.0, 0.0)
    if top.codes and scale and knee is not None:
        if min(top.codes) < LOW_CODE:
            raise CalibrateError("the top point's waveform reaches the bottom of the ADC",
                                 "use a smaller top load; the mirror of the lower half "
                                 "is needed to measure the top end")
        transfer = measure_transfer(top.codes, knee, top.segments)
    if not transfer.linear:
        a, m = top_end_curve(top.codes, transfer, scale)
    else:
        a = m = np.linspace(0.0, max(p.raw_irms for p in points) * TOP_EXTENT, 64)
    m_total = np.sqrt(m * m + noise * noise)

    def linear_of(meas):  # measured -> linear Irms (before gain)
        return np.interp(meas, m_total, a, left=0.0)

    lin = np.array([float(linear_of(p.raw_irms)) for p in points])
    true = np.array([p.true_amps for p in points])
    q = lin / true
    gain = float(np.sum(q) / np.sum(q * q))  # least squares in relative error
    if not 0.01 < gain <= 100:
        raise CalibrateError(f"the fitted gain {gain:g} is absurd", "check the reference values")
    a_top = float(linear_of(top.raw_irms))
    onset = None
    if not transfer.linear:
        bend = np.nonzero(np.abs(m[1:] / a[1:] - 1) > 2e-5)[0]
        onset = float(a[1:][bend[0] - 1]) if bend.size and bend[0] > 0 else None
    floor = short_number(NOISE_FLOOR_FACTOR * noise * gain)

    def make(knots):
        table = [[short_number(x), short_number(y)] for x, y in knots]
        return Calibration(gain=short_number(gain), table=table, phase_deg=short_number(phase_deg),
                           noise_floor=floor)

    def fits(knots):
        try:
            return len(apply_line(channel, make(knots)).encode()) <= max_line - reserve
        except CalibrationError:  # knots rounded onto each other
            return False

    table_err = 0.0
    if noise > 0 or onset is not None:
        cm, ca = _candidates(a, m_total, noise, a_top, onset)
        m_eval = np.linspace(cm[0], cm[-1], 1500)[1:]
        if noise > 0:  # just above the noise the curve is vertical: judge from 1.2 n on
            m_eval = m_eval[m_eval >= 1.2 * noise]
        a_eval = np.interp(m_eval, m_total, a)
        knots, table_err = _optimal_table(cm, ca, m_eval, a_eval,
                                          max(3 * noise, 0.1 * a_top), fits)
        cal = make(knots)
    else:
        cal = Calibration(gain=short_number(gain), phase_deg=short_number(phase_deg))
    residuals = []
    for p in points:
        got = cal.apply(p.raw_irms)
        residuals.append({"true_amps": p.true_amps, "raw_irms": p.raw_irms,
                          "calibrated": round(got, 6),
                          "error_pct": round(100 * (got / p.true_amps - 1), 4)})
    return Fit(cal, gain, noise, transfer, residuals, round(100 * table_err, 4))
