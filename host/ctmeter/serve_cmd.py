# SPDX-License-Identifier: MIT
"""`ctmeter serve`: run the collector (HTTP + optional MQTT ingest, queries, live page).

    ctmeter serve --config serve.toml
    ctmeter serve --db sqlite:///ctmeter.db --http 127.0.0.1:8080 --mqtt mqtt://127.0.0.1:1883

Tokens come from the config file, or CTMETER_ADMIN_TOKEN and --device-token ID=TOKEN; they
are never printed.
"""

import gc
import os
import signal
import sys
import threading
from urllib.parse import urlsplit, urlunsplit

from ctmeter.errors import CommandError

SWITCH_INTERVAL_S = 0.0005


def register(subparsers):
    p = subparsers.add_parser("serve", help="run the collector the meters post to",
                              description=__doc__.splitlines()[0])
    p.add_argument("--config", help="TOML or JSON config file (tokens, tariff, alerts)")
    p.add_argument("--db", help="sqlite:///file.db (default sqlite:///ctmeter.db) or "
                                "postgresql://user@host/db")
    p.add_argument("--http", help="listen address host:port (default 127.0.0.1:8080)")
    p.add_argument("--mqtt", help="broker to ingest from, mqtt://host:port (default: none)")
    p.add_argument("--mqtt-group", help="shared-subscription group ('' = plain subscription)")
    p.add_argument("--device-token", action="append", default=[], metavar="ID=TOKEN",
                   help="a device's token (repeatable); prefer the config file")
    p.add_argument("--tariff", type=float, help="price per kWh for cost figures")
    p.add_argument("--timezone", help="IANA zone for day/week/month boundaries (default UTC)")
    p.set_defaults(func=run)


def redact(url):
    """A URL without its password, for printing."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def build_config(args):
    from ctmeter.serve.config import ConfigError, ServeConfig, config_from_dict, load_config

    cfg = load_config(args.config) if args.config else ServeConfig()
    overrides = {}
    for flag, key in (("db", "db"), ("http", "http"), ("mqtt", "mqtt"),
                      ("mqtt_group", "mqtt_group"), ("tariff", "tariff_per_kwh"),
                      ("timezone", "timezone")):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = value
    env_admin = os.environ.get("CTMETER_ADMIN_TOKEN")
    if env_admin:
        overrides["admin_token"] = env_admin
    devices = {}
    for item in args.device_token:
        dev, sep, token = item.partition("=")
        if not sep or not dev:
            raise ConfigError("--device-token takes ID=TOKEN")
        devices[dev] = token
    if devices:
        overrides["devices"] = devices
    cfg = config_from_dict(overrides, cfg)
    if not cfg.admin_token:
        raise ConfigError("no admin token", hint="set admin_token in --config or "
                          "CTMETER_ADMIN_TOKEN")
    return cfg


def run(args):
    from ctmeter.serve import Collector
    from ctmeter.serve.storage import StorageError

    cfg = build_config(args)
    try:
        col = Collector(cfg).start()
    except (OSError, StorageError) as exc:
        raise CommandError(f"cannot start the collector: {exc}",
                           hint="is the port in use or the database reachable?") from exc
    # Long-lived objects (config, 1,000 device states) leave the collector's view, and young
    # collections run less often: fewer garbage-collector pauses in the ingest latency tail.
    gc.collect()
    gc.freeze()
    gc.set_threshold(20000, 50, 100)
    # The storage writer thread lets go of the GIL inside SQLite/libpq and then waits for the
    # busy event loop to hand it back: at most the switch interval (5 ms by default) per
    # statement. A shorter interval keeps a commit from stretching into tens of ms under load.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"ctmeter serve: storing in {redact(cfg.db)}", flush=True)
    print(f"ctmeter serve: readings POST {col.url}/api/measurements"
          + (f", MQTT {redact(cfg.mqtt)}" if cfg.mqtt else ""), flush=True)
    print(f"ctmeter serve: dashboard {col.dashboard_url} (log in with the admin token)",
          flush=True)
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        col.stop()
    return 0
