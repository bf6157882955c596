# SPDX-License-Identifier: MIT
"""`ctmeter calibrate`: a guided calibration session, or the same steps one command at a time.

    ctmeter calibrate --port /dev/ttyUSB0 [--channel 1]      # guided: prompts step by step
    ctmeter calibrate start --port P --channel 1             # scripted steps share a session
    ctmeter calibrate zero --port P                          #   file (--session, default
    ctmeter calibrate point --port P --amps 3.02             #   calibration-session.json)
    ctmeter calibrate point --port P --watts 3450 --volts 231
    ctmeter calibrate fit                                    # offline: the fit and residuals
    ctmeter calibrate voltage --port P --volts 231.4         # with a voltage channel
    ctmeter calibrate apply --port P                         # send it, write the record
    ctmeter calibrate phase --port P                         # a resistive load on: the angle
    ctmeter calibrate validate --port P --amps 14.9          # calibrated reading vs reference
"""

import argparse
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from ctmeter import calibrate as api
from ctmeter.transport import EXIT_CODES_HELP

DEFAULT_SESSION = "calibration-session.json"

STEPS_HELP = """\
steps (scripted sessions; each opens the port, does one step and saves the session file):
  start     start a session for one channel (reads the meter's id, sensor and scale)
  zero      every load off: noise floor and bias
  point     a reference load on: --amps A, or --watts W --volts V of a resistive load
  voltage   (voltage channel) the mains voltage from a multimeter: --volts V
  fit       (offline) the fit and the remaining error at each point; nothing is sent
  apply     send the calibration (cal apply), check it (cal show), write the record
  phase     (voltage channel) a resistive load on: the current/voltage angle, applied
  validate  a reference load on: the calibrated meter's reading against it
Without a step the same session is guided interactively.
"""


def _common(p, suppress):
    """Options every step takes; on the steps they default to SUPPRESS so that
    `calibrate --port P zero` and `calibrate zero --port P` both work."""
    d = (lambda v: argparse.SUPPRESS) if suppress else (lambda v: v)
    p.add_argument("--port", default=d(None),
                   help="serial port of the meter: /dev/ttyUSB0, a pty, socket://host:port")
    p.add_argument("--session", default=d(DEFAULT_SESSION), metavar="FILE",
                   help=f"session file of scripted steps (default {DEFAULT_SESSION})")
    p.add_argument("--records", default=d(str(api.RECORDS)), metavar="DIR",
                   help="where calibration records are written (default calibration/records)")
    p.add_argument("--timeout", type=float, default=d(30.0),
                   help="seconds to wait for each answer of the meter (default 30)")


def _start_args(p, suppress):
    d = (lambda v: argparse.SUPPRESS) if suppress else (lambda v: v)
    p.add_argument("--channel", type=int, default=d(1), help="current channel, 1-based (default 1)")
    p.add_argument("--board", default=d("esp32"),
                   help="board definition in boards/ (where its ADC bends; default esp32)")
    p.add_argument("--rating", type=float, default=d(None),
                   help="sensor rating in A (default: from the sensor profile)")


def _reference_args(p):
    p.add_argument("--amps", type=float, help="the reference current (A)")
    p.add_argument("--watts", type=float, help="the reference power (W) of a resistive load")
    p.add_argument("--volts", type=float, help="the mains voltage (V) with --watts")


def register(subparsers):
    p = subparsers.add_parser(
        "calibrate", help="calibrate a channel against reference loads",
        description=__doc__.splitlines()[0],
        epilog=STEPS_HELP + "\n" + EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p, suppress=False)
    _start_args(p, suppress=False)
    p.add_argument("--yes", action="store_true", help="apply without asking (guided mode)")
    steps = p.add_subparsers(dest="step", metavar="STEP")
    sp = steps.add_parser("start", help="start a session for one channel")
    _common(sp, True)
    _start_args(sp, True)
    sp = steps.add_parser("zero", help="every load off: noise floor and bias")
    _common(sp, True)
    sp = steps.add_parser("point", help="measure one reference load")
    _common(sp, True)
    _reference_args(sp)
    sp.add_argument("--replace", type=int, metavar="N", help="replace point N (1-based)")
    sp = steps.add_parser("voltage", help="the mains voltage from a reference (voltage channel)")
    _common(sp, True)
    sp.add_argument("--volts", type=float, help="the mains voltage measured at a socket (V)")
    sp = steps.add_parser("fit", help="show the fit and residuals (offline)")
    _common(sp, True)
    sp = steps.add_parser("apply", help="send the calibration and write the record")
    _common(sp, True)
    sp = steps.add_parser("phase", help="a resistive load on: measure and apply the phase")
    _common(sp, True)
    sp.add_argument("--reads", type=int, default=10,
                    help="windows per power-factor measurement (default 10)")
    sp = steps.add_parser("validate", help="calibrated reading against a reference load")
    _common(sp, True)
    _reference_args(sp)
    sp.add_argument("--reads", type=int, default=6,
                    help="windows averaged (default 6, ~1.2 s)")
    p.set_defaults(func=run)


# ---------------------------------------------------------------- output


@contextmanager
def progress_bar(label, seconds):
    """A tqdm bar over the expected duration of a device measurement (only on a terminal)."""
    from tqdm import tqdm

    bar = tqdm(total=round(seconds, 1), desc=label, unit="s", disable=None, leave=False,
               file=sys.stderr, bar_format="{desc}: {bar} {elapsed}")
    if bar.disable:
        yield
        return
    stop = threading.Event()

    def tick():
        t0 = time.monotonic()
        while not stop.wait(0.1):
            bar.n = min(0.99 * bar.total, round(time.monotonic() - t0, 1))
            bar.refresh()

    t = threading.Thread(target=tick, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()
        bar.close()


def _say(*args):
    print(*args, flush=True)


def show_point(s, p, out=_say):
    k = s.points.index(p) + 1
    out(f"point {k}: reference {p.true_amps:.4g} A, meter (uncalibrated) {p.raw_irms:.4g} A, "
        f"ratio {p.ratio:.4f}, codes {p.min_code}..{p.max_code}")


def show_fit(s, fit, out=_say):
    c = fit.calibration
    bend = "none below the top point" if fit.transfer.linear else \
        f"from code {fit.transfer.knee:.0f} ({len(fit.transfer.xs)} bins measured)"
    out(f"fit: gain {c.gain:g}, noise {fit.noise_irms:.4g} A (floor {c.noise_floor:g} A), "
        f"ADC top-end bend {bend}, table {len(c.table)} knots "
        f"(within {fit.table_error_pct:.3g} % of the fitted curve)")
    out("  point  reference A  uncalibrated A  calibrated A  error %")
    for i, r in enumerate(fit.residuals, 1):
        out(f"  {i:>5}  {r['true_amps']:>11.4f}  {r['raw_irms']:>14.4f}  "
            f"{r['calibrated']:>12.4f}  {r['error_pct']:>+7.3f}")
    if len(fit.residuals) == 1:
        out("  (one point: the residual is 0 by construction; more points check the fit)")


def show_validation(v, out=_say):
    out(f"validation: meter {v['meter_amps']:.4f} A, reference {v['true_amps']:.4f} A, "
        f"error {v['error_pct']:+.3f} % ({v['windows']} windows, spread {v['spread_pct']:.2g} %)")
    if "meter_watts" in v:
        out(f"  power: meter {v['meter_watts']:.1f} W, reference {v['true_watts']:.1f} W, "
            f"error {v['watts_error_pct']:+.3f} %")


def show_voltage(s, p, out=_say):
    out(f"voltage: reference {p['true_volts']:.4g} V, meter (uncalibrated) {p['raw_vrms']:.4g} V, "
        f"gain {s.voltage_calibration().gain:g}")


def show_phase(ph, out=_say):
    out(f"phase: {ph['phase_deg']:+.3f} degrees (was {ph['previous_deg']:+.3f}); power factor "
        f"of the resistive load {ph['pf_before']:.5f} -> {ph['pf_after']:.5f}")


def _warnings(s, out=_say):
    for w in s.warnings:
        out(f"warning: {w}")
    s.warnings.clear()


# ---------------------------------------------------------------- steps


def _need_port(args):
    if not args.port:
        raise api._usage("this step talks to the meter: give --port",
                         "e.g. --port /dev/ttyUSB0 (or the pty `ctmeter sim` printed)")


def _check_reference(args):
    """--amps or --watts/--volts, checked before the port is opened."""
    ref = {"true_amps": args.amps, "true_watts": args.watts, "volts": args.volts}
    api.reference_amps(**ref)
    return ref


@contextmanager
def _link(args):
    from ctmeter.meterlink import MeterLink

    _need_port(args)
    with MeterLink.open(args.port, timeout=args.timeout) as link:
        yield link


@contextmanager
def _session(args):
    """The session file's session on an open link (checked to be the same meter); saved
    after a step that succeeded (a failed step leaves the file as it was)."""
    s = api.Session.load(args.session, progress=progress_bar)
    with _link(args) as link:
        s.link = link
        s.check_device()
        try:
            yield s
        finally:
            s.link = None
            _warnings(s)
    s.save(args.session)


def _check_start(args):
    """--channel and --board, checked before the port is opened."""
    if args.channel < 1:
        raise api._usage("--channel is 1-based: 1 for the first channel")
    if args.rating is not None and not args.rating > 0:
        raise api._usage("--rating must be a positive current in A")
    api._board_knee(args.board)


def step_start(args):
    _check_start(args)
    with _link(args) as link:
        s = api.Session.start(link, channel=args.channel - 1, board=args.board,
                              rating=args.rating, progress=progress_bar)
    existed = Path(args.session).exists()
    s.save(args.session)
    rating = f"{s.rating:g} A" if s.rating else "unknown rating"
    _say(f"session {args.session}{' (replaced the old one)' if existed else ''}: meter "
         f"{s.device} ({s.version}), {s.ch_name}: {s.sensor} ({rating}), "
         f"{s.amps_per_count} A per code, board {s.board}")
    return 0


def step_zero(args):
    with _session(args) as s:
        z = s.zero()
    _say(f"zero: noise {z.raw_irms:.4g} A ({z.rms_codes:.2f} codes rms), bias code "
         f"{z.bias_code:.1f}")
    return 0


def step_point(args):
    ref = _check_reference(args)
    with _session(args) as s:
        p = s.point(replace=args.replace, **ref)
    show_point(s, p)
    return 0


def step_voltage(args):
    if args.volts is None:
        raise api._usage("give the reference voltage: --volts V")
    api._positive("reference voltage", args.volts, "V")
    with _session(args) as s:
        p = s.voltage(args.volts)
    show_voltage(s, p)
    return 0


def step_phase(args):
    if args.reads < 1:
        raise api._usage("--reads must be at least 1")
    with _session(args) as s:
        ph = s.phase(reads=args.reads)
        path = s.write_record(args.records)
    show_phase(ph)
    _say(f"record {path} updated")
    return 0


def step_fit(args):
    s = api.Session.load(args.session)
    show_fit(s, s.fit())
    _warnings(s)
    return 0


def step_apply(args):
    with _session(args) as s:
        fit = s.fit()
        s.apply(fit)
        path = s.write_record(args.records)
    show_fit(s, fit)
    _say(f"applied to {s.device} {s.ch_name}; record {path}")
    return 0


def step_validate(args):
    ref = _check_reference(args)
    if args.reads < 1:
        raise api._usage("--reads must be at least 1")
    with _session(args) as s:
        v = s.validate(reads=args.reads, **ref)
        path = s.write_record(args.records) if s.applied else None
    show_validation(v)
    if path:
        _say(f"record {path} updated")
    return 0


# ---------------------------------------------------------------- guided


def guided(args, ask=None, out=_say):
    """The whole session with prompts. `ask(prompt) -> str` reads the user's answer
    (default: input())."""
    ask = ask or (lambda prompt: input(prompt))
    _check_start(args)
    with _link(args) as link:
        s = api.Session.start(link, channel=args.channel - 1, board=args.board,
                              rating=args.rating, progress=progress_bar)
        rating = s.rating
        out(f"Calibrating meter {s.device}, {s.ch_name} ({s.sensor}"
            f"{f', rated {rating:g} A' if rating else ''}).")
        out("You need a reference: a clamp meter, or a resistive load (kettle, heater) of "
            "known power and the mains voltage.")
        _retry(ask, out, "Step 1 - zero: switch off every load on the circuit the CT clamps "
               "(or take the CT off the cable), then press Enter: ", s.zero)
        z = s.zero_step
        out(f"  noise {z.raw_irms:.4g} A, bias code {z.bias_code:.1f}")
        s.save(args.session)
        hint = (f" (best ~{0.1 * rating:.3g} A, ~{0.5 * rating:.3g} A and ~{rating:.3g} A)"
                if rating else " (small, medium and near the sensor's rating)")
        out(f"Step 2 - reference loads: three loads of different size{hint}.")
        while True:
            n = len(s.points) + 1
            text = ask(f"Switch on reference load {n} and type its current (8.5 or 8.5A) or "
                       "power and voltage (2000W@230V); empty when done: ").strip()
            if not text:
                if s.points:
                    break
                out("  at least one reference load is needed")
                continue
            try:
                p = s.point(**api.parse_reference(text))
            except api.CalibrateError as exc:
                out(f"  {exc}")
                continue
            show_point(s, p, out)
            _warnings(s, out)
            s.save(args.session)
        if s.vch is not None:
            while True:
                text = ask("Voltage channel: type the mains voltage measured at a socket "
                           "with a multimeter (V); empty to skip: ").strip()
                if not text:
                    break
                try:
                    show_voltage(s, s.voltage(float(text.rstrip("Vv "))), out)
                    s.save(args.session)
                    break
                except ValueError:
                    out(f"  cannot read {text!r} as a voltage")
                except api.CalibrateError as exc:
                    out(f"  {exc}")
        fit = s.fit()
        show_fit(s, fit, out)
        if not args.yes:
            yes = ask("Step 3 - apply this calibration to the meter? [Y/n] ").strip().lower()
            if yes not in ("", "y", "yes"):
                out(f"not applied; the session is in {args.session} "
                    "(`ctmeter calibrate apply` sends it later)")
                return 1
        s.apply(fit)
        path = s.write_record(args.records)
        s.save(args.session)
        out(f"applied; record {path}")
        if s.vch is not None:
            while ask("Phase: switch on a resistive load (kettle, heater; the bigger the "
                      "better), then press Enter, or type s to skip: ").strip().lower() != "s":
                try:
                    show_phase(s.phase(), out)
                    _warnings(s, out)
                    s.write_record(args.records)
                    s.save(args.session)
                    break
                except api.CalibrateError as exc:
                    out(f"  {exc}")
        out("Step 4 - validation: switch on a reference load (again, or another one).")
        while True:
            text = ask("Type its current or power@voltage to compare; empty when done: ")
            if not text.strip():
                break
            try:
                v = s.validate(**api.parse_reference(text))
            except api.CalibrateError as exc:
                out(f"  {exc}")
                continue
            show_validation(v, out)
            _warnings(s, out)
            s.write_record(args.records)
            s.save(args.session)
        s.link = None
    out(f"done: record {path}")
    return 0


def _retry(ask, out, prompt, action):
    while True:
        ask(prompt)
        try:
            return action()
        except api.CalibrateError as exc:
            out(f"  {exc}")
            if ask("  Enter to try again, q to quit: ").strip().lower() == "q":
                raise


STEPS = {"start": step_start, "zero": step_zero, "point": step_point,
         "voltage": step_voltage, "fit": step_fit, "apply": step_apply, "phase": step_phase,
         "validate": step_validate}


def run(args):
    if args.step is None:
        try:
            return guided(args)
        except EOFError:
            raise api.CalibrateError(
                "the input ended before the session was complete",
                f"what was measured is in {args.session}; go on with the steps "
                "(`ctmeter calibrate --help`)") from None
    return STEPS[args.step](args)
