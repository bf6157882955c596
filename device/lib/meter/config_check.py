# SPDX-License-Identifier: MIT
"""The config's rules: defaults, validation, key paths, console text parsing, redaction.
Used by meter.config (which holds the validated config) at load and for each change, and
dropped after it on the device: the rules are needed a few times a day, not resident.
"""

import json

from meter import modules
from meter.config import SECRETS, ConfigError

try:
    from micropython import const
except ImportError:  # CPython
    from meter.cpython_shims import const

# bytes: text is checked byte by byte, as iterating a str would intern each character it
# meets as a name for good on MicroPython (meter.jsontext)
_ID_CHARS = const(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def defaults():
    return {
        "device_id": "ctmeter",
        "wifi": {"ssid": "", "password": ""},
        "http": {"url": "", "token": "", "path": "/api/measurements", "enabled": False,
                 "timeout_s": 5},
        "mqtt": {"url": "", "user": "", "password": "", "prefix": "ctmeter",
                 "discovery": True, "enabled": False, "keepalive_s": 60},
        "tls": {"ca": ""},
        "interval_s": 10,
        "persist_interval_s": 300,
        "sample_rate_hz": 4000,
        "mains_hz": "auto",
        "nominal_voltage": 230,
        "channels": [_channel_defaults(0)],
        "voltage": None,
        "console": {"mode": "human"},
        "log_level": "info",
    }


def _channel_defaults(i):
    # channel 0 defaults to GPIO36 (ESP32 ADC1); further channels must name their pin
    return {"pin": 36 if i == 0 else None, "sensor": "SCT-013-030", "burden_ohm": None,
            "name": "ch%d" % (i + 1), "calibration": {}, "amps_per_count": None}


def _voltage_defaults():
    return {"pin": None, "sensor": "ZMPT101B", "calibration": {}, "volts_per_count": None}


def _copy(x):
    if isinstance(x, dict):
        return {k: _copy(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_copy(v) for v in x]
    return x


def _fail(key, rule, value=None):
    # strings are never echoed: they may be secrets or URLs carrying credentials
    if value is not None and type(value) in (int, float, bool) and key not in SECRETS:
        rule = "%s (got %s)" % (rule, json.dumps(value))
    raise ConfigError("config: %s %s" % (key, rule))


# Rules as data (one checker, no closures: RAM matters on the chip). A rule is a tuple:
# (kind, a, b): int/num range a..b; str/id byte length a..b; choice with options a;
# bool; url with schemes a; wpa; path; prefix; pin; burden; obj (calibration dict).
_ID = const("must be 1 to 32 characters from A-Z a-z 0-9 _ -")
_RULES = {
    "device_id": ("id", 1, 32),
    "interval_s": ("int", 1, 3600),
    "persist_interval_s": ("int", 10, 86400),
    "sample_rate_hz": ("int", 1000, 20000),
    "mains_hz": ("choice", (50, 60, "auto")),
    "nominal_voltage": ("num", 50, 400),
    "log_level": ("choice", ("debug", "info", "warning", "error")),
    "wifi": {"ssid": ("str", 0, 32), "password": ("wpa",)},
    "http": {"url": ("url", ("http", "https")), "token": ("str", 0, 256), "path": ("path",),
             "enabled": ("bool",), "timeout_s": ("num", 0.5, 60)},
    "mqtt": {"url": ("url", ("mqtt", "mqtts")), "user": ("str", 0, 64),
             "password": ("str", 0, 128), "prefix": ("prefix",), "discovery": ("bool",),
             "keepalive_s": ("int", 1, 3600),
             "enabled": ("bool",)},
    "tls": {"ca": ("str", 0, 64)},
    "console": {"mode": ("choice", ("human", "json"))},
}
_CHANNEL = {"pin": ("pin",), "sensor": ("str", 1, 32), "burden_ohm": ("burden",),
            "name": ("id", 1, 32), "calibration": ("obj",), "amps_per_count": ("scale",)}
_VOLTAGE = {"pin": ("pin",), "sensor": ("str", 1, 32), "calibration": ("obj",),
            "volts_per_count": ("scale",)}
_HEX = const(b"0123456789abcdefABCDEF")


def _check(key, rule, v):
    """The validated value of one leaf, or ConfigError naming the key and the rule."""
    kind = rule[0]
    if kind in ("int", "num"):
        ok = type(v) is int or (kind == "num" and type(v) is float)
        if not ok or not rule[1] <= v <= rule[2]:
            _fail(key, "must be %s from %s to %s" % (
                "an integer" if kind == "int" else "a number", rule[1], rule[2]), v)
    elif kind == "bool":
        if type(v) is not bool:
            _fail(key, "must be true or false", v)
    elif kind == "choice":
        if type(v) is bool or v not in rule[1]:
            _fail(key, "must be one of " + ", ".join(json.dumps(o) for o in rule[1]), v)
    elif kind == "pin":
        if type(v) is not int or not 0 <= v <= 48:
            _fail(key, "is required: a GPIO number from 0 to 48", v)
    elif kind == "burden":
        if v is not None and (type(v) not in (int, float) or not 0 < v <= 100000):
            _fail(key, "must be null (sensor with built-in burden) or ohms above 0", v)
    elif kind == "scale":
        # A (or V) per ADC code: computed by the host from sensor profile, burden and board
        if v is not None and (type(v) not in (int, float) or not 0 < v <= 100):
            _fail(key, "must be null (sensor default) or a number above 0 up to 100", v)
    elif kind == "obj":
        if not isinstance(v, dict):
            _fail(key, "must be an object", v)
        v = _copy(v)
    elif not isinstance(v, str):
        _fail(key, "must be a string", v)
    elif kind in ("str", "id"):
        n = len(v.encode())
        if not rule[1] <= n <= rule[2]:
            _fail(key, _ID if kind == "id" else "must be %d to %d bytes long" % rule[1:])
        if kind == "id" and any(b not in _ID_CHARS for b in v.encode()):
            _fail(key, _ID)
    elif kind == "wpa":
        n = len(v.encode())
        if n and not (8 <= n <= 63 or (n == 64 and all(b in _HEX for b in v.encode()))):
            _fail(key, "must be empty (open network) or 8 to 63 characters (WPA2)")
    elif kind == "path":
        if not v.startswith("/") or len(v) > 128 or " " in v:
            _fail(key, "must start with / and be at most 128 characters without spaces")
    elif kind == "prefix":
        if (not 1 <= len(v) <= 64 or any(b not in _ID_CHARS and b != 0x2F for b in v.encode())
                or v.startswith("/") or v.endswith("/") or "//" in v):
            _fail(key, "must be 1 to 64 characters A-Z a-z 0-9 _ - /, no leading, trailing "
                  "or double /")
    elif kind == "url" and v:
        host = ""
        for s in rule[1]:
            if v.startswith(s + "://"):
                host = v[len(s) + 3:].split("/", 1)[0]
        if not host or host.startswith(":") or len(v) > 200 or " " in v:
            _fail(key, "must be empty or a URL %s://host[:port]/... (at most 200 characters)"
                  % "://, ".join(rule[1]))
        if "@" in host:
            _fail(key, "must not contain credentials (use the token/user/password keys)")
    return v


def _object(key, value, rules, out):
    if not isinstance(value, dict):
        _fail(key, "must be an object", value)
    for k in value:
        sub = "%s.%s" % (key, k)
        if k not in rules:
            _fail(sub, "is not a known key")
        out[k] = _check(sub, rules[k], value[k])
    return out


def validate(data):
    """A complete, validated copy of `data` (missing keys take defaults); ConfigError if not."""
    if not isinstance(data, dict):
        raise ConfigError("config: the file must hold a JSON object")
    out = defaults()
    for k in data:
        v = data[k]
        rule = _RULES.get(k)
        if isinstance(rule, dict):
            out[k] = _object(k, v, rule, out[k])
        elif rule:
            out[k] = _check(k, rule, v)
        elif k == "channels":
            if not isinstance(v, list) or not 1 <= len(v) <= 4:
                _fail(k, "must be a list of 1 to 4 channels")
            out[k] = [_object("channels.%d" % i, c, _CHANNEL, _channel_defaults(i))
                      for i, c in enumerate(v)]
        elif k == "voltage":
            out[k] = None if v is None else _object(k, v, _VOLTAGE, _voltage_defaults())
        else:
            _fail(str(k), "is not a known key")
    used = {}
    for i, ch in enumerate(out["channels"]):
        _pin_once(used, ch["pin"], "channels.%d.pin" % i)
    if out["voltage"] is not None:
        _pin_once(used, out["voltage"]["pin"], "voltage.pin")
    for sec, tls_scheme in (("http", "https://"), ("mqtt", "mqtts://")):
        s = out[sec]
        if s["enabled"] and not s["url"]:
            _fail(sec + ".url", "is required when %s.enabled is true" % sec)
        if s["enabled"] and s["url"].startswith(tls_scheme) and not out["tls"]["ca"]:
            _fail("tls.ca", "is required for %s URLs (certificates are always verified)"
                  % tls_scheme)
    return out


def _pin_once(used, pin, key):
    _check(key, ("pin",), pin)
    if pin in used:
        _fail(key, "uses GPIO %d, already used by %s" % (pin, used[pin]))
    used[pin] = key


def _split(key_path):
    if not isinstance(key_path, str) or not key_path:
        raise ConfigError("config: empty key")
    return [int(p) if p.isdigit() else p for p in key_path.split(".")]


def _leaf_rule(parts):
    rules = _RULES
    if parts[0] == "channels" and len(parts) == 3:
        rules = _CHANNEL
    elif parts[0] == "voltage" and len(parts) == 2:
        rules = _VOLTAGE
    elif len(parts) == 2:
        rules = _RULES.get(parts[0])
    elif len(parts) != 1:
        return None
    rule = rules.get(parts[-1]) if isinstance(rules, dict) else None
    return rule if isinstance(rule, tuple) else None


def _leaf_kind(parts):
    """How console text is read for a key: "str" as is, "json" parsed, "mixed" either."""
    rule = _leaf_rule(parts)
    if rule is None:
        return "json"
    if rule[0] == "choice":
        kinds = [isinstance(o, str) for o in rule[1]]
        return "str" if all(kinds) else ("mixed" if any(kinds) else "json")
    if rule[0] in ("str", "id", "wpa", "path", "prefix", "url"):
        return "str"
    return "json"


def parse_text(key_path, text):
    """Console text -> value: strings stay text for string keys, else JSON (true, 30, [..])."""
    if _leaf_kind(_split(key_path)) == "str" and not (text.startswith('"') and
                                                       text.endswith('"') and len(text) > 1):
        return text
    try:  # strict JSON: MicroPython's json.loads takes 01 for 1, [1 2] for [1, 2]
        return modules.use("meter.jsontext").loads(text)
    except ValueError:
        if _leaf_kind(_split(key_path)) == "mixed":
            return text
        raise ConfigError("config: %s needs a JSON value (true, 30, \"text\", {...})"
                          % key_path) from None


def node(data, parts, create):
    """The container of the key path `parts` in data (created on the way if `create`)."""
    node = data
    for i, p in enumerate(parts[:-1]):
        key = ".".join(str(x) for x in parts[: i + 1])
        if isinstance(node, list) and type(p) is int:
            if p >= len(node):
                if not create or p != len(node):
                    raise ConfigError("config: %s does not exist" % key)
                node.append(_channel_defaults(p))
            node = node[p]
        elif isinstance(node, dict) and p in node:
            if node[p] is None and create and p == "voltage":
                node[p] = _voltage_defaults()
            node = node[p]
        else:
            raise ConfigError("config: %s is not a known key" % key)
    return node


def _settable(n, parts, key_path):
    last = parts[-1]
    if isinstance(n, list) and type(last) is int and last <= len(n):
        return
    if isinstance(n, dict) and (last in n or _leaf_rule(parts)):
        return
    raise ConfigError("config: %s is not a known key" % key_path)


def known(data, key_path):
    """ConfigError unless key_path names a key `config set` can set in `data`."""
    parts = _split(key_path)
    if _leaf_rule(parts) is None:  # a leaf with a rule is known (voltage.* while off too)
        _settable(node(data, parts, False), parts, key_path)


def changed(data, key_path, value):
    """The validated config `data` with key_path = value; ConfigError if a rule breaks."""
    parts = _split(key_path)
    cand = _copy(data)
    n = node(cand, parts, True)
    _settable(n, parts, key_path)
    last = parts[-1]
    if isinstance(n, list) and last == len(n):
        n.append(value)
    else:
        n[last] = value
    return validate(cand)
