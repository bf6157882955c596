# SPDX-License-Identifier: MIT
"""A running meter's self-test: pass/warn/fail checks from its console.

    with MeterLink.open(port) as link:
        report = diagnose(link, board=load_board("esp32"))    # asks status, config, adc, scope
    report.checks        # [Check(name, status, detail, input, value)], in a fixed order
    report.exit_code     # 0: nothing failed (warnings allowed), 1: something failed
    report.to_dict()     # the --json form

    checks = evaluate(data, board)        # the rules alone, on gathered answers (tests)

What is checked, per ADC input (from `adc` and a `scope` capture): bias near its expected
mid-scale code, the sensor connected (not a floating pin), clipping, noise floor; for the
meter (from `status` and `config get`): sample rate, sampling jitter, duty, Wi-Fi and RSSI,
the last HTTP post and MQTT publish, free heap, problems the firmware reported.

How a floating input is told from a connected CT: a CT is a current source into a burden
resistor sitting on the bias divider, so a connected input sits at the bias code and, with
no load, shows only the ADC's own noise (2-4 codes RMS on an ESP32); with a load it carries
a waveform that repeats every mains period. A floating ESP32 ADC pin (CT unplugged and no
burden on the board) keeps whatever charge the sampling capacitor leaves: it reads near 0
or wanders, with noise far above a biased divider's and no mains periodicity. So: a mean
near a rail fails, a signal above the noise limit that does not repeat from one mains
period to the next fails, a DC level that wanders between the start and the end of the
capture warns (a CT cannot pass DC). A CT unplugged from a board that carries its own burden
resistor reads exactly like a connected CT with no load; the report says so.

The capture is analysed by comparing it with itself one mains period later (the period is
searched between 45 and 65 Hz, fractionally): the median of those differences gives the
noise floor (load or not: the waveform cancels) and, against the signal's RMS, how
periodic the input is. Medians, because a capture spans several measuring windows with a
short unsampled gap between them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ctmeter import scope as scope_api
from ctmeter.meterlink import MeterError

PASS, WARN, FAIL = "pass", "warn", "fail"
_RANK = {PASS: 0, WARN: 1, FAIL: 2}

ADC_MAX = 4095
# Bias: the divider is two equal resistors from 3.3 V. On an ESP32 at 11 dB its code moves
# with the chip's Vref (1000..1200 mV, a +-9 % gain spread: Espressif's characterisation,
# ctmeter.model.adc) and the resistors' tolerance (1 % each: +-2 % at most).
SUPPLY_V = 3.3
BIAS_DIVIDER_TOL = 0.02
# Beyond the pass band but inside this fraction of full scale, one half-wave just loses
# headroom: warn. Outside it the divider is wrong or the input is not biased at all: fail.
BIAS_WARN_RANGE = (0.25, 0.75)
# Chips without a characterisation in the model: a wide band around the divider's code.
BIAS_GENERIC_RANGE = (0.30, 0.70)
# Within this many codes of a rail the input is floating, shorted, or the divider is open.
RAIL_CODES = 200
# Noise floor, codes RMS: an ESP32 ADC1 input on a decoupled bias reads 2-4 codes (the
# sensor model uses 2); 6 leaves margin. Above 20 the noise alone is ~0.5 A on an
# SCT-013-030 (0.024 A/code): low loads become unmeasurable.
NOISE_PASS_CODES = 6.0
NOISE_FAIL_CODES = 20.0
# Periodicity: residual after one mains period relative to the signal (0 = repeats exactly,
# ~1 = unrelated noise). A load's waveform with ADC noise stays far below 0.3 from ~10 codes
# RMS up; a floating pin's noise is near 1.
PERIODIC_MAX = 0.3
# A CT passes no DC: its mean over one period may move by noise only (2 codes / sqrt(80)).
DRIFT_WARN_CODES = 8.0
MAINS_SEARCH_HZ = (45.0, 65.0)
# Below this fraction of unclipped sample pairs the noise floor is not estimated.
MIN_NOISE_PAIRS = 0.25
# Peak headroom: an ESP32 at 11 dB leaves its straight line above raw 2880 (the board
# file's nonlinear_above_raw): peaks there read low; warn.
# Sampling rate: the achieved rate may differ from the configured one by the pacing
# period's rounding to whole microseconds (0.1 % at 3 kHz); beyond 0.5 % warn, 2 % fail
# (Irms is still right, but windows no longer hold whole cycles and power gets biased).
RATE_WARN = 0.005
RATE_FAIL = 0.02
# Jitter: worst lateness of a sample, as a fraction of the sample period. A quarter period
# shifts the phase by 4.5 degrees at 50 Hz / 4 kHz at worst; a whole period late means the
# sampling loop is starved (Wi-Fi, console, garbage collection).
JITTER_WARN = 0.25
JITTER_FAIL = 1.0
# Duty: the fraction of time sampled. Energy integrates all elapsed time anyway, but loads
# that change between windows are missed; below half the meter misses more than it sees.
DUTY_WARN = 0.90
DUTY_FAIL = 0.50
# Wi-Fi RSSI (dBm): -67 is the usual "reliable" limit; below -80 posts time out, and a
# blocking post stalls sampling.
RSSI_WARN = -67
RSSI_FAIL = -80
# Free heap (bytes): a `scope` or `config get` answer needs 10-20 KB in one piece; below
# 24 KB console lines start being dropped ("out of memory, line dropped"), below 12 KB
# readings and posts fail.
HEAP_WARN = 24 * 1024
HEAP_FAIL = 12 * 1024
DIAG_SCOPE_N = scope_api.DEFAULT_N


@dataclass
class Check:
    name: str
    status: str
    detail: str
    input: int | None = None
    value: object = None

    def to_dict(self):
        return {"name": self.name, "status": self.status, "detail": self.detail,
                "input": self.input, "value": self.value}


@dataclass
class Report:
    checks: list
    device: str = ""
    version: str = ""
    board: str = ""
    info: dict = field(default_factory=dict)

    def count(self, status):
        return sum(1 for c in self.checks if c.status == status)

    @property
    def worst(self):
        return max((c.status for c in self.checks), key=_RANK.get, default=PASS)

    @property
    def exit_code(self):
        """0 when nothing failed (warnings allowed), 1 when a check failed."""
        return 1 if self.worst == FAIL else 0

    def to_dict(self):
        return {"device": self.device, "version": self.version, "board": self.board,
                "ok": self.worst != FAIL, "worst": self.worst,
                "summary": {s: self.count(s) for s in (PASS, WARN, FAIL)},
                "checks": [c.to_dict() for c in self.checks], "info": self.info}

    def lines(self):
        out = []
        for c in self.checks:
            where = f"in{c.input}" if c.input is not None else ""
            out.append(f"{c.status.upper():<5} {c.name:<12} {where:<4} {c.detail}")
        out.append(f"summary: {self.count(PASS)} pass, {self.count(WARN)} warn, "
                   f"{self.count(FAIL)} fail")
        return out


# ---------------------------------------------------------------------- signal analysis


def analyse(codes, sample_rate_hz: float) -> dict:
    """Mean, AC RMS, noise floor, periodicity and DC drift of one capture (see module doc)."""
    x = np.asarray(codes, dtype=np.float64)
    mean = float(x.mean())
    ac_rms = float(np.sqrt(np.mean((x - mean) ** 2)))
    out = {"mean": mean, "ac_rms": ac_rms, "min": int(x.min()), "max": int(x.max()),
           "clipped": int(np.count_nonzero((x <= 0) | (x >= ADC_MAX)))}
    lo = max(2, int(sample_rate_hz / MAINS_SEARCH_HZ[1]))
    hi = int(math.ceil(sample_rate_hz / MAINS_SEARCH_HZ[0]))
    if x.size < 2 * hi + 4:
        out.update(period=None, mains_hz=None, noise=ac_rms, residual=1.0, drift=0.0)
        return out

    inside = (x > 0) & (x < ADC_MAX)  # clipped samples say nothing about noise

    def diffs(lag):  # x[k + lag] - x[k] where all samples involved are unclipped
        i = int(lag)
        f = lag - i
        m = x.size - i - 1
        later = x[i:i + m] * (1 - f) + x[i + 1:i + 1 + m] * f
        ok = inside[:m] & inside[i:i + m] & inside[i + 1:i + 1 + m]
        return (later - x[:m])[ok]

    def spread(lag):
        d = diffs(lag)
        return float(np.median(np.abs(d))) if d.size else math.inf

    best = min(range(lo, hi + 1), key=spread)
    fine = np.arange(max(lo, best - 1), min(hi, best + 1) + 1e-9, 0.05)
    period = float(min(fine, key=spread))
    usable = diffs(period).size
    if usable < MIN_NOISE_PAIRS * x.size:  # mostly clipped: no noise estimate
        med = math.nan
    else:
        med = spread(period)
    sigma_d = med / 0.6745  # the differences' standard deviation, if Gaussian
    noise = sigma_d / math.sqrt(2)  # two independent samples per difference
    residual = sigma_d / (math.sqrt(2) * ac_rms) if ac_rms > 0 else 0.0
    if residual > PERIODIC_MAX:
        # nothing repeats: the whole AC part is noise (and the lag that happened to give the
        # smallest median would underestimate it)
        noise = ac_rms
    p = int(round(period))
    drift = abs(float(x[:p].mean()) - float(x[-p:].mean()))
    out.update(period=period, mains_hz=sample_rate_hz / period, noise=noise,
               residual=residual, drift=drift)
    return out


def bias_band(board) -> tuple:
    """(lo, hi, how) codes a 3.3 V / 2 bias may read on `board` (a boards.Board or None)."""
    chip = getattr(board, "chip", "esp32")
    atten = float(getattr(board, "atten", 11))
    if chip in ("esp32", "unix"):
        from ctmeter.model.adc import VREF_RANGE_MV, Esp32Adc

        v = SUPPLY_V / 2
        codes = [float(Esp32Adc(atten_db=atten, vref_mv=vref, noise_lsb=0, inl_lsb=0,
                                dnl_lsb=0).mean_code(vv))
                 for vref in VREF_RANGE_MV
                 for vv in (v * (1 - BIAS_DIVIDER_TOL), v * (1 + BIAS_DIVIDER_TOL))]
        return math.floor(min(codes)), math.ceil(max(codes)), \
            f"ESP32 at {atten:g} dB, Vref 1000..1200 mV"
    lo, hi = BIAS_GENERIC_RANGE
    return int(lo * ADC_MAX), int(hi * ADC_MAX), f"no ADC characterisation for {chip}: wide band"


# ---------------------------------------------------------------------- the rules


def _rounded(x, digits):
    return None if x is None or math.isnan(x) else round(x, digits)


def check_bias(inp, mean, band) -> Check:
    lo, hi, how = band
    value = round(mean, 1)
    if lo <= mean <= hi:
        return Check("bias", PASS, f"{mean:.0f} codes (expected {lo}..{hi}, {how})", inp, value)
    frac = mean / ADC_MAX
    if BIAS_WARN_RANGE[0] <= frac <= BIAS_WARN_RANGE[1]:
        return Check("bias", WARN, f"{mean:.0f} codes, outside {lo}..{hi} ({how}): one "
                                   "half-wave has less headroom; check the divider", inp, value)
    return Check("bias", FAIL, f"{mean:.0f} codes, far from mid-scale {lo}..{hi}: the input "
                               "is not biased (divider open or wrong, input floating or shorted)",
                 inp, value)


def check_connected(inp, a, scale, voltage) -> Check:
    what = "voltage sensor" if voltage else "CT"
    unit = "V" if voltage else "A"
    mean, ac = a["mean"], a["ac_rms"]
    value = {"residual": _rounded(a["residual"], 3), "ac_rms_codes": round(ac, 2),
             "drift_codes": round(a["drift"], 1)}
    if mean < RAIL_CODES or mean > ADC_MAX - RAIL_CODES:
        rail = "0" if mean < RAIL_CODES else "full scale"
        return Check("connected", FAIL, f"input sits near {rail} ({mean:.0f} codes): floating "
                                        f"pin or short - {what} unplugged, bias divider open?",
                     inp, value)
    drifting = a["drift"] > DRIFT_WARN_CODES
    if a["residual"] > PERIODIC_MAX:  # no waveform repeating with the mains
        if ac > NOISE_FAIL_CODES:
            return Check("connected", FAIL, f"{ac:.0f} codes RMS that do not repeat with the "
                                            f"mains (residual {a['residual']:.2f}): a floating "
                                            f"input ({what} unplugged?) or interference",
                         inp, value)
        if ac > NOISE_PASS_CODES or drifting:
            return Check("connected", WARN, f"{ac:.0f} codes RMS of noise, drift "
                                            f"{a['drift']:.0f} codes, no mains waveform: "
                                            f"floating input ({what} unplugged?) or "
                                            "interference", inp, value)
        if voltage:
            return Check("connected", FAIL, "no mains voltage seen (only noise): voltage "
                                            "sensor unplugged or not powered", inp, value)
        return Check("connected", PASS, "quiet input at the bias: CT connected, no load (an "
                                        "unplugged CT reads the same when the burden "
                                        "resistor is on the board)", inp, value)
    if drifting:
        return Check("connected", WARN, f"the DC level wanders by {a['drift']:.0f} codes within "
                                        f"the capture: a {what} passes no DC; loose contact or "
                                        "floating input?", inp, value)
    hz = f", {a['mains_hz']:.1f} Hz" if a.get("mains_hz") else ""
    return Check("connected", PASS, f"mains-periodic signal: {what} connected, "
                                    f"{ac * scale:.3g} {unit} RMS (raw scale){hz}", inp, value)


def check_clipping(inp, adc_in, a, board) -> Check:
    clipped = max(int(adc_in.get("clipped") or 0), a["clipped"])
    lo_code = min(int(adc_in.get("min", a["min"])), a["min"])
    hi_code = max(int(adc_in.get("max", a["max"])), a["max"])
    value = {"clipped": clipped, "min": lo_code, "max": hi_code}
    if clipped:
        return Check("clipping", FAIL, f"{clipped} samples at 0 or {ADC_MAX}: overload, readings "
                                       "low; use a CT with a higher rating or a smaller burden",
                     inp, value)
    knee = getattr(board, "raw", {}).get("nonlinear_above_raw") if board else None
    if knee and hi_code > knee:
        return Check("clipping", WARN, f"peaks reach {hi_code}, above raw {knee} where the ADC "
                                       "leaves its straight line: high currents read low",
                     inp, value)
    return Check("clipping", PASS, f"none (codes {lo_code}..{hi_code})", inp, value)


def check_noise(inp, a, scale, voltage) -> Check:
    noise = a["noise"]
    unit = "V" if voltage else "A"
    if math.isnan(noise):
        return Check("noise", WARN, "not measurable: the input clips most of the time", inp,
                     None)
    text = f"{noise:.1f} codes RMS = {noise * scale:.3g} {unit}"
    value = round(noise, 2)
    if noise <= NOISE_PASS_CODES:
        return Check("noise", PASS, text, inp, value)
    if noise <= NOISE_FAIL_CODES:
        return Check("noise", WARN, f"{text}, above {NOISE_PASS_CODES:g} codes: check the bias "
                                    "decoupling and the cable routing", inp, value)
    return Check("noise", FAIL, f"{text}, above {NOISE_FAIL_CODES:g} codes: low loads "
                                "unmeasurable", inp, value)


def meter_checks(status, cfg, jitter_us) -> list:
    """Sample rate, jitter, duty, Wi-Fi, posting, heap and problems from status + config."""
    out = []
    want = float(cfg.get("sample_rate_hz") or 0)
    rate = float(status.get("sample_rate_hz") or 0)
    if want > 0:
        err = abs(rate - want) / want
        st = PASS if err <= RATE_WARN else WARN if err <= RATE_FAIL else FAIL
        out.append(Check("sample rate", st, f"{rate:g} Hz (configured {want:g} Hz, "
                                            f"{err * 100:.2f} % off)", None, rate))
        period_us = 1e6 / want
        frac = (jitter_us or 0) / period_us
        st = PASS if frac <= JITTER_WARN else WARN if frac <= JITTER_FAIL else FAIL
        out.append(Check("jitter", st, f"worst sample {jitter_us or 0} us late "
                                       f"({frac * 100:.0f} % of the {period_us:.0f} us period)",
                         None, jitter_us))
    duty = float(status.get("duty") or 0)
    interval = float(cfg.get("interval_s") or 10)
    if duty == 0 and float(status.get("uptime_s") or 0) < 2 * interval:
        out.append(Check("duty", WARN, "not measured yet (the first reading interval has not "
                                       "ended); run diag again", None, duty))
    else:
        st = PASS if duty >= DUTY_WARN else WARN if duty >= DUTY_FAIL else FAIL
        out.append(Check("duty", st, f"{duty * 100:.1f} % of the time sampled", None, duty))
    out.append(_wifi_check(status, cfg))
    out += _post_checks(status, cfg, interval)
    heap = status.get("heap_free")
    if isinstance(heap, int):
        st = PASS if heap >= HEAP_WARN else WARN if heap >= HEAP_FAIL else FAIL
        low = "" if st == PASS else " (low: console lines and posts may fail)"
        out.append(Check("heap", st, f"{heap // 1024} KB free{low}", None, heap))
    problems = status.get("problems") or []
    if problems:
        out.append(Check("problems", WARN, "; ".join(str(p) for p in problems), None, problems))
    else:
        out.append(Check("problems", PASS, "none reported", None, []))
    return out


def _wifi_check(status, cfg):
    wifi = str(status.get("wifi") or "")
    rssi = status.get("rssi")
    ssid = (cfg.get("wifi") or {}).get("ssid") or ""
    if wifi == "sim":
        return Check("wifi", PASS, "virtual board (no radio)", None, wifi)
    if not ssid:
        return Check("wifi", WARN, "no Wi-Fi configured: the meter measures but cannot post",
                     None, wifi)
    if wifi != "connected":
        return Check("wifi", FAIL, f"not connected to {ssid!r} ({wifi or 'down'})", None, wifi)
    if not isinstance(rssi, (int, float)):
        return Check("wifi", WARN, f"connected to {ssid!r}, RSSI unknown", None, rssi)
    st = PASS if rssi >= RSSI_WARN else WARN if rssi >= RSSI_FAIL else FAIL
    weak = "" if st == PASS else ": weak, posts may time out and stall sampling"
    return Check("wifi", st, f"connected to {ssid!r}, RSSI {rssi} dBm{weak}", None, rssi)


def _post_checks(status, cfg, interval):
    out = []
    http = bool((cfg.get("http") or {}).get("enabled"))
    mqtt = bool((cfg.get("mqtt") or {}).get("enabled"))
    young = float(status.get("uptime_s") or 0) < 2 * interval
    if not http and not mqtt:
        return [Check("post", WARN, "neither HTTP nor MQTT is enabled: readings go nowhere")]
    if http:
        last = str(status.get("last_post") or "")
        outbox = status.get("outbox") or {}
        depth = int(outbox.get("depth") or 0) if isinstance(outbox, dict) else 0
        counts = f"{status.get('posts_ok', 0)} ok, {status.get('posts_failed', 0)} failed"
        if last.startswith("ok"):
            st = WARN if depth else PASS
            waiting = f"; {depth} readings waiting in the outbox" if depth else ""
            out.append(Check("post", st, f"last HTTP post {last} ({counts}){waiting}", None,
                             last))
        elif last == "none yet":
            out.append(Check("post", WARN if young else FAIL,
                             "no HTTP post yet" + ("" if young else
                                                   f" after {status.get('uptime_s')} s"),
                             None, last))
        else:
            out.append(Check("post", FAIL, f"last HTTP post failed: {last} ({counts}; "
                                           f"{depth} readings in the outbox)", None, last))
    if mqtt:
        res = str(status.get("mqtt") or "")
        st = PASS if res == "ok" else WARN if res == "none yet" and young else FAIL
        out.append(Check("mqtt", st, f"last MQTT publish: {res}", None, res))
    return out


def input_checks(inp, adc_in, a, scale, voltage, board) -> list:
    band = bias_band(board)
    mean = float(adc_in["mean"]) if "mean" in adc_in else a["mean"]
    return [check_bias(inp, mean, band),
            check_connected(inp, a, scale, voltage),
            check_clipping(inp, adc_in, a, board),
            check_noise(inp, a, scale, voltage)]


def evaluate(data: dict, board=None) -> list:
    """All checks from gathered answers: data = {"status", "config", "adc", "captures":
    {input: Capture}, "jitter_us"}."""
    checks = []
    cfg = data["config"]
    for inp, cap in sorted(data["captures"].items()):
        a = analyse(cap.codes, cap.sample_rate_hz)
        adc_in = data["adc"].get(f"in{inp}", {})
        checks += input_checks(inp, adc_in, a, cap.scale, cap.voltage, board)
    checks += meter_checks(data["status"], cfg, data.get("jitter_us",
                                                         data["status"].get("jitter_us")))
    return checks


# ---------------------------------------------------------------------- gathering


def gather(link, n: int = DIAG_SCOPE_N, board_name: str = "esp32", step=None) -> dict:
    """Ask the meter for everything the checks need. `step(name)` is called before each."""
    def say(name):
        if step is not None:
            step(name)

    say("status")
    status = link.cmd("status")
    say("config")
    cfg = scope_api.read_config(link)
    say("adc")
    adc = link.cmd("adc")
    inputs = sorted(int(k[2:]) for k in adc if k.startswith("in") and k[2:].isdigit())
    if not inputs:
        count = len(cfg.get("channels") or []) + (1 if cfg.get("voltage") else 0)
        inputs = list(range(count))
    captures = {}
    for inp in inputs:
        say(f"scope in{inp}")
        captures[inp] = scope_api.capture(link, inp, n, board=board_name, cfg=cfg)
    say("status")
    try:
        again = link.cmd("status")
        jitter = max(int(status.get("jitter_us") or 0), int(again.get("jitter_us") or 0))
    except MeterError:
        jitter = status.get("jitter_us")
    return {"status": status, "config": cfg, "adc": adc, "captures": captures,
            "jitter_us": jitter}


def diagnose(link, board=None, n: int = DIAG_SCOPE_N, step=None) -> Report:
    """Gather from the meter on `link` and evaluate; `board` a boards.Board (or None: ESP32)."""
    name = getattr(board, "name", "esp32")
    data = gather(link, n, name, step)
    status = data["status"]
    return Report(checks=evaluate(data, board), device=str(status.get("device") or ""),
                  version=str(status.get("version") or ""), board=name,
                  info={"uptime_s": status.get("uptime_s"), "windows": status.get("windows"),
                        "inputs": sorted(data["captures"])})
