# SPDX-License-Identifier: MIT
"""Per-channel calibration: gain, offset, piecewise-linear correction table, phase, noise floor.

    cal = Calibration.from_dict({"gain": 1.02, "offset": -0.01,
                                 "table": [[0.0, 0.0], [1.0, 0.97], [30.0, 30.0]],
                                 "phase_deg": 2.5, "noise_floor": 0.05})
    amps = cal.apply(raw_amps)      # table -> gain*x + offset -> 0 below the noise floor
    cal.to_dict()                   # plain dict for JSON (config, host fitting)

apply() maps an RMS value in physical units (A for a current channel, V for a voltage
channel) computed with the nominal scale, to the corrected value:
  1. table: [[measured, true], ...] with measured strictly increasing (at least 2 points),
     (by at least MIN_STEP), linear interpolation, extended beyond both ends along the
     end segments (an empty table is the identity);
  2. gain * x + offset;
  3. results below noise_floor read 0 (negative results too).
phase_deg is the angle by which this channel's measured current leads the true current
relative to the voltage channel (CT phase lead plus the ADC's inter-channel delay); metering
rotates the real power back by it. It is used only when a voltage channel exists.
Bad values raise CalibrationError naming the field; nothing is half-applied.
"""

from meter.errors import CalibrationError

KEYS = ("gain", "offset", "table", "phase_deg", "noise_floor")
MAX_TABLE = 32
MAX_PHASE_DEG = 30.0
MIN_STEP = 1e-6  # table points closer than this (1 uA / 1 uV) are a mistake, not data


def _number(name, x):
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise CalibrationError("calibration %s must be a number, got %r" % (name, x))
    x = float(x)
    if x != x or x - x != 0.0:
        raise CalibrationError("calibration %s must be finite, got %r" % (name, x))
    return x


def _table(value):
    if not isinstance(value, (list, tuple)):
        raise CalibrationError("calibration table must be a list of [measured, true] pairs")
    if len(value) == 1 or len(value) > MAX_TABLE:
        raise CalibrationError(
            "calibration table needs 0 or 2..%d points, got %d" % (MAX_TABLE, len(value))
        )
    xs = []
    ys = []
    for n, pair in enumerate(value):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise CalibrationError("calibration table point %d must be [measured, true]" % n)
        x = _number("table[%d] measured" % n, pair[0])
        y = _number("table[%d] true" % n, pair[1])
        if x < 0.0 or y < 0.0:
            raise CalibrationError("calibration table point %d is negative" % n)
        if xs and x < xs[-1] + MIN_STEP:
            raise CalibrationError(
                "calibration table measured values must increase by at least %g "
                "(point %d: %r after %r)" % (MIN_STEP, n, x, xs[-1])
            )
        xs.append(x)
        ys.append(y)
    return tuple(xs), tuple(ys)


class Calibration:
    """One channel's calibration (immutable by convention; build a new one to change it)."""

    def __init__(self, gain=1.0, offset=0.0, table=(), phase_deg=0.0, noise_floor=0.0):
        gain = _number("gain", gain)
        if gain <= 0.0 or gain > 100.0:
            raise CalibrationError("calibration gain must be in (0, 100], got %r" % gain)
        self.gain = gain
        self.offset = _number("offset", offset)
        self._xs, self._ys = _table(table)
        phase = _number("phase_deg", phase_deg)
        if phase < -MAX_PHASE_DEG or phase > MAX_PHASE_DEG:
            raise CalibrationError(
                "calibration phase_deg must be within +-%g, got %r" % (MAX_PHASE_DEG, phase)
            )
        self.phase_deg = phase
        floor = _number("noise_floor", noise_floor)
        if floor < 0.0:
            raise CalibrationError("calibration noise_floor must be >= 0, got %r" % floor)
        self.noise_floor = floor

    @property
    def table(self):
        return [[x, y] for x, y in zip(self._xs, self._ys)]

    def correct(self, x):
        """The table mapping alone (no gain, offset or floor)."""
        xs = self._xs
        n = len(xs)
        if n == 0:
            return x
        ys = self._ys
        # segment index: first point whose measured value is above x, clamped to the ends
        k = 1
        while k < n - 1 and x > xs[k]:
            k += 1
        x0 = xs[k - 1]
        y0 = ys[k - 1]
        return y0 + (x - x0) * ((ys[k] - y0) / (xs[k] - x0))

    def apply(self, x):
        y = self.gain * self.correct(x) + self.offset
        if y < self.noise_floor or y <= 0.0:
            return 0.0
        return y

    def to_dict(self):
        return {
            "gain": self.gain,
            "offset": self.offset,
            "table": self.table,
            "phase_deg": self.phase_deg,
            "noise_floor": self.noise_floor,
        }

    @classmethod
    def from_dict(cls, d):
        if not isinstance(d, dict):
            raise CalibrationError("calibration must be an object, got %r" % (d,))
        for key in d:
            if key not in KEYS:
                raise CalibrationError(
                    "unknown calibration key %r (known: %s)" % (key, ", ".join(KEYS))
                )
        return cls(
            gain=d.get("gain", 1.0),
            offset=d.get("offset", 0.0),
            table=d.get("table", ()),
            phase_deg=d.get("phase_deg", 0.0),
            noise_floor=d.get("noise_floor", 0.0),
        )

    def __eq__(self, other):
        return isinstance(other, Calibration) and self.to_dict() == other.to_dict()

    def __repr__(self):
        return "Calibration(%r)" % (self.to_dict(),)


IDENTITY = Calibration()
