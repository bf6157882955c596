# SPDX-License-Identifier: MIT
"""Device status (ONLINE/OFFLINE) and alerts: power above X for Y s, offline, counter reset.

    mon = Monitor(store, cfg, publish)     # publish(event_name, data_dict), thread-safe
    mon.on_readings(rows)                  # rows just stored (duplicates already dropped)
    mon.seen(device_id, interval, now)     # any accepted request counts as a sign of life
    mon.tick(now)                          # called periodically: finds devices gone OFFLINE
    mon.status(now) -> [{"deviceId", "status", "lastSeen", "interval", "last"}]

A device is OFFLINE when nothing arrived for `offline_after_intervals` x its interval.
Alerts are stored, published live and, when a webhook is configured, POSTed as JSON.
"""

import concurrent.futures
import json
import logging
import threading
import time
import urllib.request
from urllib.parse import urlparse

from ctmeter.serve.validate import to_json

log = logging.getLogger("ctmeter.serve")


def _reading(last):
    """The newest reading in the API's form (kept as a storage row until someone asks)."""
    return to_json(last) if last is not None and "device_id" in last else last


class Monitor:
    def __init__(self, store, cfg, publish=None):
        self.store = store
        self.cfg = cfg
        self.publish = publish or (lambda event, data: None)
        self._lock = threading.Lock()
        self._seen = {}  # device -> [last_seen_s, interval_s, online, last_reading]
        self._power = {}  # device -> [above_since_ts, alerted]
        self._energy = {}  # (device, channel) -> (ts_ms, energy_mwh)
        self._hook = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="webhook")
        for dev in store.devices():
            interval = dev["interval"] or cfg.default_interval_s
            last_seen = dev["last_seen_ms"] / 1000
            self._seen[dev["deviceId"]] = [last_seen, interval, True, dev["last"]]
            last = dev["last"]
            if last.get("energyKwh") is not None:
                self._energy[(dev["deviceId"], last.get("channel") or 0)] = (
                    round(last["ts"] * 1000), round(last["energyKwh"] * 1e6))
        self._startup = True

    def _limit(self, interval):
        return (interval or self.cfg.default_interval_s) * self.cfg.offline_after_intervals

    # -- inputs ----------------------------------------------------------------------
    def seen(self, device_id, interval, now, last=None):
        """A sign of life (any accepted reading or an MQTT "online")."""
        with self._lock:
            entry = self._seen.get(device_id)
            new = entry is None
            if new:
                entry = self._seen[device_id] = [now, interval or self.cfg.default_interval_s,
                                                 True, last]
            was_offline = not entry[2]
            entry[0] = max(entry[0], now)
            entry[2] = True
            if interval:
                entry[1] = interval
            if last is not None:
                entry[3] = last
        if was_offline:
            for alert in self.store.alerts(device_id, active=True):
                if alert["kind"] == "offline":
                    self.store.update_alert(alert["id"], resolved_ms=now * 1000)
        if new or was_offline:
            self.publish("status", {"deviceId": device_id, "status": "ONLINE"})

    def went_offline(self, device_id):
        """The device's last will said offline."""
        with self._lock:
            entry = self._seen.get(device_id)
            if entry is None or not entry[2]:
                return
            entry[2] = False
        self.publish("status", {"deviceId": device_id, "status": "OFFLINE"})
        self.raise_alert(device_id, "offline", "device reported offline (last will)", None,
                         time.time())

    def on_readings(self, rows):
        """Check rows that were just stored (new, not duplicates) against the alert rules."""
        for row in sorted(rows, key=lambda r: r["ts_ms"]):
            self._check_power(row)
            self._check_counter(row)

    def _check_power(self, row):
        rule = self.cfg.rule(row["device_id"])
        if rule.power_above_w is None or row["power"] is None:
            return
        ts = row["ts_ms"] / 1000
        with self._lock:
            state = self._power.setdefault(row["device_id"], [None, False])
            if row["power"] <= rule.power_above_w:
                state[0], state[1] = None, False
                return
            if state[0] is None:
                state[0] = ts
            fire = not state[1] and ts - state[0] >= rule.power_for_s
            if fire:
                state[1] = True
        if fire:
            self.raise_alert(
                row["device_id"], "power_high",
                f"power {row['power']:.0f} W above {rule.power_above_w:.0f} W"
                f" for {rule.power_for_s:.0f} s", row["power"], row["received_ms"] / 1000)

    def _check_counter(self, row):
        energy = row["energy_mwh"]
        if energy is None:
            return
        key = (row["device_id"], row["channel"])
        with self._lock:
            prev = self._energy.get(key)
            if prev is not None and row["ts_ms"] < prev[0]:
                return  # an older reading replayed from the outbox
            self._energy[key] = (row["ts_ms"], energy)
        if prev is not None and energy < prev[1]:
            self.raise_alert(
                row["device_id"], "counter_reset",
                f"energy counter went from {prev[1] / 1e6:.6f} to {energy / 1e6:.6f} kWh",
                prev[1] / 1e6, row["received_ms"] / 1000)

    def tick(self, now):
        gone = []
        with self._lock:
            for dev, entry in self._seen.items():
                if entry[2] and now - entry[0] > self._limit(entry[1]):
                    entry[2] = False
                    gone.append((dev, entry[0]))
            startup, self._startup = self._startup, False
        for dev, last_seen in gone:
            self.publish("status", {"deviceId": dev, "status": "OFFLINE"})
            if startup and any(a["kind"] == "offline" for a in self.store.alerts(dev, active=True)):
                continue  # already alerted before a restart
            self.raise_alert(dev, "offline",
                             f"no reading for {now - last_seen:.0f} s", None, now)

    # -- outputs ---------------------------------------------------------------------
    def status(self, now):
        with self._lock:
            items = sorted(self._seen.items())
        return [
            {"deviceId": dev, "status": "ONLINE" if e[2] and now - e[0] <= self._limit(e[1])
             else "OFFLINE", "lastSeen": e[0], "interval": e[1], "last": _reading(e[3])}
            for dev, e in items
        ]

    def raise_alert(self, device_id, kind, message, value, now):
        alert_id = self.store.add_alert(device_id, kind, message, value, now * 1000)
        alert = {"id": alert_id, "deviceId": device_id, "kind": kind, "message": message,
                 "value": value, "created": now, "read": False, "resolved": None}
        log.info("alert %s on %s: %s", kind, device_id, message)
        self.publish("alert", alert)
        if self.cfg.webhook:
            self._hook.submit(self._post_webhook, alert)
        return alert

    def _post_webhook(self, alert):
        body = json.dumps({"alert": alert}).encode()
        req = urllib.request.Request(self.cfg.webhook, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                resp.read()
        except OSError as exc:
            # the URL may carry a secret in its path or query: name only the host
            log.warning("webhook to %s failed: %s", urlparse(self.cfg.webhook).hostname,
                        getattr(exc, "reason", exc))

    def close(self):
        self._hook.shutdown(wait=False, cancel_futures=True)
