# SPDX-License-Identifier: MIT
"""Storage and queries, the same tests on SQLite and on a real PostgreSQL."""

import threading
from datetime import UTC, datetime

from ctmeter.serve import queries
from ctmeter.serve.config import ServeConfig
from ctmeter.serve.validate import parse_reading

# 2026-06-15 12:00 UTC: a fixed "now" keeps day boundaries out of the tests' way
NOON = datetime(2026, 6, 15, 12, 0, tzinfo=UTC).timestamp()


def reading(dev="m1", seq=None, ts=NOON, kwh=None, power=None, channel=0, interval=10.0):
    body = {"deviceId": dev, "current": 1.0, "voltage": 230.0, "ts": ts, "channel": channel,
            "interval": interval}
    if seq is not None:
        body["seq"] = seq
    if kwh is not None:
        body["energyKwh"] = kwh
    if power is not None:
        body["power"] = power
    return parse_reading(body, NOON + 3600)


def test_insert_dedupes_on_device_and_seq(store):
    assert store.insert([reading(seq=1), reading(seq=2, ts=NOON + 10)]) == [True, True]
    # a replayed outbox: same seq again (even within one batch) is ignored, other device is new
    assert store.insert([reading(seq=2, ts=NOON + 10), reading(seq=3, ts=NOON + 20),
                         reading(seq=3, ts=NOON + 20), reading("m2", seq=2)]) \
        == [False, True, False, True]
    assert store.count() == 4 and store.count("m1") == 3
    # readings without seq (the seeds' minimal body) are never treated as duplicates
    assert store.insert([reading(), reading()]) == [True, True]


def test_history_range_limit_and_order(store):
    store.insert([reading(seq=i, ts=NOON + i, kwh=i / 1000) for i in range(100)])
    store.insert([reading("m2", seq=1, ts=NOON + 5)])
    last = store.history("m1")
    assert len(last) == 50 and [r["seq"] for r in last] == list(range(50, 100))
    window = store.history("m1", (NOON + 10) * 1000, (NOON + 20) * 1000, limit=1000)
    assert [r["seq"] for r in window] == list(range(10, 20))
    assert window[3]["energyKwh"] == 0.013 and window[0]["deviceId"] == "m1"
    assert {r["deviceId"] for r in store.history(limit=1000)} == {"m1", "m2"}


def test_devices_keep_the_newest_reading(store):
    store.insert([reading(seq=2, ts=NOON + 10, kwh=2.0)])
    store.insert([reading(seq=1, ts=NOON, kwh=1.0)])  # late replay of an older one
    (dev,) = store.devices()
    assert dev["deviceId"] == "m1" and dev["last"]["energyKwh"] == 2.0 and dev["interval"] == 10


def test_concurrent_submitters_all_committed(store):
    def post(dev):
        for i in range(50):
            assert store.insert([reading(dev, seq=i, ts=NOON + i)]) == [True]

    threads = [threading.Thread(target=post, args=(f"d{k}",)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.count() == 400


def test_large_batches_span_several_statements_and_keep_every_value(store, db_url):
    """One commit of 1,100 rows (three multi-row INSERTs on SQLite), then a batch mixing
    new rows and duplicates; 1,200 devices saved in one go on close."""
    rows = [reading(f"d{i % 1200}", seq=i, ts=NOON + i, kwh=i / 1e6, power=i * 0.1)
            for i in range(1100)]
    assert store.insert(rows) == [True] * 1100
    again = [reading("d5", seq=5, ts=NOON + 5), reading("d5", seq=1105, ts=NOON + 1105)]
    again += [reading(f"d{i}", seq=i, ts=NOON + i) for i in range(1100, 1200)]
    assert store.insert(again) == [False] + [True] * 101
    assert store.count() == 1201
    got = {(r["deviceId"], r["seq"]): r for r in store.history(limit=None)}
    assert got[("d7", 7)]["energyKwh"] == 7e-6 and got[("d7", 7)]["power"] == 0.7000000000000001
    assert got[("d1099", 1099)]["ts"] == NOON + 1099
    store.close()
    reopened = type(store)(store.path if db_url.startswith("sqlite") else store.url)
    try:
        assert len(reopened.devices()) == 1200
    finally:
        reopened.close()


def test_usage_today_survives_counter_reset(store):
    cfg = ServeConfig(tariff_per_kwh=0.5, currency="EUR")
    kwh = [10.0, 10.5, 11.0, 0.2, 0.7]  # reset after 11.0 (new flash): +0.5 +0.5 +0.2 +0.5
    store.insert([reading(seq=i, ts=NOON - 3000 + 60 * i, kwh=k) for i, k in enumerate(kwh)])
    # yesterday's last reading is the baseline for today's first one
    store.insert([reading("m2", seq=1, ts=NOON - 86400, kwh=5.0),
                  reading("m2", seq=2, ts=NOON - 100, kwh=5.25)])
    out = queries.usage_today(store, cfg, NOON)
    per = {d["deviceId"]: d for d in out["devices"]}
    assert abs(per["m1"]["kwh"] - 1.7) < 1e-9 and abs(per["m1"]["cost"] - 0.85) < 1e-9
    assert abs(per["m2"]["kwh"] - 0.25) < 1e-9
    assert abs(out["kwh"] - 1.95) < 1e-9 and out["date"] == "2026-06-15"
    assert all(d["kwh"] >= 0 for d in out["devices"])


def test_usage_from_power_when_there_is_no_counter(store):
    cfg = ServeConfig()
    # the seeds' body: 1 kW for 10 readings 10 s apart = 90 s of known power = 0.025 kWh
    store.insert([reading(ts=NOON - 100 + 10 * i, power=1000.0) for i in range(10)])
    out = queries.usage_today(store, cfg, NOON)
    assert abs(out["kwh"] - 0.025) < 1e-9
    # a gap longer than 3 intervals counts only 3 intervals (the device was offline)
    store.insert([reading(ts=NOON - 10 + 3600, power=1000.0)])
    out = queries.usage_today(store, cfg, NOON + 3600)
    assert abs(out["kwh"] - (0.025 + 30 / 3600)) < 1e-6  # reported to the Wh/1000


def test_daily_weekly_monthly_summaries_and_year_by_device(store):
    cfg = ServeConfig(tariff_per_kwh=0.25)
    day = 86400
    # 1 kWh per day for 40 days ending at NOON, counter in steps of 1 kWh
    store.insert([reading(seq=i, ts=NOON - (39 - i) * day, kwh=float(i)) for i in range(40)])
    store.insert([reading("m2", seq=i, ts=NOON - (9 - i) * day, kwh=2.0 * i) for i in range(10)])
    daily = queries.summary(store, cfg, "daily", NOON - 5 * day - 3600, NOON + 1)
    assert [b["period"] for b in daily][-1] == "2026-06-15" and len(daily) == 6
    assert [b["kwh"] for b in daily][1:] == [3.0] * 5 and daily[-1]["cost"] == 0.75
    weekly = queries.summary(store, cfg, "weekly", NOON - 40 * day, NOON + 1, "m1")
    assert sum(b["kwh"] for b in weekly) == 39.0 and weekly[-1]["period"] == "2026-W25"
    monthly = queries.summary(store, cfg, "monthly", NOON - 40 * day, NOON + 1)
    assert [b["period"] for b in monthly] == ["2026-05", "2026-06"]
    assert sum(b["kwh"] for b in monthly) == 39.0 + 18.0
    year = queries.monthly_by_device(store, cfg, 2026)
    assert year["devices"]["m1"][5] == 15.0 and year["devices"]["m1"][4] == 24.0
    assert year["devices"]["m2"][5] == 18.0 and len(year["devices"]["m2"]) == 12


def test_alerts_store_list_read_resolve(store):
    a = store.add_alert("m1", "power_high", "too much", 4000.0, NOON * 1000)
    b = store.add_alert("m2", "offline", "gone", None, NOON * 1000 + 1)
    assert [x["id"] for x in store.alerts()] == [b, a]
    assert store.update_alert(a, read=True)
    assert [x["id"] for x in store.alerts(unread=True)] == [b]
    assert store.update_alert(b, resolved_ms=NOON * 1000 + 5)
    assert [x["id"] for x in store.alerts(active=True)] == [a]
    assert store.alerts("m2")[0]["resolved"] == NOON + 0.005
    assert not store.update_alert(999999, read=True)


def test_sqlite_checkpoints_in_its_own_thread_not_on_commit(tmp_path):
    """Commits leave the WAL alone (a checkpoint's fsyncs would stall every reading queued
    behind that commit); the checkpointer thread copies it into the database file."""
    import os
    import time

    from ctmeter.serve.storage import CHECKPOINT_S, SQLiteStorage

    path = tmp_path / "c.db"
    store = SQLiteStorage(str(path))
    try:
        assert store._writer_conns[0].execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
        size0 = os.path.getsize(path)
        store.insert([reading(f"d{i % 50}", seq=i, ts=NOON + i) for i in range(3000)])
        wal = tmp_path / "c.db-wal"
        assert os.path.getsize(wal) > 100_000  # the readings went to the WAL...
        end = time.monotonic() + 5 * CHECKPOINT_S
        while os.path.getsize(path) <= size0 and time.monotonic() < end:
            time.sleep(0.05)
        assert os.path.getsize(path) > size0 + 100_000  # ...and the checkpointer moved them
        assert store.count() == 3000
    finally:
        store.close()


def test_any_text_and_exact_floats_survive_the_batch_insert(store):
    """The storage API takes rows from any caller: text that means something in SQL or in
    an array literal is stored as given, NULLs stay NULL, floats come back bit for bit."""
    odd = ["NULL", 'a"b', "back\\slash", "{x,y}", "sp ace", "é€"]
    rows = []
    for i, dev in enumerate(odd):
        r = reading("m1", seq=i, ts=NOON + i, power=0.1 + 0.2 * i, kwh=123.456789)
        r["device_id"] = dev
        rows.append(r)
    rows[0]["frequency"] = None
    rows[1]["powerFactor"] = 1e-300
    assert store.insert(rows) == [True] * len(odd)
    got = {r["deviceId"]: r for r in store.history(limit=None)}
    assert set(got) == set(odd)
    assert got["NULL"]["frequency"] is None and got['a"b']["powerFactor"] == 1e-300
    assert [got[d]["power"] for d in odd] == [0.1 + 0.2 * i for i in range(len(odd))]
    assert got["é€"]["energyKwh"] == 123.456789


def test_saving_device_states_ends_while_the_devices_keep_posting(tmp_path):
    """Every DEVICE_PERSIST_S the devices that changed are saved, DEVICE_FLUSH_CHUNK per
    commit; that set is fixed when it falls due, so the saving ends even though every
    device posts again in every batch (it used to go on until a batch brought none)."""
    import time

    from ctmeter.serve.storage import DEVICE_FLUSH_CHUNK, SQLiteStorage

    store = SQLiteStorage(str(tmp_path / "d.db"))
    saved = []
    flush = store._flush_devices

    def spy(conn, limit=None, commit=True):
        before = len(store._dev_due)
        flush(conn, limit, commit)
        saved.append(before - len(store._dev_due))  # devices saved by this call

    store._flush_devices = spy
    try:
        devices = 4 * DEVICE_FLUSH_CHUNK

        def every_device_posts(seq):
            return store.insert([reading(f"d{i}", seq=seq, ts=NOON + seq)
                                 for i in range(devices)])

        for seq in range(8):  # new devices: saved at once, a chunk per commit
            every_device_posts(seq)
        assert len(store._dev_known) == devices and saved[:4] == [DEVICE_FLUSH_CHUNK] * 4
        store._dev_next_flush = time.monotonic() + 3600  # within a period: nothing saved
        saved.clear()
        for seq in range(8, 12):
            every_device_posts(seq)
        assert saved == []
        store._dev_next_flush = 0.0  # the period is over
        for seq in range(12, 24):
            every_device_posts(seq)
        assert saved == [DEVICE_FLUSH_CHUNK] * 4  # four chunks, then nothing until the next
        assert store._dev_pending and not store._dev_due
        (dev,) = [d for d in store.devices() if d["deviceId"] == "d0"]
        assert dev["last"]["seq"] >= 12
    finally:
        store.close()
    reopened = SQLiteStorage(str(tmp_path / "d.db"))
    try:  # closing saved the rest
        assert {d["last"]["seq"] for d in reopened.devices()} == {23}
    finally:
        reopened.close()


def test_postgres_saves_device_states_beside_the_writers(postgres):
    """On PostgreSQL a period's device states are saved by a thread of their own, so the
    readings' commits never wait for them; closing still saves what is left."""
    import time

    from ctmeter.serve.storage import PostgresStorage

    url = postgres.create_db("devices_saver")
    store = PostgresStorage(url)
    callers = []
    flush = store._flush_devices

    def spy(conn, limit=None, commit=True):
        callers.append(threading.current_thread().name)
        flush(conn, limit, commit)

    store._flush_devices = spy
    try:
        devices = 200
        for seq in range(4):
            store.insert([reading(f"d{i}", seq=seq, ts=NOON + seq) for i in range(devices)])
        deadline = time.monotonic() + 10
        while len(store.devices()) < devices and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(store.devices()) == devices
        callers.clear()
        store._dev_next_flush = 0.0  # the period is over
        for seq in range(4, 8):
            store.insert([reading(f"d{i}", seq=seq, ts=NOON + seq) for i in range(devices)])
        while (min(d["last"]["seq"] for d in store.devices()) < 4
               and time.monotonic() < deadline):
            time.sleep(0.05)
        assert min(d["last"]["seq"] for d in store.devices()) >= 4
        assert callers and set(callers) == {"ctmeter-devices"}
    finally:
        store.close()
    reopened = PostgresStorage(url)
    try:
        assert {d["last"]["seq"] for d in reopened.devices()} == {7}
    finally:
        reopened.close()
