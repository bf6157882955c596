# SPDX-License-Identifier: MIT
"""Raw ADC captures from a running meter: take, measure, plot, save.

    with MeterLink.open(port) as link:
        cap = capture(link, 0, 800, board="esp32")    # device `scope 0 800` + its config
    cap.codes                      # numpy uint16, one input, at cap.sample_rate_hz
    cap.stats()                    # mean, min, max, AC RMS in codes and in A (or V), clipped
    print(plot_text(cap.codes))    # terminal plot (braille, or ASCII)
    write_png(cap, "cap.png")      # matplotlib, Agg (no display needed)
    write_csv(cap, "cap.csv")      # the `ctmeter capture v1` format `ctmeter replay` reads
    cap = read_csv("cap.csv")

The capture file (one `# key=value` per line, then the header row, then one code per line):

    # ctmeter capture v1
    # sample_rate_hz=4000
    # amps_per_count=0.0241699       (volts_per_count for the voltage input)
    # mains_hz=auto                  (the config's value: 50, 60 or auto)
    # nominal_voltage=230
    # device=meter1
    # board=esp32
    # sensor=sct013-030
    # input=0
    # captured=2026-05-01T12:00:00+00:00
    code                             (code_v for the voltage input)
    2051
    ...

The scale is the meter's configured (uncalibrated) one, so RMS values here are raw, before
the channel's calibration. The meter collects a capture from consecutive measuring windows
while it keeps running, so there can be a short gap between windows (see
/tmp/device-requests.md); a capture the meter had to deliver in pieces (it ran out of heap
for one answer) says so in a `segments=` line.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from meter.app import DEFAULT_AMPS_PER_COUNT, DEFAULT_VOLTS_PER_COUNT  # the firmware's
from meter.console_cmds import MAX_SCOPE  # the meter's limit per `scope` command

from ctmeter import capture as capture_file  # scope.capture() is the device command
from ctmeter.errors import CommandError
from ctmeter.meterlink import MeterError, OutOfMemory
from ctmeter.transport import EXIT_DEVICE, EXIT_USAGE

# 200 ms at 4 kHz: 10 whole cycles at 50 Hz and 12 at 60 Hz (so the RMS shown is exact), and
# it fits the meter's heap (n >= ~1500 ran out on the virtual board)
DEFAULT_N = 800
MIN_PIECE = 250  # smallest piece asked for when the meter cannot answer n codes at once
ADC_MAX = capture_file.MAX_CODE
# The firmware's fallback scale when config.json has none: SCT-013-030 (30 A/V), 3.3 V / 4096
_BYTES_PER_CODE = 6  # "2051, " in the meter's JSON line, for progress estimates


class ScopeError(CommandError):
    def __init__(self, message, hint="", exit_code=EXIT_DEVICE):
        super().__init__(message, hint, exit_code)


@dataclass
class Capture:
    codes: np.ndarray  # uint16
    sample_rate_hz: int
    input: int
    voltage: bool = False  # the mains-voltage input (scale is volts_per_count)
    scale: float = DEFAULT_AMPS_PER_COUNT  # A (or V) per code
    mains_hz: object = "auto"
    nominal_voltage: float = 230.0
    device: str = ""
    board: str = ""
    sensor: str = ""
    captured: str = ""
    segments: list = field(default_factory=list)  # piece sizes if delivered in pieces

    @property
    def unit(self):
        return "V" if self.voltage else "A"

    @property
    def duration_s(self):
        return len(self.codes) / self.sample_rate_hz

    def stats(self) -> dict:
        c = self.codes.astype(np.float64)
        mean = float(c.mean())
        ac = float(np.sqrt(np.mean((c - mean) ** 2)))
        return {"n": int(c.size), "mean": round(mean, 2), "min": int(c.min()),
                "max": int(c.max()), "rms_codes": round(ac, 3),
                f"rms_{self.unit}": round(ac * self.scale, 6),
                "clipped": int(np.count_nonzero((self.codes == 0) | (self.codes == ADC_MAX)))}


def _now_iso():
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def input_info(cfg: dict, inp: int) -> tuple:
    """(voltage?, scale, sensor) of input `inp` from the meter's `config get` answer."""
    chans = cfg.get("channels") or []
    volt = cfg.get("voltage")
    count = len(chans) + (1 if volt else 0)
    if not 0 <= inp < count:
        raise ScopeError(f"no input {inp} on this meter (inputs: 0..{count - 1}"
                         f"{', the last is the voltage input' if volt else ''})",
                         exit_code=EXIT_USAGE)
    if inp < len(chans):
        ch = chans[inp]
        return False, float(ch.get("amps_per_count") or DEFAULT_AMPS_PER_COUNT), \
            str(ch.get("sensor") or "")
    return True, float(volt.get("volts_per_count") or DEFAULT_VOLTS_PER_COUNT), \
        str(volt.get("sensor") or "")


# What scope and diag read from the config when the whole of it does not fit the meter's heap
CONFIG_KEYS = ("device_id", "sample_rate_hz", "mains_hz", "nominal_voltage", "interval_s",
               "channels", "voltage", "wifi.ssid", "http.enabled", "mqtt.enabled")


def read_config(link, keys=CONFIG_KEYS) -> dict:
    """The meter's config (secrets masked by the meter): `config get`, or, when the meter
    cannot build that answer, `keys` one by one, assembled into the same nested form."""
    try:
        return link.cmd("config get")
    except OutOfMemory:
        pass
    except MeterError as exc:
        if "MemoryError" not in exc.error:
            raise
    cfg = {}
    for key in keys:
        try:
            value = link.cmd(f"config get {key}").get(key)
        except MeterError:
            continue  # a key this firmware does not have
        *parents, last = key.split(".")
        node = cfg
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return cfg


def check_n(n: int) -> int:
    if not 1 <= int(n) <= MAX_SCOPE:
        raise ScopeError(f"n must be 1..{MAX_SCOPE} (the meter's limit per capture)",
                         exit_code=EXIT_USAGE)
    return int(n)


def _codes(answer, n):
    codes = answer.get("codes")
    if not isinstance(codes, list) or len(codes) != n or \
            not all(isinstance(c, int) and 0 <= c <= ADC_MAX for c in codes):
        raise ScopeError(f"the meter's scope answer does not hold {n} codes 0..{ADC_MAX}",
                         "firmware and toolkit versions may not match")
    return codes


def capture(link, inp: int, n: int = DEFAULT_N, board: str = "esp32", cfg: dict | None = None,
            progress=None) -> Capture:
    """Capture n raw codes of input `inp` from the meter on `link` (a MeterLink).

    `cfg` is the meter's `config get` answer (asked for if not given); `progress(done,
    total)` is called with bytes received and expected."""
    n = check_n(n)
    if cfg is None:
        cfg = read_config(link)
    voltage, scale, sensor = input_info(cfg, inp)
    captured = _now_iso()
    codes, segments, rate = [], [], None
    piece = n
    while len(codes) < n:
        want = min(piece, n - len(codes))
        base = len(codes) * _BYTES_PER_CODE

        def report(nbytes, base=base):
            if progress is not None:
                progress(min(base + nbytes, n * _BYTES_PER_CODE), n * _BYTES_PER_CODE)

        try:
            # a line dropped for lack of heap is sent again once at this size, then halved
            answer = link.cmd(f"scope {inp} {want}", progress=report, retries=1)
        except (MeterError, OutOfMemory) as exc:
            # the meter could not build an answer this large: ask for smaller pieces
            short = isinstance(exc, OutOfMemory) or "MemoryError" in exc.error
            if not short or want <= MIN_PIECE:
                raise
            piece = max(MIN_PIECE, want // 2)
            continue
        codes += _codes(answer, want)
        segments.append(want)
        rate = int(answer.get("sample_rate_hz") or cfg.get("sample_rate_hz") or 0)
    if progress is not None:
        progress(n * _BYTES_PER_CODE, n * _BYTES_PER_CODE)
    if not rate:
        raise ScopeError("the meter's scope answer has no sample rate")
    return Capture(codes=np.asarray(codes, dtype=np.uint16), sample_rate_hz=rate, input=inp,
                   voltage=voltage, scale=scale, mains_hz=cfg.get("mains_hz", "auto"),
                   nominal_voltage=float(cfg.get("nominal_voltage") or 230.0),
                   device=str(cfg.get("device_id") or ""), board=board, sensor=sensor,
                   captured=captured, segments=segments if len(segments) > 1 else [])


# ------------------------------------------------------------------------- files


def _num(x) -> str:
    return f"{x:g}" if isinstance(x, float) and x == int(x) else str(x)


def write_csv(cap: Capture, path) -> Path:
    """Write `cap` as a `ctmeter capture v1` file (ctmeter.capture); the path written."""
    keys = {"sample_rate_hz": int(cap.sample_rate_hz),
            ("volts_per_count" if cap.voltage else "amps_per_count"): repr(cap.scale),
            "mains_hz": _num(cap.mains_hz), "nominal_voltage": _num(float(cap.nominal_voltage)),
            "device": cap.device, "board": cap.board, "sensor": cap.sensor,
            "input": int(cap.input), "captured": cap.captured}
    if cap.segments:
        keys["segments"] = ",".join(str(s) for s in cap.segments)
    return capture_file.write(path, cap.codes, ["code_v" if cap.voltage else "code"], keys)


def read_csv(path) -> Capture:
    """Read a single-input capture file (ScopeError if it is not one)."""
    try:
        raw = capture_file.read(path)
    except capture_file.CaptureError as exc:
        raise ScopeError(exc.args[0], exc.hint, exit_code=EXIT_USAGE) from None
    if raw.columns not in (["code"], ["code_v"]):
        raise ScopeError(f"{path}:{raw.header_line}: header must be code or code_v "
                         "(a single-input capture)", exit_code=EXIT_USAGE)
    keys = raw.keys
    if "sample_rate_hz" not in keys:
        raise ScopeError(f"{path}: needs a `# sample_rate_hz=...` line", exit_code=EXIT_USAGE)
    voltage = raw.has_voltage
    scale = keys.get("volts_per_count" if voltage else "amps_per_count")
    mains = keys.get("mains_hz", "auto")
    return Capture(codes=raw.codes[:, 0].copy(),
                   sample_rate_hz=int(keys["sample_rate_hz"]), input=int(keys.get("input", 0)),
                   voltage=voltage, scale=float(scale) if scale else math.nan,
                   mains_hz=int(mains) if mains.isdigit() else mains,
                   nominal_voltage=float(keys.get("nominal_voltage", 230)),
                   device=keys.get("device", ""), board=keys.get("board", ""),
                   sensor=keys.get("sensor", ""), captured=keys.get("captured", ""),
                   segments=[int(s) for s in keys["segments"].split(",")]
                   if keys.get("segments") else [])


# ------------------------------------------------------------------------- plots

# braille dot bits by (row in cell 0..3, column in cell 0..1)
_BRAILLE = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))


def plot_text(codes, width: int = 72, height: int = 12, unicode: bool = True,
              sample_rate_hz: float | None = None) -> str:
    """A line plot of `codes` in `width` x `height` characters (plus axis labels).

    unicode: braille cells (2 x 4 dots each); else '*' marks, one per character."""
    c = np.asarray(codes, dtype=np.float64)
    if c.size == 0:
        return "(no samples)"
    width, height = max(8, int(width)), max(3, int(height))
    sub_x, sub_y = (2, 4) if unicode else (1, 1)
    nx, ny = width * sub_x, height * sub_y
    lo, hi = float(c.min()), float(c.max())
    if hi - lo < 1:
        lo, hi = lo - 1, hi + 1
    # the dot column of every sample, and its dot row (0 = top)
    xs = (np.arange(c.size) * nx // c.size).astype(int)
    ys = np.rint((hi - c) / (hi - lo) * (ny - 1)).astype(int)
    grid = np.zeros((ny, nx), dtype=bool)
    prev = None
    for x in range(nx):
        col = ys[xs == x]
        if col.size == 0:
            continue
        top, bottom = int(col.min()), int(col.max())
        if prev is not None:  # join to the previous column: a continuous trace
            top, bottom = min(top, prev), max(bottom, prev)
        grid[top:bottom + 1, x] = True
        prev = int(col[-1])
    rows = []
    for r in range(height):
        cells = []
        for x in range(width):
            block = grid[r * sub_y:(r + 1) * sub_y, x * sub_x:(x + 1) * sub_x]
            if unicode:
                bits = 0
                for dy in range(sub_y):
                    for dx in range(sub_x):
                        if block[dy, dx]:
                            bits |= _BRAILLE[dy][dx]
                cells.append(chr(0x2800 + bits) if bits else " ")
            else:
                cells.append("*" if block.any() else " ")
        rows.append("".join(cells))
    label_w = len(str(int(hi)))
    labels = {0: int(hi), height // 2: int(round((hi + lo) / 2)), height - 1: int(lo)}
    bar = "│" if unicode else "|"
    out = [f"{str(labels[r]) if r in labels else '':>{label_w}} {bar}{row}"
           for r, row in enumerate(rows)]
    if sample_rate_hz:
        span_ms = c.size / sample_rate_hz * 1000
        right = f"{span_ms:g} ms"
        out.append(" " * (label_w + 2) + "0 ms" + right.rjust(width - 4))
    else:
        out.append(" " * (label_w + 2) + "0" + str(c.size).rjust(width - 1))
    return "\n".join(out)


def write_png(cap: Capture, path, title: str | None = None) -> Path:
    """A PNG of the capture: codes over time, the scale's A (or V) on the right axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    st = cap.stats()
    t_ms = np.arange(len(cap.codes)) / cap.sample_rate_hz * 1000
    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(t_ms, cap.codes, lw=0.8, color="tab:blue")
    ax.set_xlabel("time (ms)")
    ax.set_ylabel("ADC code")
    ax.grid(True, alpha=0.3)
    right = ax.twinx()
    lo, hi = ax.get_ylim()
    right.set_ylim((lo - st["mean"]) * cap.scale, (hi - st["mean"]) * cap.scale)
    right.set_ylabel(f"{cap.unit} (raw scale, mean removed)")
    ax.set_title(title or (f"{cap.device or 'meter'} input {cap.input} ({cap.sensor or '?'}): "
                           f"{len(cap.codes)} codes at {cap.sample_rate_hz} Hz, "
                           f"rms {st[f'rms_{cap.unit}']:.4g} {cap.unit}, "
                           f"clipped {st['clipped']}"), fontsize=9)
    fig.tight_layout()
    try:
        fig.savefig(path, format="png")
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror or exc}",
                           exit_code=EXIT_USAGE) from exc
    return path
