# SPDX-License-Identifier: MIT
"""`ctmeter sim`: the meter on a virtual board with a simulated load, posting to a local
collector on SQLite; prints the board's port, the dashboard URL and live readings.

    ctmeter sim                      # real time, until Ctrl-C (what `make sim` runs)
    ctmeter sim --clock fast --duration 20     # simulated time as fast as it goes
"""

import json
import secrets
import shutil
import sys
import time
import urllib.request
from pathlib import Path

from ctmeter.errors import CommandError
from ctmeter.paths import ROOT


def register(subparsers):
    p = subparsers.add_parser("sim", help="run the meter on a virtual board with a simulated load",
                              description=__doc__.splitlines()[0])
    p.add_argument("--dir", default=str(ROOT / "sim-data"),
                   help="where the simulated flash and the SQLite file live (default sim-data/)")
    p.add_argument("--fresh", action="store_true", help="start with an empty flash and database")
    p.add_argument("--clock", choices=("realtime", "fast"), default="realtime")
    p.add_argument("--http", default="127.0.0.1:8080",
                   help="collector address (port 0 = any free port)")
    p.add_argument("--no-collector", action="store_true",
                   help="only the virtual board (no posting)")
    p.add_argument("--duration", type=float, default=None,
                   help="stop after this many seconds of wall time")
    p.add_argument("--seed", type=int, default=1, help="seed of the simulated household load")
    p.add_argument("--interval", type=int, default=10, help="reading interval (s)")
    p.set_defaults(func=run)


def _stream(seed):
    from ctmeter.model import Channel, Frontend, Mains, Stream, varying_profile

    return Stream([Channel(Frontend("sct013-030", seed=seed), varying_profile(2, seed=seed))],
                  mains=Mains(seed=seed), voltage=Frontend("zmpt101b", seed=seed + 1),
                  sample_rate=4000, seed=seed)


def _get(url, token):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def run(args):
    from ctmeter.virtual.meter import start_virtual_meter

    work = Path(args.dir)
    if args.fresh and work.exists():
        shutil.rmtree(work)
    flash = work / "flash"
    flash.mkdir(parents=True, exist_ok=True)
    device_id = "sim-meter"
    overrides = {"device_id": device_id, "interval_s": args.interval}
    collector = None
    admin = secrets.token_urlsafe(16)
    if not args.no_collector:
        from ctmeter.serve import Collector
        from ctmeter.serve.config import config_from_dict
        from ctmeter.serve.storage import StorageError

        device_token = secrets.token_urlsafe(16)
        cfg = config_from_dict({"admin_token": admin, "db": f"sqlite:///{work / 'ctmeter.db'}",
                                "http": args.http, "devices": {device_id: device_token}})
        try:
            collector = Collector(cfg).start()
        except (OSError, StorageError) as exc:
            raise CommandError(f"cannot start the collector: {exc}",
                               hint="is the port in use? try --http 127.0.0.1:0") from exc
        overrides["http"] = {"enabled": True, "token": device_token,
                             "url": f"{collector.url}/api/measurements"}
    board = start_virtual_meter(flash, _stream(args.seed), overrides, clock=args.clock,
                                epoch=time.time())
    print(f"ctmeter sim: virtual board on {board.port} (try: mpremote connect {board.port})",
          flush=True)
    if collector:
        # the token is a secret: written to a file only the user can read, never printed
        token_file = work / "admin-token"
        token_file.touch(mode=0o600)
        token_file.chmod(0o600)
        token_file.write_text(admin + "\n")
        print(f"ctmeter sim: dashboard {collector.dashboard_url} (admin token in {token_file})",
              flush=True)
    print("ctmeter sim: Ctrl-C stops", flush=True)
    seen = set()
    start = time.monotonic()
    try:
        while args.duration is None or time.monotonic() - start < args.duration:
            time.sleep(1.0)
            if board.feed.error:
                raise CommandError(f"sensor feed failed: {board.feed.error}")
            if not collector:
                continue
            rows = _get(f"{collector.url}/api/measurements?deviceId={device_id}&limit=20", admin)
            rows = rows.get("measurements", rows) if isinstance(rows, dict) else rows
            for r in sorted(rows, key=lambda r: r.get("seq", 0)):
                key = r.get("seq")
                if key in seen:
                    continue
                seen.add(key)
                print(f"reading seq={r.get('seq')} ch{r.get('channel')} "
                      f"{r.get('current', 0):.3f} A {r.get('power', 0):.1f} W "
                      f"pf {r.get('powerFactor', 0):.2f} {r.get('voltage', 0):.1f} V "
                      f"{r.get('frequency', 0):.2f} Hz "
                      f"total {float(r.get('energyKwh') or 0):.6f} kWh",
                      flush=True)
    except KeyboardInterrupt:
        print("ctmeter sim: stopping", file=sys.stderr)
    finally:
        board.stop()
        if collector:
            collector.stop()
    return 0
