# SPDX-License-Identifier: MIT
"""The ESP32 ADC1 (SAR, 12 bit) as a transfer from pin volts to codes 0..4095.

    adc = Esp32Adc(atten_db=11, vref_mv=1070, seed=3)
    adc.convert(volts, noise)    -> uint16 codes (noise: standard normal array or None)
    adc.transfer(volts)          -> noise-free continuous code (before INL/DNL/quantization)
    adc.nominal_volts_per_count, adc.nominal_offset_v   -> what firmware assumes (Vref 1100 mV)

The linear part is Espressif's characterisation (esp_adc_cal for the ESP32): volts =
raw * Vref * scale[atten] / 4096 + offset[atten], so the chip's Vref (1000-1200 mV spread,
nominal 1100) is a gain error. At 11 dB, above raw 2880 the chip follows Espressif's published
20-point lookup curves (interpolated in Vref) instead: the top end compresses and clips near
3.1 V. INL is a smooth bow, DNL fixed per-code threshold offsets (from the seed), noise is
Gaussian in LSB. `ideal=True`: the nominal straight line, rounded and clipped, nothing else.
"""

import numpy as np

ATTENUATIONS = (0.0, 2.5, 6.0, 11.0)
# esp_adc_cal_esp32.c: ADC1 linear coefficients per attenuation (scale / 65536, offset mV)
_SCALE = {0.0: 57431 / 65536, 2.5: 76236 / 65536, 6.0: 105481 / 65536, 11.0: 196602 / 65536}
_OFFSET_MV = {0.0: 75.0, 2.5: 78.0, 6.0: 107.0, 11.0: 142.0}
# documented usable input ranges (mV)
USABLE_MV = {0.0: (100, 950), 2.5: (100, 1250), 6.0: (150, 1750), 11.0: (150, 2450)}
VREF_NOMINAL_MV = 1100.0
VREF_RANGE_MV = (1000.0, 1200.0)
# 11 dB lookup curves for Vref 1000 and 1200 mV, raw 2880 + 64 * i (i = 0..19)
_LUT_RAW0, _LUT_STEP = 2880, 64
_LUT_LOW = (2240, 2297, 2352, 2405, 2457, 2512, 2564, 2616, 2664, 2709,
            2754, 2795, 2832, 2868, 2903, 2937, 2969, 3000, 3030, 3060)
_LUT_HIGH = (2667, 2706, 2745, 2780, 2813, 2844, 2873, 2901, 2928, 2956,
             2982, 3006, 3032, 3059, 3084, 3110, 3135, 3160, 3184, 3209)
NONLINEAR_ABOVE_RAW = _LUT_RAW0


class AdcError(ValueError):
    pass


def normalize_atten(atten_db):
    a = float(atten_db)
    if a == 12.0:  # ESP-IDF 5 calls the 11 dB setting 12 dB
        a = 11.0
    if a not in ATTENUATIONS:
        raise AdcError(f"ESP32 attenuation must be one of 0, 2.5, 6, 11 dB, got {atten_db!r}")
    return a


class Esp32Adc:
    def __init__(self, atten_db=11, vref_mv=VREF_NOMINAL_MV, ideal=False, seed=0,
                 noise_lsb=2.0, inl_lsb=2.5, dnl_lsb=0.25):
        self.atten_db = normalize_atten(atten_db)
        self.ideal = bool(ideal)
        rng = np.random.default_rng([int(seed), 0xADC])
        if vref_mv is None:
            vref_mv = rng.uniform(*VREF_RANGE_MV)
        if not VREF_RANGE_MV[0] <= vref_mv <= VREF_RANGE_MV[1]:
            raise AdcError("ESP32 Vref lies within 1000..1200 mV")
        self.vref_mv = VREF_NOMINAL_MV if ideal else float(vref_mv)
        scale, off = _SCALE[self.atten_db], _OFFSET_MV[self.atten_db]
        self.nominal_volts_per_count = VREF_NOMINAL_MV * scale / 4096 / 1000.0
        self.nominal_offset_v = off / 1000.0
        self.usable_v = tuple(x / 1000.0 for x in USABLE_MV[self.atten_db])
        self.noise_lsb = 0.0 if ideal else float(noise_lsb)
        # transfer table: volts at continuous raw positions 0..4096
        raw = np.arange(0, 4097, dtype=np.float64)
        mv = raw * self.vref_mv * scale / 4096 + off
        if self.atten_db == 11.0 and not ideal:
            mv = np.where(raw >= _LUT_RAW0, self._lut_mv(raw), mv)
            blend = (raw >= _LUT_RAW0) & (raw <= _LUT_RAW0 + _LUT_STEP)
            w = (raw[blend] - _LUT_RAW0) / _LUT_STEP
            lin = raw[blend] * self.vref_mv * scale / 4096 + off
            mv[blend] = lin * (1 - w) + self._lut_mv(raw[blend]) * w
        if np.any(np.diff(mv) <= 0):
            raise AdcError("internal: ADC transfer is not monotonic")
        self._raw, self._v = raw, mv / 1000.0
        # straight part: raw = (v - off) * gain, exact below the 11 dB knee
        self._gain = 4096 * 1000.0 / (self.vref_mv * scale)
        self._off_v = off / 1000.0
        self._linear_below = _LUT_RAW0 if (self.atten_db == 11.0 and not ideal) else 4097
        if ideal:
            self._inl_amp = 0.0
            d = np.zeros(4095)
        else:
            self._inl_amp = float(inl_lsb) * rng.choice([-1.0, 1.0])
            d = np.clip(rng.normal(0.0, dnl_lsb, 4095), -0.45, 0.45) if dnl_lsb else np.zeros(4095)
        # threshold between code q-1 and q is q - 0.5 + d[q-1]; |d| < 0.5, so rounding and
        # one correction step find the code
        self._thresholds = np.arange(4095) + 0.5 + d
        self._t_lo = np.concatenate(([-np.inf], self._thresholds))  # below code q
        self._t_hi = np.concatenate((self._thresholds, [np.inf]))  # above code q

    def _lut_mv(self, raw):
        x = np.clip((raw - _LUT_RAW0) / _LUT_STEP, 0, len(_LUT_LOW) - 1)
        lo = np.interp(x, np.arange(len(_LUT_LOW)), _LUT_LOW)
        hi = np.interp(x, np.arange(len(_LUT_HIGH)), _LUT_HIGH)
        f = (self.vref_mv - VREF_RANGE_MV[0]) / (VREF_RANGE_MV[1] - VREF_RANGE_MV[0])
        return lo * (1 - f) + hi * f

    def transfer(self, volts):
        """Noise-free continuous code of pin voltage(s), before INL/DNL and quantization;
        below the offset it goes negative and above the top it stays at 4096 (clipping)."""
        v = np.asarray(volts, dtype=np.float64)
        shape = v.shape
        v = v.reshape(-1)
        x = (v - self._off_v) * self._gain
        top = x >= self._linear_below
        if np.any(top):
            x[top] = np.interp(v[top], self._v, self._raw, right=4096.0)
        np.minimum(x, 4096.0, out=x)
        return x.reshape(shape)

    def with_inl(self, x):
        """Continuous codes plus the INL bow (zero at both ends, inl_lsb at mid-scale)."""
        if not self._inl_amp:
            return x
        s = np.clip(x, 0.0, 4095.0) / 4095.0
        return x + self._inl_amp * 4.0 * s * (1.0 - s)

    def mean_code(self, volts):
        """Expected (noise-averaged) code of a steady pin voltage, before quantization."""
        return self.with_inl(self.transfer(volts))

    def code_of(self, x):
        """INL + DNL + quantization of continuous codes x -> uint16 0..4095."""
        x = self.with_inl(np.asarray(x, dtype=np.float64))
        q = np.clip(np.rint(x), 0, 4095).astype(np.int64)
        q -= x < self._t_lo[q]
        q += x >= self._t_hi[q]
        return q.astype(np.uint16)

    def convert(self, volts, noise=None):
        """Pin volts -> codes; `noise` is a standard-normal array of the same shape (or None)."""
        x = self.transfer(volts)
        if noise is not None and self.noise_lsb:
            x = x + self.noise_lsb * noise
        return self.code_of(x)

    def volts_at(self, code):
        """The chip's true (noise-free, INL-free) input voltage at a continuous code."""
        return np.interp(code, self._raw, self._v)
