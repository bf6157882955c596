# SPDX-License-Identifier: MIT
"""The mains supply: frequency with slow drift, rms voltage with slow wander, harmonics.

    m = Mains(nominal_v=230, freq_hz=50, seed=1)        # drifting, distorted grid
    m = Mains.clean(230, 50)                             # pure sine, fixed 50.000 Hz
    m = Mains.region("us", seed=3)                       # 120 V / 60 Hz, voltage drawn +-10 %
    m.cycles(t)  -> float64 mains cycles since t=0 (continuous phase / 2 pi)
    m.freq(t)    -> instantaneous frequency (Hz);  m.vscale(t) -> rms / nominal rms
    m.voltage(t) -> instantaneous volts

Everything is a closed-form function of absolute time (sums of slow sinusoids and their exact
integrals), so any time can be evaluated in any order and the phase is continuous everywhere.
The voltage is  v(t) = amp_nominal * vscale(t) * shape(frac(cycles(t)))  where `shape` has a
unit fundamental; loads are built on the same shape, which is what keeps the truth exact.
"""

import math

import numpy as np

MAX_FREQ_DEVIATION_HZ = 0.5
REGIONS = {"eu": (230.0, 50.0), "us": (120.0, 60.0)}
# Typical low-voltage distribution harmonics (fraction of fundamental, phase in degrees of
# sin(k x + phase)): a flat-topped wave as rectifier loads make it, THD about 4 %.
DEFAULT_HARMONICS = ((3, 0.025, 0.0), (5, 0.03, 180.0), (7, 0.012, 0.0))


class MainsError(ValueError):
    pass


class Mains:
    def __init__(self, nominal_v=230.0, freq_hz=50.0, vrms=None, freq_offset_hz=0.0,
                 freq_drift_hz=0.1, voltage_wander=0.01, harmonics=DEFAULT_HARMONICS, seed=0):
        if freq_hz not in (50.0, 60.0, 50, 60):
            raise MainsError(f"mains frequency must be 50 or 60 Hz, got {freq_hz!r}")
        if abs(freq_offset_hz) + abs(freq_drift_hz) > MAX_FREQ_DEVIATION_HZ + 1e-12:
            raise MainsError("frequency offset + drift must stay within +-0.5 Hz")
        if not 0 <= voltage_wander < 0.2:
            raise MainsError("voltage_wander is a fraction below 0.2")
        self.nominal_v = float(nominal_v)
        self.vrms = float(nominal_v if vrms is None else vrms)
        if not 0.85 * self.nominal_v <= self.vrms <= 1.15 * self.nominal_v:
            raise MainsError("vrms must be within nominal +-15 %")
        self.freq_nominal = float(freq_hz)
        self.freq_base = float(freq_hz) + float(freq_offset_hz)
        self.seed = seed
        self.harmonics = tuple((int(k), float(a), float(ph)) for k, a, ph in harmonics)
        rng = np.random.default_rng([int(seed), 0x4D41494E])
        # frequency drift: three slow sinusoids (1-30 min), amplitudes summing to freq_drift_hz
        w = rng.dirichlet(np.ones(3))
        self._f_amp = float(freq_drift_hz) * w
        self._f_per = np.exp(rng.uniform(math.log(60.0), math.log(1800.0), 3))
        self._f_ph = rng.uniform(0, 2 * math.pi, 3)
        # voltage wander: three slow sinusoids (5 min - 6 h), amplitudes summing to the wander
        w = rng.dirichlet(np.ones(3))
        self._v_amp = float(voltage_wander) * w
        self._v_per = np.exp(rng.uniform(math.log(300.0), math.log(21600.0), 3))
        self._v_ph = rng.uniform(0, 2 * math.pi, 3)
        self.phase0 = float(rng.uniform(0, 1))  # cycles at t=0
        hsum = sum(a * a for _, a, _ in self.harmonics)
        # fundamental amplitude at nominal voltage so that the *total* rms is nominal_v
        self.amp_nominal = math.sqrt(2.0) * self.nominal_v / math.sqrt(1.0 + hsum)
        self.vscale_base = self.vrms / self.nominal_v

    @classmethod
    def clean(cls, nominal_v=230.0, freq_hz=50.0, vrms=None):
        """A pure sine at exactly freq_hz and constant voltage (for physics tests)."""
        return cls(nominal_v, freq_hz, vrms=vrms, freq_drift_hz=0.0, voltage_wander=0.0,
                   harmonics=())

    @classmethod
    def region(cls, name="eu", seed=0, **kw):
        """A grid of region "eu" (230 V/50 Hz) or "us" (120 V/60 Hz), its rms voltage drawn
        within nominal +-10 % and its frequency offset within +-0.2 Hz from the seed."""
        if name not in REGIONS:
            raise MainsError(f"unknown region {name!r} (known: {', '.join(REGIONS)})")
        v, f = REGIONS[name]
        rng = np.random.default_rng([int(seed), 0x52454749])
        kw.setdefault("vrms", v * (1 + rng.uniform(-0.1, 0.1)))
        kw.setdefault("freq_offset_hz", float(rng.uniform(-0.2, 0.2)))
        kw.setdefault("freq_drift_hz", 0.25)
        return cls(v, f, seed=seed, **kw)

    # --- closed-form functions of absolute time (seconds, float64) ---
    def freq(self, t):
        t = np.asarray(t, dtype=np.float64)
        f = np.full(t.shape, self.freq_base)
        for a, p, ph in zip(self._f_amp, self._f_per, self._f_ph, strict=True):
            if a:
                f += a * np.sin(2 * math.pi * t / p + ph)
        return f

    def cycles(self, t):
        """Mains cycles elapsed at t (the exact integral of freq), plus the start phase."""
        t = np.asarray(t, dtype=np.float64)
        c = self.freq_base * t + self.phase0
        for a, p, ph in zip(self._f_amp, self._f_per, self._f_ph, strict=True):
            if a:
                c += a * p / (2 * math.pi) * (math.cos(ph) - np.cos(2 * math.pi * t / p + ph))
        return c

    def vscale(self, t):
        """Instantaneous rms voltage / nominal voltage (slow wander around vrms/nominal)."""
        t = np.asarray(t, dtype=np.float64)
        s = np.full(t.shape, self.vscale_base)
        for a, p, ph in zip(self._v_amp, self._v_per, self._v_ph, strict=True):
            if a:
                s += self.vscale_base * a * np.sin(2 * math.pi * t / p + ph)
        return s

    def shape(self, u):
        """Voltage waveform with unit fundamental as a function of cycle fraction u."""
        u = np.asarray(u, dtype=np.float64)
        x = 2 * math.pi * u
        v = np.sin(x)
        for k, a, ph in self.harmonics:
            v += a * np.sin(k * x + math.radians(ph))
        return v

    def voltage(self, t):
        t = np.asarray(t, dtype=np.float64)
        c = self.cycles(t)
        return self.amp_nominal * self.vscale(t) * self.shape(c - np.floor(c))

    def __repr__(self):
        return (f"Mains(nominal_v={self.nominal_v}, vrms={self.vrms:.2f}, "
                f"freq={self.freq_base:.3f} Hz, seed={self.seed})")
