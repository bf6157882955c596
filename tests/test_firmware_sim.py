# SPDX-License-Identifier: MIT
"""The unmodified firmware on the virtual board, measuring the sensor model's streams.

The console through the host's own client (MeterLink, over the pty), readings over HTTP to
a local receiver, truth from the model. Simulated time runs much faster than real time.
"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from ctmeter.meterlink import MeterLink
from ctmeter.model import Channel, Frontend, Inductive, Mains, Resistive, Stream
from ctmeter.virtual.meter import start_virtual_meter


def wait_sim_time(vb, seconds, timeout=120):
    fs = vb.source.sample_rate_hz
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if vb.feed.last_frame is not None and vb.feed.last_frame / fs >= seconds:
            return
        time.sleep(0.05)
    raise AssertionError(f"simulation did not reach {seconds} s")


@pytest.fixture
def resistive_meter(tmp_path):
    stream = Stream([Channel(Frontend("sct013-030", ideal=True), Resistive(watts=2300)),
                     Channel(Frontend("sct013-030", ideal=True), Inductive(pf=0.7, watts=900))],
                    mains=Mains.clean(), voltage=Frontend("zmpt101b", ideal=True),
                    sample_rate=4000, seed=3)
    vb = start_virtual_meter(tmp_path / "flash", stream, {"device_id": "t1"})
    yield vb, stream
    vb.stop()


def test_meter_reads_model_truth_and_integrates_energy(resistive_meter):
    vb, stream = resistive_meter
    con = MeterLink.open(vb.port, timeout=60)
    try:
        wait_sim_time(vb, 1800)
        read = con.cmd("read")
        first = vb.feed.first_frame / 4000
    finally:
        con.close()
    last = first + read["uptime_ms"] / 1000
    truth = stream.truth(last - 10, last)
    for i, key in enumerate(("ch1", "ch2")):
        got = read[key]
        assert got["irms"] == pytest.approx(truth.irms[i], rel=0.003), key
        kwh = float(got["energy_kwh"])
        true_kwh = stream.energy_wh(i, first, last) / 1000
        assert kwh == pytest.approx(true_kwh, rel=0.002), key
        assert got["power"] == pytest.approx(truth.p[i], rel=0.005), key
    assert read["ch2"]["pf"] == pytest.approx(0.7, abs=0.01)
    assert read["ch1"]["frequency"] == pytest.approx(50.0, abs=0.05)


def test_status_reports_duty_and_survives_power_cut(resistive_meter):
    vb, stream = resistive_meter
    con = MeterLink.open(vb.port, timeout=60)
    try:
        wait_sim_time(vb, 700)  # past the first 300 s persist
        status = con.cmd("status")
        assert status["duty"] >= 0.95
        assert status["sample_rate_hz"] == 4000
        before = float(con.cmd("read")["ch1"]["energy_kwh"])
        vb.power_cut()
        deadline = time.monotonic() + 30
        while len(vb.resets) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        con.close()  # the link saw the meter restart: open it again, as a person would
        con = MeterLink.open(vb.port, timeout=60)
        after = float(con.cmd("read")["ch1"]["energy_kwh"])
        status = con.cmd("status")
    finally:
        con.close()
    assert status["boots"] == 2
    # never backwards, and at most one persist interval (300 s at 2.3 kW = 0.19 kWh) lost
    assert after >= before - 2.3 * 300 / 3600
    assert after > 0


class Receiver(BaseHTTPRequestHandler):
    store = None

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        st = self.server.state
        if st.get("latency_s"):
            time.sleep(st["latency_s"])  # a slow link: the answer comes this much later
        if st["down"]:
            self.send_response(503)
            self.end_headers()
            return
        assert self.headers["Authorization"] == "Bearer s3cret-token"
        data = json.loads(body)
        batch = data if isinstance(data, list) else [data]
        if any(st.get("reject", lambda r: False)(r) for r in batch):
            self.send_response(422)  # all or nothing, as the collector does
            self.end_headers()
            return
        for r in batch:
            st["received"].append(r)
        self.send_response(201)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_six_hour_outage_delivers_everything_in_order(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    server.state = {"down": False, "received": []}
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/api/measurements"
    stream = Stream([Channel(Frontend("sct013-030", ideal=True), Resistive(watts=1000))],
                    mains=Mains.clean(), sample_rate=4000, seed=4)
    # time-lapse: one 0.2 s window, then 9.8 s skipped: a reading per window
    vb = start_virtual_meter(tmp_path / "flash", stream,
                             {"device_id": "t2", "http": {"enabled": True, "url": url,
                                                          "token": "s3cret-token"}},
                             timelapse_s=9.8)
    try:
        wait_sim_time(vb, 3600)
        server.state["down"] = True
        wait_sim_time(vb, 3600 + 6 * 3600)
        server.state["down"] = False
        wait_sim_time(vb, 3600 + 6 * 3600 + 3600, timeout=180)
        time.sleep(0.5)
    finally:
        vb.stop()
        server.shutdown()
    got = server.state["received"]
    seqs = [r["seq"] for r in got]
    unique = sorted(set(seqs))
    assert len(unique) >= 7.5 * 360  # ~8 hours of 10 s readings, outage included
    first_seen = []
    seen = set()
    for s in seqs:
        if s not in seen:
            seen.add(s)
            first_seen.append(s)
    assert first_seen == unique  # delivered in order
    assert unique == list(range(unique[0], unique[-1] + 1))  # none missing
    assert all(r["deviceId"] == "t2" for r in got)


def _receiver(reject=lambda r: False):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    server.state = {"down": False, "received": [], "reject": reject}
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/api/measurements"


def _http(url):
    return {"http": {"enabled": True, "url": url, "token": "s3cret-token"}}


@pytest.mark.parametrize("ntp", [False, True])
def test_no_reading_carries_an_unset_clock(tmp_path, ntp):
    server, url = _receiver()
    stream = Stream([Channel(Frontend("sct013-030", ideal=True), Resistive(watts=1000))],
                    mains=Mains.clean(), sample_rate=4000, seed=4)
    # epoch 0: the clock reads 1970, as an ESP32's RTC after a power cut
    vb = start_virtual_meter(tmp_path / "flash", stream, {"device_id": "c1", **_http(url)},
                             timelapse_s=9.8, epoch=0,
                             extra_env={"CTMETER_NTP": "1" if ntp else "0"})
    try:
        con = MeterLink.open(vb.port, timeout=60)
        wait_sim_time(vb, 300)
        status = con.cmd("status")
        read = con.cmd("read")
        con.close()
        time.sleep(0.3)
    finally:
        vb.stop()
        server.shutdown()
    got = server.state["received"]
    assert float(read["ch1"]["energy_kwh"]) > 0  # energy is counted all the same
    if ntp:
        assert status["clock"] == "set" and len(got) >= 20
        # the clock came from "NTP" (the host's time); simulated time then runs faster
        assert abs(got[0]["ts"] - time.time()) < 120
        steps = [b["ts"] - a["ts"] for a, b in zip(got, got[1:], strict=False)]
        assert all(step == pytest.approx(10, abs=1) for step in steps)
    else:
        assert status["clock"] == "unset" and got == []


def test_a_refused_reading_is_dropped_not_retried_for_ever(tmp_path):
    # the collector refuses some readings (422): the others must still flow, in order
    server, url = _receiver(reject=lambda r: r["seq"] % 5 == 2)
    stream = Stream([Channel(Frontend("sct013-030", ideal=True), Resistive(watts=1000))],
                    mains=Mains.clean(), sample_rate=4000, seed=4)
    vb = start_virtual_meter(tmp_path / "flash", stream, {"device_id": "r1", **_http(url)},
                             timelapse_s=9.8)
    try:
        con = MeterLink.open(vb.port, timeout=60)
        wait_sim_time(vb, 600)
        server.state["down"] = True  # a backlog, so batches with refused readings are sent
        wait_sim_time(vb, 1200)
        server.state["down"] = False
        wait_sim_time(vb, 1800)
        time.sleep(0.3)
        status = con.cmd("status")
        con.close()
    finally:
        vb.stop()
        server.shutdown()
    seqs = [r["seq"] for r in server.state["received"]]
    unique = sorted(set(seqs))
    assert status["rejected"] >= 20 and status["outbox"]["depth"] <= 2
    assert all(s % 5 != 2 for s in unique)
    expected = [s for s in range(unique[0], unique[-1] + 1) if s % 5 != 2]
    assert unique == expected
    assert list(dict.fromkeys(seqs)) == unique  # in order


def test_wifi_drop_reconnects_with_backoff_and_delivers_the_backlog(tmp_path):
    # CTMETER_WIFI: the virtual board's simulated access point. The station link drops when
    # the access point goes away and comes back only through a connect made while it is up.
    ap = tmp_path / "access-point"
    ap.write_text("up")
    server, url = _receiver()
    stream = Stream([Channel(Frontend("sct013-030", ideal=True), Resistive(watts=1000))],
                    mains=Mains.clean(), sample_rate=4000, seed=4)
    vb = start_virtual_meter(tmp_path / "flash", stream,
                             {"device_id": "w1",
                              "wifi": {"ssid": "home", "password": "wifi-pass-1"}, **_http(url)},
                             timelapse_s=9.8, extra_env={"CTMETER_WIFI": str(ap)})
    try:
        con = MeterLink.open(vb.port, timeout=60)
        wait_sim_time(vb, 600)
        before = con.cmd("status")
        ap.write_text("down")
        down_at = vb.feed.last_frame / 4000
        wait_sim_time(vb, down_at + 600)
        early = con.cmd("status")
        wait_sim_time(vb, down_at + 3600)
        late = con.cmd("status")
        ap.write_text("up")
        # the next connect comes within the 5-minute backoff, then the backlog drains
        for k in range(1, 7):
            wait_sim_time(vb, down_at + 3600 + 300 * k, timeout=180)
            after = con.cmd("status")
            if after["wifi"] == "connected" and after["outbox"]["depth"] == 0:
                break
        con.close()
        time.sleep(0.3)
    finally:
        vb.stop()
        server.shutdown()
    print("wifi retries after 10 min down:", early["wifi_retries"], "after 60 min:",
          late["wifi_retries"], "outbox:", late["outbox"]["depth"])
    assert before["wifi"] == "connected" and before["wifi_retries"] == 0
    assert early["wifi"] == late["wifi"] == "down"
    # Backoff: connects after 5, 10, 20, ... s, then every 5 min (here in 10 s windows):
    # ~7 in the first 10 minutes, then one per 300 s, not one per window.
    assert 5 <= early["wifi_retries"] <= 10
    per_300s = (late["uptime_s"] - early["uptime_s"]) / 300
    assert abs(late["wifi_retries"] - early["wifi_retries"] - per_300s) <= 1.5
    # no HTTP attempt while the link is down: readings go straight to the outbox
    assert late["posts_failed"] - before["posts_failed"] <= 1
    assert late["outbox"]["depth"] >= 355  # the hour's 10 s readings, kept on flash
    assert after["wifi"] == "connected" and after["outbox"]["depth"] == 0
    assert after["outbox"]["dropped"] == 0
    seqs = [r["seq"] for r in server.state["received"]]
    unique = sorted(set(seqs))
    assert unique == list(range(unique[0], unique[-1] + 1))  # none missing
    first_seen = list(dict.fromkeys(seqs))
    assert first_seen == unique  # in order
    assert len(unique) >= (3600 + 600 + 600) / 10 * 0.97


def test_duty_over_95_percent_posting_every_10_s_over_a_300_ms_link(tmp_path):
    # The fast clock counts the host's real time between windows as simulated time, so
    # each post's 300 ms round trip (and the meter's own work between windows) is time
    # not sampled, as on a board. Readings every 10 s (no time-lapse).
    server, url = _receiver()
    server.state["latency_s"] = 0.3
    stream = Stream([Channel(Frontend("sct013-030", ideal=True), Resistive(watts=1000))],
                    mains=Mains.clean(), sample_rate=4000, seed=4)
    vb = start_virtual_meter(tmp_path / "flash", stream, {"device_id": "d1", **_http(url)})
    try:
        con = MeterLink.open(vb.port, timeout=60)
        wait_sim_time(vb, 125, timeout=120)
        status = con.cmd("status")
        con.close()
    finally:
        vb.stop()
        server.shutdown()
    print("duty", status["duty"], "posts", status["posts_ok"], status["last_post"])
    assert status["posts_ok"] >= 10 and status["posts_failed"] == 0
    assert status["last_post"] == "ok 201"
    assert status["duty"] >= 0.95
    # and the latency is really in it: a post every 10 s costs 3 % of the time
    assert status["duty"] <= 0.975


def test_https_with_its_ca_file_missing_is_refused_at_start_and_named(tmp_path):
    # TLS needs the CA to verify the server: with the file tls.ca names not on the flash,
    # HTTP is disabled at start with the reason in status.problems, and the meter measures
    # on (nothing is ever sent unverified)
    stream = Stream([Channel(Frontend("sct013-030", ideal=True), Resistive(watts=1000))],
                    mains=Mains.clean(), sample_rate=4000, seed=4)
    vb = start_virtual_meter(tmp_path / "flash", stream, {"device_id": "t1", "http": {
        "enabled": True, "url": "https://127.0.0.1:9/api", "token": "s3cret-token"},
        "tls": {"ca": "ca.pem"}}, timelapse_s=9.8)
    try:
        con = MeterLink.open(vb.port, timeout=60)
        wait_sim_time(vb, 120)
        status = con.cmd("status")
        read = con.cmd("read")
        con.close()
    finally:
        vb.stop()
    assert "tls.ca file not found on flash" in status["problems"], status["problems"]
    problems = [p for p in status["problems"] if p.startswith("http disabled: config: ")]
    assert len(problems) == 1, status["problems"]
    assert "s3cret" not in json.dumps(status)
    assert status["last_post"] == "none yet" and status["posts_failed"] == 0
    assert status["outbox"]["depth"] == 0  # no link: readings are not queued for ever
    assert float(read["ch1"]["energy_kwh"]) > 0


def test_a_new_device_id_applies_to_readings_after_the_reboot_as_it_says(tmp_path):
    # `config set device_id` answers "after reboot": the readings (like the MQTT topics made
    # at start) keep the running name until then, and carry the new one after it
    server, url = _receiver()
    stream = Stream([Channel(Frontend("sct013-030", ideal=True), Resistive(watts=1000))],
                    mains=Mains.clean(), sample_rate=4000, seed=4)
    vb = start_virtual_meter(tmp_path / "flash", stream, {"device_id": "old-name",
                                                          **_http(url)}, timelapse_s=9.8)
    try:
        with MeterLink.open(vb.port, timeout=60) as link:
            wait_sim_time(vb, 60)
            answer = link.cmd("config set device_id new-name")
            assert answer == {"device_id": "new-name", "applies": "after reboot"}
            before = len(server.state["received"])
            wait_sim_time(vb, 200)
            assert link.cmd("status")["device"] == "old-name"
            between = server.state["received"][before:]
            assert link.reboot()["device"] == "new-name"
            assert link.cmd("status")["device"] == "new-name"
            after = len(server.state["received"])
            deadline = time.monotonic() + 60
            while len(server.state["received"]) < after + 3:
                assert time.monotonic() < deadline, "no readings after the reboot"
                time.sleep(0.05)
        time.sleep(0.3)
    finally:
        vb.stop()
        server.shutdown()
    assert len(between) >= 5 and {r["deviceId"] for r in between} == {"old-name"}
    assert {r["deviceId"] for r in server.state["received"][after:]} == {"new-name"}
