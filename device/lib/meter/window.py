# SPDX-License-Identifier: MIT
"""The per-window formulas and result record used by meter.metering (import from there).

Kept apart from the accumulator so each module compiles within a 64 KB MicroPython heap.
"""

import math

from meter.errors import MeterError


class ChannelResult:
    def __init__(self, channel, is_voltage):
        self.channel = channel
        self.is_voltage = is_voltage
        self.irms = 0.0
        self.voltage = 0.0
        self.power = 0.0
        self.apparent = 0.0
        self.pf = 0.0
        self.frequency = 0.0
        self.frames = 0
        self.duration = 0.0
        self.min = 0
        self.max = 0
        self.mean = 0.0
        self.clipped = 0

    def as_dict(self):
        return {
            "channel": self.channel, "is_voltage": self.is_voltage, "irms": self.irms,
            "voltage": self.voltage, "power": self.power, "apparent": self.apparent,
            "pf": self.pf, "frequency": self.frequency, "frames": self.frames,
            "duration": self.duration, "min": self.min, "max": self.max, "mean": self.mean,
            "clipped": self.clipped,
        }

    def __repr__(self):
        return "ChannelResult(%r)" % (self.as_dict(),)


def window_frames(frequency, sample_rate, cycles=10):
    """Frames covering `cycles` whole mains cycles at `frequency` (at least 1)."""
    if not frequency > 0.0 or not sample_rate > 0.0 or cycles < 1:
        raise MeterError("window needs frequency > 0, sample rate > 0 and cycles >= 1")
    n = int(cycles * sample_rate / frequency + 0.5)
    return n if n > 0 else 1


def variance_num(n, s, q):
    """N*Sum(x^2) - Sum(x)^2 (exact int, >= 0): N^2 times the variance."""
    return n * q - s * s


def rms_counts(n, s, q):
    """RMS of x about its mean, in codes, from exact integer sums."""
    v = variance_num(n, s, q)
    if v <= 0:
        return 0.0
    return math.sqrt(v) / n


def phase_coefficients(frequency, sample_rate, phase_deg):
    """(a, b): a*C0 + b*C1 rotates the power by -phase_deg (see the module docstring)."""
    if phase_deg == 0.0:
        return 1.0, 0.0
    t = 2.0 * math.pi * frequency / sample_rate
    st = math.sin(t)
    if not st > 1e-6:
        raise MeterError("sample rate too low/high for phase correction at %g Hz" % frequency)
    p = math.radians(phase_deg)
    return math.sin(t + p) / st, -math.sin(p) / st


def corrected(cov, n, r, edge_products, edge_x, edge_y):
    """Covariance over whole cycles from the one over n frames (n + r frames make whole
    cycles, |r| < 1): the sum over the missing (or extra) r frames is r times the value at the
    window's wrap-around edge, estimated as the mean of the first and last frames
    (deviations from the window mean). First order in r; the sums themselves stay exact."""
    e = n + r
    mx = r * edge_x / (2.0 * e)
    my = r * edge_y / (2.0 * e)
    return (n * cov + r * edge_products / 2.0) / e - mx * my
