# SPDX-License-Identifier: MIT
"""MQTT ingest: ctmeter's topics and the seeds' panel topics, via a shared subscription.

    ing = MqttIngest(cfg, ingest_rows, monitor); ing.start(); ing.wait_ready(); ing.stop()

Topics (with cfg.mqtt_prefix = "ctmeter"):
    ctmeter/<deviceId>/<channel>/state   a reading (the HTTP body format)
    ctmeter/<deviceId>/status            "online" / "offline" (the firmware's last will)
    DATA/PM/<panel>                      seed panels: {"power_kw": .., "energy_kwh": ..}
With cfg.mqtt_group set, each is subscribed as $share/<group>/<topic>: the broker hands every
message to one collector of the group, so several collectors split one fleet.
Bad payloads are counted and dropped (MQTT has no way to answer them).
"""

import json
import logging
import threading
import time
import uuid
from urllib.parse import urlparse

import paho.mqtt.client as mqtt

from ctmeter.serve.validate import InvalidReading, parse_panel, parse_reading

log = logging.getLogger("ctmeter.serve")
PANEL_PREFIX = "DATA/PM/"


class MqttIngest:
    def __init__(self, cfg, ingest_rows, monitor=None):
        url = urlparse(cfg.mqtt)
        if url.scheme not in ("mqtt", "tcp", ""):
            raise ValueError("mqtt URL must be mqtt://host:port")
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or 1883
        self.cfg = cfg
        self.ingest_rows = ingest_rows
        self.monitor = monitor
        self.prefix = cfg.mqtt_prefix.strip("/")
        self.rejected = 0
        self.received = 0
        self._ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"ctmeter-serve-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv311, clean_session=True)
        if url.username:
            self.client.username_pw_set(url.username, url.password)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def topics(self):
        plain = [f"{self.prefix}/+/+/state", f"{self.prefix}/+/status", PANEL_PREFIX + "+"]
        group = self.cfg.mqtt_group
        return [f"$share/{group}/{t}" if group else t for t in plain]

    def start(self):
        self.client.reconnect_delay_set(1, 30)
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()
        return self

    def wait_ready(self, timeout=10):
        """True once the broker acknowledged the subscriptions."""
        return self._ready.wait(timeout)

    def stop(self):
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason, properties):
        if reason.is_failure:
            log.warning("MQTT connect to %s:%s refused: %s", self.host, self.port, reason)
            return
        client.subscribe([(t, 1) for t in self.topics()])

    def _on_subscribe(self, client, userdata, mid, reasons, properties):
        if any(r.is_failure for r in reasons):
            log.error("MQTT broker refused a subscription: %s", reasons)
        else:
            self._ready.set()

    def _on_message(self, client, userdata, msg):
        self.received += 1
        now = time.time()
        try:
            row = self._parse(msg.topic, msg.payload, now)
        except (InvalidReading, ValueError, RecursionError) as exc:
            self.rejected += 1
            log.debug("dropped MQTT message on %s: %s", msg.topic, exc)
            return
        if row is not None:
            self.ingest_rows([row])

    def _parse(self, topic, payload, now):
        if len(payload) > self.cfg.max_body:
            raise InvalidReading("payload too large")
        parts = topic.split("/")
        if topic.startswith(PANEL_PREFIX) and len(parts) == 3:
            return parse_panel(parts[2], json.loads(payload), now)
        base = self.prefix.split("/")
        rest = parts[len(base):]
        if parts[:len(base)] != base:
            raise InvalidReading(f"unexpected topic {topic}")
        if len(rest) == 2 and rest[1] == "status":
            state = payload.decode("utf-8", "replace").strip().lower()
            if self.monitor and state == "online":
                self.monitor.seen(rest[0], None, now)
            elif self.monitor and state == "offline":
                self.monitor.went_offline(rest[0])
            return None
        if len(rest) == 3 and rest[2] == "state":
            obj = json.loads(payload)
            if not isinstance(obj, dict):
                raise InvalidReading("payload must be a JSON object")
            obj.setdefault("deviceId", rest[0])
            if obj["deviceId"] != rest[0]:
                raise InvalidReading("deviceId in payload differs from the topic")
            if rest[1].isdigit():
                obj.setdefault("channel", int(rest[1]))
            return parse_reading(obj, now, source="mqtt")
        raise InvalidReading(f"unexpected topic {topic}")
