# SPDX-License-Identifier: MIT
"""config.json: defaults, validation, refusals that change nothing, secrets, bad files, cuts."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meter import config as cfgmod
from meter import config_check as rules
from meter.config import BACKUP, CONFIG, Config, ConfigError, validate
from meter.flashfs import FlashFS

from tests.fault_fs import FaultFS, PowerCut, compiled_meter

SECRET_VALUES = {"wifi.password": "hunter2-wifi-pass", "http.token": "tok-9f8e7d6c5b4a",
                 "mqtt.password": "mq-secret-77"}


@pytest.fixture
def fs(tmp_path):
    return FlashFS(tmp_path)


def with_secrets(fs):
    c = Config(fs)
    for k, v in SECRET_VALUES.items():
        c.set(k, v)
    return c


def test_defaults_on_first_boot(fs):
    c = Config(fs)
    assert c.problems == [] and c.source is None
    assert c.get("interval_s") == 10
    assert c.get("http.path") == "/api/measurements"
    assert c.get("mqtt.prefix") == "ctmeter"
    assert c.get("sample_rate_hz") == 4000 and c.get("nominal_voltage") == 230
    assert len(c.data["channels"]) == 1 and c.get("channels.0.pin") == 36


def test_set_is_validated_written_and_reloaded(fs):
    c = Config(fs)
    c.set("interval_s", 30)
    c.set_text("mains_hz", "60")
    c.set_text("wifi.ssid", "Home Net")
    c.set_text("channels.1.pin", "39")
    c.set("voltage.pin", 34)
    c.set_text("http.url", "http://10.0.0.5:8080")
    c.set_text("http.enabled", "true")
    again = Config(fs)
    assert again.source == CONFIG and again.problems == []
    assert again.data == c.data
    assert again.get("interval_s") == 30 and again.get("mains_hz") == 60
    assert again.get("channels.1") == {"pin": 39, "sensor": "SCT-013-030", "burden_ohm": None,
                                       "name": "ch2", "calibration": {},
                                       "amps_per_count": None}
    assert again.get("voltage") == {"pin": 34, "sensor": "ZMPT101B", "calibration": {},
                                    "volts_per_count": None}
    assert json.loads(fs.read(BACKUP)) == json.loads(fs.read(CONFIG))


REFUSALS = [
    ("interval_s", 0, "interval_s must be an integer from 1 to 3600"),
    ("interval_s", 3601, "from 1 to 3600"),
    ("interval_s", True, "interval_s must be an integer"),
    ("interval_s", "10", "interval_s must be an integer"),
    ("sample_rate_hz", 999, "sample_rate_hz must be an integer from 1000 to 20000"),
    ("mains_hz", 55, 'mains_hz must be one of 50, 60, "auto"'),
    ("device_id", "has space", "device_id must be 1 to 32 characters"),
    ("device_id", "x" * 33, "device_id must be 1 to 32"),
    ("device_id", "", "device_id must be 1 to 32"),
    ("console.mode", "xml", "console.mode must be one of"),
    ("log_level", "loud", "log_level must be one of"),
    ("http.url", "ftp://x", "http.url must be empty or a URL http://, https://"),
    ("http.url", "http://user:pw@host/", "must not contain credentials"),
    ("http.path", "api", "http.path must start with /"),
    ("http.timeout_s", 0, "http.timeout_s must be a number"),
    ("http.enabled", "yes", "http.enabled must be true or false"),
    ("http.enabled", True, "http.url is required when http.enabled is true"),
    ("mqtt.url", "http://broker", "mqtt.url must be empty or a URL mqtt://, mqtts://"),
    ("mqtt.prefix", "a/#", "mqtt.prefix must be 1 to 64 characters"),
    ("wifi.password", "short", "wifi.password must be empty (open network) or 8 to 63"),
    ("channels.0.pin", 99, "channels.0.pin is required: a GPIO number"),
    ("channels.0.burden_ohm", -1, "channels.0.burden_ohm must be null"),
    ("channels.0.amps_per_count", 0, "channels.0.amps_per_count must be null"),
    ("channels.0.calibration", [1], "channels.0.calibration must be an object"),
    ("channels.1.pin", 36, "channels.1.pin uses GPIO 36, already used by channels.0.pin"),
    ("channels.2.pin", 39, "channels.2 does not exist"),
    ("channels", [], "channels must be a list of 1 to 4"),
    ("voltage.pin", 36, "voltage.pin uses GPIO 36"),
    ("nope", 1, "nope is not a known key"),
    ("http.nope", 1, "http.nope is not a known key"),
    ("wifi.ssid.x", 1, "not a known key"),
]


@pytest.mark.parametrize("key,value,message", REFUSALS)
def test_refusal_names_key_and_rule_and_changes_nothing(fs, key, value, message):
    c = Config(fs)
    c.set("interval_s", 20)
    before_mem = json.dumps(c.data)
    before_flash = (fs.read(CONFIG), fs.read(BACKUP))
    with pytest.raises(ConfigError) as err:
        c.set(key, value)
    assert message in str(err.value)
    assert str(err.value).startswith("config: ")
    assert json.dumps(c.data) == before_mem
    assert (fs.read(CONFIG), fs.read(BACKUP)) == before_flash
    assert Config(fs).data == c.data


def test_tls_urls_need_a_ca_file(fs):
    c = Config(fs)
    c.set("mqtt.url", "mqtts://broker.example:8883")
    with pytest.raises(ConfigError, match="tls.ca is required for mqtts:// URLs"):
        c.set("mqtt.enabled", True)
    c.set("tls.ca", "/certs/ca.pem")
    c.set("mqtt.enabled", True)
    assert Config(fs).get("mqtt.enabled") is True


def test_secrets_are_redacted_everywhere(fs):
    c = with_secrets(fs)
    red = c.redacted()
    assert red["wifi"]["password"] == "***" and red["http"]["token"] == "***"
    assert red["mqtt"]["password"] == "***"
    assert c.get("wifi.password") == "***" and c.get("http")["token"] == "***"
    assert c.set("http.token", "another-token-1") == "***"
    c.set("mqtt.password", "")
    assert c.get("mqtt.password") == ""  # unset shows as empty
    texts = [json.dumps(red), repr(c), str(c.get("wifi")), str(c.get("http"))]
    refusals = [("wifi.password", "hunter2")]  # 7 characters: too short for WPA2
    refusals += [(k, bad) for bad in ("x" * 300, 5, ["hunter2"]) for k in cfgmod.SECRETS]
    for key, bad in refusals:
        with pytest.raises(ConfigError) as err:
            c.set(key, bad)
        assert key in str(err.value)
        texts.append(str(err.value))
    for t in texts:
        for v in list(SECRET_VALUES.values()) + ["another-token-1", "hunter2"]:
            assert v not in t
    assert c.secret("wifi.password") == SECRET_VALUES["wifi.password"]
    assert c.secret("http.token") == "another-token-1"
    with pytest.raises(ConfigError, match="not a secret"):
        c.secret("device_id")
    assert c.data["wifi"]["password"] == SECRET_VALUES["wifi.password"]  # redaction copies


@pytest.mark.parametrize("content,problem", [
    (b"{bad json", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[1, 2]", "must hold a JSON object"),
    (b'{"interval_s": "ten"}', "interval_s must be an integer"),
    (b'{"color": "red"}', "color is not a known key"),
    (b'{"wifi": {"password": 12345678}}', "wifi.password must be a string"),
    (b" " * 9000, "larger than"),
])
def test_malformed_file_gives_defaults_and_a_clear_problem(fs, content, problem):
    fs.write(CONFIG, content)
    c = Config(fs)
    assert c.data == rules.defaults()
    assert c.source is None
    assert any(problem in p for p in c.problems), c.problems
    assert "using the default config" in c.problems[-1]


def test_malformed_file_falls_back_to_last_good(fs):
    c = with_secrets(fs)
    c.set("interval_s", 42)
    fs.write(CONFIG, b'{"interval_s": 42, "wifi": {"password": "oops')  # hand-edited, broken
    c2 = Config(fs)
    assert c2.source == BACKUP and c2.get("interval_s") == 42
    assert any("not valid JSON" in p for p in c2.problems)
    for p in c2.problems:
        assert SECRET_VALUES["wifi.password"] not in p and "oops" not in p


def test_power_cut_during_set_leaves_old_or_new_config(tmp_path):
    fs = FlashFS(tmp_path)
    Config(fs).set("interval_s", 11)
    size = len(fs.read(CONFIG))
    outcomes = set()
    for budget in range(0, 2 * size + 10, 3):
        c = Config(FaultFS(tmp_path, budget=budget, junk=budget % 2 == 0))
        old = c.get("interval_s")
        new = 12 if old == 11 else 11
        try:
            c.set("interval_s", new)
            cut = False
        except PowerCut:
            cut = True
        after = Config(FlashFS(tmp_path))
        assert after.get("interval_s") in (old, new)
        if not cut:
            assert after.get("interval_s") == new
        assert after.source == CONFIG  # config.json itself is never left broken
        outcomes.add((cut, after.get("interval_s") == new))
    assert (True, False) in outcomes and (False, True) in outcomes


def test_write_error_keeps_previous_config(tmp_path):
    class Full(FlashFS):
        def write(self, name, data):
            raise OSError(28, "ENOSPC")

    c = Config(FlashFS(tmp_path))
    c.set("interval_s", 15)
    c.fs = Full(tmp_path)
    with pytest.raises(ConfigError, match="could not write config.json"):
        c.set("interval_s", 16)
    assert c.get("interval_s") == 15 and Config(FlashFS(tmp_path)).get("interval_s") == 15


def test_parse_text_for_console():
    assert rules.parse_text("wifi.ssid", "My Net") == "My Net"
    assert rules.parse_text("wifi.ssid", '""') == ""
    assert rules.parse_text("interval_s", "30") == 30
    assert rules.parse_text("http.enabled", "false") is False
    assert rules.parse_text("mains_hz", "auto") == "auto"
    assert rules.parse_text("mains_hz", "50") == 50
    assert rules.parse_text("channels.0.calibration", '{"gain": 1.01}') == {"gain": 1.01}
    with pytest.raises(ConfigError, match="interval_s needs a JSON value"):
        rules.parse_text("interval_s", "thirty")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=6,
)
KEYS = ["device_id", "interval_s", "mains_hz", "wifi.ssid", "wifi.password", "http.url",
        "http.enabled", "http.timeout_s", "mqtt.prefix", "channels.0.pin", "channels.1.pin",
        "channels.0.burden_ohm", "voltage.pin", "console.mode", "log_level", "tls.ca", "bogus"]


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(KEYS), value=json_values)
def test_any_value_is_accepted_validly_or_refused_cleanly(tmp_path_factory, key, value):
    fs = FlashFS(tmp_path_factory.mktemp("cfg"))
    c = Config(fs)
    before = json.dumps(c.data)
    try:
        c.set(key, value)
    except ConfigError as e:
        assert str(e).startswith("config: ") and key.split(".")[0] in str(e) or "tls" in str(e)
        assert json.dumps(c.data) == before
        return
    assert validate(c.data) == c.data  # what was accepted is valid and stable
    assert Config(fs).data == c.data


MP_SCRIPT = r"""
import json
from meter.flashfs import FlashFS
from meter.config import Config, ConfigError
from fault_fs import FaultFS, PowerCut
root = %(root)r
fs = FlashFS(root)
c = Config(fs)
out = {"first": [c.source, c.problems, c.get("interval_s")]}
c.set_text("wifi.password", "hunter2-wifi-pass")
c.set_text("interval_s", "25")
c.set_text("mains_hz", "auto")
c.set_text("channels.1.pin", "39")
errs = []
for k, v in (("interval_s", "0"), ("device_id", "a b"), ("channels.1.pin", "36"),
             ("wifi.password", "short"), ("http.enabled", "true"), ("x", "1"),
             ("interval_s", "true"), ("interval_s", "01"), ("interval_s", "3 0"),
             ("channels.1.pin", "[39]"), ("mains_hz", "5 0")):
    try:
        c.set_text(k, v)
        errs.append("ACCEPTED " + k)
    except ConfigError as e:
        errs.append(str(e))
out["errors"] = errs
out["redacted"] = c.redacted()
print(json.dumps(out))
out = {}
c = None
import gc
gc.collect()
c2 = Config(fs)
out["reboot"] = [c2.source, c2.get("interval_s"), c2.get("channels.1.pin"),
                 c2.secret("wifi.password") == "hunter2-wifi-pass"]
cuts = []
for budget in (0, 30, 200, 900, 1500, 100000):
    f = FaultFS(root, budget=budget)
    cc = Config(f)
    new = 100 + budget %% 50
    try:
        cc.set("interval_s", new)
        cut = False
    except PowerCut:
        cut = True
    chk = Config(fs)
    cuts.append([cut, chk.source, chk.get("interval_s"), new])
out["cuts"] = cuts
fs.write("config.json", b"{not json")
c3 = Config(fs)
out["bad"] = [c3.source, c3.problems]
print(json.dumps(out))
"""


@pytest.mark.micropython
def test_config_on_micropython(micropython, tmp_path):
    root = tmp_path / "flash"
    root.mkdir()
    path = compiled_meter(tmp_path / "mpy")
    # 64 KB with the rules module (~15 KB of code) loaded for each load/change and dropped
    # after it: passes only because meter.modules frees the old copy before a new load
    out = micropython.run(MP_SCRIPT % {"root": str(root)}, heapsize="64k",
                          env={"MICROPYPATH": path})
    assert "hunter2" not in out
    first, second = out.splitlines()
    res = json.loads(first)
    res.update(json.loads(second))
    assert res["first"] == [None, [], 10]
    errs = res["errors"]
    assert not any(e.startswith("ACCEPTED") for e in errs), errs
    assert "config: interval_s must be an integer from 1 to 3600 (got 0)" in errs
    assert "config: channels.1.pin uses GPIO 36, already used by channels.0.pin" in errs
    assert "config: http.url is required when http.enabled is true" in errs
    assert "config: x is not a known key" in errs
    # MicroPython's own json.loads takes "01" for 1 and "3 0" for 3: refused, not guessed
    assert errs.count("config: interval_s needs a JSON value (true, 30, \"text\", {...})") == 2
    assert res["redacted"]["wifi"]["password"] == "***"
    assert res["redacted"]["interval_s"] == 25
    assert res["reboot"] == ["config.json", 25, 39, True]
    prev = 25
    for cut, source, value, new in res["cuts"]:
        assert source == "config.json" and value in (prev, new)
        if not cut:
            assert value == new
        prev = value
    assert res["cuts"][0][0] is True and res["cuts"][-1][0] is False
    source, problems = res["bad"]
    assert source == "config.json.bak"
    assert any("not valid JSON" in p for p in problems)


@pytest.mark.parametrize("key, text, error", [
    ("mqtt.host", "broker.lan", "config: mqtt.host is not a known key"),
    ("wifi.pass", "[x", "config: wifi.pass is not a known key"),
    ("interval_s", "abc", "config: interval_s needs a JSON value"),
    ("voltage.pin", "3 6", "config: voltage.pin needs a JSON value"),  # voltage off: known
    ("channels.0", "{pin: 34}", "config: channels.0 needs a JSON value"),
])
def test_config_set_text_names_the_real_problem(tmp_path, key, text, error):
    c = Config(FlashFS(str(tmp_path)))
    before = json.dumps(c.data)
    with pytest.raises(ConfigError) as exc:
        c.set_text(key, text)
    assert str(exc.value).startswith(error)
    assert json.dumps(c.data) == before
