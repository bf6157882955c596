# SPDX-License-Identifier: MIT
"""`ctmeter diag`: a running meter's self-test, one pass/warn/fail line per check."""

import json
import sys

from ctmeter import diag as api
from ctmeter.boards import load_board
from ctmeter.errors import CommandError
from ctmeter.meterlink import MeterLink
from ctmeter.scope import check_n
from ctmeter.transport import EXIT_CODES_HELP, EXIT_USAGE


def register(subparsers):
    p = subparsers.add_parser(
        "diag", help="self-test a running meter: bias, CT connected, clipping, noise, "
                     "sampling, Wi-Fi, posting, heap",
        description="Ask the running meter for its status, config, ADC statistics and a "
                    "scope capture of every input, and print one pass/warn/fail line per "
                    "check. The thresholds and their reasons are in ctmeter/diag.py.",
        epilog="Exit status: 0 when no check failed (warnings do not change it: they name "
               "things worth a look, like a weak RSSI or an empty outbox not yet drained), "
               "1 when any check failed; talking to the meter failed: "
               + EXIT_CODES_HELP.split(": ", 1)[1])
    p.add_argument("--port", required=True,
                   help="serial port of the meter: /dev/ttyUSB0, a pty, socket://host:port")
    p.add_argument("--board", default="esp32",
                   help="board definition the meter runs on (its ADC sets the expected bias "
                        "and the nonlinear top; default esp32)")
    p.add_argument("-n", type=int, default=api.DIAG_SCOPE_N,
                   help=f"codes captured per input (default {api.DIAG_SCOPE_N})")
    p.add_argument("--json", action="store_true", help="the report as one JSON object")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for each answer (default 60)")
    p.set_defaults(func=run)


def _steps():
    """(step callback, close) drawing a tqdm bar on a terminal; no-ops otherwise."""
    if not sys.stderr.isatty():
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=None, desc="diag", unit="step", leave=False, file=sys.stderr)

    def step(name):
        bar.set_postfix_str(name)
        bar.update(1)

    return step, bar.close


def run(args):
    check_n(args.n)
    if args.timeout <= 0:
        raise CommandError("--timeout must be positive", exit_code=EXIT_USAGE)
    board = load_board(args.board)
    step, done = _steps()
    try:
        with MeterLink.open(args.port, timeout=args.timeout) as link:
            report = api.diagnose(link, board=board, n=args.n, step=step)
    finally:
        done()
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print(f"diag: {report.device or 'meter'} (firmware {report.version or '?'}, up "
              f"{report.info.get('uptime_s', '?')} s) on {args.port}, board {report.board}")
        for line in report.lines():
            print(line)
    return report.exit_code
