# SPDX-License-Identifier: MIT
"""Periodic waveform tables and the exact integrals the truth is built on.

A load's current (and the mains voltage) is  envelope(t) * table(frac(cycles(t)))  where the
table holds one mains cycle at N nodes, linearly interpolated. For a product of two tables f*g
over one cycle the model keeps its exact mean `c` and the antiderivative `R` of its zero-mean
part (both exact for piecewise-linear tables). Then for any slowly varying envelope e(t):

    integral_a^b e(t) f g (u(t)) dt = c * integral_a^b e dt  +  [e(t) R(u(t)) / freq(t)]_a^b

up to a term of order e / (omega^2 * tau) (tau = the envelope's time constant, >= 0.1 s for
every load here: < 1e-6 relative). The first integral is smooth and done by Gauss-Legendre.
"""

import numpy as np

N = 2048  # nodes per mains cycle (9.8 us at 50 Hz)
U = np.arange(N) / N
_GL_X, _GL_W = np.polynomial.legendre.leggauss(8)
# sub-interval edges after the start of a piece (s): fine at first for inrush transients
_GEOM = np.array([0.0, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0])
_STEP = 30.0


def table(values):
    """One cycle of N samples -> table with the wrap-around node appended (N + 1 values)."""
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (N,):
        raise ValueError(f"a periodic table has {N} samples")
    return np.append(values, values[0])


def lookup(tab, u):
    """Linear interpolation of a table at cycle positions u (any real numbers)."""
    x = (u - np.floor(u)) * N
    i = x.astype(np.int64)
    np.minimum(i, N - 1, out=i)
    w = x - i
    lo = tab[i]
    return lo + (tab[i + 1] - lo) * w


class Term:
    """Mean `c`, zero-mean antiderivative `R` and its antiderivative `R2` (in cycles) of the
    product f * g of two tables. R is evaluated exactly inside a cell (cubic), R2 by table."""

    __slots__ = ("c", "R", "R2", "_a0", "_da", "_b0", "_db")

    def __init__(self, f, g):
        a0, a1, b0, b1 = f[:-1], f[1:], g[:-1], g[1:]
        cell = (2 * a0 * b0 + a0 * b1 + a1 * b0 + 2 * a1 * b1) / (6.0 * N)
        self.c = float(cell.sum())
        r = np.concatenate(([0.0], np.cumsum(cell - self.c / N)))
        r[-1] = 0.0  # exact periodicity (the cumulative sum ends at rounding noise)
        self._a0, self._da, self._b0, self._db = a0, a1 - a0, b0, b1 - b0
        # zero mean of the exact piecewise-cubic R (cell average of `_within` in closed form)
        da, db = self._da, self._db
        avg_within = (a0 * b0 / 2 + (a0 * db + b0 * da) / 6 + da * db / 12 - self.c / 2) / N
        mean = float((r[:-1] + avg_within).mean())
        self.R = r - mean
        r2 = np.concatenate(([0.0], np.cumsum(0.5 * (self.R[:-1] + self.R[1:]) / N)))
        r2 -= np.linspace(0.0, r2[-1], N + 1)  # remove the residual drift: periodic
        r2 -= 0.5 * (r2[:-1] + r2[1:]).mean()
        self.R2 = r2

    def _within(self, i, s):
        """Integral of (f g - c) from node i to i + s (s = fraction of the cell)."""
        a0, da, b0, db = self._a0[i], self._da[i], self._b0[i], self._db[i]
        return (a0 * b0 * s + (a0 * db + b0 * da) * s * s / 2 + da * db * s ** 3 / 3
                - self.c * s) / N

    def r_at(self, u):
        """R at cycle positions u, exact for the piecewise-linear tables."""
        x = (u - np.floor(u)) * N
        i = x.astype(np.int64)
        np.minimum(i, N - 1, out=i)
        return self.R[i] + self._within(i, x - i)


def mean_sq(tab):
    """Exact mean of the square of a piecewise-linear periodic table."""
    a0, a1 = tab[:-1], tab[1:]
    return float(((a0 * a0 + a0 * a1 + a1 * a1) / 3.0).mean())


def edges(a, b):
    """Sub-interval edges for Gauss-Legendre on [a, b]: geometric from a, then every 30 s."""
    span = b - a
    if span <= 0:
        return np.array([a, a])
    geo = _GEOM[_GEOM < span]
    tail = np.arange(_GEOM[-1] + _STEP, span, _STEP) if span > _GEOM[-1] + _STEP else []
    rel = np.concatenate((geo, tail, [span]))
    return a + rel


def gl_nodes(a, b):
    """Nodes and weights of composite Gauss-Legendre on [a, b]."""
    e = edges(a, b)
    lo, hi = e[:-1], e[1:]
    half = 0.5 * (hi - lo)
    mid = 0.5 * (hi + lo)
    t = (mid[:, None] + half[:, None] * _GL_X[None, :]).ravel()
    w = (half[:, None] * _GL_W[None, :]).ravel()
    return t, w
