# SPDX-License-Identifier: MIT
"""The device console: line commands on stdin while the meter keeps measuring.

    con = Console({"status": on_status, "energy set": on_energy_set}, print,
                  mode="human", channels=2, inputs=3, source=board.console_source(),
                  app_errors=(ConfigError,), secrets=lambda: (cfg.password, cfg.token))
    con.register("cal zero", on_cal_zero)       # argument spec comes from COMMANDS
    ...
    con.poll()          # in the main loop, between sampling bursts: bounded work, no
                        # allocation while nothing has arrived

The command set and every argument spec are data (COMMANDS below); the firmware only binds
handlers. A handler is called with the parsed arguments in spec order (optional ones get
their default) and returns a dict, or None; a command nobody bound answers "not available".
The console itself answers `help` and `mode json|human`.

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

Input lines: \\r, \\n and \\r\\n end a line; backspace/DEL edit; at most MAX_LINE bytes
(longer lines are answered "line too long" as a whole); control characters and invalid
UTF-8 are refused. Handler exceptions of the app's error types (and ConsoleError) become
error lines with their message, any other Exception an "internal error" line naming its
type; KeyboardInterrupt and SystemExit always propagate. A handler may keep the meter
running (and so call poll() again): that nested poll returns at once, input waits.
"""

# %-formatting is MicroPython's cheapest string formatting.
# ruff: noqa: UP031

import json
import sys

_CPYTHON = sys.implementation.name != "micropython"

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


MAX_LINE = const(240)  # bytes per line; stdin holds ~260, so one line fits whole
_POLL_BYTES = const(64)  # bytes taken per poll() call: bounds the time stolen from sampling
MAX_SCOPE = const(2000)
_JSON_DEPTH = const(4)
_KEY_LEN = const(48)

_BS = const(8)
_TAB = const(9)
_LF = const(10)
_CR = const(13)
_DEL = const(127)


class ConsoleError(Exception):
    """A line or its arguments are malformed; handlers may raise it too."""


# ---------------------------------------------------------------- argument types


def _is_digits(s):
    if not s:
        return False
    for c in s:
        if c < "0" or c > "9":
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


class Int:
    def __init__(self, lo, hi):
        self.lo, self.hi = lo, hi

    def parse(self, s, con):
        v = parse_int(s)
        if v < self.lo or v > self.hi:
            raise ConsoleError("must be %d..%d" % (self.lo, self.hi))
        return v


class Float:
    def __init__(self, lo, hi, lo_open=False):
        self.lo, self.hi, self.lo_open = lo, hi, lo_open

    def parse(self, s, con):
        v = parse_float(s)
        if v > self.hi or v < self.lo or (self.lo_open and v == self.lo):
            raise ConsoleError(
                "must be %s %g and <= %g" % (">" if self.lo_open else ">=", self.lo, self.hi)
            )
        return v


class Channel:
    """A current channel (0..channels-1), or any ADC input if `inputs` (incl. voltage)."""

    def __init__(self, inputs=False):
        self.inputs = inputs

    def parse(self, s, con):
        n = con.inputs if self.inputs else con.channels
        if not _is_digits(s) or len(s) > 3:
            raise ConsoleError("not a channel number")
        v = int(s)
        if v >= n:
            raise ConsoleError("no channel %d (channels: 0..%d)" % (v, n - 1))
        return v


class Choice:
    def __init__(self, *options):
        self.options = options

    def parse(self, s, con):
        if s not in self.options:
            raise ConsoleError("must be one of " + "|".join(self.options))
        return s


class Key:
    """A config key: lowercase letter, then letters, digits, _ or . (at most 48)."""

    def parse(self, s, con):
        ok = 0 < len(s) <= _KEY_LEN and "a" <= s[0] <= "z"
        if ok:
            for c in s:
                if not ("a" <= c <= "z" or "0" <= c <= "9" or c == "_" or c == "."):
                    ok = False
                    break
        if not ok:
            raise ConsoleError("not a config key")
        return s


class Kwh:
    """Energy in kWh as an exact decimal (<= 6 decimals) -> integer milliwatt-hours."""

    def __init__(self, hi_kwh=1000000000):
        self.hi = hi_kwh

    def parse(self, s, con):
        whole, frac = s, ""
        if "." in s:
            whole, frac = s.split(".", 1)
        ok = (whole or frac) and (not whole or _is_digits(whole))
        if not ok or (frac and not _is_digits(frac)) or len(whole) > 12:
            raise ConsoleError("not a kWh value (like 1234.5)")
        if len(frac) > 6:
            raise ConsoleError("at most 6 decimals (1 mWh)")
        mwh = int(whole or "0") * 1000000 + (int(frac + "000000"[len(frac):]) if frac else 0)
        if mwh > self.hi * 1000000:
            raise ConsoleError("must be <= %d kWh" % self.hi)
        return mwh


class Text:
    """The rest of the line, as typed (inner spaces kept)."""

    rest = True

    def parse(self, s, con):
        return s


class JsonObject:
    """The rest of the line as a JSON object with finite numbers, nested at most 4 deep."""

    rest = True

    def parse(self, s, con):
        try:
            if _CPYTHON:  # CPython would take NaN/Infinity; MicroPython and JSON do not
                v = json.loads(s, parse_constant=_no_constant)
            else:
                v = json.loads(s)
        except ValueError:  # includes CPython's JSONDecodeError
            raise ConsoleError("not valid JSON") from None
        if not isinstance(v, dict):
            raise ConsoleError("expected a JSON object {...}")
        _check_json(v, 0)
        return v


def _no_constant(name):
    raise ValueError(name)


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
    ("cal zero", (("ch", CHANNEL),), "measure offset and noise floor with no load"),
    ("cal point", (("ch", CHANNEL), ("true_amps", Float(0.0, 1000.0, lo_open=True))),
     "measure with a known load of true_amps A"),
    ("cal apply", (("ch", CHANNEL), ("params", JsonObject())),
     "apply calibration params (JSON object)"),
    ("cal clear", (("ch", CHANNEL),), "back to the sensor profile's defaults"),
    ("energy set", (("ch", CHANNEL), ("kwh", Kwh())), "set the energy counter (kWh)"),
    ("energy reset", (("ch", CHANNEL),), "set the energy counter to 0"),
    ("reboot", (), "hard reset"),
    ("mode", (("mode", Choice("json", "human"), None),), "show or switch the output mode"),
)

_BUILTIN = ("help", "mode")


def usage(name, args):
    parts = [name]
    for a in args:
        parts.append(("<%s>" if len(a) == 2 else "[%s]") % a[0])
    return " ".join(parts)


# ---------------------------------------------------------------- redaction

SECRET_WORDS = ("password", "passwd", "pass", "pwd", "secret", "token", "psk", "apikey",
                "credential", "credentials", "authorization")
_SECRET_EXACT = ("key", "auth")
_MASK = "***"


def is_secret_key(name):
    """True for key names like wifi_password, mqtt.pass, api_key, token, secret."""
    name = str(name).lower()
    for w in SECRET_WORDS:
        if w in name:
            return True
    word = ""
    for c in name + ".":
        if "a" <= c <= "z" or "0" <= c <= "9":
            word += c
        else:
            if word in _SECRET_EXACT:
                return True
            word = ""
    return False


def _scrub(text, secrets):
    for s in secrets:
        if s and s in text:
            text = text.replace(s, _MASK)
    return text


def redact(obj, secrets=()):
    """A copy of obj safe to print: secret keys masked, secret values scrubbed, non-finite
    floats -> None, unknown types -> str."""
    if isinstance(obj, dict):
        out = {}
        for k in obj:
            v = obj[k]
            ks = _scrub(k if isinstance(k, str) else str(k), secrets)
            if is_secret_key(ks) and v is not None and v != "":
                out[ks] = _MASK
            else:
                out[ks] = redact(v, secrets)
        return out
    if isinstance(obj, (list, tuple)):
        return [redact(v, secrets) for v in obj]
    if obj is None or isinstance(obj, bool):
        return obj
    if isinstance(obj, (int, float)):
        if isinstance(obj, float) and obj - obj != 0.0:
            return None
        if secrets and _scrub(str(obj), secrets) != str(obj):
            return _MASK
        return obj
    if isinstance(obj, str):
        return _scrub(obj, secrets)
    return _scrub(str(obj), secrets)


# ---------------------------------------------------------------- line reader


class LineReader:
    """Assembles bytes into lines in a preallocated buffer; push() allocates nothing."""

    def __init__(self, max_line=MAX_LINE):
        self._buf = bytearray(max_line)
        self._max = max_line
        self._n = 0
        self._over = False
        self._cr = False

    def push(self, b):
        """Add one byte; True when a line has ended (then call take())."""
        if b == _LF and self._cr:  # the LF of a CRLF
            self._cr = False
            return False
        self._cr = b == _CR
        if b == _CR or b == _LF:
            return True
        if self._over:
            return False
        if b == _BS or b == _DEL:
            n = self._n
            while n:  # drop one whole UTF-8 character
                n -= 1
                if self._buf[n] & 0xC0 != 0x80:
                    break
            self._n = n
            return False
        if self._n >= self._max:
            self._over = True
            return False
        self._buf[self._n] = b
        self._n += 1
        return False

    def take(self):
        """The ended line as bytes (b"" when blank) and reset; ConsoleError if unusable."""
        n, over = self._n, self._over
        self._n, self._over = 0, False
        if over:
            raise ConsoleError("line too long (max %d bytes)" % self._max)
        _check_bytes(self._buf, n)
        line = bytes(self._buf[:n]).strip()
        return line


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


# ---------------------------------------------------------------- console


class Console:
    def __init__(self, handlers=None, out=print, mode="human", channels=1, inputs=None,
                 source=None, app_errors=(), secrets=None, max_line=MAX_LINE):
        if mode not in ("human", "json"):
            raise ValueError("mode must be 'human' or 'json'")
        self.out = out
        self.mode = mode
        self.channels = channels
        self.inputs = channels if inputs is None else inputs
        self.source = source
        self._errors = (ConsoleError,) + tuple(app_errors)
        self._secrets = secrets
        self._reader = LineReader(max_line)
        self._busy = False  # a handler is running: poll() must not re-enter
        self._cmds = {}  # name -> [args, help, handler]
        self._order = []  # names as help lists them
        self._groups = {}  # first word of a two-word command -> subcommands
        for name, args, text in COMMANDS:
            self._add(name, args, text)
        for name in handlers or ():
            self.register(name, handlers[name])

    def _add(self, name, args, text):
        for i, a in enumerate(args):
            if getattr(a[1], "rest", False) and i != len(args) - 1:
                raise ValueError(name + ": a rest-of-line argument must come last")
        words = name.split()
        if not 1 <= len(words) <= 2:
            raise ValueError("command names have one or two words: " + repr(name))
        if len(words) == 2:
            subs = self._groups.setdefault(words[0], [])
            if words[1] not in subs:
                subs.append(words[1])
        elif name in self._groups:
            raise ValueError(name + " is a command group")
        old = self._cmds.get(name)
        if old is None:
            self._order.append(name)
        self._cmds[name] = [tuple(args), text, old[2] if old else None]

    def register(self, name, handler, args=None, help=None):
        """Bind a handler; args/help override (or, for a new command, define) the spec."""
        if name in _BUILTIN:
            raise ValueError(name + " is answered by the console itself")
        entry = self._cmds.get(name)
        if entry is None or args is not None or help is not None:
            self._add(name, args if args is not None else (entry[0] if entry else ()),
                      help if help is not None else (entry[1] if entry else ""))
        self._cmds[name][2] = handler

    # -- input

    def poll(self, max_bytes=_POLL_BYTES):
        """Take at most max_bytes from the source and answer every line completed.
        Returns the number of responses. Allocates nothing when no input is waiting."""
        src = self.source
        if self._busy or src is None or not src.any():
            return 0
        reader = self._reader
        handled = 0
        while max_bytes > 0 and src.any():
            b = src.read1()
            if b < 0:
                break
            max_bytes -= 1
            if reader.push(b) and self._line_done():
                handled += 1
        return handled

    def feed(self, data):
        """Push bytes as if they arrived on the source; returns the number of responses."""
        if self._busy:
            raise ConsoleError("console busy")
        handled = 0
        for b in data:
            if self._reader.push(b) and self._line_done():
                handled += 1
        return handled

    def _line_done(self):
        try:
            line = self._reader.take()
        except ConsoleError as e:
            self._respond(None, None, str(e))
            return True
        if not line:
            return False
        self.handle(line)
        return True

    def handle(self, line):
        """Answer one complete line (bytes or str) with exactly one response (none if blank)."""
        if isinstance(line, str):
            line = line.encode()
        try:
            if len(line) > self._reader._max:
                raise ConsoleError("line too long (max %d bytes)" % self._reader._max)
            _check_bytes(line, len(line))
        except ConsoleError as e:
            self._respond(None, None, str(e))
            return
        words = line.split()
        if not words:
            return
        name, err = self._lookup(words)
        if err:
            self._respond(name, None, err)
            return
        entry = self._cmds[name]
        args = entry[0]
        try:
            values = self._parse_args(line, name, args)
        except ConsoleError as e:
            self._respond(name, None, str(e))
            return
        if name == "help":
            self._respond(name, self._help(), None)
            return
        if name == "mode":
            if values[0] is not None:
                self.mode = values[0]
            self._respond(name, {"mode": self.mode}, None)
            return
        handler = entry[2]
        if handler is None:
            self._respond(name, None, "not available")
            return
        # A handler may run the meter loop (scope, cal zero collect live windows), which
        # polls the console again: that poll leaves further input waiting until we return.
        self._busy = True
        try:
            result = handler(*values)
        except self._errors as e:
            self._respond(name, None, str(e) or type(e).__name__)
            return
        except Exception as e:  # noqa: BLE001 - reported, the meter keeps running
            self._respond(name, None, "internal error: " + type(e).__name__)
            return
        finally:
            self._busy = False
        if result is None:
            result = {}
        if not isinstance(result, dict):
            self._respond(name, None, "internal error: handler returned no dict")
            return
        self._respond(name, result, None)

    def _lookup(self, words):
        w0 = words[0].decode()
        if w0 in self._groups:
            if len(words) < 2:
                return None, "%s needs one of: %s" % (w0, ", ".join(self._groups[w0]))
            name = w0 + " " + words[1].decode()
            if name not in self._cmds:
                return None, "unknown %s subcommand (try help)" % w0
            return name, None
        if w0 in self._cmds:
            return w0, None
        return None, "unknown command (try help)"

    def _parse_args(self, line, name, args):
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
                    values.append(spec[1].parse(tok, self))
                except ConsoleError as e:
                    raise ConsoleError("%s: %s" % (spec[0], e)) from None
            elif len(spec) > 2:
                values.append(spec[2])
            else:
                raise ConsoleError("missing <%s>; usage: %s" % (spec[0], usage(name, args)))
        return values

    def _help(self):
        cmds = []
        unavailable = []
        for name in self._order:
            cmds.append(usage(name, self._cmds[name][0]))
            if name not in _BUILTIN and self._cmds[name][2] is None:
                unavailable.append(name)
        return {"commands": cmds, "unavailable": unavailable}

    # -- output

    def _respond(self, name, result, error):
        secrets = ()
        if self._secrets is not None:
            secrets = tuple(s for s in self._secrets() if isinstance(s, str) and s)
        if self.mode == "json":
            obj = {"ok": error is None}
            if name is not None:
                obj["cmd"] = name
            if error is not None:
                obj["error"] = error
            else:
                for k in result:
                    if k not in ("ok", "cmd", "error"):
                        obj[k] = result[k]
            self.out(json.dumps(redact(obj, secrets)))
            return
        if error is not None:
            self.out(_scrub("error: " + _printable(error), secrets))
            return
        if name == "help":
            for cmd in self._order:
                entry = self._cmds[cmd]
                mark = " (not available)" if cmd in result["unavailable"] else ""
                self.out(usage(cmd, entry[0]) + "  -- " + entry[1] + mark)
            return
        lines = []
        _flatten("", redact(result, secrets), lines)
        if not lines:
            lines.append("ok")
        for line in lines:
            self.out(_scrub(line, secrets))


def _printable(s):
    for c in s:
        if c < " " or c == "\x7f":
            return repr(s)
    return s


def _flatten(prefix, v, lines):
    if isinstance(v, dict):
        for k in sorted(v):
            _flatten(prefix + k + ".", v[k], lines)
        if not v and prefix:
            lines.append(prefix[:-1] + ": {}")
        return
    key = prefix[:-1]
    if isinstance(v, list):
        if all(not isinstance(x, (dict, list)) for x in v):
            lines.append(key + ": " + " ".join(_scalar(x) for x in v))
        else:
            for i, x in enumerate(v):
                _flatten(prefix + str(i) + ".", x, lines)
        return
    lines.append(key + ": " + _scalar(v))


def _scalar(v):
    if v is None:
        return "-"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, str):
        return _printable(v)
    return str(v)
