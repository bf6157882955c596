# SPDX-License-Identifier: MIT
"""The console's command table, argument parsing and help: how a line is read. Loaded by
meter.console when a line arrives and dropped (on the device) before the command's handler
runs; the answer is printed by meter.console_out.

    handle(con, b"cal point 0 5.0")     # -> ("cal point", [0, 5.0]), or True if answered

The command set and every argument spec are data (COMMANDS below); the firmware provides
the handlers (see meter.console for how they are found). A handler is called with the
parsed arguments in spec order (optional ones get their default) and returns a dict, or
None; a command without a handler answers "not available". The console itself answers
`help` and `mode json|human`.

Arguments are checked strictly before any handler runs: ASCII decimal numbers only (no nan,
inf, 1e999, hex, underscores or non-ASCII digits), ranges and counts bounded, channel
indices in range. `energy set` takes kWh as an exact decimal (at most 6 decimals) and hands
the handler an integer milliwatt-hour count, never a float. `cal apply` takes a JSON object
(finite numbers, depth <= 4). `config set` hands over key and the raw value text; the
config module parses and validates it.

Error messages never repeat what was typed (a pasted password must not come back out).

Output, one response per non-blank input line:
  JSON mode : exactly one line, {"ok": true, "cmd": "...", ...result}
              or {"ok": false, ["cmd": "...",] "error": "..."}
  human mode: `key: value` lines (nested keys dotted), `ok` for an empty result,
              errors as one line `error: ...`
Every response passes a redaction filter: values under secret-looking keys (password, pass,
token, secret, key, psk, ...) are masked at any depth, and the current secret values from
`secrets()` are scrubbed from every string, number and error text.

Lines with control characters or invalid UTF-8 are refused. Handler exceptions of the
app's error types (and ConsoleError) become error lines with their message, any other
Exception an "internal error" line naming its type; KeyboardInterrupt and SystemExit
always propagate.
"""

# %-formatting is MicroPython's cheapest string formatting.
# ruff: noqa: UP031

from meter import modules
from meter.console import OUT, ConsoleError

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


MAX_SCOPE = const(2000)
_JSON_DEPTH = const(4)
_KEY_LEN = const(48)
_TAB = const(9)


# ---------------------------------------------------------------- argument types


def _is_digits(s):
    # bytes, not characters: iterating a str interns each character it meets as a name for
    # good on MicroPython (meter.jsontext); str.isdigit would take non-ASCII digits
    if not s:
        return False
    for b in s.encode():
        if b < 0x30 or b > 0x39:
            return False
    return True


def parse_int(s):
    """Strict ASCII decimal integer (optional sign, at most 12 digits) or ConsoleError."""
    body = s[1:] if s[:1] in ("-", "+") else s
    if not _is_digits(body) or len(body) > 12:
        raise ConsoleError("not an integer")
    return int(s)


def parse_float(s):
    """Strict ASCII decimal float (123, 1.5, .5, 2e3), finite, or ConsoleError."""
    if len(s) > 32:
        raise ConsoleError("not a number")
    body = s[1:] if s[:1] in ("-", "+") else s
    mant, exp = body, ""
    for sep in ("e", "E"):
        if sep in mant:
            mant, exp = mant.split(sep, 1)
            break
    whole, frac = mant, ""
    if "." in mant:
        whole, frac = mant.split(".", 1)
    ok = (whole or frac) and (not whole or _is_digits(whole)) and (not frac or _is_digits(frac))
    if ok and body != mant:  # there was an exponent
        e = exp[1:] if exp[:1] in ("-", "+") else exp
        ok = _is_digits(e) and len(e) <= 4
    if not ok:
        raise ConsoleError("not a number")
    v = float(s)
    if v - v != 0.0:  # inf or nan (1e999 parses to inf)
        raise ConsoleError("number out of range")
    return v


# Argument types. One class whose `kind` says how to parse, and a factory per type (the
# names the command table and Console.register use): on the device every class costs ~350
# bytes of heap and this module is loaded for every console line, where functions cost a
# third of that.
class _Arg:
    rest = False  # takes the rest of the line (must come last)

    def __init__(self, kind, a=None, b=None, c=False):
        self.kind, self.a, self.b, self.c = kind, a, b, c

    def parse(self, s, con):
        k = self.kind
        if k == "int":
            v = parse_int(s)
            if v < self.a or v > self.b:
                raise ConsoleError("must be %d..%d" % (self.a, self.b))
            return v
        if k == "float":
            v = parse_float(s)
            if v > self.b or v < self.a or (self.c and v == self.a):
                raise ConsoleError(
                    "must be %s %g and <= %g" % (">" if self.c else ">=", self.a, self.b))
            return v
        if k == "channel":
            n = con.inputs if self.c else con.channels
            if not _is_digits(s) or len(s) > 3:
                raise ConsoleError("not a channel number")
            v = int(s)
            if v >= n:
                raise ConsoleError("no channel %d (channels: 0..%d)" % (v, n - 1))
            return v
        if k == "choice":
            if s not in self.a:
                raise ConsoleError("must be one of " + "|".join(self.a))
            return s
        if k == "key":
            return _parse_key(s)
        if k == "kwh":
            return _parse_kwh(s, self.a)
        if k == "json":
            return _parse_json_object(s)
        return s  # text: as typed (inner spaces kept)


def Int(lo, hi):  # noqa: N802 - a type in the command table
    return _Arg("int", lo, hi)


def Float(lo, hi, lo_open=False):  # noqa: N802
    return _Arg("float", lo, hi, lo_open)


def Channel(inputs=False):  # noqa: N802
    """A current channel (0..channels-1), or any ADC input if `inputs` (incl. voltage)."""
    return _Arg("channel", c=inputs)


def Choice(*options):  # noqa: N802
    return _Arg("choice", options)


def Key():  # noqa: N802
    """A config key: lowercase letter, then letters, digits, _ or . (at most 48)."""
    return _Arg("key")


def Kwh(hi_kwh=1000000000):  # noqa: N802
    """Energy in kWh as an exact decimal (<= 6 decimals) -> integer milliwatt-hours."""
    return _Arg("kwh", hi_kwh)


def Text():  # noqa: N802
    """The rest of the line, as typed (inner spaces kept)."""
    t = _Arg("text")
    t.rest = True
    return t


def JsonObject():  # noqa: N802
    """The rest of the line as a JSON object with finite numbers, nested at most 4 deep."""
    t = _Arg("json")
    t.rest = True
    return t


def _parse_key(s):
    b = s.encode()  # bytes, not characters (_is_digits)
    ok = 0 < len(b) <= _KEY_LEN and 0x61 <= b[0] <= 0x7A
    if ok:
        for c in b:
            if not (0x61 <= c <= 0x7A or 0x30 <= c <= 0x39 or c == 0x5F or c == 0x2E):
                ok = False
                break
    if not ok:
        raise ConsoleError("not a config key")
    return s


def _parse_kwh(s, hi):
    whole, frac = s, ""
    if "." in s:
        whole, frac = s.split(".", 1)
    ok = (whole or frac) and (not whole or _is_digits(whole))
    if not ok or (frac and not _is_digits(frac)) or len(whole) > 12:
        raise ConsoleError("not a kWh value (like 1234.5)")
    if len(frac) > 6:
        raise ConsoleError("at most 6 decimals (1 mWh)")
    mwh = int(whole or "0") * 1000000 + (int(frac + "000000"[len(frac):]) if frac else 0)
    if mwh > hi * 1000000:
        raise ConsoleError("must be <= %d kWh" % hi)
    return mwh


def _parse_json_object(s):
    try:  # strict JSON: MicroPython's json.loads makes {} of '{"gain": }'
        v = modules.use("meter.jsontext").loads(s)
    except ValueError as exc:  # includes CPython's JSONDecodeError
        raise ConsoleError("not valid JSON: %s" % exc) from None
    if not isinstance(v, dict):
        raise ConsoleError("expected a JSON object {...}")
    _check_json(v, 0)
    return v


def _check_json(v, depth):
    if depth > _JSON_DEPTH:
        raise ConsoleError("JSON nested too deep")
    if isinstance(v, dict):
        for k in v:
            _check_json(v[k], depth + 1)
    elif isinstance(v, list):
        for x in v:
            _check_json(x, depth + 1)
    elif isinstance(v, float) and v - v != 0.0:
        raise ConsoleError("JSON number not finite")


CHANNEL = Channel()
INPUT = Channel(inputs=True)

# The command set: (name, ((arg, type[, default]), ...), help). Optional args have a default;
# a type with `rest = True` takes the rest of the line and must come last.
COMMANDS = (
    ("help", (), "list the commands"),
    ("status", (), "uptime, heap, Wi-Fi, last post, outbox, duty, sample rate, energy"),
    ("read", (), "the latest reading of every channel"),
    ("adc", (), "per input: min/max/mean code, noise, clipping count"),
    ("scope", (("ch", INPUT), ("n", Int(1, MAX_SCOPE), 500)),
     "n raw codes of one input and their sample rate"),
    ("config get", (("key", Key(), None),), "the config (secrets masked), or one key"),
    ("config set", (("key", Key()), ("value", Text())), "set one config key (validated)"),
    ("cal show", (), "the calibration of every channel"),
    ("cal zero", (("ch", INPUT),), "measure offset and noise floor with no load"),
    ("cal point", (("ch", INPUT), ("true_amps", Float(0.0, 1000.0, lo_open=True))),
     "measure with a known load of true_amps A (the voltage input: true volts)"),
    ("cal apply", (("ch", INPUT), ("params", JsonObject())),
     "apply calibration params (JSON object)"),
    ("cal clear", (("ch", INPUT),), "back to the sensor profile's defaults"),
    ("energy set", (("ch", CHANNEL), ("kwh", Kwh())), "set the energy counter (kWh)"),
    ("energy reset", (("ch", CHANNEL),), "set the energy counter to 0"),
    ("reboot", (), "hard reset"),
    ("mode", (("mode", Choice("json", "human"), None),), "show or switch the output mode"),
)

_BUILTIN = const(("help", "mode"))


def usage(name, args):
    parts = [name]
    for a in args:
        parts.append(("<%s>" if len(a) == 2 else "[%s]") % a[0])
    return " ".join(parts)


def _check_bytes(buf, n):
    # Printable text only: strict UTF-8 (no overlongs, surrogates or > U+10FFFF, the same
    # rule as CPython's decoder), no C0/C1 control characters except tab.
    i = 0
    while i < n:
        c = buf[i]
        if c < 0x80:
            if c < 0x20 and c != _TAB:
                raise ConsoleError("control character in line")
            i += 1
            continue
        lo, hi = 0x80, 0xBF
        if 0xC2 <= c <= 0xDF:
            k = 1
        elif 0xE0 <= c <= 0xEF:
            k = 2
            if c == 0xE0:
                lo = 0xA0
            elif c == 0xED:
                hi = 0x9F
        elif 0xF0 <= c <= 0xF4:
            k = 3
            if c == 0xF0:
                lo = 0x90
            elif c == 0xF4:
                hi = 0x8F
        else:
            raise ConsoleError("invalid UTF-8")
        if i + k >= n:  # truncated sequence
            raise ConsoleError("invalid UTF-8")
        if not lo <= buf[i + 1] <= hi:
            raise ConsoleError("invalid UTF-8")
        for j in range(i + 2, i + k + 1):
            if not 0x80 <= buf[j] <= 0xBF:
                raise ConsoleError("invalid UTF-8")
        if c == 0xC2 and buf[i + 1] < 0xA0:
            raise ConsoleError("control character in line")
        i += k + 1


# ---------------------------------------------------------------- one line


def _table(con):
    """{name: [args, help]}, the names in help order, and the two-word groups."""
    table = {}
    order = []
    for name, args, text in COMMANDS:
        table[name] = [args, text]
        order.append(name)
    for name in con.bound:
        _, args, text = con.bound[name]
        entry = table.get(name)
        if entry is None:
            entry = table[name] = [(), ""]
            order.append(name)
        if args is not None:
            entry[0] = tuple(args)
        if text is not None:
            entry[1] = text
    groups = {}
    for name in order:
        words = name.split()
        if len(words) == 2:
            subs = groups.setdefault(words[0], [])
            if words[1] not in subs:
                subs.append(words[1])
    return table, order, groups


def _answer(con, name, result, error, lines=None):
    modules.use(OUT).respond(con, name, result, error, lines)
    return True


def handle(con, line):
    """Read one line for Console con: True if it was answered here (an error, help, mode),
    False for a blank line, or (name, values) for Console to call the command's handler
    with, this module dropped first (see Console.handle)."""
    if isinstance(line, Exception):
        return _answer(con, None, None, str(line))
    if isinstance(line, str):
        line = line.encode()
    try:
        if len(line) > con.max_line:
            raise ConsoleError("line too long (max %d bytes)" % con.max_line)
        _check_bytes(line, len(line))
    except ConsoleError as e:
        return _answer(con, None, None, str(e))
    line = line.strip()
    words = line.split()
    if not words:
        return False
    table, order, groups = _table(con)
    name, err = _lookup(table, groups, words)
    if err:
        return _answer(con, name, None, err)
    try:
        values = _parse_args(con, line, name, table[name][0])
    except ConsoleError as e:
        return _answer(con, name, None, str(e))
    if name == "help":
        return _help(con, table, order)
    if name == "mode":
        if values[0] is not None:
            con.mode = values[0]
        return _answer(con, name, {"mode": con.mode}, None)
    return name, values


def _lookup(table, groups, words):
    w0 = words[0].decode()
    if w0 in groups:
        if len(words) < 2:
            return None, "%s needs one of: %s" % (w0, ", ".join(groups[w0]))
        name = w0 + " " + words[1].decode()
        if name not in table:
            return None, "unknown %s subcommand (try help)" % w0
        return name, None
    if w0 in table:
        return w0, None
    return None, "unknown command (try help)"


def _parse_args(con, line, name, args):
    nname = len(name.split())
    rest = bool(args) and getattr(args[-1][1], "rest", False)
    if rest:
        parts = line.split(None, nname + len(args) - 1)
    else:
        parts = line.split()
    given = parts[nname:]
    if len(given) > len(args):
        raise ConsoleError("too many arguments; usage: " + usage(name, args))
    values = []
    for i, spec in enumerate(args):
        if i < len(given):
            tok = given[i].strip().decode()
            try:
                values.append(spec[1].parse(tok, con))
            except ConsoleError as e:
                raise ConsoleError("%s: %s" % (spec[0], e)) from None
        elif len(spec) > 2:
            values.append(spec[2])
        else:
            raise ConsoleError("missing <%s>; usage: %s" % (spec[0], usage(name, args)))
    return values


def _help(con, table, order):
    mod = modules.use(con.commands) if con.commands else None
    cmds = []
    unavailable = []
    lines = []
    for name in order:
        use = usage(name, table[name][0])
        cmds.append(use)
        if name not in _BUILTIN and name not in con.bound and \
                getattr(mod, name.replace(" ", "_"), None) is None:
            unavailable.append(name)
            use += "  -- " + table[name][1] + " (not available)"
        else:
            use += "  -- " + table[name][1]
        lines.append(use)
    mod = None
    return _answer(con, "help", {"commands": cmds, "unavailable": unavailable}, None,
                   lines if con.mode == "human" else None)
