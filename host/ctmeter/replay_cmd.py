# SPDX-License-Identifier: MIT
"""`ctmeter replay FILE`: a waveform file through the unmodified firmware on the virtual
board; one JSON line per reading, then a summary line. The work is in ctmeter.replay."""

import argparse
import json
import sys
import threading

from ctmeter import replay as api

EPILOG = """\
examples:
  ctmeter replay kettle.csv --ideal                  # physical file through an ideal model
  ctmeter replay kettle.csv --sensor sct013-000 --burden 10 --seed 3
  ctmeter replay capture.csv --interval 10 | jq 'select(.summary)'
  ctmeter replay scope.csv --repeat 5                # a 0.5 s scope capture, 2.5 s of signal

FILE is either a physical waveform (header time_s,current_A[,voltage_V]), turned into ADC
codes by the sensor model, or a raw ADC capture (`# ctmeter capture v1`, `# key=value`
lines with at least sample_rate_hz and amps_per_count, then a `code` or
`code_i1,..,code_v` header and integer codes); the format is described in
host/ctmeter/replay.py.

Output (stdout): one JSON object per channel per reading in the meter's reading format
(deviceId, seq, ts, channel, current, voltage, power, apparentPower, powerFactor,
energyKwh, frequency, interval) plus fileStart/fileEnd (the file's seconds the reading
covers) and windows; then {"summary": {...}} with, per channel, the RMS current and mean
power over all readings, energyKwh, readings, windows and duration. `ts` counts seconds
from the start of the replay. Without a voltage column, power assumes PF 1 at the nominal
voltage, as the meter does. Simulated time advances only with the samples the firmware
measures, so its 200 ms windows (at 50 Hz) are back to back and the same file gives the
same output on every run. The replay stops when the firmware asks for samples past the
end of the file: a final partial interval gives no reading (see "uncovered"). A file
shorter than one interval (a `ctmeter scope` capture is at most 2000 codes) needs
--repeat N, which plays it N times back to back.

exit codes: 0 done, 1 the firmware failed or timed out, 2 bad file or options
"""


def register(subparsers):
    p = subparsers.add_parser(
        "replay", help="feed a waveform file through the firmware on the virtual board",
        description="Run the unmodified firmware on the MicroPython unix port with its ADC "
                    "codes taken from a waveform file, and print its readings as JSON lines.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", metavar="FILE", help="physical waveform CSV or raw ADC capture CSV")
    p.add_argument("--interval", type=int, metavar="S",
                   help="reading interval in whole seconds (default: 10 s like the meter, "
                        f"1 s for files shorter than {api.LONG_FILE_S:.0f} s)")
    p.add_argument("--board", default="esp32",
                   help="board definition in boards/: input pins and ADC attenuation/Vref "
                        "(default esp32)")
    g = p.add_argument_group("sensor model (physical files only)")
    g.add_argument("--sensor", help=f"sensor profile in calibration/profiles/ "
                                    f"(default {api.DEFAULT_SENSOR})")
    g.add_argument("--burden", type=float, metavar="OHM",
                   help="burden resistor for current-output CTs (default: the profile's)")
    g.add_argument("--sample-rate", type=int, metavar="HZ",
                   help=f"meter sample rate (default {api.DEFAULT_SAMPLE_RATE})")
    g.add_argument("--seed", type=int,
                   help="which simulated sensor unit and ADC (errors, noise; default 0)")
    g.add_argument("--ideal", action="store_true",
                   help="ideal sensor and ADC: only 12-bit quantization and clipping")
    o = p.add_argument_group("meter setup (override the file or the model)")
    o.add_argument("--amps-per-count", type=float, metavar="A",
                   help="current scale for every channel, e.g. from a one-point calibration")
    o.add_argument("--mains-hz", choices=("50", "60", "auto"),
                   help="mains frequency setting (default: the file's, else auto)")
    o.add_argument("--nominal-voltage", type=float, metavar="V",
                   help="voltage for power without a voltage column (default 230)")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="play the file N times back to back (a `ctmeter scope` capture is "
                        "shorter than one reading interval)")
    p.add_argument("--summary-only", action="store_true", help="print only the summary line")
    p.add_argument("--timeout", type=float, metavar="S",
                   help="give up after this many seconds of wall time "
                        "(default 60 + twice the file's duration)")
    p.set_defaults(func=run)


def run(args):
    mains = None if args.mains_hz is None else \
        (args.mains_hz if args.mains_hz == "auto" else int(args.mains_hz))
    lock = threading.Lock()

    def show(reading):
        with lock:
            print(json.dumps(reading), flush=True)

    result = api.replay(
        args.file, interval_s=args.interval, board=args.board, timeout_s=args.timeout,
        on_reading=None if args.summary_only else show, sensor=args.sensor,
        burden_ohm=args.burden, sample_rate_hz=args.sample_rate, seed=args.seed,
        ideal=args.ideal, amps_per_count=args.amps_per_count, mains_hz=mains,
        nominal_voltage=args.nominal_voltage, repeat=args.repeat)
    with lock:
        print(json.dumps({"summary": result.summary}), flush=True)
    s = result.summary
    if s["uncovered"] > 0:
        print(f"ctmeter replay: {s['readings']} reading(s) of {s['interval']} s cover "
              f"{s['covered']:.3f} s of {s['played']:.3f} s; the last {s['uncovered']:.3f} s "
              "are in no "
              "complete reading", file=sys.stderr)
    return 0
