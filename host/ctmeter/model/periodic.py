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
    """Mean `c` and zero-mean antiderivative `R` (table, in cycles) of the product f * g."""

    __slots__ = ("c", "R")

    def __init__(self, f, g):
        a0, a1, b0, b1 = f[:-1], f[1:], g[:-1], g[1:]
        cell = (2 * a0 * b0 + a0 * b1 + a1 * b0 + 2 * a1 * b1) / (6.0 * N)
        self.c = float(cell.sum())
        r = np.concatenate(([0.0], np.cumsum(cell - self.c / N)))
        r[-1] = 0.0  # exact periodicity (the cumulative sum ends at rounding noise)
        r -= 0.5 * (r[:-1] + r[1:]).mean()
        self.R = r


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
