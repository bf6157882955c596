# SPDX-License-Identifier: MIT
"""meter.deliver with a stand-in meter (CPython): the paths the virtual board cannot reach
easily. The whole delivery is exercised end to end in test_firmware_sim and test_soak."""

import json

from meter import deliver
from meter.app import Meter, _Interval
from meter.energy import EnergyCounter
from meter.flashfs import FlashFS
from meter.outbox import Outbox


class Board:
    def __init__(self):
        self.ms = 1000

    def ticks_ms(self):
        return self.ms

    def ticks_diff(self, a, b):
        return a - b

    def unix_time(self):
        return 1700000000


class Store:
    def __init__(self):
        self.seq = 0

    def next_seq(self):
        self.seq += 1
        return self.seq - 1


class StandIn:
    """The attributes of meter.app.Meter that deliver reads and writes."""

    link_ready = Meter.link_ready
    outbox_seen = Meter.outbox_seen
    cadata = Meter.cadata

    def __init__(self, tmp_path, conf):
        self.fs = FlashFS(str(tmp_path))
        self.outbox_fs = self.fs.subdir("outbox")
        self.conf = conf
        self.board = Board()
        self.store = Store()
        self.nchan = 1
        self.intervals = [_Interval()]
        self.intervals[0].add(type("R", (), {"irms": 4.0, "power": 900.0, "apparent": 920.0,
                                             "voltage": 230.0, "frequency": 50.0})(), 10.0)
        self.energy = [EnergyCounter(1234)]
        self.http, self.mqtt, self.wifi_up = True, None, True
        self.outbox_depth, self.backoff_ms, self.retry_at = 0, 0, None
        self.posts_ok = self.posts_failed = self.rejected = 0
        self.post_result = "none yet"


def test_a_ca_file_gone_after_the_start_keeps_the_reading_and_backs_off(tmp_path):
    conf = {"device_id": "d1", "tls": {"ca": "ca.pem"},
            "http": {"url": "https://collector.lan/api", "token": "t0ken-abc", "timeout_s": 5,
                     "path": "/api/measurements"}}
    m = StandIn(tmp_path, conf)  # the meter started with ca.pem; it is gone now
    deliver.readings(m)  # must not raise: the meter's loop would stop
    assert m.post_result == "error: config" and m.posts_failed == 1
    assert m.retry_at is not None and m.backoff_ms == 2000
    assert m.outbox_depth == 1 and m.outbox_status["depth"] == 1
    kept = Outbox(m.outbox_fs).peek(8)
    assert [json.loads(b)["seq"] for b in kept] == [0]
    assert json.loads(kept[0])["energyKwh"] == 0.001234
    assert m.link_ready() is False  # backing off: the next reading goes to the outbox
