# SPDX-License-Identifier: MIT
"""Collector configuration: tokens, tariff, alert rules, from a TOML or JSON file plus flags.

    cfg = load_config("serve.toml")          # or ServeConfig(admin_token=..., device_tokens={...})

Example serve.toml (every key optional except a token to post with):

    admin_token = "..."                 # query API and dashboard
    db = "sqlite:///ctmeter.db"         # or postgresql://user@host/dbname
    http = "127.0.0.1:8080"
    mqtt = "mqtt://127.0.0.1:1883"      # optional
    mqtt_prefix = "ctmeter"
    mqtt_group = "collectors"           # shared subscription group ("" = plain subscription)
    timezone = "Europe/Berlin"          # day/week/month boundaries
    tariff_per_kwh = 0.30
    currency = "EUR"
    default_interval_s = 10             # for readings without "interval"
    offline_after_intervals = 3
    webhook = "https://example.org/hook"
    [devices]                           # deviceId = token (a device token can only post)
    meter-1 = "..."
    [alerts]                            # defaults for every device
    power_above_w = 3000
    power_for_s = 60
    [alerts.meter-1]                    # per-device override
    power_above_w = 2000

Keys are whitelisted: an unknown key is an error, so a typo does not silently do nothing.
Tokens are kept out of repr() so they never reach a log line.
"""

import json
import tomllib
from dataclasses import dataclass, field, fields
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ctmeter.errors import CommandError


@dataclass
class AlertRule:
    power_above_w: float | None = None
    power_for_s: float = 60.0


@dataclass
class ServeConfig:
    admin_token: str = field(default="", repr=False)
    device_tokens: dict = field(default_factory=dict, repr=False)
    db: str = "sqlite:///ctmeter.db"
    http: str = "127.0.0.1:8080"
    mqtt: str = ""
    mqtt_prefix: str = "ctmeter"
    mqtt_group: str = "collectors"
    timezone: str = "UTC"
    tariff_per_kwh: float = 0.0
    currency: str = ""
    default_interval_s: float = 10.0
    offline_after_intervals: float = 3.0
    webhook: str = ""
    max_body: int = 4096
    monitor_period_s: float = 1.0
    alert_default: AlertRule = field(default_factory=AlertRule)
    alert_rules: dict = field(default_factory=dict)

    def rule(self, device_id):
        return self.alert_rules.get(device_id, self.alert_default)

    @property
    def tz(self):
        return ZoneInfo(self.timezone)


_SCALARS = {f.name for f in fields(ServeConfig)} - {
    "device_tokens", "alert_default", "alert_rules", "admin_token"
}


class ConfigError(CommandError):
    pass


def _rule(data, where, base=None):
    rule = AlertRule(**vars(base)) if base else AlertRule()
    for key, value in data.items():
        if key not in ("power_above_w", "power_for_s"):
            raise ConfigError(f"{where}: unknown key {key!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"{where}.{key} must be a non-negative number")
        setattr(rule, key, float(value))
    return rule


def config_from_dict(data, cfg=None):
    """Apply a decoded config mapping onto cfg (a new ServeConfig by default)."""
    cfg = cfg or ServeConfig()
    for key, value in data.items():
        if key == "admin_token":
            if not isinstance(value, str) or len(value) < 8:
                raise ConfigError("admin_token must be a string of at least 8 characters")
            cfg.admin_token = value
        elif key == "devices":
            if not isinstance(value, dict):
                raise ConfigError("[devices] must map deviceId = token")
            for dev, token in value.items():
                if not isinstance(token, str) or len(token) < 8:
                    raise ConfigError(f"devices.{dev}: token must be at least 8 characters")
                cfg.device_tokens[dev] = token
        elif key == "alerts":
            if not isinstance(value, dict):
                raise ConfigError("[alerts] must be a table")
            top = {k: v for k, v in value.items() if not isinstance(v, dict)}
            cfg.alert_default = _rule(top, "alerts")
            for dev, sub in value.items():
                if isinstance(sub, dict):
                    cfg.alert_rules[dev] = _rule(sub, f"alerts.{dev}", cfg.alert_default)
        elif key in _SCALARS:
            want = type(getattr(ServeConfig(), key))
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, want) or isinstance(value, bool):
                raise ConfigError(f"{key} must be a {want.__name__}")
            setattr(cfg, key, value)
        else:
            raise ConfigError(f"unknown config key {key!r}")
    try:
        cfg.tz  # noqa: B018  (validate the zone name now, not at the first query)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"unknown timezone {cfg.timezone!r}") from exc
    return cfg


def load_config(path, cfg=None):
    """Read a .toml or .json config file."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
    try:
        data = json.loads(raw) if str(path).endswith(".json") else tomllib.loads(raw.decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config {path} is not valid: {exc}") from exc
    return config_from_dict(data, cfg)
