# SPDX-License-Identifier: MIT
"""Shared hypothesis strategies (public hypothesis APIs only) and the synthetic mains signals
they describe.

    codes()                    one 12-bit ADC code, biased towards 0 / 4095 / mid-scale
    frame_buffers(max_nch, max_frames)   (nch, frames: np.ndarray[uint16] (n, nch))
    mains_frequency()          49.5 .. 60.5 Hz
    sample_rates()             frames per second the sampler may run at
    waveforms(...)             Waveform: parameters of a multi-cycle current (+ voltage) signal
    Waveform.frames()          the quantized interleaved frames (np.uint16, shape (n, nch))
"""

import math
from dataclasses import dataclass, field

import numpy as np
from hypothesis import strategies as st

FULL_SCALE = 4095


def codes():
    return st.one_of(
        st.sampled_from([0, 1, 2047, 2048, 4094, 4095]),
        st.integers(min_value=0, max_value=FULL_SCALE),
    )


@st.composite
def frame_buffers(draw, max_nch=4, max_frames=300, min_frames=1):
    """(nch, frames) with frames an (n, nch) uint16 array of codes, worst cases included."""
    nch = draw(st.integers(1, max_nch))
    n = draw(st.integers(min_frames, max_frames))
    kind = draw(st.sampled_from(["random", "full", "zero", "extremes", "const"]))
    if kind == "full":
        frames = np.full((n, nch), FULL_SCALE, dtype=np.uint16)
    elif kind == "zero":
        frames = np.zeros((n, nch), dtype=np.uint16)
    elif kind == "const":
        frames = np.full((n, nch), draw(codes()), dtype=np.uint16)
    else:
        seed = draw(st.integers(0, 2**32 - 1))
        rng = np.random.default_rng(seed)
        if kind == "extremes":
            frames = rng.choice(np.array([0, FULL_SCALE], dtype=np.uint16), size=(n, nch))
        else:
            frames = rng.integers(0, FULL_SCALE + 1, size=(n, nch)).astype(np.uint16)
    return nch, frames


def mains_frequency():
    return st.floats(min_value=49.5, max_value=60.5, allow_nan=False, allow_infinity=False)


def sample_rates():
    return st.floats(min_value=1000.0, max_value=8000.0, allow_nan=False, allow_infinity=False)


@dataclass
class Waveform:
    """Current (and optionally voltage) in ADC codes, sampled simultaneously per frame.

    current(t) = bias_i + amp_i * sum_h(rel_h * sin(h*w*t + phase_h)) - phi rotates the
    fundamental (lag positive); voltage(t) = bias_v + amp_v * sin(w*t). Codes are rounded and
    clipped to 0..4095 (so large amplitudes give full-scale clipping)."""

    frequency: float
    sample_rate: float
    cycles: int
    amp_i: float
    bias_i: float
    harmonics: list = field(default_factory=list)  # [(order, relative amplitude, phase rad)]
    lag_rad: float = 0.0
    amp_v: float | None = None
    bias_v: float = 2048.0
    nch: int = 1
    ich: int = 0
    vch: int | None = None
    start_phase: float = 0.0

    @property
    def nframes(self):
        return max(1, int(self.cycles * self.sample_rate / self.frequency + 0.5))

    def times(self):
        return np.arange(self.nframes) / self.sample_rate

    def current_codes_exact(self):
        w = 2 * math.pi * self.frequency
        t = self.times()
        x = np.sin(w * t + self.start_phase - self.lag_rad)
        for order, rel, ph in self.harmonics:
            x = x + rel * np.sin(order * (w * t + self.start_phase) + ph)
        return self.bias_i + self.amp_i * x

    def voltage_codes_exact(self):
        w = 2 * math.pi * self.frequency
        return self.bias_v + self.amp_v * np.sin(w * self.times() + self.start_phase)

    def frames(self):
        out = np.zeros((self.nframes, self.nch), dtype=np.uint16)
        q = lambda x: np.clip(np.rint(x), 0, FULL_SCALE).astype(np.uint16)  # noqa: E731
        out[:, self.ich] = q(self.current_codes_exact())
        if self.vch is not None:
            out[:, self.vch] = q(self.voltage_codes_exact())
        return out


@st.composite
def waveforms(draw, voltage=None, clipping=True, max_cycles=10, min_cycles=1):
    """A Waveform: 49.5..60.5 Hz, 1..max_cycles cycles, harmonics, DC, optional clipping.

    voltage=None draws whether a voltage column exists; True/False forces it."""
    f = draw(mains_frequency())
    fs = draw(sample_rates())
    cycles = draw(st.integers(min_cycles, max_cycles))
    top = 2600.0 if clipping else 1500.0
    amp = draw(st.one_of(st.just(0.0), st.floats(0.0, top)))
    bias = draw(st.floats(1500.0, 2600.0))
    nh = draw(st.integers(0, 3))
    harmonics = [
        (draw(st.sampled_from([2, 3, 5, 7, 9])), draw(st.floats(0.0, 0.4)),
         draw(st.floats(0.0, 2 * math.pi)))
        for _ in range(nh)
    ]
    has_v = draw(st.booleans()) if voltage is None else voltage
    nch = draw(st.integers(2 if has_v else 1, 3))
    ich = draw(st.integers(0, nch - 1))
    vch = None
    if has_v:
        vch = draw(st.sampled_from([c for c in range(nch) if c != ich]))
    return Waveform(
        frequency=f, sample_rate=fs, cycles=cycles, amp_i=amp, bias_i=bias,
        harmonics=harmonics, lag_rad=draw(st.floats(-1.2, 1.2)),
        amp_v=draw(st.floats(200.0, 1900.0)) if has_v else None,
        bias_v=draw(st.floats(1900.0, 2200.0)), nch=nch, ich=ich, vch=vch,
        start_phase=draw(st.floats(0.0, 2 * math.pi)),
    )
