# SPDX-License-Identifier: MIT
"""The live page in headless Chromium (driven over the DevTools protocol): it loads after the
login form, shows a reading posted after it opened, and shows the device going OFFLINE."""

import json
import os
import shutil
import subprocess
import time
import urllib.request

import pytest
from ctmeter.serve import Collector
from websockets.sync.client import connect

from tests.collector.conftest import ADMIN, TOKENS, Client, make_config

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync",
         "--disable-dev-shm-usage", "--remote-debugging-port=0"]


class DevTools:
    """Just enough of the Chrome DevTools protocol: commands and JS evaluation."""

    def __init__(self, ws):
        self.ws = ws
        self.next_id = 0

    def send(self, method, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=20))
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(msg["error"])
                return msg["result"]

    def js(self, expr):
        out = self.send("Runtime.evaluate", expression=expr, returnByValue=True)
        if "exceptionDetails" in out:
            raise RuntimeError(out["exceptionDetails"])
        return out["result"].get("value")

    def wait(self, expr, timeout=10.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            value = self.js(expr)
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"page never satisfied: {expr}")


@pytest.fixture
def browser(tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.fail("chromium is not installed: run tests/services/install.sh")
    profile = tmp_path / "profile"
    proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        end = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
            assert proc.poll() is None, "chromium exited"
            assert time.monotonic() < end, "chromium did not open its DevTools port"
            time.sleep(0.05)
        port = port_file.read_text().split("\n")[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        with connect(page["webSocketDebuggerUrl"], max_size=2**24, open_timeout=10) as ws:
            yield DevTools(ws)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_live_page_shows_new_reading_and_offline(tmp_path, browser):
    col = Collector(make_config(f"sqlite:///{tmp_path}/db.sqlite")).start()
    try:
        browser.send("Page.enable")
        browser.send("Page.navigate", url=col.dashboard_url)
        browser.wait("document.getElementById('login') !== null")
        browser.js(f"document.getElementById('token').value = {json.dumps(ADMIN)};"
                   "document.getElementById('login').submit(); true")
        browser.wait("document.body && document.body.dataset.ready === '1'"
                     " && document.body.dataset.live === '1'")
        assert browser.js("document.title") == "ctmeter"
        assert browser.js("document.querySelectorAll('#devices tbody tr').length") == 0

        c = Client(col.url)
        reading = {"deviceId": "m1", "seq": 1, "ts": time.time(), "current": 0.537,
                   "voltage": 229.8, "power": 123.4, "energyKwh": 4.5, "interval": 0.3}
        assert c.post("/api/measurements", reading, TOKENS["m1"])[0] == 201
        row = "document.querySelector('tr[data-device=\"m1\"]')"
        browser.wait(f"{row} && {row}.querySelector('td.power').textContent === '123.4'")
        assert browser.js(f"{row}.querySelector('td.status').textContent") == "ONLINE"
        assert browser.js(f"{row}.querySelector('td.energy').textContent") == "4.500"
        assert browser.js("series.get('m1').length") == 1  # on the last-hour chart

        # no more readings: after 3 missed intervals the page says OFFLINE and lists the alert
        browser.wait(f"{row}.querySelector('td.status').textContent === 'OFFLINE'")
        browser.wait("document.querySelector('#alerts li[data-kind=\"offline\"]') !== null")
    finally:
        col.stop()


def test_page_requires_login(tmp_path):
    col = Collector(make_config(f"sqlite:///{tmp_path}/db.sqlite")).start()
    try:
        c = Client(col.url)
        status, html = c.get("/", token=None)
        assert status == 200 and 'id="login"' in html and "dashboard.js" not in html
        status, html = c.request("POST", "/login", raw=b"token=wrong-token", headers={
            "Content-Type": "application/x-www-form-urlencoded"})
        assert status == 401 and "wrong token" in html
        assert c.get("/api/stream", token=None)[0] == 401
    finally:
        col.stop()
