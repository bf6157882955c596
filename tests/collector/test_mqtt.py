# SPDX-License-Identifier: MIT
"""MQTT ingest against a real mosquitto: ctmeter topics, seed panel topics, bad payloads,
and a shared subscription splitting one fleet between two collectors."""

import json
import time

import paho.mqtt.client as mqtt
import pytest
from ctmeter.serve import Collector
from meter.reading import encode

from tests.collector.conftest import make_config
from tests.collector.test_http import wait_for


@pytest.fixture
def publisher(mosquitto):
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-pub")
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    yield client
    client.disconnect()
    client.loop_stop()


def started(db_url, mosquitto, group="g1"):
    col = Collector(make_config(db_url, mqtt=mosquitto.url, mqtt_group=group)).start()
    assert col.mqtt.wait_ready(10)
    return col


def test_ctmeter_and_panel_topics_are_stored(db_url, mosquitto, publisher):
    col = started(db_url, mosquitto, group="")
    try:
        now = int(time.time())
        payload = encode("m1", 5, now, 1, 2.0, 230.0, 460.0, 470.0, 0.98, 2_000_000, 50.0, 10.0)
        publisher.publish("ctmeter/m1/1/state", payload, qos=1).wait_for_publish(5)
        publisher.publish("DATA/PM/panel-a", json.dumps({"power_kw": 2.5, "energy_kwh": 10.25}),
                          qos=1).wait_for_publish(5)
        # bad payloads are dropped and counted, never stored
        for topic, bad in [("ctmeter/m1/1/state", b"{not json"),
                           ("ctmeter/m2/0/state", json.dumps({"deviceId": "m1", "current": 1,
                                                              "voltage": 1})),
                           ("DATA/PM/panel-a", json.dumps({"power_kw": "high"})),
                           ("ctmeter/m1/0/state", b"x" * 10000)]:
            publisher.publish(topic, bad, qos=1).wait_for_publish(5)
        wait_for(lambda: col.store.count() == 2 and col.mqtt.rejected == 4)
        (m1,) = col.store.history("m1")
        assert m1["seq"] == 5 and m1["channel"] == 1 and m1["energyKwh"] == 2.0
        (panel,) = col.store.history("panel-a")
        assert panel["power"] == 2500.0 and panel["energyKwh"] == 10.25
        # duplicate over MQTT is ignored too
        publisher.publish("ctmeter/m1/1/state", payload, qos=1).wait_for_publish(5)
        wait_for(lambda: col.stats["duplicates"] == 1)
        assert col.store.count() == 2
        # the firmware's last will marks the device OFFLINE at once
        publisher.publish("ctmeter/m1/status", "offline", qos=1).wait_for_publish(5)
        wait_for(lambda: {d["deviceId"]: d["status"] for d in col.monitor.status(time.time())}
                 .get("m1") == "OFFLINE")
    finally:
        col.stop()


def test_shared_subscription_splits_the_fleet(tmp_path, mosquitto, publisher):
    a = started(f"sqlite:///{tmp_path}/a.db", mosquitto, group="fleet")
    b = started(f"sqlite:///{tmp_path}/b.db", mosquitto, group="fleet")
    try:
        now = int(time.time())
        for i in range(200):
            dev = f"d{i % 20}"
            payload = encode(dev, i, now, 0, 1.0, 230.0, 230.0, 230.0, 1.0, i * 1000, 50.0, 10.0)
            publisher.publish(f"ctmeter/{dev}/0/state", payload, qos=1)
        wait_for(lambda: a.store.count() + b.store.count() == 200, timeout=10)
        seqs_a = {r["seq"] for r in a.store.history(limit=None)}
        seqs_b = {r["seq"] for r in b.store.history(limit=None)}
        assert seqs_a.isdisjoint(seqs_b) and seqs_a | seqs_b == set(range(200))
        assert seqs_a and seqs_b  # both collectors took part
    finally:
        a.stop()
        b.stop()
