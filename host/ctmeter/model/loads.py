# SPDX-License-Identifier: MIT
"""Loads (what a circuit draws) and load profiles (which loads are on when).

    Resistive(watts=2000)                 kettle, heater: current follows the voltage
    Inductive(pf=0.7, irms=5)             R-L load; per-harmonic impedance
    SMPS(watts=60, crest_factor=3.2)      capacitor-input rectifier: pulses at the peaks
    Standby(watts=3)                      small SMPS, crest factor 4
    Dimmer(watts=200, firing_angle_deg=90)   leading-edge phase-angle control of a resistive load
    Motor(watts=500, pf=0.75, inrush_ratio=6, inrush_tau_s=0.12)   inrush decaying after switch-on

Size a load with exactly one of `irms=` or `watts=`, both meant at the grid's *nominal* voltage
(e.g. 230 V); a grid running high or low scales them (resistive and inductive loads with the
voltage, SMPS keep their power). Every load is  envelope(t) * shape(mains phase),  which lets the
stream integrate energy exactly (see periodic.py).

    p = Profile().add(Resistive(watts=2000), start=10, stop=190)   # on [10 s, 190 s)
    p.switch(Resistive(irms=5), at=300)       # from 300 s on only this load (None = off)
    varying_profile(days=3, seed=1)           # household-like mix for soak tests
    irms_for_percent("sct013-030", 50) -> 15.0 A;  load_for_percent(...) -> Resistive
"""

import bisect
import functools
import math
from dataclasses import dataclass

import numpy as np

from ctmeter.model import periodic
from ctmeter.model.profiles import load_profile


class LoadError(ValueError):
    pass


class Load:
    """Base class: subclasses define `_shape(u, mains)` and may define `transient(t_rel)`."""

    v_exponent = 1.0  # current ~ (V / V_nominal) ** v_exponent
    has_transient = False

    def __init__(self, irms=None, watts=None, name=None):
        if (irms is None) == (watts is None):
            raise LoadError(f"{type(self).__name__}: give exactly one of irms= or watts=")
        value = irms if irms is not None else watts
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise LoadError(f"{type(self).__name__}: size must be a finite number >= 0")
        self.irms = None if irms is None else float(irms)
        self.watts = None if watts is None else float(watts)
        self.name = name or type(self).__name__.lower()

    def _shape(self, u, mains):
        raise NotImplementedError

    def _sizing_shape(self, u, mains):
        """The shape that irms= / watts= refer to (a dimmer is sized full on)."""
        return self._shape(u, mains)

    def transient(self, t_rel):
        """Multiplier of the steady current, t_rel seconds after switch-on (array)."""
        return np.ones_like(t_rel)

    def resolve(self, mains):
        return ResolvedLoad(self, mains)

    def nominal(self, mains):
        """Steady-state figures at nominal voltage: dict irms, watts, va, pf, crest_factor."""
        return self.resolve(mains).nominal

    def __repr__(self):
        size = f"irms={self.irms}" if self.irms is not None else f"watts={self.watts}"
        return f"{type(self).__name__}({size})"


class ResolvedLoad:
    """A load bound to a grid: current = scale * vscale**e * transient * table(phase)."""

    def __init__(self, load, mains):
        self.load = load
        vs = periodic.table(mains.shape(periodic.U))
        shape = periodic.table(load._shape(periodic.U, mains))
        sizing = periodic.table(load._sizing_shape(periodic.U, mains))
        amp = mains.amp_nominal
        p_unit = amp * periodic.Term(vs, sizing).c
        i_unit = math.sqrt(periodic.mean_sq(sizing))
        if load.irms is not None:
            scale = load.irms / i_unit if i_unit > 0 else 0.0
        else:
            if p_unit <= 0:
                raise LoadError(f"{load!r} draws no real power: size it with irms=")
            scale = load.watts / p_unit
        self.scale = scale
        self.table = shape * scale
        self.p_term = periodic.Term(vs, self.table)
        irms = math.sqrt(periodic.mean_sq(self.table))
        watts = amp * self.p_term.c
        va = irms * mains.nominal_v
        peak = float(np.abs(self.table).max())
        self.nominal = {
            "irms": irms, "watts": watts, "va": va,
            "pf": watts / va if va > 0 else 0.0,
            "crest_factor": peak / irms if irms > 0 else 0.0,
        }

    def envelope(self, t, t_on, vscale):
        env = vscale if self.load.v_exponent == 1.0 else vscale ** self.load.v_exponent
        if self.load.has_transient:
            env = env * self.load.transient(t - t_on)
        return env


class Resistive(Load):
    def _shape(self, u, mains):
        return mains.shape(u)


class Inductive(Load):
    """Series R-L load with power factor `pf` at the fundamental (each harmonic sees k*X)."""

    def __init__(self, pf=0.8, irms=None, watts=None, name=None):
        super().__init__(irms, watts, name)
        if not 0.05 <= pf <= 1.0:
            raise LoadError("Inductive: pf must be within 0.05..1")
        self.pf = float(pf)

    def _shape(self, u, mains):
        r, x = self.pf, math.sqrt(1.0 - self.pf ** 2)
        w = 2 * math.pi * np.asarray(u)
        out = np.sin(w - math.atan2(x, r))
        for k, a, ph in mains.harmonics:
            z = math.hypot(r, k * x)
            out += (a / z) * np.sin(k * w + math.radians(ph) - math.atan2(k * x, r))
        return out


class SMPS(Load):
    """Capacitor-input rectifier: current flows only near the voltage peaks."""

    v_exponent = -1.0

    def __init__(self, watts=None, crest_factor=3.2, irms=None, name=None):
        super().__init__(irms, watts, name)
        if not 1.6 <= crest_factor <= 8.0:
            raise LoadError("SMPS: crest_factor must be within 1.6..8")
        self.crest_factor = float(crest_factor)

    def _shape(self, u, mains):
        # A raised-cosine pulse of half-width w (cycles) centred just after each voltage
        # peak, where the reservoir capacitor recharges; w is solved for the crest factor.
        if np.array_equal(u, periodic.U):
            return _smps_pulses(_smps_width(self.crest_factor), None)
        return _smps_pulses(_smps_width(self.crest_factor), np.asarray(u, dtype=np.float64))


def _smps_pulses(w, u):
    u = periodic.U if u is None else u
    d1 = u - 0.26
    d2 = u - 0.76
    p1 = np.where(np.abs(d1) < w, np.cos(0.5 * np.pi * d1 / w) ** 2, 0.0)
    p2 = np.where(np.abs(d2) < w, np.cos(0.5 * np.pi * d2 / w) ** 2, 0.0)
    return p1 - p2


@functools.lru_cache(maxsize=256)
def _smps_width(crest_factor):
    """Pulse half-width (cycles) whose table has the given crest factor (bisection)."""
    def crest(w):
        tab = periodic.table(_smps_pulses(w, None))
        return np.abs(tab).max() / math.sqrt(periodic.mean_sq(tab))

    lo, hi = 0.01, 0.24  # crest factor falls as the pulses widen
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if crest(mid) > crest_factor else (lo, mid)
    return 0.5 * (lo + hi)


class Standby(SMPS):
    def __init__(self, watts=3.0, crest_factor=4.0, name=None):
        super().__init__(watts=watts, crest_factor=crest_factor, name=name)


class Dimmer(Load):
    """Leading-edge (triac) dimmer on a resistive lamp; sized by its full-on power or current.
    Conducts from `firing_angle_deg` after each voltage zero crossing to the next one."""

    def __init__(self, watts=None, firing_angle_deg=90.0, irms=None, name=None):
        super().__init__(irms, watts, name)
        if not 0.0 <= firing_angle_deg <= 180.0:
            raise LoadError("Dimmer: firing angle must be within 0..180 degrees")
        self.firing_angle_deg = float(firing_angle_deg)

    def _shape(self, u, mains):
        v = mains.shape(u)
        half = (np.asarray(u) * 2.0) % 1.0  # position within each half cycle
        alpha = self.firing_angle_deg / 180.0
        # Each node carries the conducting fraction of the cell around it (a box filter), so
        # the table's linear ramp puts the edge at the firing instant to first order.
        cell = 2.0 / periodic.N  # one table cell in half-cycle units
        gate = np.clip((half - alpha) / cell + 0.5, 0.0, 1.0)
        return v * gate

    def _sizing_shape(self, u, mains):
        return mains.shape(u)

    def __repr__(self):
        return f"{super().__repr__()[:-1]}, firing_angle_deg={self.firing_angle_deg})"


class Motor(Inductive):
    """Induction motor: inductive at run, inrush_ratio x the run current at switch-on,
    decaying with time constant inrush_tau_s."""

    has_transient = True

    def __init__(self, watts=None, pf=0.75, inrush_ratio=6.0, inrush_tau_s=0.12, irms=None,
                 name=None):
        super().__init__(pf, irms, watts, name)
        if inrush_ratio < 1.0 or inrush_tau_s <= 0:
            raise LoadError("Motor: inrush_ratio >= 1 and inrush_tau_s > 0")
        self.inrush_ratio = float(inrush_ratio)
        self.inrush_tau_s = float(inrush_tau_s)

    def transient(self, t_rel):
        t_rel = np.maximum(np.asarray(t_rel, dtype=np.float64), 0.0)
        return 1.0 + (self.inrush_ratio - 1.0) * np.exp(-t_rel / self.inrush_tau_s)


@dataclass(frozen=True)
class Segment:
    start: float
    stop: float
    load: Load


class Profile:
    """A schedule of load segments on one circuit; overlapping segments add their currents."""

    def __init__(self, segments=()):
        self.segments = []
        self.version = 0
        self._pieces = None
        for seg in segments:
            self.add(seg.load, seg.start, seg.stop)

    @classmethod
    def constant(cls, load, start=0.0):
        return cls().add(load, start)

    def add(self, load, start=0.0, stop=math.inf):
        """Switch `load` on at `start` and off at `stop` (seconds), alongside any others."""
        if load is None:
            return self
        if not isinstance(load, Load):
            raise LoadError(f"not a load: {load!r}")
        start, stop = float(start), float(stop)
        if not (math.isfinite(start) and stop > start):
            raise LoadError(f"segment needs finite start < stop, got [{start}, {stop})")
        self.segments.append(Segment(start, stop, load))
        self._changed()
        return self

    def switch(self, load, at):
        """From time `at` on, only `load` (or nothing, if None) is on this circuit."""
        at = float(at)
        kept = []
        for seg in self.segments:
            if seg.start >= at:
                continue
            kept.append(Segment(seg.start, min(seg.stop, at), seg.load))
        self.segments = kept
        self._changed()
        return self.add(load, at)

    def _changed(self):
        self.version += 1
        self._pieces = None

    def pieces(self):
        """(starts, stops, active) lists: time pieces with a constant set of active segments."""
        if self._pieces is None:
            points = sorted({s.start for s in self.segments}
                            | {s.stop for s in self.segments if math.isfinite(s.stop)})
            starts, stops, active = [], [], []
            if points:
                segs = sorted(self.segments, key=lambda s: s.start)
                bounds = points + [math.inf]
                on, j = [], 0
                for a, b in zip(bounds[:-1], bounds[1:], strict=True):
                    while j < len(segs) and segs[j].start <= a:
                        on.append(segs[j])
                        j += 1
                    on = [s for s in on if s.stop > a]
                    if on:
                        starts.append(a)
                        stops.append(b)
                        active.append(tuple(on))
            self._pieces = (starts, stops, active)
        return self._pieces

    def between(self, t1, t2):
        """Yield (a, b, active_segments) for the pieces overlapping [t1, t2)."""
        starts, stops, active = self.pieces()
        i = max(bisect.bisect_right(starts, t1) - 1, 0)
        while i < len(starts) and starts[i] < t2:
            a, b = max(starts[i], t1), min(stops[i], t2)
            if b > a:
                yield a, b, active[i]
            i += 1

    def __len__(self):
        return len(self.segments)


def irms_for_percent(sensor, percent):
    """Primary rms (A, or V for a voltage sensor) at `percent` % of the sensor's rating."""
    if not 0 <= percent <= 1000:
        raise LoadError("percent must be within 0..1000")
    return load_profile(sensor).rating * percent / 100.0


def load_for_percent(sensor, percent, pf=1.0):
    """A resistive (pf=1) or inductive load drawing `percent` % of the sensor's rating."""
    irms = irms_for_percent(sensor, percent)
    return Resistive(irms=irms) if pf >= 1.0 else Inductive(pf=pf, irms=irms)


def varying_profile(days=1.0, seed=0, scale=1.0):
    """A household-like mix over `days` for soak tests, deterministic from `seed`: always-on
    standby, a cycling fridge (motor with inrush), kettles, dimmed lights and SMPS in the
    evening, a washing-machine/pump motor and a thermostat-cycled heater (load steps).
    `scale` multiplies every power (e.g. 0.3 to fit a 10 A sensor)."""
    if days <= 0:
        raise LoadError("days must be > 0")
    rng = np.random.default_rng([int(seed), 0x484F4D45])
    end = days * 86400.0
    p = Profile()
    p.add(Standby(watts=scale * rng.uniform(2.0, 6.0)), 0.0)
    # fridge: compressor on 8-20 min, off 15-40 min
    fridge = Motor(watts=scale * rng.uniform(80, 130), pf=0.7, inrush_ratio=5.0,
                   inrush_tau_s=0.15, name="fridge")
    t = rng.uniform(0, 1200)
    while t < end:
        on = rng.uniform(480, 1200)
        p.add(fridge, t, min(t + on, end))
        t += on + rng.uniform(900, 2400)
    for day in range(math.ceil(days)):
        d0 = day * 86400.0

        def at(hour, spread_h, day_start=d0):
            return day_start + 3600.0 * (hour + rng.uniform(-spread_h, spread_h))

        for hour in rng.choice([7.0, 10.5, 13.0, 16.0, 19.5], size=rng.integers(2, 5),
                               replace=False):
            t0 = at(hour, 0.5)
            p.add(Resistive(watts=scale * rng.uniform(1800, 2800), name="kettle"), t0,
                  t0 + rng.uniform(90, 240))
        t0 = at(18.5, 0.5)
        p.add(Dimmer(watts=scale * rng.uniform(100, 300),
                     firing_angle_deg=rng.uniform(30, 130), name="lights"),
              t0, at(23.0, 0.5))
        t0 = at(19.5, 0.5)
        p.add(SMPS(watts=scale * rng.uniform(60, 150), crest_factor=rng.uniform(3.0, 3.8),
                   name="tv"), t0, t0 + 3600 * rng.uniform(1.5, 4.0))
        t0 = at(10.0, 2.0)
        p.add(SMPS(watts=scale * rng.uniform(30, 90), crest_factor=3.0, name="computer"),
              t0, t0 + 3600 * rng.uniform(1.0, 6.0))
        if rng.uniform() < 0.8:
            t0 = at(11.0, 3.0)
            p.add(Motor(watts=scale * rng.uniform(300, 700), pf=0.7, inrush_ratio=6.0,
                        inrush_tau_s=0.1, name="washer"), t0, t0 + rng.uniform(120, 1500))
        # thermostat heater: 1.5-2.5 kW switching in 2-6 min steps for about an hour
        heater = Resistive(watts=scale * rng.uniform(1500, 2500), name="heater")
        t0 = at(6.5, 0.5)
        stop = t0 + rng.uniform(1800, 4800)
        while t0 < stop:
            on = rng.uniform(120, 360)
            p.add(heater, t0, t0 + on)
            t0 += on + rng.uniform(60, 300)
    # nothing extends past the requested span
    p.segments = [Segment(s.start, min(s.stop, end), s.load)
                  for s in p.segments if s.start < end]
    p._changed()
    return p
