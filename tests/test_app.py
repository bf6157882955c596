# SPDX-License-Identifier: MIT
"""meter.app's loop and meter.deliver with stand-ins (CPython): paths the virtual board
cannot reach easily. The whole firmware is exercised end to end in test_firmware_sim and
test_soak."""

import json
import math

import pytest
from meter import app, boot, deliver
from meter.app import Meter, _Interval
from meter.board import STOPS, BoardBase
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
        self.device = conf["device_id"]
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
        self.unsent = []


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
    assert m.unsent == []


def test_a_memory_error_while_storing_loses_no_reading(tmp_path, monkeypatch):
    conf = {"device_id": "d1", "tls": {"ca": ""},
            "http": {"url": "http://collector.lan/api", "token": "", "timeout_s": 5,
                     "path": "/api/measurements"}}
    m = StandIn(tmp_path, conf)
    m.retry_at = 10**9  # backing off: the reading must go to the outbox
    real = deliver._outbox
    monkeypatch.setattr(deliver, "_outbox", lambda m: (_ for _ in ()).throw(MemoryError()))
    with pytest.raises(MemoryError):  # the meter's loop counts it and goes on
        deliver.readings(m)
    assert [json.loads(b)["seq"] for b in m.unsent] == [0]  # made, held, not lost
    monkeypatch.setattr(deliver, "_outbox", real)
    deliver.flush(m)  # the next window: stored after whatever was there
    assert m.unsent == [] and m.outbox_depth == 1
    assert [json.loads(b)["seq"] for b in Outbox(m.outbox_fs).peek(8)] == [0]


# -- the meter's loop survives a rare failure, and not a permanent one -------------------------

class Reset(Exception):  # noqa: N818 - the board's reset, which does not return on a chip
    pass


class LoopBoard(BoardBase):
    """A board for Meter.run() under CPython: a clean 50 Hz sine; `fail(window)` decides which
    windows raise after sampling; KeyboardInterrupt (as Ctrl-C) after `windows` windows."""

    platform = "test"

    def __init__(self, fail, windows):
        self.nch = 1
        self.us = 0
        self.n = 0
        self.fail = fail
        self.windows = windows

    def read_frames(self, buf, start, n):
        self.n += 1
        if self.n > self.windows:
            raise KeyboardInterrupt
        for i in range(n):
            buf[start + i] = 2048 + int(400 * math.sin(2 * math.pi * 50 * (self.us / 1e6)))
            self.us += 250

    def after_window(self):
        why = self.fail(self.n)
        if why == "memory":
            raise MemoryError("memory allocation failed, allocating 272 bytes")
        if why:
            raise RuntimeError("a bug in a rare path")

    def reset(self):
        self.saved_at_reset = self.saved()  # a chip's reset does not return: no finally
        raise Reset

    def ticks_us(self):
        return self.us & 0x3FFFFFFF

    def ticks_ms(self):
        return (self.us // 1000) & 0x3FFFFFFF

    def unix_time(self):
        return 1700000000 + self.us // 1000000

    def console_source(self):
        return None

    def wdt_start(self, timeout_ms):
        pass

    def wdt_feed(self):
        pass

    def wifi_connect(self, ssid, password):
        pass

    def wifi_status(self):
        return "sim"


def test_the_loop_counts_a_rare_failure_and_measures_on(tmp_path, capsys):
    board = LoopBoard(fail=lambda n: n in (3, 5), windows=12)
    m = Meter(board=board, fs=FlashFS(str(tmp_path)))
    with pytest.raises(KeyboardInterrupt):
        m.run()
    assert m.errors == 2 and m.last_error == "RuntimeError"
    assert m.windows == 12  # every window was measured, the failing ones too
    assert m.energy[0].mwh >= 0 and m.store.saves >= 2  # and the clean stop persisted


def test_the_loop_gives_up_on_a_failure_in_every_window(tmp_path, capsys):
    board = LoopBoard(fail=lambda n: n >= 4, windows=1000)
    m = Meter(board=board, fs=FlashFS(str(tmp_path)))
    with pytest.raises(RuntimeError):
        m.run()
    assert m.errors == app._MAX_FAILING and board.n == 3 + app._MAX_FAILING


def test_running_out_of_memory_for_a_while_loses_those_windows_only(tmp_path, capsys):
    last = 3 + app._MAX_FAILING - 2  # one window short of giving up
    board = LoopBoard(fail=lambda n: "memory" if 3 <= n <= last else None, windows=40)
    m = Meter(board=board, fs=FlashFS(str(tmp_path)))
    with pytest.raises(KeyboardInterrupt):
        m.run()
    assert m.mem_errors == app._MAX_FAILING - 1 and m.errors == 0
    assert m.windows == 40  # measured through it, and on after it


def test_out_of_memory_in_every_window_restarts_the_board_with_energy_saved(tmp_path, capsys):
    board = LoopBoard(fail=lambda n: "memory" if n >= 30 else None, windows=1000)
    m = Meter(board=board, fs=FlashFS(str(tmp_path)))
    saves = []
    real_save = m.store.save
    m.store.save = lambda state, now_ms=None: (saves.append(list(state)),
                                               real_save(state, now_ms))
    board.saved = lambda: list(saves)
    with pytest.raises((Reset, KeyboardInterrupt)) as end:  # Ctrl-C: ran out of windows
        m.run()
    assert end.type is Reset
    assert m.mem_errors == app._MAX_FAILING and board.n == 29 + app._MAX_FAILING
    # the counters were saved before the reset, with the energy of the last window in them
    assert board.saved_at_reset and board.saved_at_reset[-1] == m._energy_state()
    assert m.energy[0].mwh > 0


def test_readings_held_in_memory_go_to_the_outbox_before_the_restart(tmp_path, capsys):
    # a delivery that ran out of memory leaves its readings in m.unsent; when the meter
    # then restarts for memory, RAM is gone: they must be on flash first
    board = LoopBoard(fail=lambda n: "memory", windows=1000)
    m = Meter(board=board, fs=FlashFS(str(tmp_path)))
    board.saved = lambda: None
    m.unsent = ['{"seq": 7, "current": 1.5}', '{"seq": 8, "current": 1.6}']
    with pytest.raises(Reset):
        m.run()
    assert m.unsent == [] and m.outbox_depth == 2
    kept = Outbox(FlashFS(str(tmp_path)).subdir("outbox")).peek(8)
    assert [json.loads(b)["seq"] for b in kept] == [7, 8]


def test_a_meter_that_runs_long_enough_clears_the_count_of_stops(tmp_path, monkeypatch, capsys):
    # meter.board.stopped waits longer after each stop in a row; once the meter has run
    # RUN_OK_S the count starts over (here 2 s: 10 windows of 200 ms)
    monkeypatch.setattr(boot, "RUN_OK_S", 2)
    (tmp_path / STOPS).write_text("5")
    m = Meter(board=LoopBoard(fail=lambda n: None, windows=8), fs=FlashFS(str(tmp_path)))
    with pytest.raises(KeyboardInterrupt):
        m.run()
    assert m.stops and (tmp_path / STOPS).read_text() == "5"  # 1.6 s: not yet
    m = Meter(board=LoopBoard(fail=lambda n: None, windows=12), fs=FlashFS(str(tmp_path)))
    with pytest.raises(KeyboardInterrupt):
        m.run()
    assert not m.stops and not (tmp_path / STOPS).exists()


def test_config_set_says_whether_the_change_applies_now(tmp_path):
    from meter import commands
    from meter.config import Config

    fs = FlashFS(str(tmp_path))
    m = type("M", (), {})()
    m.fs, m.conf, m.http = fs, Config(fs).data, False
    assert commands.config_set(m, "interval_s", "30") == {"interval_s": 30, "applies": "now"}
    assert m.conf["interval_s"] == 30 and Config(fs).data["interval_s"] == 30
    # HTTP is off: its poster was never made, the URL waits for a reboot
    assert commands.config_set(m, "http.url", "http://collector.lan/api")["applies"] == \
        "after reboot"
    m.http = True  # on: the next delivery makes its poster from the running config
    assert commands.config_set(m, "http.url", "http://other.lan/api")["applies"] == "now"
    assert commands.config_set(m, "http.token", "s3cret-token")["applies"] == "now"
    assert commands.config_set(m, "sample_rate_hz", "2000")["applies"] == "after reboot"
    assert commands.config_set(m, "mqtt.url", "mqtt://broker.lan")["applies"] == "after reboot"
