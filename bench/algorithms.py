# SPDX-License-Identifier: MIT
"""Re-implementations of three published CT-clamp Irms algorithms, for the accuracy benchmark.

Written from the algorithms' public descriptions (not copied), each fed the same stream of
12-bit ADC codes taken at a fixed sample rate, each returning a list of Reading(start, n, irms)
in amps before any calibration (`amps_per_count` is the nominal scale; the benchmark applies
the same one-point calibration gain to every algorithm afterwards):

    emonlib_calc_irms(codes, amps_per_count, n_samples=1480, offset=2048.0)
        EmonLib EnergyMonitor::calcIrms: a running DC offset updated per sample,
        offset += (x - offset) / 1024, then sum (x - offset)^2 over n_samples and
        Irms = ratio * sqrt(sum / n). The offset starts at ADC mid-scale and carries over from
        one call to the next (it is a member of the object), so consecutive calls on one
        stream are consecutive calls of one EnergyMonitor. Doubles, as on an ESP32.
    esphome_ct_clamp(codes, volts_per_count, amps_per_volt, fs, window_s=0.2,
                     drop_repeats=True)
        ESPHome ct_clamp: during a 200 ms sample window, per sample (a float32 voltage) it
        accumulates sum and sum of squares in float32; at the end
        rms = sqrt(sum_sq/n - (sum/n)^2), all in float32 (0 if negative). The published
        loop() skips a sample equal to the previous one ("avoid requesting values faster than
        the ADC can provide them"); drop_repeats=False keeps them. The sensor publishes volts;
        a user's linear filter maps them to amps (amps_per_volt here).
    tasmota_adc_ct(codes, amps_per_count, fs, window_s=0.035)
        Tasmota ADC CT-power mode: for 35 ms it reads the ADC and keeps min and max; the
        current is proportional to (max - min). Scaled here as a sine's rms:
        (max - min) / 2 / sqrt(2) * amps_per_count. Tasmota runs one such window per second;
        consecutive windows of one stream are statistically the same thing and give more
        readings. Its optional low-current cut-off (param4) is left at 0.

Windows that do not fit at the end of the stream are not evaluated.
"""

import math
from dataclasses import dataclass

import numpy as np


class AlgorithmError(ValueError):
    pass


@dataclass
class Reading:
    start: int  # first sample index
    n: int  # samples spanned
    irms: float  # A (uncalibrated)


def _codes(codes):
    a = np.asarray(codes)
    if a.ndim != 1 or a.size == 0:
        raise AlgorithmError("codes must be a non-empty 1-D sequence of ADC codes")
    if a.min() < 0 or a.max() > 4095:
        raise AlgorithmError("codes must be 12-bit ADC codes (0..4095)")
    return a.astype(np.int64)


def emonlib_calc_irms(codes, amps_per_count, n_samples=1480, offset=2048.0):
    """Consecutive EmonLib calcIrms(n_samples) calls over the stream (offset carried over)."""
    x = _codes(codes)
    if n_samples < 1:
        raise AlgorithmError("n_samples must be >= 1")
    out = []
    off = float(offset)
    for start in range(0, len(x) - n_samples + 1, n_samples):
        total = 0.0
        for sample in x[start:start + n_samples].tolist():
            off = off + (sample - off) / 1024.0
            filtered = sample - off
            total += filtered * filtered
        out.append(Reading(start, n_samples, amps_per_count * math.sqrt(total / n_samples)))
    return out


def esphome_ct_clamp(codes, volts_per_count, amps_per_volt, fs, window_s=0.2,
                     drop_repeats=True):
    """ESPHome ct_clamp windows: float32 sums of volts, rms = sqrt(E[x^2] - E[x]^2)."""
    x = _codes(codes)
    n_win = int(round(window_s * fs))
    if n_win < 1:
        raise AlgorithmError("window shorter than one sample")
    f32 = np.float32
    scale = f32(volts_per_count)
    out = []
    for start in range(0, len(x) - n_win + 1, n_win):
        block = x[start:start + n_win]
        volts = block.astype(np.float32) * scale  # one float32 per sample
        if drop_repeats:
            keep = np.ones(len(volts), dtype=bool)
            keep[1:] = volts[1:] != volts[:-1]
            # the window starts with last_value_ reset to 0.0
            keep[0] = volts[0] != f32(0.0)
            volts = volts[keep]
        m = len(volts)
        if m == 0:
            out.append(Reading(start, n_win, float("nan")))
            continue
        # np.cumsum adds strictly left to right in float32, like the C++ loop
        s = np.cumsum(volts, dtype=np.float32)[-1]
        q = np.cumsum(volts * volts, dtype=np.float32)[-1]
        n = f32(m)
        ac2 = f32(q / n) - f32(s / n) * f32(s / n)
        rms = float(np.sqrt(f32(ac2))) if ac2 > 0 else 0.0
        out.append(Reading(start, n_win, rms * amps_per_volt))
    return out


def tasmota_adc_ct(codes, amps_per_count, fs, window_s=0.035):
    """Tasmota ADC CT windows: peak-to-peak over 35 ms, read as a sine's rms."""
    x = _codes(codes)
    n_win = int(round(window_s * fs))
    if n_win < 1:
        raise AlgorithmError("window shorter than one sample")
    out = []
    k = amps_per_count / (2.0 * math.sqrt(2.0))
    for start in range(0, len(x) - n_win + 1, n_win):
        block = x[start:start + n_win]
        out.append(Reading(start, n_win, float(block.max() - block.min()) * k))
    return out
