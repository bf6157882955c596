# SPDX-License-Identifier: MIT
"""Collector config: whitelisted keys, per-device alert rules, tokens kept out of repr()."""

import pytest
from ctmeter.serve.config import ConfigError, config_from_dict, load_config


def test_toml_with_devices_alerts_and_overrides(tmp_path):
    path = tmp_path / "serve.toml"
    path.write_text('admin_token = "admin-secret-1"\ntimezone = "Europe/Berlin"\n'
                    'tariff_per_kwh = 1\n[devices]\nm1 = "m1-secret-token"\n'
                    '[alerts]\npower_above_w = 3000\npower_for_s = 30\n'
                    '[alerts.m1]\npower_above_w = 2000\n')
    cfg = load_config(path)
    assert cfg.device_tokens == {"m1": "m1-secret-token"} and cfg.tariff_per_kwh == 1.0
    assert cfg.rule("m1").power_above_w == 2000 and cfg.rule("m1").power_for_s == 30
    assert cfg.rule("other").power_above_w == 3000
    assert str(cfg.tz) == "Europe/Berlin"
    assert "secret" not in repr(cfg)


@pytest.mark.parametrize("data, message", [
    ({"tarif_per_kwh": 1}, "unknown config key 'tarif_per_kwh'"),
    ({"admin_token": "short"}, "at least 8"),
    ({"devices": {"m1": "short"}}, "devices.m1"),
    ({"alerts": {"power_above_w": -1}}, "non-negative"),
    ({"alerts": {"m1": {"power_bellow_w": 1}}}, "unknown key"),
    ({"timezone": "Mars/Olympus"}, "unknown timezone"),
    ({"http": 8080}, "http must be a str"),
])
def test_bad_config_is_refused_with_the_reason(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


def test_unreadable_or_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid"):
        load_config(bad)
