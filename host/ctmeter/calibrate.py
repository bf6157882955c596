# SPDX-License-Identifier: MIT
"""Calibrate one current channel of a running meter against reference loads.

    from ctmeter.meterlink import MeterLink
    from ctmeter.calibrate import Session
    with MeterLink.open("/dev/ttyUSB0") as link:
        s = Session.start(link, channel=0, board="esp32")   # status, config, cal show
        s.zero()                          # every load off: noise floor and bias code
        s.point(true_amps=3.02)           # reference load 1 (clamp meter reading)
        s.point(true_watts=3450, volts=231)   # a resistive load: A = W / V
        s.point(true_amps=29.7)
        s.voltage(231.4)                  # with a voltage channel: a multimeter's reading
        fit = s.fit()                     # Calibration + residual per point; nothing sent
        s.apply()                         # `cal apply <ch> <json>`, checked with `cal show`
        s.phase()                         # voltage channel, a resistive load on: the angle
        s.validate(true_amps=14.9)        # the calibrated meter's `read` vs a reference
        s.write_record("calibration/records")
    s.save("session.json"); Session.load("session.json", link)   # step-by-step use

The device measures, the host fits. `cal zero` / `cal point` return the channel's
*uncalibrated* Irms over 25 windows (~5 s); `scope` captures of each point give its waveform.

How the meter's error behaves, and what the fit determines
----------------------------------------------------------
measured Irms m of a true current I (resistive, i.e. sinusoid-like, load):

    m = sqrt( N(g * I)^2 + n^2 )

* g, the gain: CT ratio error, burden (or internal burden) tolerance, the bias divider and
  the ESP32's Vref (1000-1200 mV, a straight gain on the nominal scale). One number.
* n, the noise floor: ADC noise and quantization are uncorrelated with the signal and add
  *in quadrature*, so the zero step's Irms is subtracted in quadrature (a linear offset would
  be wrong at every current but one).
* N, the ADC's top end: at 11 dB the ESP32 leaves its straight line above raw 2880
  (`nonlinear_above_raw` in boards/*.json; Espressif's own calibration switches to a lookup
  curve there). The half-cycles whose peaks pass that knee are stretched or squeezed, so
  Irms deviates by up to several per cent at the rating of an SCT-013-030 - with a shape that
  depends on the chip's Vref. The lower half of the swing stays far inside the linear range
  (bias ~1.65 V, usable down to 150 mV), and a resistive load's current is half-wave
  symmetric. So a capture of the highest point measures the transfer directly: over whole
  half-cycles ("lobes", cut at the bias, complete within a contiguous run of the capture),
  the level the upper lobes reach for c samples per half-cycle must mirror the level of the
  lower lobes for the same c; where it does not, the difference is the ADC's deviation D(x)
  at that code. Counting per half-cycle, not per sample, makes a wrong bias show as an
  offset of the levels below the knee, which fixes the bias too. The gaps between the
  capture's runs and the mains frequency do not matter. Pushing the linearised waveform,
  scaled from 0 to 110 % of the top point, through x + D(x) gives N. Below the knee D is 0
  by construction (the board file says where it may start).

So a zero and 3 reference loads determine: n (zero), N (the top load's waveform), and g
(least squares in relative error over all points). The points are not interpolated: the
residual at each point is an honest check of the model, shown before anything is applied.
(A table drawn straight through the points instead misses the knee's onset between them:
1.5-4.7 % error between a 50 % and a 100 % point in the sensor model; this fit stays
within 0.2 % from 10 to 100 % of rating over Vref 1000-1200 mV and +-5 % gain, and within
0.13 % on the virtual board running the firmware: tests/test_calibrate.py.)
Limits: N is computed for the reference load's waveform; a peaky load (SMPS, dimmer) of the
same Irms reaches further into the knee, so its reading above ~60 % of rating is less exact.
CT ratio changes with current (magnetising current, saturation) are not modelled: they show
as residuals that trend with current.

The result is a `meter.calib.Calibration` (the firmware's own module): the table maps
measured -> linear Irms (noise removed in quadrature, top end straightened), `gain` scales it,
`noise_floor` (half the noise Irms) makes no load read 0, `offset` is 0. The table is chosen
(fewest knots within 0.02 % of the curve, else the most accurate) to fit `cal apply <ch>
<json>` into the console's 240-byte line, with room left for a phase.

With a voltage channel: the voltage's gain is reference / uncalibrated Vrms (the mains gives
one voltage, so a gain is all it can determine; the ZMPT101B is linear there). The phase
needs a resistive load: its power factor is 1, so the meter's P/S = cos(t - p) where t is
the current/voltage angle of the two sensors and p the applied phase_deg. `read` gives P/S
but not the sign of t, so `phase` measures it at the applied p0 and at p0 +- 5 degrees (a
temporary `cal apply`, undone if anything fails): cos(t - p0) and cos(t - p0 - d) give t with
its sign, whatever sign convention the firmware uses. Without a voltage channel phase_deg is
kept from the previous calibration.
"""

from __future__ import annotations

import json
import math
import re
import time
from contextlib import nullcontext
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from meter.calib import Calibration, CalibrationError

from ctmeter import __version__
from ctmeter import scope as scope_api
from ctmeter.calibrate_fit import (
    CAPTURE_CHUNK,
    CalibrateError,
    Point,
    Zero,
    apply_line,
    fit_points,
    short_number,
)
from ctmeter.paths import CALIBRATION
from ctmeter.transport import EXIT_DEVICE, EXIT_USAGE

RECORDS = CALIBRATION / "records"
SESSION_FORMAT = 1
RECORD_FORMAT = 1

CAL_WINDOWS = 25  # windows per `cal zero` / `cal point` on the device
CAPTURE_CHUNKS = 4  # 2000 codes, ~25 mains cycles, per point
MAX_POINTS = 8
MIN_SEPARATION = 0.2  # two points closer than this (relative) add nothing
RATIO_RANGE = (0.67, 1.5)  # reference / uncalibrated: beyond it the reference is wrong
CONSISTENCY = 0.15  # a point's ratio vs the others' median
ZERO_MAX_CODES = 10.0  # rms codes at "no load": above it a load is on
NO_LOAD_NOISE = 5.0  # a point below 5 x the noise floor has no load on
DEFAULT_NOISE_CODES = 2.0  # assumed when no zero step was done (for the no-load check)
ADC_MAX_CODE = 4095
VOLTS_RANGE = (50.0, 400.0)
AMPS_MAX = 1000.0
WINDOW_S = 0.2  # one window: 10 mains cycles at 50 Hz
PHASE_PROBE_DEG = 5.0  # the phase step's second measurement is taken this far off
PHASE_RESERVE = len(',"phase_deg":-12.345')  # line room kept for a phase measured later
MIN_PF_RESISTIVE = 0.9  # a "resistive" load with a lower power factor is not one
MIN_MAINS_V = 20.0  # less on the voltage input: no mains on it


def _usage(message, hint=""):
    return CalibrateError(message, hint, EXIT_USAGE)


# ---------------------------------------------------------------- reference values

_REF_RE = re.compile(
    r"^\s*(?P<v1>[0-9]*\.?[0-9]+)\s*(?P<u1>a|amps?|w|watts?)?"
    r"(?:\s*(?:@|at|,)?\s*(?P<v2>[0-9]*\.?[0-9]+)\s*(?P<u2>v|volts?))?\s*$", re.IGNORECASE)


def reference_amps(true_amps=None, true_watts=None, volts=None):
    """The reference current in A from a current, or from the power of a resistive load and
    its voltage (A = W / V); CalibrateError (usage) on anything absurd."""
    if true_amps is not None:
        if true_watts is not None or volts is not None:
            raise _usage("give either the current or the power and voltage, not both")
        a = _positive("reference current", true_amps, "A")
        if a > AMPS_MAX:
            raise _usage(f"reference current {a:g} A is above {AMPS_MAX:g} A",
                         "is it a power in W? then give the voltage too (--watts, --volts)")
        return a
    if true_watts is None:
        raise _usage("no reference value", "give the current (--amps) or the power and "
                     "voltage of a resistive load (--watts, --volts)")
    w = _positive("reference power", true_watts, "W")
    if volts is None:
        raise _usage("a reference power needs its voltage",
                     "a resistive load draws W / V amps: give --volts (the mains voltage)")
    v = _positive("voltage", volts, "V")
    if not VOLTS_RANGE[0] <= v <= VOLTS_RANGE[1]:
        raise _usage(f"voltage {v:g} V is not a mains voltage "
                     f"({VOLTS_RANGE[0]:g}-{VOLTS_RANGE[1]:g} V)")
    return reference_amps(true_amps=w / v)


def _positive(what, x, unit):
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x <= 0:
        raise _usage(f"{what} must be a positive number of {unit}, got {x!r}")
    return float(x)


def parse_reference(text):
    """`8.5`, `8.5A`, `2000W@230V`, `2000 W 231 V` -> dict for reference_amps()."""
    m = _REF_RE.match(text or "")
    if not m:
        raise _usage(f"cannot read {text!r} as a reference",
                     "type a current like 8.5 or 8.5A, or a power and voltage like 2000W@230V")
    u1 = (m["u1"] or "a")[0].lower()
    v1 = float(m["v1"])
    if u1 == "a":
        if m["v2"]:
            raise _usage("a current takes no voltage", "type 8.5A, or 2000W@230V")
        return {"true_amps": v1}
    if not m["v2"]:
        raise _usage("a power needs its voltage", "type it as 2000W@230V")
    return {"true_watts": v1, "volts": float(m["v2"])}


# ---------------------------------------------------------------- the session


def _now():
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def _sensor_rating(sensor):
    """The rated current of a sensor named in the meter's config (None if unknown)."""
    from ctmeter.model.profiles import ProfileError, load_profile, profile_names

    def norm(s):
        return re.sub(r"[^a-z0-9]", "", str(s).lower())

    for name in profile_names():
        if norm(name) == norm(sensor):
            try:
                return load_profile(name).rating
            except ProfileError:
                return None
    return None


def _board_knee(board):
    from ctmeter.boards import load_board

    return load_board(board).raw.get("nonlinear_above_raw")


class Session:
    """One channel's calibration session (see the module doc). Methods that talk to the
    meter need `link` (a MeterLink); fit() and the records do not."""

    def __init__(self, link=None, *, channel=0, device=None, version=None, sensor=None,
                 rating=None, amps_per_count=None, board="esp32", knee=None,
                 previous=None, progress=None, vch=None, vsensor=None, vprevious=None):
        self.link = link
        self.channel = int(channel)
        self.device = device
        self.version = version
        self.sensor = sensor
        self.rating = rating
        self.amps_per_count = amps_per_count
        self.board = board
        self.knee = knee
        self.previous = previous or {}
        self.vch = vch  # the voltage input's index (None: the meter has no voltage channel)
        self.vsensor = vsensor
        self.vprevious = vprevious or {}
        self.vpoints = []  # voltage references: {"true_volts", "raw_vrms", "windows"}
        self.zero_step = None
        self.points = []
        self.applied = None  # {"date", "calibration"} once sent to the meter
        self.validations = []
        self.started = _now()
        self.record_path = None
        self.progress = progress or (lambda label, seconds: nullcontext())
        self.warnings = []

    # -- setup
    @classmethod
    def start(cls, link, channel=0, board="esp32", rating=None, progress=None):
        knee = _board_knee(board)  # an unknown board is refused before the meter is asked
        s = cls(link, channel=channel, board=board, knee=knee, progress=progress)
        status = s._cmd("status")
        chans = s._cmd("config get channels").get("channels")
        if not isinstance(chans, list) or not chans:
            raise CalibrateError("the meter reported no channels", exit_code=EXIT_DEVICE)
        if not 0 <= channel < len(chans):
            raise _usage(f"the meter has no channel {channel + 1} "
                         f"(it has {len(chans)}: 1..{len(chans)})")
        volt = s._cmd("config get voltage").get("voltage")
        shown = s._cmd("cal show")
        ch = chans[channel]
        s.device, s.version = status.get("device"), status.get("version")
        s.sensor = ch.get("sensor")
        s.rating = rating if rating is not None else _sensor_rating(s.sensor)
        s.amps_per_count = ch.get("amps_per_count")
        s.previous = shown.get(s.ch_name) or {}
        if isinstance(volt, dict):
            s.vch, s.vsensor = len(chans), volt.get("sensor")
            s.vprevious = shown.get("voltage") or {}
        return s

    def check_device(self):
        """The link's meter is this session's meter, its channel scale unchanged."""
        status = self._cmd("status")
        if status.get("device") != self.device:
            raise CalibrateError(
                f"this session is for meter {self.device!r}, the port has {status.get('device')!r}",
                "use the right --port, or start a new session (`ctmeter calibrate start`)")
        chans = self._cmd("config get channels").get("channels") or []
        if self.channel >= len(chans) or \
                chans[self.channel].get("amps_per_count") != self.amps_per_count:
            raise CalibrateError("the channel's configuration changed since the session "
                                 "started", "start a new session")

    @property
    def ch_name(self):
        return f"ch{self.channel + 1}"

    def _cmd(self, line, label=None, seconds=None):
        if self.link is None:
            raise CalibrateError("this step needs the meter: no link open")
        with self.progress(label, seconds) if label else nullcontext():
            return self.link.cmd(line)

    def _capture(self):
        """CAPTURE_CHUNKS captures of CAPTURE_CHUNK codes (ctmeter.scope): (codes, runs)."""
        # the channels are all capture() needs (the whole config may not fit the heap)
        cfg = {"channels": self._cmd("config get channels").get("channels") or [],
               "device_id": self.device}
        codes, runs = [], []
        for _ in range(CAPTURE_CHUNKS):
            cap = scope_api.capture(self.link, self.channel, CAPTURE_CHUNK, board=self.board,
                                    cfg=cfg)
            codes += [int(c) for c in cap.codes]
            runs += cap.segments or [len(cap.codes)]
        return codes, runs

    @property
    def noise(self):
        if self.zero_step is not None:
            return self.zero_step.raw_irms
        return DEFAULT_NOISE_CODES * (self.amps_per_count or 0.0)

    # -- steps
    def zero(self):
        """No load: the noise floor (raw Irms) and the bias code of the channel."""
        ans = self._cmd(f"cal zero {self.channel}", "measuring with no load",
                        CAL_WINDOWS * WINDOW_S)
        adc = self._cmd("adc").get(f"in{self.channel}") or {}
        z = Zero(float(ans["raw_irms"]), float(ans["rms_codes"]), int(ans["windows"]),
                 float(adc.get("mean", 0.0)), int(adc.get("min", 0)), int(adc.get("max", 0)))
        if z.rms_codes > ZERO_MAX_CODES:
            raise CalibrateError(
                f"{self.ch_name} is not at zero: it measures {z.raw_irms:.3g} A "
                f"({z.rms_codes:.1f} codes rms; the ADC's noise alone is ~2)",
                "switch off every load on the circuit the CT clamps (or take the CT off "
                "the cable), then run the zero step again")
        if z.rms_codes < 0.1:
            self.warnings.append(f"{self.ch_name} reads a constant code ({z.bias_code:.0f}): "
                                 "is the input floating or shorted? (`ctmeter diag`)")
        self.zero_step = z
        return z

    def point(self, true_amps=None, true_watts=None, volts=None, replace=None):
        """One reference load: measure the uncalibrated Irms and the waveform."""
        amps = reference_amps(true_amps, true_watts, volts)
        ref = {"amps": amps} if true_amps is not None else {"watts": true_watts, "volts": volts}
        if replace is not None and not 1 <= replace <= len(self.points):
            raise _usage(f"no point {replace} to replace (points: 1..{len(self.points)})")
        if replace is None and len(self.points) >= MAX_POINTS:
            raise _usage(f"at most {MAX_POINTS} points", "replace one (--replace N)")
        ans = self._cmd(f"cal point {self.channel} {amps:.6g}", "measuring the reference load",
                        CAL_WINDOWS * WINDOW_S)
        raw = float(ans["raw_irms"])
        n = self.noise
        if raw < NO_LOAD_NOISE * n:
            raise CalibrateError(
                f"no load on {self.ch_name}: it measures {raw:.3g} A, its noise level",
                "is the reference load switched on, and does the CT clamp ONE conductor "
                "(live or neutral, not the whole cable) of that circuit?")
        codes, runs = self._capture()
        # the code range over every window of the measurement (firmware that reports it)
        # and of the capture: a load that clips in any of them is no reference
        lo = min(min(codes), int(ans.get("min_code", ADC_MAX_CODE)))
        hi = max(max(codes), int(ans.get("max_code", 0)))
        p = Point(amps, raw, int(ans["windows"]), ref, codes, lo, hi, runs)
        if p.max_code >= ADC_MAX_CODE or p.min_code <= 0:
            raise CalibrateError(
                f"the ADC clips at this load ({raw:.3g} A uncalibrated; codes reach "
                f"{p.min_code if p.min_code <= 0 else p.max_code})",
                "the load is beyond what this sensor and burden can measure: use a smaller one")
        if not RATIO_RANGE[0] <= p.ratio <= RATIO_RANGE[1]:
            raise CalibrateError(
                f"the reference ({amps:.4g} A) and the meter ({raw:.4g} A, uncalibrated) "
                f"differ by a factor of {p.ratio:.3g}",
                "check the value and its unit (A, or W with the voltage), the channel "
                "(--channel), the sensor in the meter's config, and that the CT clamps the "
                "reference load's conductor")
        others = [q for i, q in enumerate(self.points) if replace is None or i != replace - 1]
        for q in others:
            if abs(q.raw_irms - raw) < MIN_SEPARATION * max(q.raw_irms, raw):
                k = self.points.index(q) + 1
                raise CalibrateError(
                    f"this load ({raw:.3g} A) is within {100 * MIN_SEPARATION:.0f} % of point {k} "
                    f"({q.raw_irms:.3g} A): a second point there adds nothing",
                    f"use a load at least {100 * MIN_SEPARATION:.0f} % bigger or smaller, or "
                    f"replace point {k} (--replace {k})")
        if others:
            med = float(np.median([q.ratio for q in others]))
            if abs(p.ratio / med - 1) > CONSISTENCY:
                raise CalibrateError(
                    f"this point's reference/meter ratio {p.ratio:.3f} disagrees with the "
                    f"other points' {med:.3f}",
                    "a typo, a load that changed while measuring, or another unit (W vs A)?")
        if self.rating and amps > 1.2 * self.rating:
            self.warnings.append(f"{amps:.3g} A is above 120 % of the sensor's rating "
                                 f"({self.rating:g} A)")
        if self.rating and amps < 0.05 * self.rating:
            self.warnings.append(f"{amps:.3g} A is below 5 % of the rating: the gain is best "
                                 "measured with bigger loads")
        if replace is not None:
            self.points[replace - 1] = p
        else:
            self.points.append(p)
        return p

    def fit(self):
        return fit_points(self.points, self.zero_step, self.amps_per_count, self.knee,
                          phase_deg=float(self.previous.get("phase_deg", 0.0) or 0.0),
                          channel=self.channel,
                          reserve=PHASE_RESERVE if self.vch is not None else 0)

    def voltage(self, true_volts):
        """The mains voltage from a reference (a multimeter at a socket): the voltage
        input's uncalibrated Vrms over the same windows as `cal point`."""
        if self.vch is None:
            raise _usage("this meter has no voltage channel")
        v = _positive("reference voltage", true_volts, "V")
        if not VOLTS_RANGE[0] <= v <= VOLTS_RANGE[1]:
            raise _usage(f"{v:g} V is not a mains voltage "
                         f"({VOLTS_RANGE[0]:g}-{VOLTS_RANGE[1]:g} V)")
        ans = self._cmd(f"cal point {self.vch} {v:.6g}", "measuring the mains voltage",
                        CAL_WINDOWS * WINDOW_S)
        raw = float(ans.get("raw_rms", ans.get("raw_irms")))
        if raw < MIN_MAINS_V:
            raise CalibrateError(f"the voltage input measures {raw:.3g} V",
                                 "is the voltage sensor connected to the mains?")
        if not RATIO_RANGE[0] <= v / raw <= RATIO_RANGE[1]:
            raise CalibrateError(f"the reference ({v:.4g} V) and the meter ({raw:.4g} V, "
                                 f"uncalibrated) differ by a factor of {v / raw:.3g}",
                                 "check the value, and the voltage sensor's gain trimmer")
        p = {"true_volts": v, "raw_vrms": raw, "windows": int(ans.get("windows", 0))}
        self.vpoints.append(p)
        return p

    def voltage_calibration(self):
        """The voltage input's Calibration from the voltage references (None without)."""
        if not self.vpoints:
            return None
        q = [p["raw_vrms"] / p["true_volts"] for p in self.vpoints]
        gain = sum(q) / sum(x * x for x in q)
        phase = float(self.vprevious.get("phase_deg", 0.0) or 0.0)
        return Calibration(gain=short_number(gain), phase_deg=short_number(phase))

    def _send(self, ch, name, calibration):
        self._cmd(apply_line(ch, calibration))
        shown = self._cmd("cal show").get(name) or {}
        if not _same_calibration(shown, calibration.to_dict()):
            raise CalibrateError(f"the meter shows another calibration than the one sent: "
                                 f"{shown}", exit_code=EXIT_DEVICE)

    def apply(self, fit=None):
        """Send the fitted calibration (and the voltage's, if measured); verify each with
        `cal show`. Returns the Fit."""
        fit = fit or self.fit()
        vcal = self.voltage_calibration()
        if vcal is not None:
            self._send(self.vch, "voltage", vcal)
        self._send(self.channel, self.ch_name, fit.calibration)
        self.applied = {"date": _now(), "calibration": fit.calibration.to_dict(),
                        "fit": fit.to_dict()}
        if vcal is not None:
            self.applied["voltage"] = {"calibration": vcal.to_dict(), "points": self.vpoints}
        return fit

    def _windows(self, reads, settle, timeout=60.0, label="reading the calibrated meter"):
        """`reads` of the channel's `read` results, one per window, after `settle` windows."""
        out = []
        seen = None
        skipped = 0
        deadline = time.monotonic() + timeout
        with self.progress(label, (reads + settle) * WINDOW_S):
            while len(out) < reads:
                if time.monotonic() > deadline:
                    raise CalibrateError("the meter's readings did not advance",
                                         exit_code=EXIT_DEVICE)
                r = self._cmd("read")
                up = r.get("uptime_ms")
                if up == seen:
                    time.sleep(0.02)
                    continue
                seen = up
                if skipped < settle:
                    skipped += 1
                    continue
                ch = r.get(self.ch_name)
                if not isinstance(ch, dict):
                    raise CalibrateError(f"the meter's read has no {self.ch_name}",
                                         exit_code=EXIT_DEVICE)
                out.append(ch)
        return out

    def _power_factor(self, reads):
        w = self._windows(reads, 2, label="measuring the power factor")
        p = sum(float(x["power"]) for x in w)
        a = sum(float(x["apparent"]) for x in w)
        if a <= 0:
            raise CalibrateError(f"no current on {self.ch_name}", "is the resistive load on?")
        return p / a

    def phase(self, reads=10):
        """With a resistive load on: the angle between this channel and the voltage
        channel, from the power factor at the applied phase and at PHASE_PROBE_DEG off
        (cos(t) and cos(t - d) give t with its sign); the result is applied and checked."""
        if self.vch is None:
            raise _usage("this meter has no voltage channel: there is no phase to calibrate")
        if self.applied is None:
            raise _usage("apply the calibration first", "run `apply`, then `phase`")
        base = Calibration.from_dict(self.applied["calibration"])
        p0 = base.phase_deg

        def with_phase(deg):
            return Calibration.from_dict(dict(base.to_dict(), phase_deg=short_number(deg)))

        c0 = self._power_factor(reads)
        if c0 < MIN_PF_RESISTIVE:
            raise CalibrateError(f"the load's power factor is {c0:.3f}: not a resistive load",
                                 "measure the phase with a kettle, heater or toaster on")
        d = PHASE_PROBE_DEG if p0 <= 0 else -PHASE_PROBE_DEG
        self._send(self.channel, self.ch_name, with_phase(p0 + d))
        try:
            c1 = self._power_factor(reads)
        except BaseException:
            self._send(self.channel, self.ch_name, base)  # do not leave the probe behind
            raise
        rd = math.radians(d)
        theta = math.degrees(math.atan2((c1 - c0 * math.cos(rd)) / math.sin(rd), c0))
        new = p0 + theta
        if abs(new) > 30.0:
            self._send(self.channel, self.ch_name, base)
            raise CalibrateError(f"the measured phase {new:.1f} degrees is implausible",
                                 "was the load steady and resistive?")
        final = with_phase(new)
        self._send(self.channel, self.ch_name, final)
        c2 = self._power_factor(reads)
        if c2 < c0 - 1e-4:
            self.warnings.append(f"the power factor got worse ({c0:.5f} -> {c2:.5f}): was the "
                                 "load steady? run `phase` again")
        self.applied["calibration"] = final.to_dict()
        self.applied["phase"] = {"date": _now(), "phase_deg": final.phase_deg,
                                 "previous_deg": p0, "pf_before": round(c0, 6),
                                 "pf_probe": round(c1, 6), "probe_deg": p0 + d,
                                 "pf_after": round(c2, 6)}
        return self.applied["phase"]

    def validate(self, true_amps=None, true_watts=None, volts=None, reads=6, settle=2,
                 timeout=60.0):
        """The calibrated meter's `read` (`reads` windows after `settle` skipped ones) against
        a reference (and its power against a reference in W, with a voltage channel); the
        result is kept for the record."""
        amps = reference_amps(true_amps, true_watts, volts)
        w = self._windows(reads, settle, timeout)
        values = [float(x["irms"]) for x in w]
        got = math.sqrt(sum(v * v for v in values) / len(values))
        if got == 0.0:
            raise CalibrateError(f"the calibrated meter reads 0 A on {self.ch_name}",
                                 "is the reference load on?")
        spread = (max(values) - min(values)) / got
        v = {"true_amps": amps, "meter_amps": round(got, 5),
             "error_pct": round(100 * (got / amps - 1), 3), "windows": len(values),
             "spread_pct": round(100 * spread, 3), "date": _now()}
        if self.vch is not None and true_watts is not None:
            watts = sum(float(x["power"]) for x in w) / len(w)
            v.update(true_watts=true_watts, meter_watts=round(watts, 3),
                     watts_error_pct=round(100 * (watts / true_watts - 1), 3))
        if spread > 0.02:
            self.warnings.append(f"the readings varied by {100 * spread:.1f} %: was the load "
                                 "steady?")
        self.validations.append(v)
        return v

    # -- persistence
    def to_dict(self):
        return {
            "format": SESSION_FORMAT, "kind": "ctmeter-calibration-session",
            "tool": f"ctmeter {__version__}", "started": self.started,
            "device": {"id": self.device, "version": self.version},
            "channel": self.channel + 1, "sensor": self.sensor, "rating": self.rating,
            "amps_per_count": self.amps_per_count, "board": self.board, "knee": self.knee,
            "previous_calibration": self.previous,
            "voltage_input": self.vch, "voltage_sensor": self.vsensor,
            "previous_voltage_calibration": self.vprevious, "voltage_points": self.vpoints,
            "zero": asdict(self.zero_step) if self.zero_step else None,
            "points": [asdict(p) for p in self.points],
            "applied": self.applied, "validations": self.validations,
            "record": str(self.record_path) if self.record_path else None,
        }

    def save(self, path):
        _write_json(Path(path), self.to_dict())

    @classmethod
    def from_dict(cls, d, link=None, progress=None):
        try:
            if d.get("format") != SESSION_FORMAT or \
                    d.get("kind") not in ("ctmeter-calibration-session",
                                          "ctmeter-calibration-record"):
                raise ValueError("not a calibration session")
            s = cls(link, channel=int(d["channel"]) - 1, device=d["device"]["id"],
                    version=d["device"].get("version"), sensor=d.get("sensor"),
                    rating=d.get("rating"), amps_per_count=d.get("amps_per_count"),
                    board=d.get("board", "esp32"), knee=d.get("knee"),
                    previous=d.get("previous_calibration") or {}, progress=progress,
                    vch=d.get("voltage_input"), vsensor=d.get("voltage_sensor"),
                    vprevious=d.get("previous_voltage_calibration") or {})
            s.vpoints = list(d.get("voltage_points") or [])
            s.started = d.get("started", s.started)
            s.zero_step = Zero(**d["zero"]) if d.get("zero") else None
            s.points = [Point(**p) for p in d.get("points", [])]
            s.applied = d.get("applied")
            if d["kind"] == "ctmeter-calibration-record":  # a record resumes as a session
                s.applied = {"date": d["date"], "calibration": d["calibration"],
                             "fit": d["fit"], "phase": d.get("phase")}
                if d.get("voltage_calibration"):
                    s.applied["voltage"] = {"calibration": d["voltage_calibration"],
                                            "points": s.vpoints}
            s.validations = list(d.get("validations") or [])
            s.record_path = Path(d["record"]) if d.get("record") else None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CalibrateError(f"not a usable calibration session ({exc})") from None
        return s

    @classmethod
    def load(cls, path, link=None, progress=None):
        try:
            d = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise _usage(f"no session file {path}",
                         "start one with `ctmeter calibrate start --port ...`") from None
        except (OSError, ValueError) as exc:
            raise CalibrateError(f"cannot read session file {path}: {exc}") from None
        return cls.from_dict(d, link, progress)

    # -- the record
    def record(self):
        """The record of what was applied: device, sensor, points, fit, residuals, date."""
        if self.applied is None:
            raise CalibrateError("nothing applied yet: a record describes an applied "
                                 "calibration", "run `apply` first")
        d = self.to_dict()
        d["kind"] = "ctmeter-calibration-record"
        d["date"] = self.applied["date"]
        d["fit"] = self.applied["fit"]
        d["calibration"] = self.applied["calibration"]
        d["residuals"] = self.applied["fit"]["residuals"]
        d["voltage_calibration"] = (self.applied.get("voltage") or {}).get("calibration")
        d["phase"] = self.applied.get("phase")
        d.pop("record", None)
        d.pop("applied", None)  # its parts are above
        return d

    def write_record(self, records_dir=RECORDS):
        """Write (or rewrite, after validations) the record; returns its path."""
        d = self.record()
        if self.record_path is None:
            stamp = d["date"].replace("-", "").replace(":", "").replace("+0000", "")
            stamp = stamp.split("+")[0]
            name = f"{self.device}-{self.ch_name}-{stamp}.json"
            self.record_path = Path(records_dir) / re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        _write_json(self.record_path, d)
        return self.record_path


def _same_calibration(shown, sent, rel=1e-5):
    try:
        a = Calibration.from_dict(shown).to_dict()
    except CalibrationError:
        return False
    b = sent

    def close(x, y):
        if isinstance(x, list):
            return isinstance(y, list) and len(x) == len(y) and all(map(close, x, y))
        return abs(x - y) <= rel * max(abs(x), abs(y), 1e-9)

    return all(close(a[k], b[k]) for k in b)


def _dumps(obj, level=0):
    """JSON with one key per line, but lists of numbers (codes, table rows) on one line."""
    pad = " " * (level + 1)
    if isinstance(obj, dict) and obj:
        items = [f"{pad}{json.dumps(str(k))}: {_dumps(v, level + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * level + "}"
    if isinstance(obj, list) and obj and any(isinstance(v, dict) for v in obj):
        items = [pad + _dumps(v, level + 1) for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + " " * level + "]"
    return json.dumps(obj, separators=(", ", ": ") if not isinstance(obj, list) else (",", ":"))


def _write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(_dumps(data) + "\n")
    tmp.replace(path)


def load_record(path):
    """A calibration record as a dict, its "calibration" checked by meter.calib."""
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise CalibrateError(f"cannot read record {path}: {exc}") from None
    if not isinstance(d, dict) or d.get("kind") != "ctmeter-calibration-record" or \
            d.get("format") != RECORD_FORMAT:
        raise CalibrateError(f"{path} is not a ctmeter calibration record")
    for key in ("device", "channel", "sensor", "points", "fit", "residuals", "date", "tool",
                "calibration"):
        if key not in d:
            raise CalibrateError(f"record {path} has no {key!r}")
    try:
        Calibration.from_dict(d["calibration"])
    except CalibrationError as exc:
        raise CalibrateError(f"record {path}: {exc}") from None
    return d
