# SPDX-License-Identifier: MIT
"""How the console prints an answer: redaction, then one JSON line or `key: value` lines.

    respond(con, "status", {"uptime_s": 12}, None)    # an answer
    respond(con, "scope", None, "n: must be 1..2000")  # an error

Loaded per answer (meter.modules) and dropped after it; the formats and the redaction rules
are documented in meter.console_cmds. Kept apart from the parser so that while a handler
runs (`config set` loads the config rules) the parser's code is not in the heap as well.
"""

# %-formatting is MicroPython's cheapest string formatting.
# ruff: noqa: UP031

import json

try:
    from micropython import const
except ImportError:  # CPython
    from meter.cpython_shims import const

SECRET_WORDS = ("password", "passwd", "pass", "pwd", "secret", "token", "psk", "apikey",
                "credential", "credentials", "authorization")
_SECRET_EXACT = const(("key", "auth"))
_MASK = const("***")
_RESERVED = const(("ok", "cmd", "error"))  # an answer's own keys: a result cannot set them


def is_secret_key(name):
    """True for key names like wifi_password, mqtt.pass, api_key, token, secret."""
    name = str(name).lower()
    for w in SECRET_WORDS:
        if w in name:
            return True
    # the words of the name (runs of a-z 0-9), walked as bytes: iterating a str would
    # intern each character as a name for good on MicroPython (meter.jsontext)
    word = bytearray()
    for b in (name + ".").encode():
        if 0x61 <= b <= 0x7A or 0x30 <= b <= 0x39:
            word.append(b)
        else:
            if word and bytes(word).decode() in _SECRET_EXACT:
                return True
            word = bytearray()
    return False


def _scrub(text, secrets):
    for s in secrets:
        if s and s in text:
            text = text.replace(s, _MASK)
    return text


def redact(obj, secrets=(), into=None, skip=()):
    """A copy of obj safe to print: secret keys masked, secret values scrubbed, non-finite
    floats -> None, unknown types -> str. A dict obj is copied into `into` when given (its
    keys in `skip` left out)."""
    if isinstance(obj, dict):
        out = {} if into is None else into
        for k in obj:
            if k in skip:
                continue
            v = obj[k]
            ks = _scrub(k if isinstance(k, str) else str(k), secrets)
            if is_secret_key(ks) and v is not None and v != "":
                out[ks] = _MASK
            else:
                out[ks] = redact(v, secrets)
        return out
    if isinstance(obj, (list, tuple)):
        # copied only if something changes: a scope answer holds thousands of codes
        out = None
        for i, v in enumerate(obj):
            r = redact(v, secrets)
            if out is None and r is not v:
                out = list(obj)
            if out is not None:
                out[i] = r
        return obj if out is None else out
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



def respond(con, name, result, error, lines=None):
    """Print one answer through con.out in con.mode; `lines`: help's human lines."""
    secrets = ()
    if con.secrets is not None:
        secrets = tuple(s for s in con.secrets() if isinstance(s, str) and s)
    out = con.out
    if con.mode == "json":
        obj = {"ok": error is None}
        if name is not None:
            obj["cmd"] = name
        if error is not None:
            obj["error"] = error
        obj = redact(obj, secrets)
        if error is None:  # the result redacted straight into the answer: one copy of it
            redact(result, secrets, obj, _RESERVED)
        stream = con.stream
        if stream is None:
            out(json.dumps(obj))
            return
        # Written in pieces: the line as one string is the largest block an answer needs
        # (a status ~0.5 KB, a scope of 2000 codes ~10 KB), and in a heap cut into pieces
        # by days of work it was what could not be found (bench/heap_floor.py, 76 KB).
        # The line is ended even when the writing runs out of memory part-way.
        try:
            json.dump(obj, stream)
        finally:
            stream.write("\n")
        return
    if error is not None:
        out(_scrub("error: " + _printable(error), secrets))
        return
    if lines is not None:
        for line in lines:
            out(_scrub(line, secrets))
        return
    lines = []
    _flatten("", redact(result, secrets), lines)
    if not lines:
        lines.append("ok")
    for line in lines:
        out(_scrub(line, secrets))


def _printable(s):
    for b in s.encode():  # bytes, not characters: see is_secret_key
        if b < 0x20 or b == 0x7F:
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
