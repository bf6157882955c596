# SPDX-License-Identifier: MIT
"""Integer energy counter: no float accumulator anywhere, nothing lost between steps.

    e = EnergyCounter()
    e.add(power_w, dt_us)         # once per window; power a float (float32 on the chip)
    e.mwh, e.export_mwh           # imported / exported energy, int milliwatt-hours
    state = e.state()             # plain dict of ints for the flash store
    e = EnergyCounter.from_state(state)

Each step converts the power to an integer number of 2**-24 W by multiplying with 2**24
(a power of two, so exact in float32 and float64) and truncating; for a float32 power of at
least 0.5 W that product is already an integer, so the conversion is exact; below that at most
2**-24 W (60 nW) per step is dropped. The step energy, power_q * dt_us in 2**-24 W*us,
is added to an integer remainder and whole milliwatt-hours (UNIT = 3.6e6 * 2**24 of them)
are carried into the mWh count. The invariant mwh * UNIT + rem == sum(power_q * dt_us) holds
exactly after any number of steps, so a year at 20 kW is exact to the micro-joule, whatever
the word size. Negative power (export) is counted separately in export_mwh.
"""

from meter.errors import EnergyError

try:
    from micropython import const
except ImportError:  # CPython
    from meter.cpython_shims import const

Q_BITS = const(24)
_SCALE = const(16777216.0)  # 2**Q_BITS as a float: multiplying by it is exact
UNIT = 3600000 * 16777216  # 2**-24 W*us per mWh
MAX_POWER_W = 1.0e7  # a sanity bound: 10 MW on one channel is a bug, not a load
STATE_VERSION = const(1)


class EnergyCounter:
    def __init__(self, mwh=0, rem=0, export_mwh=0, export_rem=0):
        for name, v in (("mwh", mwh), ("rem", rem), ("export_mwh", export_mwh),
                        ("export_rem", export_rem)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise EnergyError("energy %s must be a non-negative int, got %r" % (name, v))
        if rem >= UNIT or export_rem >= UNIT:
            raise EnergyError("energy remainder out of range (must be < %d)" % UNIT)
        self.mwh = mwh
        self.rem = rem
        self.export_mwh = export_mwh
        self.export_rem = export_rem

    def add(self, power_w, dt_us):
        """Integrate power_w (W, float or int) over dt_us (int microseconds, >= 0)."""
        dt = int(dt_us)
        if dt != dt_us or dt < 0:
            raise EnergyError("energy step dt_us must be a non-negative integer, got %r"
                              % (dt_us,))
        p = power_w
        if p != p or p > MAX_POWER_W or p < -MAX_POWER_W:
            raise EnergyError("energy step power %r W is not a finite meter value" % (p,))
        q = int(p * _SCALE)
        if q >= 0:
            rem = self.rem + q * dt
            if rem >= UNIT:
                whole, rem = divmod(rem, UNIT)
                self.mwh += whole
            self.rem = rem
        else:
            rem = self.export_rem - q * dt
            if rem >= UNIT:
                whole, rem = divmod(rem, UNIT)
                self.export_mwh += whole
            self.export_rem = rem

    def units(self):
        """Exact imported energy in 2**-24 W*us (for tests and diagnostics)."""
        return self.mwh * UNIT + self.rem

    def export_units(self):
        return self.export_mwh * UNIT + self.export_rem

    def state(self):
        return {
            "v": STATE_VERSION,
            "mwh": self.mwh,
            "rem": self.rem,
            "export_mwh": self.export_mwh,
            "export_rem": self.export_rem,
        }

    @classmethod
    def from_state(cls, state):
        if not isinstance(state, dict):
            raise EnergyError("energy state must be a dict, got %r" % (state,))
        if state.get("v") != STATE_VERSION:
            raise EnergyError("energy state version %r is not %d" % (state.get("v"),
                                                                    STATE_VERSION))
        for key in state:
            if key not in ("v", "mwh", "rem", "export_mwh", "export_rem"):
                raise EnergyError("unknown energy state key %r" % (key,))
        return cls(state.get("mwh", 0), state.get("rem", 0), state.get("export_mwh", 0),
                   state.get("export_rem", 0))

    def __repr__(self):
        return "EnergyCounter(mwh=%d, export_mwh=%d)" % (self.mwh, self.export_mwh)
