# SPDX-License-Identifier: MIT
"""`ctmeter scope`: capture raw ADC codes of one input, plot them, save them."""

import json
import shutil
import sys

from ctmeter import scope as api
from ctmeter.errors import CommandError
from ctmeter.meterlink import MeterLink
from ctmeter.transport import EXIT_CODES_HELP, EXIT_USAGE


def register(subparsers):
    p = subparsers.add_parser(
        "scope", help="capture raw ADC codes of one input: terminal plot, PNG, capture file",
        description="Capture N raw ADC codes of one input from the running meter (it keeps "
                    "measuring), show them as a terminal plot with their statistics, and "
                    "optionally write a PNG and a capture file that `ctmeter replay` reads.",
        epilog="Inputs: 0.. the current channels in config order, then the voltage input if "
               "configured. RMS values use the configured scale, before calibration.  "
               + EXIT_CODES_HELP)
    p.add_argument("--port", required=True,
                   help="serial port of the meter: /dev/ttyUSB0, a pty, socket://host:port")
    p.add_argument("input", nargs="?", type=int, default=0, help="input number (default 0)")
    p.add_argument("n", nargs="?", type=int, default=api.DEFAULT_N,
                   help=f"codes to capture, 1..{api.MAX_SCOPE} (default {api.DEFAULT_N})")
    p.add_argument("--board", default="esp32",
                   help="board definition the meter runs on, written to the capture file "
                        "(default esp32)")
    p.add_argument("--png", metavar="FILE", help="write a PNG plot (matplotlib)")
    p.add_argument("--save", metavar="FILE.csv",
                   help="write the capture file (`ctmeter capture v1`, read by ctmeter replay)")
    p.add_argument("--no-plot", action="store_true", help="no terminal plot")
    p.add_argument("--ascii", action="store_true", help="terminal plot without unicode")
    p.add_argument("--json", action="store_true",
                   help="print the capture (statistics and codes) as JSON instead")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for the meter's answer (default 60)")
    p.set_defaults(func=run)


def _progress_bar(desc):
    """A tqdm-backed `progress(done, total)` on a terminal, else None."""
    if not sys.stderr.isatty():
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=1, desc=desc, unit="B", unit_scale=True, leave=False, file=sys.stderr)

    def update(done, total):
        bar.total = total
        bar.n = done
        bar.refresh()

    return update, bar.close


def _can_encode(text):
    try:
        text.encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def run(args):
    api.check_n(args.n)  # refused before the port is opened
    if args.input < 0:
        raise CommandError("input must be 0 or more", exit_code=EXIT_USAGE)
    if args.timeout <= 0:
        raise CommandError("--timeout must be positive", exit_code=EXIT_USAGE)
    progress, done = _progress_bar(f"scope {args.input}")
    try:
        with MeterLink.open(args.port, timeout=args.timeout) as link:
            cap = api.capture(link, args.input, args.n, board=args.board, progress=progress)
    finally:
        done()
    if args.save:
        api.write_csv(cap, args.save)
    if args.png:
        api.write_png(cap, args.png)
    st = cap.stats()
    if args.json:
        print(json.dumps({"device": cap.device, "input": cap.input, "sensor": cap.sensor,
                          "sample_rate_hz": cap.sample_rate_hz, "voltage": cap.voltage,
                          "scale": cap.scale, "stats": st, "segments": cap.segments,
                          "codes": [int(c) for c in cap.codes]}))
        return 0
    print(f"scope: {cap.device or 'meter'} input {cap.input} ({cap.sensor or '?'}), "
          f"{st['n']} codes at {cap.sample_rate_hz} Hz = {cap.duration_s * 1000:g} ms")
    if not args.no_plot:
        width = max(20, min(120, shutil.get_terminal_size((80, 24)).columns - 8))
        unicode = not args.ascii and _can_encode("\u2800\u2502")
        print(api.plot_text(cap.codes, width=width, height=12, unicode=unicode,
                            sample_rate_hz=cap.sample_rate_hz))
    print(f"mean {st['mean']:g}  min {st['min']}  max {st['max']}  "
          f"rms {st['rms_codes']:g} codes = {st[f'rms_{cap.unit}']:.4g} {cap.unit} "
          f"(raw scale)  clipped {st['clipped']}")
    if cap.segments:
        print(f"note: the meter sent the capture in {len(cap.segments)} pieces (low heap); "
              "there are gaps between them")
    for what, path in (("capture", args.save), ("plot", args.png)):
        if path:
            print(f"{what} written to {path}")
    return 0
