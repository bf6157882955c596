# SPDX-License-Identifier: MIT
"""`ctmeter sim`: the meter on a virtual board with a simulated load, posting to a local
collector on SQLite; prints the board's port, the dashboard URL and live readings.

    ctmeter sim                      # real time, until Ctrl-C (what `make sim` runs)
    ctmeter sim --clock fast --duration 20     # simulated time as fast as it goes
                                     # (~270 x here: the collector refuses readings dated
                                     # over a day ahead, so keep fast runs to minutes, or
                                     # --fresh: a run starts after the folder's last reading)
    ctmeter sim --load 2000W         # a steady reference load instead of the household

Ctrl-C (SIGINT) or SIGTERM (a service manager, `kill`) stops it cleanly: the meter gets a
Ctrl-C and saves its energy counter (the next `ctmeter sim` without --fresh carries on from
it, and prints only the readings new to its database), then the board and the collector are
shut down, exit status 0.

The load can be changed while it runs, by lines typed on its standard input:
    load 2000W          a resistive load of 2000 W (at the nominal 230 V)
    load 8.5A           a resistive load of 8.5 A
    load 900W pf 0.7    an inductive load (power factor 0.7)
    load off            nothing on the circuit (the zero step of a calibration)
    load profile        back to the simulated household
    load                what is on now
    ref                 the model's true current, voltage and power over the last second
                        of simulated time (the clamp meter and multimeter of a calibration;
                        with --clock fast the grid's slow wander makes it stale in a second)
The change takes effect at the next samples the board reads (a calibration can
"switch on the reference heater" this way, as tests do through `LoadControl`).
"""

import json
import queue
import re
import secrets
import shutil
import signal
import sys
import threading
import time
import urllib.request
from pathlib import Path

from ctmeter.errors import CommandError
from ctmeter.paths import ROOT
from ctmeter.transport import EXIT_USAGE, stop_reason

LOAD_HELP = ("type `load 2000W`, `load 8.5A`, `load 900W pf 0.7`, `load off` or "
             "`load profile` (and Enter) to change the simulated load, `ref` for its true "
             "current and voltage")
_LOAD_RE = re.compile(r"^(?P<v>[0-9]*\.?[0-9]+)\s*(?P<u>w|a)(?:\s+pf\s*(?P<pf>[0-9]*\.?[0-9]+))?$",
                      re.IGNORECASE)
MAX_LOAD_A = 200.0  # the sensor model clips long before; a typo guard


class LoadSpecError(CommandError):
    def __init__(self, message):
        super().__init__(message, "e.g. 2000W, 8.5A, 900W pf 0.7, off, profile", EXIT_USAGE)


def parse_load(text, nominal_v=230.0):
    """A load spec -> a model Load, None (off) or "profile"; LoadSpecError if unreadable."""
    from ctmeter.model import Inductive, LoadError, Resistive

    t = " ".join(str(text).split()).lower()
    if t in ("off", "none", "0", "0w", "0a"):
        return None
    if t in ("profile", "household"):
        return "profile"
    m = _LOAD_RE.match(t)
    if not m:
        raise LoadSpecError(f"cannot read the load {text!r}")
    value, unit = float(m["v"]), m["u"]
    amps = value if unit == "a" else value / nominal_v
    if not 0 < amps <= MAX_LOAD_A:
        raise LoadSpecError(f"a load of {value:g} {unit.upper()} is not 0 < I <= "
                            f"{MAX_LOAD_A:g} A")
    size = {"irms": value} if unit == "a" else {"watts": value}
    try:
        if m["pf"] is not None:
            return Inductive(pf=float(m["pf"]), **size)
        return Resistive(**size)
    except LoadError as exc:
        raise LoadSpecError(str(exc)) from None


def describe_load(load, nominal_v=230.0):
    if load is None:
        return "off"
    if load == "profile":
        return "the simulated household"
    amps = load.irms if load.irms is not None else load.watts / nominal_v
    pf = getattr(load, "pf", 1.0)
    watts = load.watts if load.watts is not None else amps * nominal_v * pf
    kind = f"inductive, pf {pf:g}" if pf != 1.0 else "resistive"
    return f"{watts:.0f} W {kind} ({amps:.3f} A at {nominal_v:g} V)"


class LoadControl:
    """Changes what a Stream's channel draws, from the next samples the board reads on."""

    def __init__(self, stream, channel=0):
        self.stream = stream
        self.channel = channel
        self.profile = list(stream.channels[channel].profile.segments)  # the household
        self.nominal_v = stream.mains.nominal_v
        self.current = "profile"

    def set(self, spec):
        """Apply a spec (text or a parsed load); returns (time in s, description)."""
        from ctmeter.model import StreamError

        load = parse_load(spec, self.nominal_v) if isinstance(spec, str) else spec
        for _ in range(50):  # the board may read past the chosen time meanwhile: retry
            at = max(self.stream.horizon, 0.0)
            try:
                if load == "profile":
                    self.stream.set_load(self.channel, None, at)
                    for seg in self.profile:
                        if seg.stop > at:
                            self.stream.add_load(self.channel, seg.load, max(seg.start, at),
                                                 seg.stop)
                else:
                    self.stream.set_load(self.channel, load, at)
                break
            except StreamError:
                time.sleep(0.001)
        else:
            raise CommandError("could not change the simulated load (the board keeps "
                               "reading ahead)")
        self.current = load
        return at, describe_load(load, self.nominal_v)

    def reference(self, span_s=1.0):
        """The true values over the last `span_s` of simulated time, as a reference meter
        would show them."""
        t2 = self.stream.horizon
        if not t2 > span_s:
            return "ref: the board has not measured yet"
        t = self.stream.truth(t2 - span_s, t2)
        volts = f"{t.vrms:.2f} V" if self.stream.voltage is not None else \
            f"{t.vrms:.2f} V (no voltage channel on the meter)"
        return (f"ref: {t.irms[self.channel]:.4f} A, {volts}, {t.p[self.channel]:.1f} W, "
                f"pf {t.pf[self.channel]:.4f} (true, over t={t2 - span_s:.1f}..{t2:.1f} s)")

    def handle(self, line):
        """One typed line -> the reply to print (None for a blank line)."""
        words = line.strip().split(None, 1)
        if not words:
            return None
        if words == ["ref"]:
            return self.reference()
        if words[0].lower() != "load":
            return f"unknown command {words[0]!r}: {LOAD_HELP}"
        if len(words) == 1:
            return f"load: {describe_load(self.current, self.nominal_v)}"
        try:
            at, text = self.set(words[1])
        except CommandError as exc:
            return f"load: {exc}"
        return f"load: {text} from t={at:.1f} s"


def _read_lines(stream, out):
    """Put every line of `stream` on the queue `out` (None at EOF); runs in a thread."""
    try:
        for line in stream or ():  # None: started with no stdin at all
            out.put(line)
    except (OSError, ValueError):
        pass
    out.put(None)


def _stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt  # the same clean stop as Ctrl-C


def register(subparsers):
    p = subparsers.add_parser("sim", help="run the meter on a virtual board with a simulated load",
                              description=__doc__.splitlines()[0])
    p.add_argument("--dir", default=str(ROOT / "sim-data"),
                   help="where the simulated flash and the SQLite file live (default sim-data/)")
    p.add_argument("--fresh", action="store_true", help="start with an empty flash and database")
    p.add_argument("--clock", choices=("realtime", "fast"), default="realtime")
    p.add_argument("--http", default="127.0.0.1:8080",
                   help="collector address (port 0 = any free port)")
    p.add_argument("--no-collector", action="store_true",
                   help="only the virtual board (no posting)")
    p.add_argument("--duration", type=float, default=None,
                   help="stop after this many seconds of wall time")
    p.add_argument("--seed", type=int, default=1, help="seed of the simulated household load")
    p.add_argument("--interval", type=int, default=10, help="reading interval (s)")
    p.add_argument("--heap", default=None, metavar="SIZE",
                   help="the virtual chip's MicroPython heap, e.g. 160k (default 256k: the "
                        "firmware runs from source and is compiled on the chip)")
    p.add_argument("--romfs", action="store_true",
                   help="give the board a ROMFS partition holding this checkout's modules, "
                        "compiled, as `ctmeter deploy` puts them on a board that has one: they "
                        "run in place, so the meter fits a smaller heap (e.g. --heap 64k)")
    p.add_argument("--load", default="profile", metavar="SPEC",
                   help="the simulated load at start: 2000W, 8.5A, 900W pf 0.7, off, or "
                        "profile (the household, default); change it later on stdin")
    p.set_defaults(func=run)


def _stream(seed):
    from ctmeter.model import Channel, Frontend, Mains, Stream, varying_profile

    return Stream([Channel(Frontend("sct013-030", seed=seed), varying_profile(2, seed=seed))],
                  mains=Mains(seed=seed), voltage=Frontend("zmpt101b", seed=seed + 1),
                  sample_rate=4000, seed=seed)


def _get(url, token):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def _latest(collector, device_id, admin):
    """The collector's last readings of the sim's meter, oldest first: as many as a
    --clock fast meter delivers between two looks (~30 a second), so none is skipped."""
    rows = _get(f"{collector.url}/api/measurements?deviceId={device_id}&limit=200", admin)
    rows = rows.get("measurements", rows) if isinstance(rows, dict) else rows
    return sorted(rows, key=lambda r: r.get("seq", 0))


def stop_in(transcript):
    """Why the meter stopped, from the board's output so far: the last stop line that has
    ended (one still being written would be shown cut short, then again whole)."""
    return stop_reason(transcript[:transcript.rfind("\n") + 1])


def _heap(text):
    """--heap as MicroPython's -X heapsize takes it (bytes, or with a k/m suffix)."""
    if text is None:
        from ctmeter.virtual.meter import SIM_HEAP

        return SIM_HEAP
    if not re.fullmatch(r"[1-9]\d{0,9}[km]?", text.strip().lower()):
        raise CommandError(f"--heap {text!r} is not a heap size", "e.g. --heap 160k",
                           EXIT_USAGE)
    return text.strip().lower()


def run(args):
    from ctmeter.virtual.meter import start_virtual_meter

    heap = _heap(args.heap)  # refused before anything runs
    if args.romfs:
        from ctmeter.virtual import rom_partition

        if not rom_partition.available():
            raise CommandError("--romfs needs the PyPI MicroPython unix port in this Python",
                               "unset MICROPYTHON", EXIT_USAGE)
    stream = _stream(args.seed)
    loads = LoadControl(stream)
    start_load = parse_load(args.load, stream.mains.nominal_v)  # refused before anything runs
    if start_load != "profile":
        loads.set(start_load)
    work = Path(args.dir)
    if args.fresh and work.exists():
        shutil.rmtree(work)
    flash = work / "flash"
    flash.mkdir(parents=True, exist_ok=True)
    device_id = "sim-meter"
    overrides = {"device_id": device_id, "interval_s": args.interval}
    collector = None
    admin = secrets.token_urlsafe(16)
    if not args.no_collector:
        from ctmeter.serve import Collector
        from ctmeter.serve.config import config_from_dict
        from ctmeter.serve.storage import StorageError

        device_token = secrets.token_urlsafe(16)
        cfg = config_from_dict({"admin_token": admin, "db": f"sqlite:///{work / 'ctmeter.db'}",
                                "http": args.http, "devices": {device_id: device_token}})
        try:
            collector = Collector(cfg).start()
        except (OSError, StorageError) as exc:
            raise CommandError(f"cannot start the collector: {exc}",
                               hint="is the port in use? try --http 127.0.0.1:0") from exc
        overrides["http"] = {"enabled": True, "token": device_token,
                             "url": f"{collector.url}/api/measurements"}
    # Readings a run before this one left in the database are not printed as this run's, and
    # the meter's clock starts after the last of them: a --clock fast run goes ahead of the
    # wall clock, and a meter whose time went backwards would file its new readings among
    # the old ones.
    earlier = _latest(collector, device_id, admin) if collector else []
    seen = {r.get("seq") for r in earlier}
    epoch = max([time.time()] + [float(r["ts"]) + 1 for r in earlier if r.get("ts") is not None])
    board = start_virtual_meter(flash, stream, overrides, clock=args.clock,
                                epoch=epoch, heapsize=heap, romfs=args.romfs)
    print(f"ctmeter sim: virtual board on {board.port} (try: mpremote connect {board.port})",
          flush=True)
    if collector:
        # the token is a secret: written to a file only the user can read, never printed
        token_file = work / "admin-token"
        token_file.touch(mode=0o600)
        token_file.chmod(0o600)
        token_file.write_text(admin + "\n")
        print(f"ctmeter sim: dashboard {collector.dashboard_url} (admin token in {token_file})",
              flush=True)
    print(f"ctmeter sim: load {describe_load(loads.current, loads.nominal_v)}; {LOAD_HELP}",
          flush=True)
    print("ctmeter sim: Ctrl-C stops", flush=True)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    lines = queue.Queue()
    threading.Thread(target=_read_lines, args=(sys.stdin, lines), daemon=True).start()
    shown_stop = None
    start = time.monotonic()
    next_poll = start + 1.0
    try:
        while args.duration is None or time.monotonic() - start < args.duration:
            wait = next_poll - time.monotonic()
            if args.duration is not None:
                wait = min(wait, start + args.duration - time.monotonic())
            try:
                line = lines.get(timeout=max(0.0, wait))
            except queue.Empty:
                line = ""
            if line is None:  # stdin closed: keep running without it
                lines = queue.Queue()
            elif line:
                reply = loads.handle(line)
                if reply:
                    print(reply, flush=True)
                continue
            if time.monotonic() < next_poll:
                continue
            next_poll = time.monotonic() + 1.0
            if board.feed.error:
                raise CommandError(f"sensor feed failed: {board.feed.error}")
            stop = stop_in(board.transcript())
            if stop and (len(board.resets), stop) != shown_stop:
                # the meter could not start (or stopped): say so once per start, not silence
                shown_stop = (len(board.resets), stop)
                print(f"ctmeter sim: the meter stopped: {stop}", flush=True)
            if not collector:
                continue
            for r in _latest(collector, device_id, admin):
                key = r.get("seq")
                if key in seen:
                    continue
                seen.add(key)
                print(f"reading seq={r.get('seq')} ch{r.get('channel')} "
                      f"{r.get('current', 0):.3f} A {r.get('power', 0):.1f} W "
                      f"pf {r.get('powerFactor', 0):.2f} {r.get('voltage', 0):.1f} V "
                      f"{r.get('frequency', 0):.2f} Hz "
                      f"total {float(r.get('energyKwh') or 0):.6f} kWh",
                      flush=True)
    except KeyboardInterrupt:
        print("ctmeter sim: stopping", file=sys.stderr)
    finally:
        board.stop(graceful=True)  # the meter saves its energy counter first
        if collector:
            collector.stop()
    return 0
