# SPDX-License-Identifier: MIT
"""The simulated sensor chain as a stream of ADC codes plus the physical truth.

    s = Stream([Channel(Frontend("sct013-030", seed=1), Profile.constant(Resistive(watts=2000)))],
               mains=Mains(seed=1), voltage=Frontend("zmpt101b", seed=2), sample_rate=4000, seed=7)
    f = s.read(k0, n)          # samples k0..k0+n-1 at t_k = k / sample_rate
    f.codes                    # (n, ncols) uint16: current channels, then the voltage channel
    f.truth.irms / .p / .s / .pf   (per current channel), f.truth.vrms, f.truth.freq
    s.truth(t1, t2)            # the same for any time range, sampled or not
    s.energy_wh(ch, t1, t2)    # float64 exact integral of p(t);  s.energy_mwh(...) -> int
    s.set_load(ch, load, at_time)   # from at_time on only `load` on that channel
    s.add_load(ch, load, at_time, until=inf)   # e.g. switch on the reference heater

Codes are a pure function of (configuration, seed, schedule, k): reading [0, 2n) or [0, n) then
[n, 2n) gives identical arrays, and reads may skip ahead. Changing the schedule before the end of
what has already been read is refused (it would rewrite delivered samples).
"""

import math
from dataclasses import dataclass

import numpy as np

from ctmeter.model import periodic
from ctmeter.model.frontend import Frontend, noise_blocks
from ctmeter.model.loads import Load, Profile
from ctmeter.model.mains import Mains


class StreamError(ValueError):
    pass


@dataclass
class Channel:
    frontend: Frontend
    profile: Profile

    def __post_init__(self):
        if isinstance(self.profile, Load):
            self.profile = Profile.constant(self.profile)
        elif self.profile is None:
            self.profile = Profile()
        if not isinstance(self.frontend, Frontend):
            raise StreamError("Channel.frontend must be a Frontend")
        if self.frontend.measures != "current":
            raise StreamError(f"{self.frontend.sensor} measures voltage: pass it as voltage=")


@dataclass
class Truth:
    t1: float
    t2: float
    irms: np.ndarray  # A rms per current channel
    p: np.ndarray  # W (mean real power)
    s: np.ndarray  # VA (vrms * irms)
    pf: np.ndarray
    vrms: float
    freq: float  # mean frequency over the range (Hz)
    energy_wh: np.ndarray  # per channel over [t1, t2)


@dataclass
class Frames:
    k0: int
    n: int
    sample_rate: float
    codes: np.ndarray  # (n, ncols) uint16
    truth: Truth | None

    @property
    def t0(self):
        return self.k0 / self.sample_rate

    @property
    def times(self):
        """Sample instants (s) of the rows of `codes` (before any channel skew)."""
        return np.arange(self.k0, self.k0 + self.n) / self.sample_rate


class Stream:
    def __init__(self, channels, mains=None, voltage=None, sample_rate=4000.0, seed=0,
                 channel_skew_s=0.0):
        chans = [c if isinstance(c, Channel) else Channel(*c) for c in channels]
        if not 1 <= len(chans) <= 4:
            raise StreamError("a stream has 1 to 4 current channels")
        self.channels = chans
        self.mains = mains if mains is not None else Mains()
        if isinstance(voltage, str):
            voltage = Frontend(voltage, seed=seed + 1000)
        if voltage is not None and voltage.measures != "voltage":
            raise StreamError(f"{voltage.sensor} measures current, not voltage")
        self.voltage = voltage
        if not sample_rate > 0:
            raise StreamError("sample_rate must be > 0")
        self.sample_rate = float(sample_rate)
        self.seed = int(seed)
        self.channel_skew_s = float(channel_skew_s)  # sequential sampling: column j at +j*skew
        self.horizon = -math.inf  # end time of everything delivered so far
        self._resolved = {}
        self._terms = {}
        self._cum = {}
        self._vs = periodic.table(self.mains.shape(periodic.U))
        self._v2 = periodic.Term(self._vs, self._vs)

    @property
    def ncols(self):
        return len(self.channels) + (1 if self.voltage is not None else 0)

    # --- schedule changes from outside ---
    def _check_time(self, at_time):
        if at_time < self.horizon - 1e-12:
            raise StreamError(f"cannot change the load at t={at_time:.6f} s: samples up to "
                              f"{self.horizon:.6f} s have already been delivered")

    def _channel(self, channel):
        if not isinstance(channel, int) or not 0 <= channel < len(self.channels):
            raise StreamError(f"no current channel {channel!r} (0..{len(self.channels) - 1})")
        return self.channels[channel]

    def set_load(self, channel, load, at_time):
        """From at_time (s) on, `load` alone (None = nothing) is on `channel`."""
        ch = self._channel(channel)
        self._check_time(at_time)
        ch.profile.switch(load, at_time)

    def add_load(self, channel, load, at_time, until=math.inf):
        """Switch `load` on at at_time (and off at `until`) in addition to what is on."""
        ch = self._channel(channel)
        self._check_time(at_time)
        ch.profile.add(load, at_time, until)

    def describe(self):
        """Configuration for diagnostics: mains, each channel's unit and load count."""
        return {
            "sample_rate": self.sample_rate, "seed": self.seed, "mains": repr(self.mains),
            "channels": [dict(c.frontend.describe(), segments=len(c.profile))
                         for c in self.channels],
            "voltage": self.voltage.describe() if self.voltage is not None else None,
        }

    # --- physics ---
    def _res(self, load):
        entry = self._resolved.get(id(load))
        if entry is None or entry[0] is not load:
            entry = (load, load.resolve(self.mains))
            self._resolved[id(load)] = entry
        return entry[1]

    def _pair(self, a, b):
        key = (id(a), id(b))
        entry = self._terms.get(key)
        if entry is None or entry[0] is not a or entry[1] is not b:
            entry = (a, b, periodic.Term(self._res(a).table, self._res(b).table))
            self._terms[key] = entry
        return entry[2]

    def current(self, channel, t, lead_cycles=0.0, _uv=None):
        """Physical primary current (A) of a channel at times t (the sensor's phase lead is
        applied by sampling the mains phase `lead_cycles` later)."""
        t = np.asarray(t, dtype=np.float64)
        out = np.zeros(t.shape)
        if t.size == 0:
            return out
        cyc, vsc = _uv if _uv is not None else (self.mains.cycles(t), self.mains.vscale(t))
        u = cyc + lead_cycles
        lo, hi = float(t.min()), float(np.nextafter(t.max(), math.inf))
        for seg in _segments_between(self.channels[channel].profile, lo, hi):
            r = self._res(seg.load)
            inside = seg.start <= lo and seg.stop >= hi
            if inside:
                out += r.envelope(t, seg.start, vsc) * periodic.lookup(r.table, u)
            else:
                m = (t >= seg.start) & (t < seg.stop)
                out[m] += r.envelope(t[m], seg.start, vsc[m]) * periodic.lookup(r.table, u[m])
        return out

    def mains_voltage(self, t, lead_cycles=0.0, _uv=None):
        """Physical mains voltage (V) at times t (phase lead as for current())."""
        t = np.asarray(t, dtype=np.float64)
        cyc, vsc = _uv if _uv is not None else (self.mains.cycles(t), self.mains.vscale(t))
        return self.mains.amp_nominal * vsc * periodic.lookup(self._vs, cyc + lead_cycles)

    # --- samples ---
    def read(self, k0, n, sample_rate=None, truth=True):
        """Codes for samples [k0, k0+n) and the truth over [k0/fs, (k0+n)/fs)
        (truth=False skips the truth: frames.truth is None)."""
        k0, n = int(k0), int(n)
        if k0 < 0 or n <= 0:
            raise StreamError("read needs k0 >= 0 and n > 0")
        fs = self.sample_rate if sample_rate is None else float(sample_rate)
        k = np.arange(k0, k0 + n, dtype=np.float64)
        t = k / fs
        codes = np.empty((n, self.ncols), dtype=np.uint16)
        shared = None if self.channel_skew_s else (self.mains.cycles(t), self.mains.vscale(t))

        def times(col):
            if shared is not None:
                return t, shared
            tc = t + col * self.channel_skew_s
            return tc, (self.mains.cycles(tc), self.mains.vscale(tc))

        for col, ch in enumerate(self.channels):
            tc, uv = times(col)
            x = self.current(col, tc, ch.frontend.phase_lead_deg / 360.0, uv)
            codes[:, col] = ch.frontend.codes(x, noise_blocks(self.seed, col, k0, n))
        if self.voltage is not None:
            col = len(self.channels)
            tc, uv = times(col)
            x = self.mains_voltage(tc, self.voltage.phase_lead_deg / 360.0, uv)
            codes[:, col] = self.voltage.codes(x, noise_blocks(self.seed, col, k0, n))
        t1, t2 = k0 / fs, (k0 + n) / fs
        self.horizon = max(self.horizon, t2)
        return Frames(k0, n, fs, codes, self.truth(t1, t2) if truth else None)

    # --- truth ---
    def _energy_j(self, channel, a, b):
        """Energy (J) of one channel over [a, b) by pieces of constant load set."""
        total = 0.0
        amp = self.mains.amp_nominal
        for pa, pb, segs in self.channels[channel].profile.between(a, b):
            pc = _Piece(self.mains, pa, pb)
            for seg in segs:
                r = self._res(seg.load)
                en = amp * pc.vs_n * r.envelope(pc.tn, seg.start, pc.vs_n)
                ep = amp * pc.vs_p * r.envelope(pc.pts, seg.start, pc.vs_p)
                total += pc.integral(en, ep, r.p_term)
        return total

    def _i2(self, channel, a, b):
        """Integral of i(t)^2 over [a, b): all pairs of simultaneously active loads."""
        total = 0.0
        for pa, pb, segs in self.channels[channel].profile.between(a, b):
            pc = _Piece(self.mains, pa, pb)
            envs = []
            for seg in segs:
                r = self._res(seg.load)
                envs.append((r.envelope(pc.tn, seg.start, pc.vs_n),
                             r.envelope(pc.pts, seg.start, pc.vs_p)))
            for i, si in enumerate(segs):
                for j in range(i, len(segs)):
                    mult = 1.0 if i == j else 2.0
                    term = self._pair(si.load, segs[j].load)
                    total += mult * pc.integral(envs[i][0] * envs[j][0],
                                                envs[i][1] * envs[j][1], term)
        return total

    def truth(self, t1, t2):
        """True rms current, mean power, apparent power, pf per channel over [t1, t2)."""
        t1, t2 = float(t1), float(t2)
        if not t2 > t1:
            raise StreamError("truth needs t2 > t1")
        span = t2 - t1
        amp = self.mains.amp_nominal
        pc = _Piece(self.mains, t1, t2)
        v2 = pc.integral((amp * pc.vs_n) ** 2, (amp * pc.vs_p) ** 2, self._v2)
        vrms = math.sqrt(max(v2, 0.0) / span)
        nch = len(self.channels)
        irms, p, energy = np.zeros(nch), np.zeros(nch), np.zeros(nch)
        for ch in range(nch):
            irms[ch] = math.sqrt(max(self._i2(ch, t1, t2), 0.0) / span)
            energy[ch] = self._energy_j(ch, t1, t2)
            p[ch] = energy[ch] / span
        s = vrms * irms
        pf = np.divide(p, s, out=np.zeros(nch), where=s > 0)
        freq = float((self.mains.cycles(t2) - self.mains.cycles(t1)) / span)
        return Truth(t1, t2, irms, p, s, pf, vrms, freq, energy / 3600.0)

    def energy_wh(self, channel, t1, t2):
        """Exact energy (Wh, float64) drawn on a channel over [t1, t2), sampled or not."""
        if t2 < t1:
            raise StreamError("energy needs t1 <= t2")
        return self._energy_j(channel, float(t1), float(t2)) / 3600.0

    def energy_total_wh(self, channel, t):
        """Energy (Wh) from t=0 to t, with a cached running total over whole load pieces."""
        profile = self.channels[channel].profile
        key = channel
        cache = self._cum.get(key)
        if cache is None or cache[0] != profile.version or cache[1] is not profile:
            starts, stops, _ = profile.pieces()
            cum, acc = [0.0], 0.0
            for a, b in zip(starts, stops, strict=True):
                if math.isfinite(b) and b > 0:
                    acc += self._energy_j(channel, max(a, 0.0), b)
                cum.append(acc)
            cache = (profile.version, profile, starts, stops, cum)
            self._cum[key] = cache
        _, _, starts, stops, cum = cache
        t = float(t)
        i = np.searchsorted(stops, t, side="right")  # pieces fully before t
        total = cum[i]
        if i < len(starts) and starts[i] < t:
            total += self._energy_j(channel, max(starts[i], 0.0), t)
        return total / 3600.0

    def energy_mwh(self, channel, t1, t2):
        """Integer mWh like a meter's counter: floor of the running total at t2 minus at t1
        (so consecutive ranges add up exactly)."""
        e2 = math.floor(self.energy_total_wh(channel, t2) * 1000.0)
        e1 = math.floor(self.energy_total_wh(channel, t1) * 1000.0)
        return int(e2 - e1)


class _Piece:
    """Quadrature nodes and end points of one time piece, shared by all its load terms.

    integral_a^b env(t) * (f g)(phase(t)) dt = c * integral(env) + [env R / f]
    - [env' R2 / f^2] + ...  (two integrations by parts, see periodic.py; the remainder is
    of order env'' / omega^3, far below 1e-6 relative for every envelope here)."""

    def __init__(self, mains, a, b):
        self.tn, self.w = periodic.gl_nodes(a, b)
        self.vs_n = mains.vscale(self.tn)
        self.d = min(1e-6, 0.25 * (b - a))
        self.pts = np.array([a, b, a + self.d, b - self.d])
        self.vs_p = mains.vscale(self.pts)
        self.u = mains.cycles(self.pts[:2])
        self.f = mains.freq(self.pts[:2])

    def integral(self, env_nodes, env_pts, term):
        smooth = term.c * float(np.dot(self.w, env_nodes))
        e, f = env_pts, self.f
        r = term.r_at(self.u)
        r2 = periodic.lookup(term.R2, self.u)
        first = e[1] * r[1] / f[1] - e[0] * r[0] / f[0]
        if self.d > 0:
            de0, de1 = (e[2] - e[0]) / self.d, (e[1] - e[3]) / self.d
            first -= de1 * r2[1] / f[1] ** 2 - de0 * r2[0] / f[0] ** 2
        return smooth + float(first)


def _segments_between(profile, t1, t2):
    seen = []
    for _, _, segs in profile.between(t1, t2):
        for s in segs:
            if not any(s is x for x in seen):
                seen.append(s)
    return seen
