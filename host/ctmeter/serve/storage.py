# SPDX-License-Identifier: MIT
"""Where readings and alerts live: SQLite (default, WAL) or PostgreSQL (by URL).

    store = open_storage("sqlite:///ctmeter.db")      # or "postgresql://user@host:5432/db"
    fut = store.submit(rows)      # concurrent.futures.Future -> [True if new, False if duplicate]
    store.insert(rows)            # the same, waiting for the commit
    store.history(device_id=None, start_ms=None, end_ms=None, limit=50)
    store.energy_rows(start_ms, end_ms, device_id=None)   # for usage and summaries
    store.devices(); store.add_alert(...); store.alerts(...); store.update_alert(...)
    store.close()

Every write goes through a writer thread (one for SQLite; two for PostgreSQL, so one batch is
written while the other waits for its WAL flush) that takes whatever is queued and commits it
as one transaction (group commit): many devices posting at once cost one commit, and a 2xx is
only answered after the commit. Duplicates on (deviceId, seq) are ignored by a unique index.
Reads use one connection per thread. Beside the writers, SQLite has a WAL checkpointer thread
and PostgreSQL a thread that saves the devices table's periodic updates.

What "after the commit" guarantees:
  * PostgreSQL (synchronous_commit as the server has it, on by default): the commit has
    reached the WAL on disk, so a 2xx reading survives a crash of the collector, of the
    server and a power cut.
  * SQLite (WAL, synchronous=NORMAL): the commit is in the WAL file, so it survives a crash
    or kill of the collector; the WAL is fsynced by each checkpoint, which a thread of its
    own runs every CHECKPOINT_S (1 s) instead of a commit every 1,000 pages, so a power cut
    or OS crash can lose at most the readings of the last ~second (the meters' outboxes
    hold far more). synchronous=FULL would fsync every commit; the collector does not.

TimescaleDB: when pg_available_extensions lists timescaledb, `readings` becomes a hypertable
(one-day chunks on ts_ms) and its unique index includes ts_ms; otherwise it stays a plain
table (store.timescaledb says which). The extension cannot be installed where the tests run:
tests/collector/test_timescale.py runs the exact create_hypertable call against a stand-in
with TimescaleDB's signature and index rule on real PostgreSQL, not against TimescaleDB.
"""

import concurrent.futures
import functools
import itertools
import json
import logging
import operator
import queue
import sqlite3
import threading
import time
from urllib.parse import unquote, urlparse

from ctmeter.serve.validate import to_json

log = logging.getLogger("ctmeter.serve")

COLUMNS = (
    ("device_id", "device_id"),
    ("channel", "channel"),
    ("seq", "seq"),
    ("ts_ms", "ts_ms"),
    ("received_ms", "received_ms"),
    ("current", "current_a"),
    ("voltage", "voltage_v"),
    ("power", "power_w"),
    ("apparentPower", "apparent_va"),
    ("powerFactor", "power_factor"),
    ("energy_mwh", "energy_mwh"),
    ("frequency", "frequency_hz"),
    ("interval", "interval_s"),
    ("source", "source"),
)
ROW_KEYS = [k for k, _ in COLUMNS]
DB_COLS = [c for _, c in COLUMNS]
MAX_BATCH = 2000
DEVICE_PERSIST_S = 5.0
DEVICE_FLUSH_CHUNK = 50
DEVICE_SAVER_PAUSE_S = 0.01  # PostgreSQL: between the device saver's chunks
CHECKPOINT_S = 1.0  # SQLite: WAL checkpoint period (in its own thread)
WAL_LIMIT_FRAMES = 50000  # ~200 MB of WAL: then a blocking TRUNCATE checkpoint
GROUP_WINDOW_S = 0.005  # added latency bound that buys bigger commits under load
ENERGY_LOOKBACK_MS = 2 * 86400 * 1000  # a reading this far before a range is its baseline

_TYPES = {
    "device_id": "TEXT NOT NULL", "channel": "INTEGER NOT NULL", "seq": "BIGINT",
    "ts_ms": "BIGINT NOT NULL", "received_ms": "BIGINT NOT NULL", "energy_mwh": "BIGINT",
    "source": "TEXT",
}
_PG_ARRAY = {c: {"device_id": "text", "source": "text", "channel": "int"}.get(
    c, "bigint" if _TYPES.get(c, "").startswith("BIGINT") else "float8") for c in DB_COLS}
_PG_TEXT = [_PG_ARRAY[c] == "text" for c in DB_COLS]


def _array_literal(values, text):
    """A PostgreSQL array literal: {1.5,NULL,2} or {"a","b\\"c"}. Numbers as repr (the
    shortest text that reads back as the same float), text always quoted and escaped."""
    if text:
        return "{" + ",".join(
            "NULL" if v is None else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
            for v in values) + "}"
    return "{" + ",".join("NULL" if v is None else repr(v) for v in values) + "}"


_READINGS_DDL = "CREATE TABLE IF NOT EXISTS readings ({})".format(
    ", ".join(f"{c} {_TYPES.get(c, 'DOUBLE PRECISION')}" for c in DB_COLS)
)
_DEVICES_DDL = (
    "CREATE TABLE IF NOT EXISTS devices (device_id TEXT PRIMARY KEY, last_seen_ms BIGINT NOT NULL,"
    " interval_s DOUBLE PRECISION, last_ts_ms BIGINT NOT NULL, last_json TEXT NOT NULL)"
)
_ALERTS_DDL = (
    "CREATE TABLE IF NOT EXISTS alerts (id {pk}, device_id TEXT NOT NULL, kind TEXT NOT NULL,"
    " message TEXT NOT NULL, value DOUBLE PRECISION, created_ms BIGINT NOT NULL,"
    " is_read INTEGER NOT NULL DEFAULT 0, resolved_ms BIGINT)"
)
_INSERT = "INSERT INTO readings ({}) VALUES ({})".format(
    ", ".join(DB_COLS), ", ".join("?" for _ in DB_COLS)
)
_INSERT_OR_IGNORE = f"INSERT OR IGNORE INTO readings ({', '.join(DB_COLS)})"
_UPSERT_DEVICE_HEAD = (
    "INSERT INTO devices (device_id, last_seen_ms, interval_s, last_ts_ms, last_json)")
_UPSERT_DEVICE_TAIL = (
    " ON CONFLICT (device_id) DO UPDATE SET"
    " last_seen_ms = CASE WHEN excluded.last_seen_ms > devices.last_seen_ms"
    "   THEN excluded.last_seen_ms ELSE devices.last_seen_ms END,"
    " interval_s = COALESCE(excluded.interval_s, devices.interval_s),"
    " last_json = CASE WHEN excluded.last_ts_ms >= devices.last_ts_ms"
    "   THEN excluded.last_json ELSE devices.last_json END,"
    " last_ts_ms = CASE WHEN excluded.last_ts_ms >= devices.last_ts_ms"
    "   THEN excluded.last_ts_ms ELSE devices.last_ts_ms END"
)
# TimescaleDB (1.x/2.x create_hypertable, integer time column in ms: one chunk per day).
HYPERTABLE_SQL = ("SELECT create_hypertable('readings', 'ts_ms',"
                  " chunk_time_interval => 86400000, if_not_exists => TRUE)")
_ENERGY = (
    "SELECT device_id, ts_ms, energy_mwh, prev_e, power_w, ts_ms - prev_ts AS gap_ms, interval_s"
    " FROM (SELECT device_id, ts_ms, energy_mwh, power_w, interval_s,"
    "   LAG(energy_mwh) OVER w AS prev_e, LAG(ts_ms) OVER w AS prev_ts"
    "   FROM readings WHERE ts_ms >= ? AND ts_ms < ? {dev}"
    "   WINDOW w AS (PARTITION BY device_id, channel ORDER BY ts_ms, seq)) t"
    " WHERE ts_ms >= ? ORDER BY ts_ms"
)


class StorageError(RuntimeError):
    pass


def _call(done, flags, exc):
    try:
        done(flags, exc)
    except Exception:  # noqa: BLE001  (a caller's callback must not kill the writer)
        logging.getLogger("ctmeter.serve").exception("storage callback failed")


_db_row = operator.itemgetter(*ROW_KEYS)  # row dict -> tuple in DB_COLS order

# Rows per multi-row INSERT: 512 x 14 columns stays under SQLite's 32,766 parameters.
ROWS_PER_STATEMENT = 512


@functools.lru_cache(maxsize=64)
def multi_row_sql(head, width, rows, tail="", placeholder="?"):
    """`head VALUES (?, ...), (?, ...) tail` for `rows` rows of `width` values each."""
    one = "(" + ", ".join(placeholder for _ in range(width)) + ")"
    return f"{head} VALUES {', '.join(one for _ in range(rows))}{tail}"


def _from_db(values):
    return to_json(dict(zip(ROW_KEYS, values, strict=True)))


class Storage:
    """Common code; subclasses give connect(), the DDL and the insert of one batch."""

    placeholder = "?"
    group_window_s = GROUP_WINDOW_S
    writers = 1  # SQLite has one writer at a time anyway

    def __init__(self):
        self._local = threading.local()
        self._conns = []
        self._lock = threading.Lock()
        self._queue = queue.SimpleQueue()
        self._closed = False
        # device -> [seen_ms, interval, newest row] not yet persisted: changed since the
        # last period (pending), or due now and saved DEVICE_FLUSH_CHUNK per commit (due)
        self._dev_pending = {}
        self._dev_due = {}
        self._dev_known = set()
        self._dev_next_flush = 0.0
        self._dev_lock = threading.Lock()
        conn = self.connect()
        self._setup(conn)
        self._writer_conns = [conn] + [self.connect() for _ in range(self.writers - 1)]
        for c in self._writer_conns:
            self._prepare_writer(c)
        self._writers = [
            threading.Thread(target=self._write_loop, args=(c,), name=f"ctmeter-writer-{i}",
                             daemon=True)
            for i, c in enumerate(self._writer_conns)
        ]
        for t in self._writers:
            t.start()

    # -- dialect hooks -------------------------------------------------------------
    def connect(self):
        raise NotImplementedError

    def _setup(self, conn):
        raise NotImplementedError

    def _insert_batch(self, conn, rows):
        raise NotImplementedError

    def _prepare_writer(self, conn):
        """Set up a writer connection before its thread starts."""

    def sql(self, text):
        return text if self.placeholder == "?" else text.replace("?", self.placeholder)

    # -- writes --------------------------------------------------------------------
    def submit(self, rows):
        """Queue rows for the writer; the future gives one bool per row (True = stored)."""
        fut = concurrent.futures.Future()

        def done(flags, exc):
            fut.set_exception(exc) if exc else fut.set_result(flags)

        self.submit_callback(rows, done)
        return fut

    def submit_callback(self, rows, done):
        """Queue rows; the writer thread calls done(flags, None) or done(None, exc) after
        the commit. Cheaper than a Future when the caller batches many requests."""
        if self._closed:
            done(None, StorageError("storage is closed"))
            return
        self._queue.put((rows, done))

    def insert(self, rows, timeout=30):
        return self.submit(rows).result(timeout)

    def _write_loop(self, conn):
        while True:
            item = self._queue.get()
            if item is None:
                break
            batch = [item]
            count = len(item[0])
            stop = False
            if self.group_window_s and self._queue.empty():
                time.sleep(self.group_window_s)  # let a few more requests join this commit
            while count < MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
                count += len(nxt[0])
            self._write(conn, batch)
            if stop:
                break

    def _write(self, conn, batch):
        try:
            flags = self._commit(conn, [r for rows, _ in batch for r in rows])
        except Exception as exc:  # one bad request must not fail the others: retry one by one
            self._rollback(conn)
            if len(batch) == 1:
                _call(batch[0][1], None, StorageError(str(exc)))
                return
            for item in batch:
                self._write(conn, [item])
            return
        i = 0
        for rows, done in batch:
            _call(done, flags[i:i + len(rows)], None)
            i += len(rows)

    def _commit(self, conn, rows):
        flags = self._insert_batch(conn, rows)
        with self._dev_lock:
            due, _ = self._note_devices(rows)
        if due:
            self._flush_devices(conn, limit=DEVICE_FLUSH_CHUNK, commit=False)
        conn.commit()
        return flags

    def _note_devices(self, rows):
        """Note the rows' devices for the devices table: (some are due for saving, a new
        device is among them).
        A new device is due at once; the others' changes become due together every
        DEVICE_PERSIST_S. Due is a fixed set: saving it ends even while those devices keep
        posting (their newer readings update their due entry, or wait for the next period),
        so 1,000 meters at 5 readings/s cost 20 chunks per period, not a flush that never
        catches up."""
        pending, due, known = self._dev_pending, self._dev_due, self._dev_known
        new = False
        for row in rows:
            dev = row["device_id"]
            old = due.get(dev)
            if old is None:
                old = pending.get(dev)
            if old is None:
                entry = [row["received_ms"], row["interval"], row]
                if dev in known:
                    pending[dev] = entry
                else:
                    due[dev] = entry
                    new = True
            else:
                old[0] = max(old[0], row["received_ms"])
                old[1] = row["interval"] or old[1]
                if row["ts_ms"] >= old[2]["ts_ms"]:
                    old[2] = row
        now = time.monotonic()
        if pending and now >= self._dev_next_flush:
            due.update(pending)  # a device is in at most one of the two
            pending.clear()
            self._dev_next_flush = now + DEVICE_PERSIST_S
        return bool(due), new

    def _flush_devices(self, conn, limit=None, commit=True):
        """Persist the devices table (last seen, newest reading) for a new device at once,
        otherwise every DEVICE_PERSIST_S: 1,000 meters do not cost an upsert per reading,
        and the running collector keeps the live state in memory anyway. At most `limit`
        devices per commit, so saving 1,000 of them never stalls the readings' commits."""
        with self._dev_lock:
            due = self._dev_due
            if limit is None:  # everything (closing)
                due.update(self._dev_pending)
                self._dev_pending.clear()
            items = list(itertools.islice(due.items(), limit))
            for dev, _ in items:
                del due[dev]
                self._dev_known.add(dev)
        params = [(dev, seen, interval, row["ts_ms"], json.dumps(to_json(row)))
                  for dev, (seen, interval, row) in items]
        cur = conn.cursor()
        for start in range(0, len(params), 1000):  # one statement, not one per device
            part = params[start:start + 1000]      # (distinct keys: a multi-row upsert is fine)
            cur.execute(multi_row_sql(_UPSERT_DEVICE_HEAD, 5, len(part), _UPSERT_DEVICE_TAIL,
                                      self.placeholder), [v for p in part for v in p])
        if commit:
            conn.commit()

    def _rollback(self, conn):
        try:
            conn.rollback()
        except Exception:  # noqa: BLE001  (the connection may already be gone)
            pass

    # -- reads ---------------------------------------------------------------------
    def _conn(self):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self.connect()
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def query(self, text, params=()):
        conn = self._conn()
        cur = conn.cursor()
        try:
            cur.execute(self.sql(text), params)
            rows = cur.fetchall() if cur.description else []
            conn.commit()
            return rows
        except Exception:
            self._rollback(conn)
            raise

    def execute(self, text, params=()):
        """A write outside the readings path (alerts); returns the cursor's rowcount."""
        conn = self._conn()
        cur = conn.cursor()
        try:
            cur.execute(self.sql(text), params)
            n = cur.rowcount
            conn.commit()
            return n
        except Exception:
            self._rollback(conn)
            raise

    def history(self, device_id=None, start_ms=None, end_ms=None, limit=50):
        """Readings in [start, end), newest `limit` of them, returned oldest first."""
        where, params = self._where(device_id, start_ms, end_ms)
        text = f"SELECT {', '.join(DB_COLS)} FROM readings{where} ORDER BY ts_ms DESC, seq DESC"
        if limit is not None:
            text += " LIMIT ?"
            params.append(int(limit))
        rows = self.query(text, params)
        return [_from_db(r) for r in reversed(rows)]

    @staticmethod
    def _where(device_id, start_ms, end_ms):
        clauses, params = [], []
        if device_id:
            clauses.append("device_id = ?")
            params.append(device_id)
        if start_ms is not None:
            clauses.append("ts_ms >= ?")
            params.append(int(start_ms))
        if end_ms is not None:
            clauses.append("ts_ms < ?")
            params.append(int(end_ms))
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params

    def count(self, device_id=None):
        where, params = self._where(device_id, None, None)
        return self.query(f"SELECT COUNT(*) FROM readings{where}", params)[0][0]

    def energy_rows(self, start_ms, end_ms, device_id=None):
        """(device_id, ts_ms, energy_mwh, prev_energy_mwh, power_w, gap_ms, interval_s) rows."""
        dev = "AND device_id = ?" if device_id else ""
        params = [int(start_ms) - ENERGY_LOOKBACK_MS, int(end_ms)]
        if device_id:
            params.append(device_id)
        params.append(int(start_ms))
        return self.query(_ENERGY.format(dev=dev), params)

    def devices(self):
        rows = self.query(
            "SELECT device_id, last_seen_ms, interval_s, last_json FROM devices ORDER BY device_id"
        )
        return [
            {"deviceId": d, "last_seen_ms": s, "interval": i, "last": json.loads(j)}
            for d, s, i, j in rows
        ]

    # -- alerts --------------------------------------------------------------------
    def add_alert(self, device_id, kind, message, value, created_ms):
        raise NotImplementedError

    def alerts(self, device_id=None, active=None, unread=None, limit=200):
        clauses, params = [], []
        if device_id:
            clauses.append("device_id = ?")
            params.append(device_id)
        if active is not None:
            clauses.append("resolved_ms IS NULL" if active else "resolved_ms IS NOT NULL")
        if unread is not None:
            clauses.append("is_read = ?")
            params.append(0 if unread else 1)
        where = " WHERE " + " AND ".join(clauses) if clauses else ""
        params.append(int(limit))
        rows = self.query(
            "SELECT id, device_id, kind, message, value, created_ms, is_read, resolved_ms"
            f" FROM alerts{where} ORDER BY id DESC LIMIT ?", params)
        return [
            {"id": i, "deviceId": d, "kind": k, "message": m, "value": v, "created": c / 1000,
             "read": bool(r), "resolved": None if rs is None else rs / 1000}
            for i, d, k, m, v, c, r, rs in rows
        ]

    def update_alert(self, alert_id, read=None, resolved_ms=None):
        """Mark an alert read and/or resolved; False if there is no such alert."""
        sets, params = [], []
        if read is not None:
            sets.append("is_read = ?")
            params.append(1 if read else 0)
        if resolved_ms is not None:
            sets.append("resolved_ms = COALESCE(resolved_ms, ?)")
            params.append(int(resolved_ms))
        if not sets:
            return True
        params.append(int(alert_id))
        return self.execute(f"UPDATE alerts SET {', '.join(sets)} WHERE id = ?", params) > 0

    # -- lifetime ------------------------------------------------------------------
    def close(self):
        if self._closed:
            return
        self._closed = True
        for _ in self._writers:
            self._queue.put(None)
        for t in self._writers:
            t.join(30)
        try:
            self._flush_devices(self._writer_conns[0])
        except Exception:  # noqa: BLE001  (closing: the readings themselves are committed)
            logging.getLogger("ctmeter.serve").exception("saving device states failed")
        with self._lock:
            conns, self._conns = self._conns + self._writer_conns, []
        for conn in conns:
            try:
                conn.close()
            except Exception:  # noqa: BLE001  (closing from another thread may complain)
                pass


class SQLiteStorage(Storage):
    kind = "sqlite"

    def __init__(self, path):
        self.path = path
        self._stop_checkpoints = threading.Event()
        super().__init__()
        self._checkpointer = threading.Thread(target=self._checkpoint_loop,
                                              name="ctmeter-checkpoint", daemon=True)
        self._checkpointer.start()

    def connect(self):
        conn = sqlite3.connect(self.path, timeout=10, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=10000")
        # No connection checkpoints on commit (SQLite's default once the WAL holds 1,000
        # pages): that commit would copy the WAL into the database and fsync both while
        # every reading queued behind it waits (20-70 ms spikes in the bench). The
        # checkpointer thread does it instead, beside the writer: WAL mode lets a
        # checkpoint run while the writer appends.
        conn.execute("PRAGMA wal_autocheckpoint=0")
        return conn

    def _checkpoint_loop(self):
        conn = self.connect()
        try:
            while not self._stop_checkpoints.wait(CHECKPOINT_S):
                try:
                    _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    if frames > WAL_LIMIT_FRAMES:  # readers kept it from restarting: force
                        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                except sqlite3.Error as exc:  # busy, or the disk: try again next time
                    log.warning("WAL checkpoint failed: %s", exc)
        finally:
            conn.close()

    def close(self):
        self._stop_checkpoints.set()
        self._checkpointer.join(30)
        super().close()

    def _setup(self, conn):
        conn.execute(_READINGS_DDL)
        conn.execute(_DEVICES_DDL)
        conn.execute(_ALERTS_DDL.format(pk="INTEGER PRIMARY KEY AUTOINCREMENT"))
        conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS readings_dev_seq ON readings"
                     " (device_id, seq)")
        conn.execute("CREATE INDEX IF NOT EXISTS readings_dev_ts ON readings (device_id, ts_ms)")
        conn.execute("CREATE INDEX IF NOT EXISTS readings_ts ON readings (ts_ms)")
        conn.commit()

    def _insert_batch(self, conn, rows):
        # Fast path: the batch as multi-row INSERTs. Python's sqlite3 lets go of the GIL for
        # every sqlite3_step, and an executemany of n rows is n steps, each waiting for the
        # busy event loop to hand the GIL back (up to the 5 ms switch interval): one
        # statement per 512 rows keeps the writer from crawling while the loop is busy.
        # If every row was new (the usual case) we are done; otherwise undo it and insert
        # row by row to learn which ones were duplicates.
        conn.execute("SAVEPOINT batch")
        before = conn.total_changes
        for start in range(0, len(rows), ROWS_PER_STATEMENT):
            part = rows[start:start + ROWS_PER_STATEMENT]
            conn.execute(multi_row_sql(_INSERT_OR_IGNORE, len(DB_COLS), len(part)),
                         [v for r in part for v in _db_row(r)])
        if conn.total_changes - before == len(rows):
            conn.execute("RELEASE batch")
            return [True] * len(rows)
        conn.execute("ROLLBACK TO batch")
        conn.execute("RELEASE batch")
        text = _INSERT.replace("INSERT INTO", "INSERT OR IGNORE INTO")
        cur = conn.cursor()
        flags = []
        for row in rows:
            cur.execute(text, _db_row(row))
            flags.append(cur.rowcount == 1)
        return flags

    def add_alert(self, device_id, kind, message, value, created_ms):
        conn = self._conn()
        cur = conn.execute(
            "INSERT INTO alerts (device_id, kind, message, value, created_ms) VALUES (?,?,?,?,?)",
            (device_id, kind, message, value, int(created_ms)))
        conn.commit()
        return cur.lastrowid


class PostgresStorage(Storage):
    kind = "postgresql"
    placeholder = "%s"
    group_window_s = 0.0  # the commit's own WAL flush already gathers the next batch
    writers = 2  # one batch is written while the other waits for its WAL flush

    def __init__(self, url):
        import psycopg  # only needed for PostgreSQL

        self._psycopg = psycopg
        self.url = url
        self.hypertable = False
        self.timescaledb = None  # what _setup found: see _try_hypertable
        self._unnest_sql = (
            f"INSERT INTO readings ({', '.join(DB_COLS)}) SELECT * FROM unnest("
            + ", ".join(f"%s::{_PG_ARRAY[c]}[]" for c in DB_COLS)
            + ") ON CONFLICT DO NOTHING RETURNING device_id, seq")
        self._dev_wake = threading.Event()
        self._dev_stop = False
        super().__init__()
        self._dev_conn = self.connect()
        self._dev_conn.autocommit = True
        self._dev_thread = threading.Thread(target=self._device_saver, name="ctmeter-devices",
                                            daemon=True)
        self._dev_thread.start()

    def connect(self):
        try:
            return self._psycopg.connect(self.url, connect_timeout=10)
        except self._psycopg.OperationalError as exc:
            raise StorageError(f"cannot connect to PostgreSQL: {exc}".split("\n")[0]) from exc

    def _setup(self, conn):
        cur = conn.cursor()
        cur.execute("SELECT pg_advisory_lock(7261)")  # two collectors starting at once
        try:
            cur.execute("SELECT to_regclass('readings') IS NULL")
            fresh = cur.fetchone()[0]
            cur.execute(_READINGS_DDL)
            cur.execute(_DEVICES_DDL)
            cur.execute(_ALERTS_DDL.format(pk="BIGSERIAL PRIMARY KEY"))
            self.hypertable = fresh and self._try_hypertable(conn)
            if not fresh:
                cur.execute("SELECT 1 FROM pg_indexes WHERE indexname = 'readings_dev_seq_ts'")
                self.hypertable = cur.fetchone() is not None
                self.timescaledb = "hypertable" if self.hypertable else "existing plain table"
            # A hypertable's unique index must contain its time column: a replayed reading
            # carries its original ts, so (device, seq, ts) still catches every duplicate.
            if self.hypertable:
                cur.execute("CREATE UNIQUE INDEX IF NOT EXISTS readings_dev_seq_ts ON readings"
                            " (device_id, seq, ts_ms)")
            else:
                cur.execute("CREATE UNIQUE INDEX IF NOT EXISTS readings_dev_seq ON readings"
                            " (device_id, seq)")
            cur.execute("CREATE INDEX IF NOT EXISTS readings_dev_ts ON readings"
                        " (device_id, ts_ms)")
            cur.execute("CREATE INDEX IF NOT EXISTS readings_ts ON readings (ts_ms)")
            conn.commit()
        finally:
            cur.execute("SELECT pg_advisory_unlock(7261)")
            conn.commit()

    def _try_hypertable(self, conn):
        """Make `readings` a TimescaleDB hypertable when the server has the extension. What
        happened is kept in self.timescaledb: "not available" (pg_available_extensions has
        no timescaledb: a plain table), "not usable: ..." (listed, but CREATE EXTENSION or
        create_hypertable failed, e.g. not in shared_preload_libraries) or "hypertable"."""
        cur = conn.cursor()
        if not self._timescaledb_available(cur):
            self.timescaledb = "not available"
            log.info("PostgreSQL has no timescaledb extension: readings is a plain table")
            return False
        conn.commit()
        try:
            self._create_extension(cur)
            cur.execute(HYPERTABLE_SQL)
            conn.commit()
        except self._psycopg.Error as exc:
            conn.rollback()
            self.timescaledb = f"not usable: {str(exc).splitlines()[0]}"
            log.warning("timescaledb is available but %s; readings is a plain table",
                        self.timescaledb)
            return False
        self.timescaledb = "hypertable"
        return True

    @staticmethod
    def _timescaledb_available(cur):
        cur.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")
        return cur.fetchone() is not None

    @staticmethod
    def _create_extension(cur):
        cur.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")

    def _prepare_writer(self, conn):
        # The batch INSERT is its own transaction: committed (WAL flushed, with the server's
        # default synchronous_commit) when execute() returns, one round trip instead of two
        # and half the driver's Python work per batch, which competes with the event loop
        # for the GIL.
        conn.autocommit = True

    def _commit(self, conn, rows):
        flags = self._insert_batch(conn, rows)
        with self._dev_lock:
            due, new = self._note_devices(rows)
        if new:  # new devices: a chunk is saved here, before the answers (as on SQLite)
            try:  # a transaction of its own: the readings above are committed either way
                self._flush_devices(conn, limit=DEVICE_FLUSH_CHUNK, commit=False)
            except self._psycopg.Error:
                log.exception("saving device states failed (saved again at their next reading)")
        elif due:
            self._dev_wake.set()
        return flags

    def _device_saver(self):
        """Saves each period's device states on a connection of its own, beside the
        writers: in the writers' cycle, the 20 chunks of a 1,000-device period stretched
        every reading commit behind them (50 ms latency spikes every 5 s in the bench)."""
        conn = self._dev_conn
        while True:
            self._dev_wake.wait()
            self._dev_wake.clear()
            if self._dev_stop:
                return
            try:  # in small statements with pauses: a gentle neighbour on a shared CPU
                while self._dev_due and not self._dev_stop:
                    self._flush_devices(conn, limit=DEVICE_FLUSH_CHUNK)
                    time.sleep(DEVICE_SAVER_PAUSE_S)
            except self._psycopg.Error:
                log.exception("saving device states failed (saved again at their next reading)")

    def close(self):
        if not self._dev_stop:
            self._dev_stop = True  # the saver stops; Storage.close saves what is left
            self._dev_wake.set()
            self._dev_thread.join(30)
            self._dev_conn.close()
        super().close()

    def _insert_batch(self, conn, rows):
        # One statement for the whole batch: the columns travel as arrays and unnest() turns
        # them back into rows. RETURNING names the rows that went in; a row whose (device,
        # seq) is not among them, or was already claimed earlier in this batch, is a duplicate.
        # Each column goes as one array literal built here: psycopg's list dumper is Python
        # code per element and was a third of the writer's time in the bench.
        columns = [_array_literal(c, text) for c, text in
                   zip(zip(*(_db_row(r) for r in rows), strict=True), _PG_TEXT, strict=True)]
        cur = conn.cursor()
        cur.execute(self._unnest_sql, columns)
        inserted = {}
        for dev, seq in cur.fetchall():
            inserted[(dev, seq)] = inserted.get((dev, seq), 0) + 1
        flags = []
        for row in rows:
            key = (row["device_id"], row["seq"])
            if row["seq"] is None:
                flags.append(True)  # no seq (the seeds' body): never a duplicate
            elif inserted.get(key):
                inserted[key] -= 1
                flags.append(True)
            else:
                flags.append(False)
        return flags

    def add_alert(self, device_id, kind, message, value, created_ms):
        conn = self._conn()
        cur = conn.cursor()
        try:
            cur.execute(
                "INSERT INTO alerts (device_id, kind, message, value, created_ms)"
                " VALUES (%s,%s,%s,%s,%s) RETURNING id",
                (device_id, kind, message, value, int(created_ms)))
            alert_id = cur.fetchone()[0]
            conn.commit()
            return alert_id
        except Exception:
            self._rollback(conn)
            raise


def open_storage(url):
    """sqlite:///relative.db, sqlite:////absolute.db, a bare path, or postgresql://..."""
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStorage(url)
    if url.startswith("sqlite://"):
        path = unquote(urlparse(url).path)
        path = path[1:] if path.startswith("/") else path
        if not path:
            raise StorageError("sqlite URL needs a file path: sqlite:///ctmeter.db")
        return SQLiteStorage(path)
    if "://" in url:
        raise StorageError(f"unsupported database URL scheme: {url.split('://')[0]}")
    return SQLiteStorage(url)
