# SPDX-License-Identifier: MIT
"""Replay a waveform file through the unmodified firmware on the virtual board.

    result = replay("kettle.csv", interval_s=1, ideal=True)
    result.readings      # one dict per channel per reading interval (the reading format)
    result.summary       # per channel: RMS current, mean power, kWh, readings, windows
    inp = load_input("capture.csv")          # parse only (no firmware): codes + config

The firmware runs on the MicroPython unix port exactly as `ctmeter sim` runs it; only the
ADC codes come from the file instead of the live sensor model, and the meter's readings
are collected by a small HTTP receiver on 127.0.0.1 that the meter's config points at.

Two kinds of file, told apart by their header row:

Physical waveform: `time_s,current_A[,voltage_V]` (ctmeter.model.load_waveform). The sensor
model turns it into ADC codes: `sensor` (default sct013-030), `burden_ohm`, the board's ADC
attenuation and Vref (`board`, default esp32), `sample_rate_hz` (default 4000), `seed` (which
unit of the sensor: ratio and phase errors, ADC nonlinearity, noise) or `ideal` (quantization
and clipping only). A voltage column goes through a ZMPT101B model. The meter is configured
with the sensors' nominal scales, as a correctly set up but uncalibrated meter would be.

Raw ADC capture (`ctmeter capture v1`, also written by `ctmeter scope`):

    # ctmeter capture v1
    # sample_rate_hz=4000
    # amps_per_count=0.00894
    # amps_per_count_i2=0.0091
    # mains_hz=50
    # nominal_voltage=230
    # volts_per_count=0.41
    # device=meter1
    code_i1,code_i2,code_v
    2051,2040,2101
    ...

- `# key=value` lines give the parameters (anywhere in the file, each key once); every
  other line starting with `#` is a comment. Keys:
  `sample_rate_hz` (required; an integer 1000..20000, the firmware's range),
  `amps_per_count` (A per ADC code, for every current column) and `amps_per_count_i1` ..
  `amps_per_count_i4` (per-column overrides; each current column needs one or the other),
  `volts_per_count` (mains V per code; required with a `code_v` column),
  `mains_hz` (50, 60 or auto; default auto), `nominal_voltage` (V, 50..400; default 230;
  used for power when there is no voltage column). Any other key (device, board, sensor,
  input, captured, ...) is kept as information.
- The header row is `code` (one current input) or `code_i1[,code_i2[,code_i3[,code_i4]]]`
  optionally followed by `code_v`. Then one row per sample instant: integer codes 0..4095,
  one per column. Blank lines are ignored.
- A version other than v1 in the `# ctmeter capture vN` line is refused.

Every problem in a file raises ReplayError (a CommandError, exit code 2) naming the file and
the line.

Timing: the firmware asks for the codes of its simulated sample instants, and the virtual
board runs on its "exact" clock: simulated time advances only by the samples the firmware
measures, never by the host's time, so the machine's load changes nothing and the same file
gives the same readings (values, counts, times) on every run. The firmware's windows are
therefore back to back and every sample up to the file's last whole window is measured (on
a board the time it spends between windows, computing and posting, is not sampled; here
that time is zero). A reading is made at the end of the first window that reaches the next
multiple of the interval in simulated time, so a file gives (its whole windows' duration /
interval), rounded down, readings. At 50 Hz a window is 10 cycles (800 codes at 4 kHz,
200 ms): with a 1 s interval a reading covers 5 windows, and a 6 s file gives 6 readings, a
6.5 s file 6 with 0.5 s uncovered. The file's first sample is what the firmware sees in its
first window (booting takes none of the file). When the firmware asks for samples past the
end of the file the run stops: the readings it completed are the result, and the part of
the file after the last complete reading interval is in none of them
(`summary["uncovered"]` says how much).

A reading needs at least one interval (1 s or more) of signal, longer than what `ctmeter
scope` captures (at most 2000 codes): `repeat=N` plays the file N times back to back. A
capture of whole mains cycles then loops seamlessly; file times (fileStart, fileEnd) count
along the repeated signal.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import select
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from meter.console import BOOT_PREFIX

from ctmeter import capture
from ctmeter.errors import CommandError
from ctmeter.transport import EXIT_USAGE

DEFAULT_SENSOR = "sct013-030"
DEFAULT_SAMPLE_RATE = 4000
LONG_FILE_S = 100.0  # files at least this long default to the meter's 10 s interval
SAMPLE_RATE_RANGE = (1000, 20000)  # the firmware config's sample_rate_hz rule
NOMINAL_V_RANGE = (50, 400)  # the firmware config's nominal_voltage rule
_SCALE_MAX = 100.0  # the firmware config's amps/volts_per_count rule
_DEVICE_ID = "replay"
REPLAY_EPOCH = 1700000000  # 2023-11-14: the firmware's clock at the start of a replay


class ReplayError(CommandError):
    """A waveform file or option the replay cannot use (exit code 2)."""

    def __init__(self, message, hint=""):
        super().__init__(message, hint, EXIT_USAGE)


@dataclass
class ReplayInput:
    """A file turned into what the firmware needs: codes, sample rate, config entries."""

    path: str
    kind: str  # "physical" or "capture"
    codes: np.ndarray  # (n, ncols) uint16: current columns, then voltage if any
    sample_rate_hz: int
    amps_per_count: list  # one per current column
    volts_per_count: float | None  # with a voltage column
    mains_hz: object = "auto"  # 50, 60 or "auto"
    nominal_voltage: float = 230.0
    t0: float = 0.0  # file time of the first code (s)
    info: dict = field(default_factory=dict)  # capture keys we do not use; model details
    sensors: list = field(default_factory=list)  # per column, for config.json (informative)
    waveform: object = None  # the physical Waveform (with truth), for physical files
    repeat: int = 1  # codes hold the file this many times back to back

    @property
    def ncurrent(self):
        return len(self.amps_per_count)

    @property
    def has_voltage(self):
        return self.volts_per_count is not None

    @property
    def duration_s(self):
        """Seconds of signal played (the file's, times repeat)."""
        return len(self.codes) / self.sample_rate_hz


# ---------------------------------------------------------------- capture files
def _number(path, lineno, key, text, integer=False):
    try:
        value = float(text)
    except ValueError:
        raise ReplayError(f"{path}:{lineno}: {key}={text!r} is not a number") from None
    if not math.isfinite(value) or (integer and value != int(value)):
        raise ReplayError(f"{path}:{lineno}: {key}={text!r} must be "
                          + ("an integer" if integer else "a finite number"))
    return int(value) if integer else value


def load_capture(path) -> ReplayInput:
    """Read a raw ADC capture CSV (ctmeter.capture; keys in the module docstring)."""
    try:
        raw = capture.read(path)
    except capture.CaptureError as exc:
        raise ReplayError(exc.args[0], exc.hint) from None
    if raw.columns == ["code_v"]:
        raise ReplayError(f"{raw.path}:{raw.header_line}: a capture of the voltage input alone "
                          "cannot be replayed: the meter measures current columns (code or "
                          "code_i1..)")
    return _capture_input(raw.path, raw.keys, raw.key_lines, raw.codes, raw.ncurrent,
                          raw.has_voltage)


def _capture_input(path, keys, key_lines, codes, ncur, has_v):
    keys = dict(keys)

    def take(key):
        return key_lines.get(key, 0), keys.pop(key, None)

    line, text = take("sample_rate_hz")
    if text is None:
        raise ReplayError(f"{path}: no `# sample_rate_hz=...` line",
                          "the capture's sample rate is required")
    rate = _number(path, line, "sample_rate_hz", text, integer=True)
    if not SAMPLE_RATE_RANGE[0] <= rate <= SAMPLE_RATE_RANGE[1]:
        raise ReplayError(f"{path}:{line}: sample_rate_hz={rate} is outside the firmware's "
                          f"{SAMPLE_RATE_RANGE[0]}..{SAMPLE_RATE_RANGE[1]} Hz")
    line, text = take("amps_per_count")
    common = None if text is None else _scale(path, line, "amps_per_count", text)
    apc = []
    for i in range(1, capture.MAX_CURRENT_COLUMNS + 1):
        key = f"amps_per_count_i{i}"
        line, text = take(key)
        if text is not None and i > ncur:
            raise ReplayError(f"{path}:{line}: {key} but the file has {ncur} current "
                              f"column{'s' if ncur > 1 else ''}")
        if i <= ncur:
            value = common if text is None else _scale(path, line, key, text)
            if value is None:
                raise ReplayError(f"{path}: no `# amps_per_count=...` line (A per ADC code)",
                                  f"needed for current column {i}")
            apc.append(value)
    line, text = take("volts_per_count")
    vpc = None if text is None else _scale(path, line, "volts_per_count", text)
    if has_v and vpc is None:
        raise ReplayError(f"{path}: a code_v column needs a `# volts_per_count=...` line "
                          "(mains volts per ADC code)")
    if not has_v:
        vpc = None
    line, text = take("mains_hz")
    mains = "auto" if text is None else text.lower()
    if mains != "auto":
        if mains not in ("50", "60"):
            raise ReplayError(f"{path}:{line}: mains_hz must be 50, 60 or auto, got {text!r}")
        mains = int(mains)
    line, text = take("nominal_voltage")
    nominal = 230.0
    if text is not None:
        nominal = _number(path, line, "nominal_voltage", text)
        if not NOMINAL_V_RANGE[0] <= nominal <= NOMINAL_V_RANGE[1]:
            raise ReplayError(f"{path}:{line}: nominal_voltage={text} is outside "
                              f"{NOMINAL_V_RANGE[0]}..{NOMINAL_V_RANGE[1]} V")
    name = keys.get("sensor", "")
    if not (name and name.isascii() and len(name) <= 32):
        name = "capture"
    sensors = [name] * ncur + (["ZMPT101B"] if has_v else [])
    return ReplayInput(path=path, kind="capture", codes=codes, sample_rate_hz=rate,
                       amps_per_count=apc, volts_per_count=vpc, mains_hz=mains,
                       nominal_voltage=nominal, info=keys, sensors=sensors)


def _scale(path, line, key, text):
    value = _number(path, line, key, text)
    if not 0 < value <= _SCALE_MAX:
        raise ReplayError(f"{path}:{line}: {key}={text} must be above 0 and at most "
                          f"{_SCALE_MAX:g}")
    return value


def write_capture(path, codes, sample_rate_hz, amps_per_count, volts_per_count=None,
                  mains_hz="auto", nominal_voltage=230, **info):
    """Write codes (n, ncols) as a v1 capture; the last column is the voltage one when
    `volts_per_count` is given. `amps_per_count`: one number, or one per current column."""
    codes = np.asarray(codes)
    ncols = 1 if codes.ndim == 1 else codes.shape[1]
    ncur = ncols - (volts_per_count is not None)
    names = ["code"] if ncur == 1 and volts_per_count is None else \
        [f"code_i{i + 1}" for i in range(ncur)] + (["code_v"] if volts_per_count else [])
    keys = {"sample_rate_hz": int(sample_rate_hz)}
    if isinstance(amps_per_count, (list, tuple)):
        keys.update({f"amps_per_count_i{i + 1}": repr(float(a))
                     for i, a in enumerate(amps_per_count)})
    else:
        keys["amps_per_count"] = repr(float(amps_per_count))
    if volts_per_count is not None:
        keys["volts_per_count"] = repr(float(volts_per_count))
    keys.update(mains_hz=mains_hz, nominal_voltage=nominal_voltage, **info)
    capture.write(path, codes, names, keys)


# ---------------------------------------------------------------- physical files
def _board(name):
    from ctmeter.boards import BoardError, load_board

    try:
        return load_board(name)
    except BoardError as exc:
        raise ReplayError(str(exc.args[0]), exc.hint) from None


def load_physical(path, sensor=None, board="esp32", burden_ohm=None, sample_rate_hz=None,
                  seed=0, ideal=False, mains_hz="auto", nominal_voltage=230.0) -> ReplayInput:
    """A `time_s,current_A[,voltage_V]` file through the sensor model -> ReplayInput."""
    from ctmeter.model import (
        AdcError,
        Frontend,
        FrontendError,
        ProfileError,
        WaveformError,
        codes_from_waveform,
        load_waveform,
    )

    sensor = sensor or DEFAULT_SENSOR
    rate = DEFAULT_SAMPLE_RATE if sample_rate_hz is None else sample_rate_hz
    if not isinstance(rate, int) or not SAMPLE_RATE_RANGE[0] <= rate <= SAMPLE_RATE_RANGE[1]:
        raise ReplayError(f"sample rate {rate!r} is outside the firmware's "
                          f"{SAMPLE_RATE_RANGE[0]}..{SAMPLE_RATE_RANGE[1]} Hz")
    b = _board(board)
    try:
        w = load_waveform(path)
    except WaveformError as exc:
        raise ReplayError(str(exc)) from None
    try:
        fe = Frontend(sensor, burden_ohm=burden_ohm, board_atten_db=b.atten,
                      vref_mv=b.vref_mv_nominal, ideal=ideal, seed=seed)
        if fe.measures != "current":
            raise ReplayError(f"sensor {sensor!r} measures voltage, not current")
        vfe = None
        if w.voltage_v is not None:
            vfe = Frontend("zmpt101b", board_atten_db=b.atten, vref_mv=b.vref_mv_nominal,
                           ideal=ideal, seed=seed + 1000)
        wc = codes_from_waveform(w.time_s, w.current_a, w.voltage_v, sample_rate=rate,
                                 frontend=fe, voltage_frontend=vfe, seed=seed,
                                 freq_hz=50.0 if mains_hz == "auto" else float(mains_hz))
    except (ProfileError, FrontendError, AdcError, WaveformError) as exc:
        raise ReplayError(str(exc)) from None
    info = {"sensor": fe.sensor, "board": b.name, "ideal": bool(ideal), "seed": seed,
            "burden_ohm": fe.burden_ohm}
    return ReplayInput(path=str(path), kind="physical", codes=wc.codes, sample_rate_hz=rate,
                       amps_per_count=[float(fe.amps_per_count)],
                       volts_per_count=None if vfe is None else float(vfe.volts_per_count),
                       mains_hz=mains_hz, nominal_voltage=float(nominal_voltage),
                       t0=float(w.time_s[0]), info=info,
                       sensors=[fe.sensor] + ([vfe.sensor] if vfe else []), waveform=w)


def _header_row(path):
    """The first line that is neither blank nor a comment, split on commas."""
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                text = line.strip()
                if text and not text.startswith("#"):
                    return [f.strip() for f in text.split(",")]
    except OSError as exc:
        raise ReplayError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ReplayError(f"{path}: not a text file ({exc.reason})") from None
    raise ReplayError(f"{path}: no header row",
                      "a waveform file starts with time_s,current_A[,voltage_V] or, "
                      "for an ADC capture, `# sample_rate_hz=...` lines and `code`")


def load_input(path, sensor=None, board="esp32", burden_ohm=None, sample_rate_hz=None,
               seed=None, ideal=False, amps_per_count=None, mains_hz=None,
               nominal_voltage=None, repeat=1) -> ReplayInput:
    """Parse a waveform file of either kind. Model options (sensor, burden, sample rate,
    seed, ideal) apply to physical files only; amps_per_count, mains_hz and nominal_voltage
    override what the file or the model says; repeat plays the file that many times."""
    if isinstance(repeat, bool) or not isinstance(repeat, int) or not 1 <= repeat <= 100000:
        raise ReplayError(f"repeat {repeat!r} must be a whole number from 1 to 100000")
    header = _header_row(path)
    if header and header[0] == "time_s":
        inp = load_physical(path, sensor=sensor, board=board, burden_ohm=burden_ohm,
                            sample_rate_hz=sample_rate_hz, seed=seed or 0, ideal=ideal,
                            mains_hz=mains_hz or "auto",
                            nominal_voltage=230.0 if nominal_voltage is None else nominal_voltage)
    elif header and header[0].startswith("code"):
        given = [name for name, v in (("sensor", sensor), ("burden", burden_ohm),
                                      ("sample rate", sample_rate_hz), ("seed", seed),
                                      ("ideal", ideal or None)) if v is not None]
        if given:
            raise ReplayError(f"{path} is an ADC capture: its codes are already measured, so "
                              f"the sensor model options ({', '.join(given)}) do not apply")
        inp = load_capture(path)
        if mains_hz is not None:
            inp.mains_hz = mains_hz
        if nominal_voltage is not None:
            inp.nominal_voltage = float(nominal_voltage)
        inp.info.setdefault("board", _board(board).name)
    else:
        raise ReplayError(f"{path}: header {','.join(header)!r} is neither a physical waveform "
                          "(time_s,current_A[,voltage_V]) nor an ADC capture "
                          "(code or code_i1,...,code_v)")
    if amps_per_count is not None:
        if not 0 < amps_per_count <= _SCALE_MAX:
            raise ReplayError(f"amps per count {amps_per_count} must be above 0 and at most "
                              f"{_SCALE_MAX:g}")
        inp.amps_per_count = [float(amps_per_count)] * inp.ncurrent
    if inp.mains_hz not in (50, 60, "auto"):
        raise ReplayError(f"mains frequency {inp.mains_hz!r} must be 50, 60 or auto")
    if not NOMINAL_V_RANGE[0] <= inp.nominal_voltage <= NOMINAL_V_RANGE[1]:
        raise ReplayError(f"nominal voltage {inp.nominal_voltage} is outside "
                          f"{NOMINAL_V_RANGE[0]}..{NOMINAL_V_RANGE[1]} V")
    if repeat > 1:
        inp.codes = np.tile(inp.codes, (repeat, 1))
        inp.repeat = repeat
    return inp


# ---------------------------------------------------------------- running the firmware
class FileSource:
    """The sensor feed's source over a file's codes, from the firmware's first request on.

    Frame k0 of the firmware's clock maps to file frame k0 - (its first request's k0);
    a request past the end returns the frames left, which tells the feed the file ended.
    `windows` and `end` (file frame after the last served one) let the receiver say which
    part of the file each reading covers; `log` lists (first file frame, frames) of every
    window the firmware measured."""

    def __init__(self, codes, sample_rate_hz):
        self.codes = np.ascontiguousarray(codes, dtype="<u2")
        self.nch = self.codes.shape[1]
        self.sample_rate_hz = int(sample_rate_hz)
        self.base = None
        self.windows = 0
        self.served = 0  # frames handed to the firmware
        self.end = 0
        self.log = []

    def frames(self, k0, n):
        if self.base is None:
            self.base = k0
        i = k0 - self.base
        if i < 0:
            raise ValueError("the firmware's clock went back (did it reset?)")
        if i + n > len(self.codes):
            return self.codes[min(i, len(self.codes)):]
        self.windows += 1
        self.served += n
        self.end = i + n
        self.log.append((i, n))
        return self.codes[i:i + n]


def meter_config(inp: ReplayInput, interval_s, url, token, board="esp32"):
    """config.json for the virtual meter that replays `inp`."""
    b = _board(board)
    if inp.ncurrent > len(b.current_pins):
        raise ReplayError(f"{inp.path} has {inp.ncurrent} current columns, board {b.name} "
                          f"has {len(b.current_pins)} current inputs")
    channels = [{"pin": b.current_pins[i], "name": f"ch{i + 1}",
                 "sensor": inp.sensors[i],
                 "amps_per_count": float(inp.amps_per_count[i])} for i in range(inp.ncurrent)]
    cfg = {"device_id": _DEVICE_ID, "sample_rate_hz": int(inp.sample_rate_hz),
           "channels": channels, "mains_hz": inp.mains_hz,
           "nominal_voltage": float(inp.nominal_voltage), "interval_s": int(interval_s),
           "persist_interval_s": 86400,
           "http": {"enabled": True, "url": url, "token": token, "timeout_s": 30}}
    if inp.has_voltage:
        vpin = b.voltage_pin if b.voltage_pin is not None else 36
        cfg["voltage"] = {"pin": vpin, "sensor": inp.sensors[-1],
                          "volts_per_count": float(inp.volts_per_count)}
    from meter.config import ConfigError, validate

    try:
        validate(cfg)
    except ConfigError as exc:
        raise ReplayError(f"the meter would refuse this setup: {exc}") from None
    return cfg


def default_interval(duration_s):
    """The meter's 10 s for long files, 1 s (the shortest it allows) for short ones."""
    return 10 if duration_s >= LONG_FILE_S else 1


class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        st = self.server.state
        if self.headers.get("Authorization") != f"Bearer {st['token']}":
            self.send_response(401)
            self.end_headers()
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            data = json.loads(body)
        except ValueError:
            self.send_response(400)
            self.end_headers()
            return
        st["on_post"](data if isinstance(data, list) else [data])
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@dataclass
class Result:
    readings: list  # reading dicts + fileStart, fileEnd (s), windows
    summary: dict
    boot: dict  # the firmware's ctmeter-boot line
    windows: list  # (first file frame, frames) of each window the firmware measured
    input: ReplayInput


class _Console:
    """Collects what the firmware prints on its port (boot line, tracebacks)."""

    def __init__(self, port):
        self.fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        self.text = ""
        self.boot = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        buf = b""
        while not self._stop.is_set():
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if not ready:
                continue
            try:
                buf += os.read(self.fd, 4096)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                return
            buf = buf[-65536:]
            self.text = buf.decode("utf-8", "replace")
            if self.boot is None:
                for line in self.text.splitlines():
                    if line.startswith(BOOT_PREFIX):
                        try:
                            self.boot = json.loads(line[len(BOOT_PREFIX):])
                        except ValueError:
                            pass

    def crashed(self):
        return "Traceback (most recent call last)" in self.text

    def close(self):
        self._stop.set()
        self._thread.join(2)
        os.close(self.fd)


def replay(path, interval_s=None, board="esp32", timeout_s=None, on_reading=None,
           **options) -> Result:
    """Replay a waveform file through the firmware (options: see load_input).
    `on_reading(reading)` is called for each reading as it arrives."""
    inp = load_input(path, board=board, **options)
    return run(inp, interval_s=interval_s, board=board, timeout_s=timeout_s,
               on_reading=on_reading)


def run(inp: ReplayInput, interval_s=None, board="esp32", timeout_s=None, on_reading=None,
        ) -> Result:
    """Run the firmware on the virtual board over `inp`'s codes; collect its readings."""
    from ctmeter.virtual.meter import SIM_HEAP
    from ctmeter.virtual.supervisor import VirtualBoard

    if interval_s is None:
        interval_s = default_interval(inp.duration_s)
    if not isinstance(interval_s, int) or not 1 <= interval_s <= 3600:
        raise ReplayError(f"interval {interval_s!r} must be a whole number of seconds, 1..3600")
    if inp.duration_s < interval_s:
        n = math.ceil(1.2 * interval_s / (inp.duration_s / inp.repeat))
        again = f" played {inp.repeat} times" if inp.repeat > 1 else ""
        raise ReplayError(f"{inp.path} gives {inp.duration_s:.4g} s of signal{again}, less than "
                          f"one reading interval ({interval_s} s)",
                          "try " + ("a shorter --interval, or " if interval_s > 1 else "")
                          + f"--repeat {n} to play it {n} times back to back")
    token = secrets.token_urlsafe(16)
    source = FileSource(inp.codes, inp.sample_rate_hz)
    posts = []  # (source.windows, source.end, source.served, readings) per POST
    lock = threading.Lock()
    readings = []

    def on_post(batch):
        with lock:
            prev_w, prev_end = (posts[-1][0], posts[-1][1]) if posts else (0, 0)
            posts.append((source.windows, source.end, source.served, batch))
            for r in batch:
                r = dict(r)
                r["ts"] -= REPLAY_EPOCH
                r["fileStart"] = round(inp.t0 + prev_end / inp.sample_rate_hz, 6)
                r["fileEnd"] = round(inp.t0 + source.end / inp.sample_rate_hz, 6)
                r["windows"] = source.windows - prev_w
                readings.append(r)
                if on_reading:
                    on_reading(r)

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.state = {"token": token, "on_post": on_post}
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/api/measurements"
    if timeout_s is None:
        timeout_s = 60.0 + 2.0 * inp.duration_s
    vb = console = None
    try:
        with tempfile.TemporaryDirectory(prefix="ctmeter-replay-") as work:
            flash = Path(work) / "flash"
            flash.mkdir()
            cfg = meter_config(inp, interval_s, url, token, board)
            (flash / "config.json").write_text(json.dumps(cfg, indent=1))
            # "exact": simulated time advances only by the samples measured (and the
            # firmware's sleeps), not by the host's time between windows, so the windows
            # are back to back from the file's first frame and a replay is deterministic.
            # The clock starts at a fixed, valid date (the firmware makes no reading with
            # an unset clock); `ts` is reported from the start of the replay.
            vb = VirtualBoard(flash, source, clock="exact", heapsize=SIM_HEAP,
                              epoch=REPLAY_EPOCH)
            try:
                vb.start()
                console = _Console(vb.port)
                _wait(vb, console, timeout_s, inp)
            finally:
                vb.stop()
                if console:
                    console.close()
    finally:
        server.shutdown()
        server.server_close()
    summary = summarize(inp, readings, posts[-1][2] if posts else 0, interval_s)
    if summary["missing"]:
        raise CommandError(f"the firmware did not deliver {summary['missing']} of its readings",
                           "its HTTP posts failed; see `ctmeter sim` for a live view")
    return Result(readings=readings, summary=summary, boot=console.boot or {},
                  windows=list(source.log), input=inp)


def _wait(vb, console, timeout_s, inp):
    deadline = time.monotonic() + timeout_s
    while not vb.feed.exhausted.wait(0.05):
        if vb.feed.error:
            raise CommandError(f"sensor feed failed: {vb.feed.error}")
        if console.crashed() or vb.resets:
            tail = "\n".join(console.text.strip().splitlines()[-8:])
            raise CommandError("the firmware stopped during the replay:\n" + tail)
        if time.monotonic() > deadline:
            raise CommandError(f"the replay of {inp.path} did not finish in {timeout_s:.0f} s",
                               "is the machine very busy? try a larger timeout")
    problems = (console.boot or {}).get("problems")
    if problems:
        raise CommandError(f"the firmware reported config problems: {'; '.join(problems)}")


def summarize(inp, readings, frames_used, interval_s):
    """Per channel over all readings: RMS current, mean P/S, PF, kWh, readings, windows."""
    channels = []
    for ch in range(1, inp.ncurrent + 1):
        rs = sorted((r for r in readings if r.get("channel") == ch), key=lambda r: r["seq"])
        t = sum(r["interval"] for r in rs)
        entry = {"channel": ch, "readings": len(rs), "windows": sum(r["windows"] for r in rs),
                 "duration": round(t, 3)}
        if t > 0:
            p = sum(r["power"] * r["interval"] for r in rs) / t
            s = sum(r["apparentPower"] * r["interval"] for r in rs) / t
            entry.update(
                current=round(math.sqrt(sum(r["current"] ** 2 * r["interval"] for r in rs) / t),
                              4),
                power=round(p, 2), apparentPower=round(s, 2),
                powerFactor=round(p / s, 4) if s > 0 else 0.0,
                energyKwh=rs[-1]["energyKwh"])
            if inp.has_voltage:
                entry["voltage"] = round(
                    math.sqrt(sum(r["voltage"] ** 2 * r["interval"] for r in rs) / t), 2)
        channels.append(entry)
    covered = readings[-1]["fileEnd"] - inp.t0 if readings else 0.0
    seqs = sorted(r["seq"] for r in readings)
    return {
        "file": inp.path, "kind": inp.kind, "sampleRate": inp.sample_rate_hz,
        "interval": interval_s, "fileDuration": round(inp.duration_s / inp.repeat, 6),
        "repeat": inp.repeat, "played": round(inp.duration_s, 6),
        "covered": round(covered, 6), "uncovered": round(inp.duration_s - covered, 6),
        "samplesUsed": round(frames_used / len(inp.codes), 4),
        "readings": len(readings) // max(1, inp.ncurrent),
        "missing": (seqs[-1] - seqs[0] + 1 - len(seqs)) if seqs else 0,
        "channels": channels, "details": inp.info,
    }

