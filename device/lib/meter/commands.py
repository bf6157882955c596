# SPDX-License-Identifier: MIT
"""The meter's console commands: one function per command, `cal zero` -> cal_zero(m, ch),
called by the console (meter.console_cmds) with the Meter and the parsed arguments.
Loaded when a line arrives and dropped after it, like the console's parser.

Commands that need live data (scope, cal zero/point) keep the meter running: they set
m.hook, a function called after every window, and call m.step() until it has what it
needs. Calibration is split between device and host: the device measures the
*uncalibrated* Irms over CAL_WINDOWS windows, the host fits (ctmeter calibrate, with
meter.calib) and sends the result with `cal apply`.
"""

# ruff: noqa: UP031

import gc
import math

from meter import modules, reading
from meter.calib import Calibration
from meter.energy import EnergyCounter
from meter.metering import rms_counts

try:
    from micropython import const
except ImportError:  # CPython
    from meter.cpython_shims import const

CAL_WINDOWS = const(25)  # 5 s of 10-cycle windows at 50 Hz per calibration measurement


def status(m):
    b = m.board
    gc.collect()  # heap figures of live data, not of garbage waiting for the next collection
    rate, late = b.sampling_stats()
    return {
        "version": m.VERSION, "device": m.device,
        "uptime_s": m.uptime_ms // 1000, "heap_free": b.mem_free(),
        "heap_used": b.mem_alloc(),
        "wifi": b.wifi_status(), "wifi_retries": m.wifi_retries, "rssi": b.rssi(),
        "last_post": m.post_result,
        "mqtt": m.mqtt_result,
        "posts_ok": m.posts_ok, "posts_failed": m.posts_failed,
        "outbox": m.outbox_status, "duty": round(m.duty, 4),
        "sample_rate_hz": rate, "jitter_us": late, "windows": m.windows,
        "seq": m.store.seq, "boots": m.store.boots,
        "energy_kwh": [reading.kwh_text(e.mwh) for e in m.energy],
        "problems": m.problems[-5:], "platform": b.platform, "mem_errors": m.mem_errors,
        "errors": m.errors, "last_error": m.last_error,
        "clock": "set" if m.clock_ok else "unset", "rejected": m.rejected,
    }


def _config(m):
    # the running config, wrapped for its rules (meter.config is loaded per command)
    return modules.use("meter.config").Config(m.fs, data=m.conf)


def _result(r):
    return {"irms": round(r.irms, 4), "power": round(r.power, 2),
            "apparent": round(r.apparent, 2), "pf": round(r.pf, 4),
            "voltage": round(r.voltage, 2), "frequency": round(r.frequency, 3)}


def read(m):
    # uptime_ms: time integrated so far (the energy covers exactly this span)
    out = {"uptime_ms": m.uptime_ms}
    for r in m.last:
        if not r.is_voltage:
            d = _result(r)
            d["energy_kwh"] = reading.kwh_text(m.energy[r.channel].mwh)
            out["ch%d" % (r.channel + 1)] = d
    return out


def _raw_rms(m, ch):
    # the window's RMS in physical units before calibration (no noise floor, no gain)
    n, s, q = m.last_raw[ch][:3]
    return m.acc.scales[ch] * rms_counts(n, s, q)


def adc(m):
    out = {}
    for r in m.last:
        # noise: RMS in codes of the window (with no load it is the ADC noise)
        noise = _raw_rms(m, r.channel) / m.acc.scales[r.channel]
        out["in%d" % r.channel] = {"min": r.min, "max": r.max, "mean": round(r.mean, 2),
                                   "rms_codes": round(noise, 3), "clipped": r.clipped,
                                   "voltage": r.is_voltage}
    return out


def scope(m, ch, n):
    # Contiguous bursts of up to one window buffer each, read between windows (the meter's
    # own sampling pauses meanwhile; energy still integrates the elapsed time). segments:
    # codes per burst, in order; within a segment the codes are evenly spaced at the rate.
    # the answer's list itself is filled: no array (and no zeroed bytes to make it from) on
    # top of it, which on a small heap was 2 x 2n bytes more to find for the answer
    codes = [0] * n
    segments = []
    got = 0
    nch = m.nch
    while got < n:
        k = min(n - got, m.buf_frames)
        m.board.read_frames(m.buf, 0, k)
        for i in range(k):
            codes[got + i] = m.buf[i * nch + ch]
        got += k
        segments.append(k)
    m.board.wdt_feed()
    return {"input": ch, "sample_rate_hz": m.fs_hz, "n": n, "segments": segments,
            "codes": codes}


def _run(m, hook, done):
    m.hook = hook
    try:
        while not done():
            m.step()
    finally:
        m.hook = None


def config_get(m, key=None):
    cfg = _config(m)
    if key is None:
        return cfg.redacted()
    return {key: cfg.get(key)}


# Read from the running config at each use, so a change applies from the next use: the
# reading interval always, the HTTP endpoint while HTTP delivery is on (its poster is made
# per delivery). Everything else is set up at start.
_LIVE_HTTP = const(("http.url", "http.token", "http.timeout_s", "http.path"))


def config_set(m, key, value):
    cfg = _config(m)
    cfg.set_text(key, value)
    m.conf = cfg.data
    now = key == "interval_s" or (m.http and key in _LIVE_HTTP)
    return {key: cfg.get(key), "applies": "now" if now else "after reboot"}


def cal_show(m):
    return {_cal_name(m, i): c.to_dict() for i, c in enumerate(m.calibs)}


def _measure_raw(m, ch):
    # windows, sum of raw Irms^2, and the input's code range and clipped samples over all
    # of them (a reference load that clips the ADC in any window is no reference)
    acc = [0, 0.0, 4095, 0, 0]

    def collect(m, frames):
        raw = _raw_rms(m, ch)
        acc[0] += 1
        acc[1] += raw * raw
        for r in m.last:
            if r.channel == ch:
                acc[2] = min(acc[2], r.min)
                acc[3] = max(acc[3], r.max)
                acc[4] += r.clipped

    _run(m, collect, lambda: acc[0] >= CAL_WINDOWS)
    raw = math.sqrt(acc[1] / acc[0])
    return raw, {"ch": ch, "raw_irms": raw, "raw_rms": raw, "windows": acc[0],
                 "min_code": acc[2], "max_code": acc[3], "clipped": acc[4]}


# cal zero/point/apply/clear take an input: a current channel, or the voltage input (its
# index is the number of current channels; true_amps is then the true voltage in V).
def cal_zero(m, ch):
    raw, out = _measure_raw(m, ch)
    out["rms_codes"] = raw / m.acc.scales[ch]
    return out


def cal_point(m, ch, true_amps):
    raw, out = _measure_raw(m, ch)
    out["true_amps"] = true_amps
    out["ratio"] = true_amps / raw if raw > 0 else None
    return out


def _cal_name(m, ch):
    return "voltage" if ch == m.vch else "ch%d" % (ch + 1)


def cal_apply(m, ch, params):
    cal = Calibration.from_dict(params)
    key = "voltage.calibration" if ch == m.vch else "channels.%d.calibration" % ch
    cfg = _config(m)
    cfg.set(key, cal.to_dict())  # validated and written first: nothing half-applied
    m.conf = cfg.data
    m.calibs[ch] = cal
    m.acc.calib[ch] = cal
    return {_cal_name(m, ch): cal.to_dict()}


def cal_clear(m, ch):
    return cal_apply(m, ch, {})


def energy_set(m, ch, mwh):
    m.energy[ch] = EnergyCounter(mwh)
    m.persist(m.board.ticks_ms())
    return {"ch%d" % (ch + 1): reading.kwh_text(mwh)}


def energy_reset(m, ch):
    return energy_set(m, ch, 0)


def reboot(m):
    m.shutdown()
    m.board.reset()
