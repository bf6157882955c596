# SPDX-License-Identifier: MIT
"""Accuracy table: Irms error vs. load for ctmeter and three published algorithms.

    result = run(sensor="sct013-030", percents=PERCENTS, ref_percent=50, sample_rate=4000.0,
                 warmup_s=3.0, measure_s=3.0, seed=1)

For each load (percent of the sensor's rating, resistive) the full, non-ideal sensor model
(host/ctmeter/model: CT ratio error and phase, burden and bias tolerances, ESP32 ADC at 11 dB
with gain error, INL, DNL and noise) produces ONE stream of 12-bit codes. ctmeter's
WindowAccumulator (10-cycle windows) and the re-implementations in bench/algorithms.py all read
that same stream. Every algorithm starts from the nominal scale a firmware would use
(Frontend.amps_per_count) and gets a one-point calibration at ref_percent:
gain = mean(true Irms) / mean(reading) over the measured span (ctmeter through
meter.calib.Calibration(gain=...)). Readings start after warmup_s (EmonLib's running offset
starts at mid-scale and needs ~5 time constants of 1024 samples to settle; its first call is
reported separately) and cover measure_s. Each reading is compared with the model's exact
Irms over the reading's own time span; the table gives mean and max |error| in %.
A 0 % point (no load) gives each algorithm's noise-floor reading in A.
"""

import time
from array import array

import numpy as np
from ctmeter.model import Channel, Frontend, Mains, Stream, load_for_percent, load_profile
from meter.calib import Calibration
from meter.metering import WindowAccumulator

from bench import algorithms as alg

PERCENTS = (1, 2, 5, 10, 20, 50, 80, 100, 120)
ALGORITHMS = ("ctmeter", "emonlib", "esphome", "esphome_keep_repeats", "tasmota")
LABELS = {
    "ctmeter": "ctmeter (window mean, 10 cycles)",
    "emonlib": "EmonLib calcIrms (1480 samples)",
    "esphome": "ESPHome ct_clamp (200 ms, float32)",
    "esphome_keep_repeats": "ESPHome, repeats kept",
    "tasmota": "Tasmota ADC CT (35 ms p-p)",
}


class AccuracyError(ValueError):
    pass


def _ctmeter(codes, fe, fs, gain):
    buf = array("H", codes.tolist())
    cal = Calibration(gain=gain)
    acc = WindowAccumulator(1, [fe.amps_per_count], calib=[cal])
    out = []
    k = 0
    while True:
        n = acc.window_frames(fs, 10)
        if k + n > len(buf):
            break
        acc.add(buf, k, n)
        out.append(alg.Reading(k, n, acc.finish(fs)[0].irms))
        k += n
    return out


def _readings(name, codes, fe, fs, gain):
    """Calibrated readings of one algorithm over the whole stream."""
    apc = fe.amps_per_count
    if name == "ctmeter":
        return _ctmeter(codes, fe, fs, gain)
    if name == "emonlib":
        rs = alg.emonlib_calc_irms(codes, apc)
    elif name in ("esphome", "esphome_keep_repeats"):
        vpc = fe.adc_volts_per_count
        rs = alg.esphome_ct_clamp(codes, vpc, apc / vpc, fs,
                                  drop_repeats=(name == "esphome"))
    elif name == "tasmota":
        rs = alg.tasmota_adc_ct(codes, apc, fs)
    else:
        raise AccuracyError(f"unknown algorithm {name!r}")
    return [alg.Reading(r.start, r.n, r.irms * gain) for r in rs]


class _Point:
    """One load point: the stream's codes and a truth lookup per reading span."""

    def __init__(self, sensor, percent, fs, total_s, seed):
        self.fe = Frontend(sensor, board_atten_db=11, seed=seed)
        load = load_for_percent(sensor, percent) if percent > 0 else None
        self.stream = Stream([Channel(self.fe, load)], mains=Mains(seed=seed),
                             sample_rate=fs, seed=seed)
        self.codes = self.stream.read(0, int(round(total_s * fs)), truth=False).codes[:, 0]
        self.fs = fs
        self._truth = {}

    def truth(self, r):
        key = (r.start, r.n)
        if key not in self._truth:
            t = self.stream.truth(r.start / self.fs, (r.start + r.n) / self.fs)
            self._truth[key] = float(t.irms[0])
        return self._truth[key]


def _measured(rs, first):
    return [r for r in rs if r.start >= first]


def run(sensor="sct013-030", percents=PERCENTS, ref_percent=50, sample_rate=4000.0,
        warmup_s=3.0, measure_s=3.0, seed=1, algorithms=ALGORITHMS):
    if ref_percent <= 0 or warmup_s < 0 or measure_s <= 0 or not percents:
        raise AccuracyError("need ref_percent > 0, warmup_s >= 0, measure_s > 0, percents")
    t0 = time.perf_counter()
    fs = float(sample_rate)
    total = warmup_s + measure_s
    first = int(round(warmup_s * fs))

    # one-point calibration, the same procedure for every algorithm
    ref = _Point(sensor, ref_percent, fs, total, seed)
    gains = {}
    for name in algorithms:
        rs = _measured(_readings(name, ref.codes, ref.fe, fs, 1.0), first)
        if not rs:
            raise AccuracyError(f"measure_s too short for one {name} reading")
        gains[name] = float(np.mean([ref.truth(r) for r in rs]) / np.mean([r.irms for r in rs]))

    rows = []
    for p in sorted(set(percents) | {0}):
        pt = ref if p == ref_percent else _Point(sensor, p, fs, total, seed)
        row = {"percent": p, "algorithms": {},
               "min_code": int(pt.codes[first:].min()), "max_code": int(pt.codes[first:].max())}
        truths = []
        for name in algorithms:
            all_rs = _readings(name, pt.codes, pt.fe, fs, gains[name])
            rs = _measured(all_rs, first)
            vals = np.array([r.irms for r in rs])
            entry = {"n_readings": len(rs)}
            if p == 0:
                entry["mean_reading_a"] = float(np.mean(vals))
                entry["max_reading_a"] = float(np.max(vals))
            else:
                true = np.array([pt.truth(r) for r in rs])
                truths.extend(true.tolist())
                err = np.abs(vals / true - 1.0) * 100.0
                entry["mean_abs_err_pct"] = float(np.mean(err))
                entry["max_abs_err_pct"] = float(np.max(err))
                if name == "emonlib":
                    r0 = all_rs[0]
                    entry["first_call_err_pct"] = float(
                        abs(r0.irms / pt.truth(r0) - 1.0) * 100.0)
            row["algorithms"][name] = entry
        row["true_irms_a"] = float(np.mean(truths)) if truths else 0.0
        rows.append(row)

    prof = load_profile(sensor)
    return {
        "sensor": sensor,
        "rating": prof.rating,
        "board": "ESP32, ADC1 at 11 dB (sensor model, not ideal)",
        "sample_rate_hz": fs,
        "seed": seed,
        "ref_percent": ref_percent,
        "warmup_s": warmup_s,
        "measure_s": measure_s,
        "amps_per_count": ref.fe.amps_per_count,
        "gains": gains,
        "algorithms": {name: LABELS[name] for name in algorithms},
        "rows": rows,
        "elapsed_s": time.perf_counter() - t0,
    }
