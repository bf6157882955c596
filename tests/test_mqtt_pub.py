# SPDX-License-Identifier: MIT
"""meter.mqtt_pub on the MicroPython unix port against a real mosquitto started here.

A paho-mqtt subscriber checks what a Home Assistant would see: retained discovery configs,
state messages, retained "online", and the last will "offline" when the device process is
killed. The broker is restarted while the device publishes: the publisher reconnects and every
reading, including those made while the broker was down, arrives. TLS (mqtts) runs against a
CA made in the test: right CA connects, a wrong CA or a certificate for another name fails
with kind "tls". Refused connects back off exponentially (simulated clock); a broker that
never answers costs one timeout.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from ctmeter.paths import ROOT, micropython_binary, micropython_path
from meter import ha_discovery

from tests.tlsfixtures import make_ca, write_server_files

pytestmark = [pytest.mark.micropython, pytest.mark.services]

DEVICE = "meter-7"
PASSWORD = "hunter2-Secret-pw"


def _mosquitto_binary():
    for cand in ("/usr/sbin/mosquitto", shutil.which("mosquitto")):
        if cand and os.access(cand, os.X_OK):
            return cand
    subprocess.run(["bash", str(ROOT / "tests/services/install.sh")], check=False, timeout=600)
    if os.access("/usr/sbin/mosquitto", os.X_OK):
        return "/usr/sbin/mosquitto"
    pytest.fail("mosquitto is not installed and tests/services/install.sh could not install it")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"port {port} did not open")


class Broker:
    """A mosquitto on loopback: a plain and a TLS listener, no persistence."""

    def __init__(self, workdir, cert, key):
        self.binary = _mosquitto_binary()
        self.port = _free_port()
        self.tls_port = _free_port()
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"user root\npersistence false\nallow_anonymous true\nlog_dest none\n"
            f"listener {self.port} 127.0.0.1\n"
            f"listener {self.tls_port} 127.0.0.1\ncertfile {cert}\nkeyfile {key}\n"
        )
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _wait_port(self.port)
        _wait_port(self.tls_port)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)
        self.proc = None


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mqtt-pki")
    ca, other = make_ca("ctmeter mqtt CA"), make_ca("other CA")
    (tmp / "ca.pem").write_bytes(ca.pem)
    (tmp / "other.der").write_bytes(other.der)
    cert, key = write_server_files(tmp, ca, "localhost")
    return tmp, cert, key


@pytest.fixture(scope="module")
def broker(pki):
    tmp, cert, key = pki
    b = Broker(tmp, cert, key)
    b.start()
    yield b
    b.stop()


class Subscriber:
    """paho client that records every message (topic, payload, retain) and reconnects."""

    def __init__(self, port, topics=("ctmeter/#", "homeassistant/#")):
        self.messages = []
        self.lock = threading.Lock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.c.reconnect_delay_set(0.05, 0.3)
        self.c.on_connect = lambda c, u, f, rc, p: [c.subscribe(t, qos=1) for t in topics]
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port, keepalive=5)
        self.c.loop_start()

    def _on_message(self, c, u, m):
        with self.lock:
            self.messages.append((m.topic, m.payload, m.retain, time.monotonic()))

    def snapshot(self):
        with self.lock:
            return list(self.messages)

    def wait_for(self, pred, timeout, what):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred(self.snapshot()):
                return
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}")

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def retained(port, settle=0.6):
    """What a newcomer sees: the retained messages, as {topic: payload}."""
    s = Subscriber(port, topics=("#",))
    time.sleep(settle)
    s.close()
    return {t: p for t, p, r, _ in s.snapshot() if r}


def states(messages):
    return [json.loads(p) for t, p, _, _ in messages if t.endswith("/state")]


# Runs on MicroPython: publishes N readings every 100 ms on channels 1 and 2, keeping unsent
# ones in a list (a stand-in for the outbox), then stays online until killed.
DEVICE_LOOP = r"""
import sys, time
from meter import mqtt_pub, reading
port, n = int(sys.argv[1]), int(sys.argv[2])
p = mqtt_pub.MqttPublisher.from_url("mqtt://ctmeter:%s@127.0.0.1:%d" % (sys.argv[3], port),
                                    "meter-7", channels=(1, 2), backoff_ms=(100, 400),
                                    timeout_ms=2000, keepalive_s=4)
pending, seq, due = [], 0, time.ticks_ms()
while seq < n or pending:
    if seq < n and time.ticks_diff(time.ticks_ms(), due) >= 0:
        pending.append(reading.encode("meter-7", seq, 1767225600 + seq, 1 + seq % 2, 1.5,
                                      230.0, 340.0, 345.0, 0.98, 1000000 + seq, 50.0, 0.1))
        seq += 1
        due = time.ticks_add(due, 100)
    while pending:
        try:
            p.publish_readings(pending[:1])
        except mqtt_pub.MqttError as e:
            print("ERR", e.kind, e)
            break
        pending.pop(0)
    time.sleep_ms(10)
print("DONE", p.connects)
while True:
    p.poll()
    time.sleep_ms(50)
"""


def _spawn(source, tmp_path, *args):
    script = tmp_path / "device.py"
    script.write_text(source)
    env = dict(os.environ, MICROPYPATH=micropython_path())
    return subprocess.Popen(
        [micropython_binary(), "-X", "heapsize=64k", str(script), *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


class Lines:
    """Collects a process's stdout lines in a thread."""

    def __init__(self, proc):
        self.lines = []
        self.t = threading.Thread(target=self._pump, args=(proc.stdout,), daemon=True)
        self.t.start()

    def _pump(self, f):
        for line in f:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, prefix, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in list(self.lines):
                if line.startswith(prefix):
                    return line
            time.sleep(0.02)
        raise AssertionError(f"device never printed {prefix!r}; got {self.lines[-10:]}")


def test_publish_restart_last_will_and_discovery(broker, tmp_path):
    sub = Subscriber(broker.port)
    n = 40
    dev = _spawn(DEVICE_LOOP, tmp_path, broker.port, n, PASSWORD)
    out = Lines(dev)
    try:
        # 1. readings flow
        sub.wait_for(lambda m: len(states(m)) >= 10, 15, "the first 10 readings")
        # 2. the broker goes away mid-run and comes back
        broker.stop()
        restart_at = time.monotonic()
        time.sleep(0.6)
        broker.start()
        out.wait_for("DONE", 30)
        sub.wait_for(lambda m: {s["seq"] for s in states(m)} >= set(range(n)), 10,
                     "every reading")
        msgs = sub.snapshot()
        got = states(msgs)
        # every reading arrived (QoS 1 is at-least-once: receivers dedupe on seq)
        assert {s["seq"] for s in got} == set(range(n))
        for s in got:
            assert s["deviceId"] == DEVICE and s["channel"] == 1 + s["seq"] % 2
        topics = {t for t, _, _, _ in msgs if t.endswith("/state")}
        assert topics == {f"ctmeter/{DEVICE}/1/state", f"ctmeter/{DEVICE}/2/state"}
        # the restart was noticed and survived, and readings made after it arrived
        assert any(line.startswith("ERR") for line in out.lines), out.lines
        assert int(out.wait_for("DONE", 1).split()[1]) >= 2  # connected again after restart
        after = [s for (t, p, _, ts), s in zip(
            [m for m in msgs if m[0].endswith("/state")], got, strict=True) if ts > restart_at]
        assert after, "no reading arrived after the broker restart"

        # 3. retained state a newcomer (Home Assistant) sees after the restart: the publisher
        # re-announced it (the broker kept nothing: persistence is off)
        ret = retained(broker.port)
        assert ret[f"ctmeter/{DEVICE}/status"] == b"online"
        configs = {t: json.loads(p) for t, p in ret.items() if t.startswith("homeassistant/")}
        expected = {t for t, _ in ha_discovery.discovery_configs(DEVICE, (1, 2))}
        assert set(configs) == expected and len(expected) == 12
        energy = configs[f"homeassistant/sensor/{DEVICE}/ch1_energy/config"]
        assert energy["device_class"] == "energy"
        assert energy["state_class"] == "total_increasing"
        assert energy["unit_of_measurement"] == "kWh"
        assert energy["state_topic"] == f"ctmeter/{DEVICE}/1/state"
        assert energy["value_template"] == "{{ value_json.energyKwh }}"
        assert energy["availability_topic"] == f"ctmeter/{DEVICE}/status"
        units = {c["unique_id"]: c.get("unit_of_measurement") for c in configs.values()}
        assert len(units) == 12  # unique ids are unique
        assert units[f"{DEVICE}_ch2_current"] == "A" and units[f"{DEVICE}_ch2_power"] == "W"
        assert units[f"{DEVICE}_ch2_apparent_power"] == "VA"
        assert units[f"{DEVICE}_voltage"] == "V" and units[f"{DEVICE}_frequency"] == "Hz"
        assert all(c["device"]["identifiers"] == [f"ctmeter_{DEVICE}"] for c in configs.values())

        # 4. the device dies: the broker publishes the last will, retained
        n_before = len(sub.snapshot())
        dev.send_signal(signal.SIGKILL)
        dev.wait(5)
        sub.wait_for(lambda m: any(t == f"ctmeter/{DEVICE}/status" and p == b"offline"
                                   for t, p, _, _ in m[n_before:]), 5, "the last will")
        assert retained(broker.port)[f"ctmeter/{DEVICE}/status"] == b"offline"
    finally:
        sub.close()
        if dev.poll() is None:
            dev.kill()
        dev.wait(5)
    captured = "\n".join(out.lines) + dev.stderr.read()
    assert PASSWORD not in captured


def test_clean_close_says_offline_without_the_will(broker, micropython):
    sub = Subscriber(broker.port)
    try:
        out = micropython.run(
            f"""
from meter import mqtt_pub, reading
p = mqtt_pub.MqttPublisher("meter-c", "127.0.0.1", {broker.port}, channels=(1,),
                           discovery=False)
p.publish_reading(1, reading.encode("meter-c", 5, 0, 1, 1, 230, 230, 230, 1, 7, 50, 10))
print(p.connected, p.connects)
p.close()
print(p.connected)
""")
        assert out.split() == ["True", "1", "False"]
        sub.wait_for(lambda m: [p for t, p, _, _ in m if t == "ctmeter/meter-c/status"]
                     == [b"online", b"offline"], 5, "online then offline")
        assert not any("/meter-c/" in t for t, _, _, _ in sub.snapshot()
                       if t.startswith("homeassistant/"))
        assert retained(broker.port)["ctmeter/meter-c/status"] == b"offline"
    finally:
        sub.close()


BACKOFF = r"""
from meter import mqtt_pub
now = [0]
p = mqtt_pub.MqttPublisher("meter-b", "127.0.0.1", %d, backoff_ms=(100, 400),
                           clock=lambda: now[0], discovery=False)
for t in (0, 50, 100, 250, 300, 700, 1100, 1400, 1500):
    now[0] = t
    try:
        p.publish_reading(1, "{}")
        print(t, "sent")
    except mqtt_pub.MqttError as e:
        print(t, e.kind, p.backoff_left_ms())
"""


def test_refused_connects_back_off_exponentially(micropython):
    out = micropython.run(BACKOFF % _free_port())
    rows = [line.split() for line in out.strip().splitlines()]
    assert rows == [
        ["0", "refused", "100"],
        ["50", "backoff", "50"],
        ["100", "refused", "200"],
        ["250", "backoff", "50"],
        ["300", "refused", "400"],
        ["700", "refused", "400"],  # capped
        ["1100", "refused", "400"],
        ["1400", "backoff", "100"],
        ["1500", "refused", "400"],
    ]


def test_broker_that_never_answers_costs_one_timeout(micropython):
    with socket.socket() as lst:  # completes TCP handshakes from its backlog, never answers
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        out = micropython.run(f"""
import time
from meter import mqtt_pub
p = mqtt_pub.MqttPublisher("meter-t", "127.0.0.1", {lst.getsockname()[1]}, timeout_ms=500)
t0 = time.ticks_ms()
try:
    p.publish_reading(1, "{{}}")
except mqtt_pub.MqttError as e:
    print(e.kind, time.ticks_diff(time.ticks_ms(), t0), p.backoff_left_ms() > 0)
""")
    kind, ms, backing_off = out.split()
    assert kind == "timeout" and backing_off == "True"
    assert 450 <= int(ms) <= 1200


TLS_SCRIPT = r"""
import sys
from meter import mqtt_pub, reading
with open(sys.argv[1], "rb") as f:
    ca = f.read()
try:
    p = mqtt_pub.MqttPublisher.from_url(sys.argv[2], "meter-s", cadata=ca, channels=(1,),
                                        timeout_ms=3000, discovery=False)
    p.publish_reading(1, reading.encode("meter-s", 9, 0, 1, 2, 230, 460, 460, 1, 3, 50, 10))
    print("sent", p.connects)
except mqtt_pub.MqttError as e:
    print("error", e.kind)
"""


@pytest.mark.parametrize(
    "ca,host,expect",
    [
        ("ca.pem", "localhost", "sent"),
        ("other.der", "localhost", "error tls"),  # a CA that did not sign the broker
        ("ca.pem", "127.0.0.1", "error tls"),  # the certificate names "localhost" only
    ],
)
def test_mqtts_verifies_the_broker(broker, pki, micropython, tmp_path, ca, host, expect):
    tmp, _, _ = pki
    sub = Subscriber(broker.port, topics=("ctmeter/meter-s/#",))
    try:
        url = f"mqtts://{host}:{broker.tls_port}"
        out = micropython.run(TLS_SCRIPT, args=[tmp / ca, url])
        assert out.strip().startswith(expect), out
        if expect == "sent":
            sub.wait_for(lambda m: any(t == "ctmeter/meter-s/1/state" and
                                       json.loads(p)["seq"] == 9 for t, p, _, _ in m),
                         5, "the reading over TLS")
        else:
            time.sleep(0.3)
            assert not any(t.endswith("/state") for t, _, _, _ in sub.snapshot())
    finally:
        sub.close()


def test_discovery_configs_under_cpython():
    configs = dict(ha_discovery.discovery_configs("m1", (0,), prefix="home/meters",
                                                  voltage=False))
    assert len(configs) == 5
    for topic, cfg in configs.items():
        assert topic.startswith("homeassistant/sensor/m1/ch0_")
        assert cfg["state_topic"] == "home/meters/m1/0/state"
        assert cfg["availability_topic"] == "home/meters/m1/status"
        assert cfg["payload_available"] == "online"
    pf = configs["homeassistant/sensor/m1/ch0_power_factor/config"]
    assert "unit_of_measurement" not in pf and pf["device_class"] == "power_factor"
    for bad in ("", "a/b", "x+", "#", "é" * 3, "a" * 65):
        with pytest.raises(ha_discovery.DiscoveryError):
            list(ha_discovery.discovery_configs(bad))


@pytest.mark.parametrize(
    "kwargs",
    [
        "'meter/1', '127.0.0.1'",
        "'m', ''",
        "'m', 'h', password='x'",
        "'m', 'h', prefix='a/#'",
        "'m', 'h', backoff_ms=(0, 10)",
        "'m', 'h', tls=True",  # mqtts without a CA: never silently unverified
    ],
)
def test_bad_configuration_is_refused(micropython, kwargs):
    out = micropython.run(f"""
from meter import mqtt_pub
try:
    mqtt_pub.MqttPublisher({kwargs})
    print("accepted")
except mqtt_pub.MqttError as e:
    print(e.kind)
""")
    assert out.strip() == "config"


def test_from_url_keeps_the_password_out_of_reprs(micropython):
    out = micropython.run(f"""
from meter import mqtt_pub
p = mqtt_pub.MqttPublisher.from_url("mqtt://u:{PASSWORD}@broker.lan:1884", "m")
print(repr(p), p.port, p.host)
try:
    mqtt_pub.MqttPublisher.from_url("http://u:{PASSWORD}@broker.lan", "m")
except mqtt_pub.MqttError as e:
    print(e)
""")
    assert PASSWORD not in out
    assert "broker.lan:1884" in out and "1884 broker.lan" in out



@pytest.mark.slow
def test_meter_with_mqtt_only_keeps_every_reading_through_a_broker_outage(broker, tmp_path):
    """The whole firmware, MQTT as its only link: an hour without a broker, then every
    reading arrives, in order, none missing (they waited in the outbox)."""
    from ctmeter.model import Channel, Frontend, Mains, Resistive, Stream
    from ctmeter.virtual.meter import start_virtual_meter

    from tests.test_firmware_sim import wait_sim_time

    stream = Stream([Channel(Frontend("sct013-030", ideal=True), Resistive(watts=1000))],
                    mains=Mains.clean(), sample_rate=4000, seed=4)
    sub = Subscriber(broker.port, topics=("ctmeter/mq1/#",))
    vb = start_virtual_meter(tmp_path / "flash", stream,
                             {"device_id": "mq1", "mqtt": {
                                 "enabled": True, "url": f"mqtt://127.0.0.1:{broker.port}",
                                 "discovery": False}}, timelapse_s=9.8)
    try:
        wait_sim_time(vb, 600)
        broker.stop()
        wait_sim_time(vb, 600 + 3600)
        # hold the chip while the broker and our subscriber come back, so the backlog is
        # not published before anyone listens (the broker keeps no sessions)
        with vb.halted():
            broker.start()
            deadline = time.monotonic() + 10
            while not sub.c.is_connected() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)
        wait_sim_time(vb, 600 + 3600 + 1800, timeout=180)
        # The publisher's reconnect backoff runs on real time (as the broker's clock does),
        # which a busy machine stretches against the fast simulated time: wait for the
        # readings themselves, not for a fixed time.
        want = 0.95 * (600 + 3600 + 1800) / 10
        deadline = time.monotonic() + 60
        while len({s["seq"] for s in states(sub.snapshot())}) < want:
            assert time.monotonic() < deadline, "the backlog was not delivered"
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        vb.stop()
        sub.close()
    seqs = [s["seq"] for s in states(sub.snapshot())]
    unique = sorted(set(seqs))
    assert len(unique) >= want
    assert unique == list(range(unique[0], unique[-1] + 1))  # none missing
    first_seen = list(dict.fromkeys(seqs))
    assert first_seen == unique  # in order


def test_meter_keeps_its_mqtt_session_alive_between_sparse_readings(broker, tmp_path):
    """Readings far apart (3600 simulated s, seconds of real time here), 1 s keepalive:
    the broker drops a client silent for 1.5 keepalives and publishes its "offline" will,
    unless the meter pings in between. The keepalive runs on real time, as the broker's."""
    from ctmeter.model import Channel, Frontend, Mains, Resistive, Stream
    from ctmeter.virtual.meter import start_virtual_meter

    from tests.test_firmware_sim import wait_sim_time

    stream = Stream([Channel(Frontend("sct013-030", ideal=True), Resistive(watts=1000))],
                    mains=Mains.clean(), sample_rate=4000, seed=4)
    sub = Subscriber(broker.port, topics=("ctmeter/ka1/#",))
    vb = start_virtual_meter(tmp_path / "flash", stream,
                             {"device_id": "ka1", "interval_s": 3600, "mqtt": {
                                 "enabled": True, "url": f"mqtt://127.0.0.1:{broker.port}",
                                 "discovery": False, "keepalive_s": 1}})
    try:
        wait_sim_time(vb, 3600 + 60, timeout=60)  # the first reading connected the meter
        t0 = time.monotonic()
        while time.monotonic() - t0 < 8.0:  # several keepalives, silent but for pings
            time.sleep(0.1)
        done = vb.feed.last_frame / 4000
        msgs = sub.snapshot()  # before the chip is stopped (that drop sends the will)
    finally:
        vb.stop()
        sub.close()
    status = [m[1] for m in msgs if m[0] == "ctmeter/ka1/status"]
    print("simulated s:", round(done), "status messages:", status)
    assert status and status[0] == b"online"
    assert b"offline" not in status  # never dropped by the broker
    assert status.count(b"online") == 1  # and never had to reconnect
    assert len(states(msgs)) >= 1


def test_meter_stopped_with_ctrl_c_says_offline_at_once(broker, tmp_path):
    """Ctrl-C (mpremote, a deploy) stops the meter cleanly: a retained "offline" goes out
    at once. Without it the broker would say so only when the keepalive (here 5 s, 1.5x)
    ran out, or, for a board that resets, when its last will fires."""
    from ctmeter.model import Channel, Frontend, Mains, Resistive, Stream
    from ctmeter.virtual.meter import start_virtual_meter

    stream = Stream([Channel(Frontend("sct013-030", ideal=True), Resistive(watts=1000))],
                    mains=Mains.clean(), sample_rate=4000, seed=4)
    sub = Subscriber(broker.port, topics=("ctmeter/cc1/status",))
    vb = start_virtual_meter(tmp_path / "flash", stream,
                             {"device_id": "cc1", "mqtt": {
                                 "enabled": True, "url": f"mqtt://127.0.0.1:{broker.port}",
                                 "discovery": False, "keepalive_s": 5}})
    try:
        deadline = time.monotonic() + 30
        while not any(m[1] == b"online" for m in sub.snapshot()):
            assert time.monotonic() < deadline, "the meter never came online"
            time.sleep(0.05)
        port = os.open(vb.port, os.O_RDWR | os.O_NOCTTY)
        os.write(port, b"\r\x03")  # as mpremote breaks in
        t0 = time.monotonic()
        while not any(m[1] == b"offline" for m in sub.snapshot()):
            assert time.monotonic() - t0 < 5.0, "no offline before the keepalive ran out"
            time.sleep(0.02)
        took = time.monotonic() - t0
        os.close(port)
    finally:
        vb.stop()
        sub.close()
    print("offline %.2f s after Ctrl-C" % took)
    assert took < 2.0
