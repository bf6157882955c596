# SPDX-License-Identifier: MIT
"""`ctmeter deploy`: compile the firmware, copy what changed, configure, reset, wait."""

import json
import os
import sys
from contextlib import contextmanager

from ctmeter import deploy as api
from ctmeter.boards import load_board
from ctmeter.transport import EXIT_CODES_HELP

# flag -> dotted config key; secrets can also come from the environment (kept out of `ps`)
CONFIG_FLAGS = [
    ("device_id", "device_id", None),
    ("wifi_ssid", "wifi.ssid", None),
    ("wifi_password", "wifi.password", "CTMETER_WIFI_PASSWORD"),
    ("http_url", "http.url", None),
    ("http_token", "http.token", "CTMETER_HTTP_TOKEN"),
    ("mqtt_url", "mqtt.url", None),
    ("mqtt_user", "mqtt.user", None),
    ("mqtt_password", "mqtt.password", "CTMETER_MQTT_PASSWORD"),
]


def add_board_args(p):
    p.add_argument("--board", default="esp32", help="board definition in boards/ (default esp32)")
    p.add_argument("--port", required=True,
                   help="serial port of the board: /dev/ttyUSB0, a pty, socket://host:port")


def add_deploy_args(p):
    g = p.add_argument_group("configuration (written to the board's config.json; "
                             "without any of these the board's config is kept)")
    g.add_argument("--config", metavar="FILE", help="a config.json to start from")
    g.add_argument("--device-id")
    g.add_argument("--wifi-ssid")
    g.add_argument("--wifi-password", help="or set CTMETER_WIFI_PASSWORD")
    g.add_argument("--http-url", help="enables HTTP posting, e.g. http://host:8000")
    g.add_argument("--http-token", help="Bearer token, or set CTMETER_HTTP_TOKEN")
    g.add_argument("--mqtt-url", help="enables MQTT, e.g. mqtt://host:1883")
    g.add_argument("--mqtt-user")
    g.add_argument("--mqtt-password", help="or set CTMETER_MQTT_PASSWORD")
    p.add_argument("--no-wait", action="store_true",
                   help="do not wait for the meter's ctmeter-boot line after the reset")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds to wait for the boot line (default 30)")
    p.add_argument("--no-romfs", action="store_true",
                   help="copy lib/ to the filesystem even when the board's MicroPython has a "
                        "ROMFS partition (by default lib/ goes there, and runs from the flash)")


def register(subparsers):
    p = subparsers.add_parser(
        "deploy", help="compile the firmware and copy what changed to a board",
        description="Compile device/ with mpy-cross for the board's arch, copy only the files "
                    "whose hash on the board differs, remove stale ones, write config.json if "
                    "asked, reset and wait for the meter's boot line.",
        epilog=EXIT_CODES_HELP)
    add_board_args(p)
    add_deploy_args(p)
    p.set_defaults(func=run)


def config_from_args(args):
    """The validated config asked for on the command line, or None to keep the board's."""
    overrides = {}
    for attr, key, env in CONFIG_FLAGS:
        value = getattr(args, attr, None)
        if value is None and env:
            value = os.environ.get(env)
        if value is not None:
            overrides[key] = value
    if args.http_url:
        overrides["http.enabled"] = True
    if args.mqtt_url:
        overrides["mqtt.enabled"] = True
    if args.config is None and not overrides:
        return None
    return api.make_config(args.config, overrides)


@contextmanager
def progress_bars():
    """A `progress(stage, done, total, name)` callback drawing rich bars on a terminal."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn

    console = Console(stderr=True)
    bars = Progress(TextColumn("{task.description:<8}"), BarColumn(),
                    TextColumn("{task.fields[name]}"), console=console,
                    disable=not console.is_terminal, transient=False)
    tasks = {}

    def update(stage, done, total, name=""):
        if stage not in tasks:
            tasks[stage] = bars.add_task(stage, total=total or 1, name="")
        bars.update(tasks[stage], completed=done, total=total or 1, name=name)

    with bars:
        yield update


def report(result, out=sys.stdout):
    print(f"deploy: {len(result.copied)} copied, {len(result.unchanged)} unchanged, "
          f"{len(result.removed)} removed", file=out)
    for name in result.copied:
        print(f"  copied  {name}", file=out)
    for name in result.removed:
        print(f"  removed {name}", file=out)
    if result.rom is not None:
        print(f"  ROMFS   lib/ {result.rom}", file=out)
    if result.boot is not None:
        print(f"meter started: {json.dumps(result.boot, sort_keys=True)}", file=out)


def run(args):
    config = config_from_args(args)  # refused here, before the board is touched
    board = load_board(args.board)
    with progress_bars() as progress:
        result = api.deploy(board, args.port, config=config, wait=not args.no_wait,
                            timeout=args.timeout, progress=progress,
                            romfs=not args.no_romfs)
    report(result)
    return 0

