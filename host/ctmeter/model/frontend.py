# SPDX-License-Identifier: MIT
"""Sensor + bias + ADC composed from named parts: primary amps (or volts) -> ADC codes.

    fe = Frontend(sensor="sct013-030", burden_ohm=None, board_atten_db=11, vref_mv=1100,
                  bias_tolerance=0.01, ideal=False, seed=0)
    fe.codes(primary, noise=None) -> uint16 codes for primary samples (A, or V for zmpt101b)
    fe.amps_per_count / fe.volts_per_count  -> nominal conversion the firmware would use
    fe.bias_code (true, noise-free), fe.nominal_bias_code (what the firmware would expect)

One unit is drawn from the sensor profile and the seed: ratio error within the profile's
tolerance, phase lead, burden and bias-divider resistor tolerances, and the ADC's INL/DNL.
`ideal=True` keeps only 12-bit quantization and clipping. The sensor's phase lead is applied by
whoever evaluates the primary signal (`phase_lead_deg` -> sample earlier in the mains phase).
Core saturation is a soft knee on the primary (linear to <0.1 % below half the knee).
"""

import functools
import math

import numpy as np

from ctmeter.model.adc import Esp32Adc
from ctmeter.model.profiles import load_profile

SUPPLY_V = 3.3
_KNEE_ORDER = 8


class FrontendError(ValueError):
    pass


class Frontend:
    def __init__(self, sensor="sct013-030", burden_ohm=None, board_atten_db=11, vref_mv=1100,
                 bias_tolerance=0.01, ideal=False, seed=0, noise_lsb=2.0, inl_lsb=2.5,
                 dnl_lsb=0.25, burden_tolerance=0.01, supply_v=SUPPLY_V, volts_per_unit=None):
        self.profile = p = load_profile(sensor)
        self.sensor = p.name
        self.ideal = bool(ideal)
        self.seed = seed
        rng = np.random.default_rng([int(seed), 0xFE])
        if p.output == "current":
            burden = p.recommended_burden_ohm if burden_ohm is None else float(burden_ohm)
            if burden is None or burden <= 0:
                raise FrontendError(f"{p.name} needs a burden resistor (burden_ohm=...)")
            self.burden_ohm = burden
            self.nominal_v_per_unit = burden / p.turns
            actual_burden = burden * (1 + (0 if ideal else rng.uniform(-1, 1) * burden_tolerance))
            v_per_unit = actual_burden / p.turns
            # a bigger burden saturates the core at a lower primary current
            sat = p.saturation_peak * (p.recommended_burden_ohm or burden) / burden
        else:
            if burden_ohm is not None:
                raise FrontendError(f"{p.name} has a voltage output and takes no burden resistor")
            self.burden_ohm = None
            self.nominal_v_per_unit = p.volts_per_unit if volts_per_unit is None \
                else float(volts_per_unit)
            v_per_unit = self.nominal_v_per_unit
            sat = p.saturation_peak
        if ideal:
            self.ratio_error = 0.0
            self.phase_lead_deg = 0.0
            self.saturation_peak = math.inf
        else:
            self.ratio_error = (p.ratio_error_pct
                                + rng.uniform(-1, 1) * p.ratio_tolerance_pct) / 100.0
            self.phase_lead_deg = p.phase_lead_deg + rng.uniform(-1, 1) * p.phase_tolerance_deg
            self.saturation_peak = sat
        self.v_per_unit = v_per_unit * (1 + self.ratio_error)
        self.supply_v = float(supply_v)
        tol = 0.0 if ideal else float(bias_tolerance)
        r1 = 1 + rng.uniform(-1, 1) * tol
        r2 = 1 + rng.uniform(-1, 1) * tol
        self.bias_v = self.supply_v * r2 / (r1 + r2)
        self.nominal_bias_v = self.supply_v / 2
        self.adc = Esp32Adc(board_atten_db, vref_mv, ideal=ideal, seed=seed,
                            noise_lsb=noise_lsb, inl_lsb=inl_lsb, dnl_lsb=dnl_lsb)
        self.atten_db = self.adc.atten_db

    # --- nominal conversion (what correctly configured firmware computes) ---
    @property
    def measures(self):
        return self.profile.measures

    @property
    def adc_volts_per_count(self):
        """Nominal ADC pin volts per count (Vref 1100 mV, straight line)."""
        return self.adc.nominal_volts_per_count

    @property
    def units_per_count(self):
        """Nominal primary units (A or V) per count of (code - bias)."""
        return self.adc.nominal_volts_per_count / self.nominal_v_per_unit

    @property
    def amps_per_count(self):
        if self.measures != "current":
            raise FrontendError(f"{self.sensor} measures voltage: use volts_per_count")
        return self.units_per_count

    @property
    def volts_per_count(self):
        """Mains volts per count for a voltage sensor (for pin volts: adc_volts_per_count)."""
        if self.measures != "voltage":
            raise FrontendError(f"{self.sensor} measures current: use amps_per_count "
                                "(or adc_volts_per_count for pin volts)")
        return self.units_per_count

    @property
    def bias_code(self):
        """The true mean code of the bias point (float: noise-averaged, with INL)."""
        return float(self.adc.mean_code(self.bias_v))

    @property
    def nominal_bias_code(self):
        return (self.nominal_bias_v - self.adc.nominal_offset_v) / self.adc.nominal_volts_per_count

    @property
    def full_scale_primary_peak(self):
        """Nominal primary peak (A or V) that reaches the usable ADC range edge."""
        lo, hi = self.adc.usable_v
        return min(hi - self.nominal_bias_v, self.nominal_bias_v - lo) / self.nominal_v_per_unit

    # --- signal chain ---
    def saturate(self, x):
        s = self.saturation_peak
        if not math.isfinite(s):
            return x
        r = np.abs(x) * (1.0 / s)
        if r.size == 0 or r.max() < 0.2:  # the knee changes nothing below 3e-7 relative
            return x
        r2 = r * r
        r4 = r2 * r2
        return x / (1.0 + r4 * r4) ** (1.0 / _KNEE_ORDER)

    def pin_volts(self, primary):
        """ADC pin voltage for primary samples (already phase-shifted by the caller)."""
        return self.bias_v + self.v_per_unit * self.saturate(np.asarray(primary, np.float64))

    def codes(self, primary, noise=None):
        return self.adc.convert(self.pin_volts(primary), noise)

    def describe(self):
        return {
            "sensor": self.sensor, "ideal": self.ideal, "burden_ohm": self.burden_ohm,
            "atten_db": self.atten_db, "vref_mv": self.adc.vref_mv,
            "ratio_error": self.ratio_error, "phase_lead_deg": self.phase_lead_deg,
            "bias_v": self.bias_v, "bias_code": self.bias_code,
            "units_per_count": self.units_per_count,
        }

    def __repr__(self):
        return f"Frontend(sensor={self.sensor!r}, ideal={self.ideal}, seed={self.seed})"


def noise_blocks(seed, column, k0, n, block=4096):
    """Standard-normal noise for samples [k0, k0+n) of one column: a pure function of the
    absolute sample index, so chunks of any size, order or gaps give the same values."""
    if n <= 0:
        return np.zeros(0)
    if k0 < 0:
        raise FrontendError("sample index must be >= 0")
    b0, b1 = k0 // block, (k0 + n - 1) // block
    parts = [_noise_block(int(seed), int(column), b, block) for b in range(b0, b1 + 1)]
    allv = parts[0] if len(parts) == 1 else np.concatenate(parts)
    off = k0 - b0 * block
    return allv[off:off + n]


@functools.lru_cache(maxsize=64)
def _noise_block(seed, column, b, block):
    x = np.random.default_rng([seed, column, b, 0x5EED]).standard_normal(block)
    x.flags.writeable = False
    return x
