# SPDX-License-Identifier: MIT
"""The TimescaleDB path of the PostgreSQL storage, against the real PostgreSQL of the tests.

The timescaledb extension cannot be installed on the machines this suite runs on (it is not
in the distribution's PostgreSQL packages), so two things are checked instead:
  * without it, the decision to skip the hypertable comes from the server's own
    pg_available_extensions, and the schema works as a plain table;
  * the hypertable branch itself — the exact create_hypertable call the storage sends, the
    (device_id, seq, ts_ms) unique index it then needs, duplicates and a restart — runs
    against a stand-in create_hypertable with TimescaleDB's documented signature (same
    parameter names, types and defaults), which also enforces two of its rules: an integer
    time column takes an integer chunk interval, and every unique index must contain the
    time column. That proves the SQL binds and the schema fits; it does not prove chunking
    itself, which needs a server with the extension (the gap is noted in storage.py).
"""

import psycopg
import pytest
from ctmeter.serve.storage import HYPERTABLE_SQL, PostgresStorage

from tests.collector.test_storage import NOON, reading

pytestmark = pytest.mark.services

# TimescaleDB 2.x's create_hypertable (the form with a time column name), as a plpgsql
# stand-in: it checks what the real one would refuse, records the call and changes nothing.
STAND_IN = """
CREATE TABLE stand_in_calls (relation regclass, time_column name, chunk_interval text,
                             interval_type regtype, if_not_exists boolean);
CREATE FUNCTION create_hypertable(
    relation                REGCLASS,
    time_column_name        NAME,
    partitioning_column     NAME = NULL,
    number_partitions       INTEGER = NULL,
    associated_schema_name  NAME = NULL,
    associated_table_prefix NAME = NULL,
    chunk_time_interval     ANYELEMENT = NULL::bigint,
    create_default_indexes  BOOLEAN = TRUE,
    if_not_exists           BOOLEAN = FALSE,
    partitioning_func       REGPROC = NULL,
    migrate_data            BOOLEAN = FALSE,
    chunk_target_size       TEXT = NULL,
    chunk_sizing_func       REGPROC = NULL,
    time_partitioning_func  REGPROC = NULL
) RETURNS TABLE(hypertable_id INT, schema_name NAME, table_name NAME, created BOOL)
LANGUAGE plpgsql AS $$
DECLARE
    col_type regtype;
BEGIN
    SELECT atttypid::regtype INTO col_type FROM pg_attribute
        WHERE attrelid = relation AND attname = time_column_name AND NOT attisdropped;
    IF col_type IS NULL THEN
        RAISE EXCEPTION 'column "%" does not exist', time_column_name;
    END IF;
    IF col_type IN ('bigint'::regtype, 'integer'::regtype, 'smallint'::regtype) AND
       pg_typeof(chunk_time_interval) NOT IN
           ('bigint'::regtype, 'integer'::regtype, 'smallint'::regtype) THEN
        RAISE EXCEPTION 'integer time column needs an integer chunk_time_interval';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = relation AND i.indisunique
               AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = relation
                               AND a.attname = time_column_name
                               AND a.attnum = ANY (i.indkey))) THEN
        RAISE EXCEPTION 'cannot create a unique index without the column "%"',
            time_column_name;
    END IF;
    INSERT INTO stand_in_calls VALUES (relation, time_column_name, chunk_time_interval::text,
                                       pg_typeof(chunk_time_interval), if_not_exists);
    RETURN QUERY SELECT 1, 'public'::name, relation::text::name, TRUE;
END $$;
"""


class StandInTimescale(PostgresStorage):
    """The storage exactly as it is, on a server that 'has' TimescaleDB: the extension
    check answers yes and CREATE EXTENSION installs the stand-in instead."""

    @staticmethod
    def _timescaledb_available(cur):
        return True

    @staticmethod
    def _create_extension(cur):
        cur.execute(STAND_IN)


def _unique_indexes(url):
    with psycopg.connect(url) as conn:
        return {name: cols for name, cols in conn.execute(
            "SELECT i.relname, array_agg(a.attname ORDER BY a.attname)"
            " FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid"
            " JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = ANY (x.indkey)"
            " WHERE x.indrelid = 'readings'::regclass AND x.indisunique GROUP BY i.relname")}


def test_without_timescaledb_readings_is_a_plain_table(postgres):
    url = postgres.create_db("ts_plain")
    with psycopg.connect(url) as conn:
        listed = conn.execute("SELECT count(*) FROM pg_available_extensions"
                              " WHERE name = 'timescaledb'").fetchone()[0]
    if listed:
        pytest.fail("this PostgreSQL has timescaledb: test the real hypertable instead")
    store = PostgresStorage(url)
    try:
        assert store.timescaledb == "not available" and store.hypertable is False
        assert store.insert([reading(seq=1), reading(seq=1), reading(seq=2, ts=NOON + 1)]) \
            == [True, False, True]
    finally:
        store.close()
    with psycopg.connect(url) as conn:
        kind = conn.execute("SELECT relkind FROM pg_class WHERE relname = 'readings'")
        assert kind.fetchone()[0] == "r"  # an ordinary table
    assert _unique_indexes(url) == {"readings_dev_seq": ["device_id", "seq"]}


def test_hypertable_sql_binds_to_timescaledb_signature_and_schema_fits(postgres):
    url = postgres.create_db("ts_stand_in")
    store = StandInTimescale(url)
    try:
        assert store.timescaledb == "hypertable" and store.hypertable is True
        # duplicates are still caught with the time column in the unique index: a replayed
        # reading carries its original ts
        assert store.insert([reading(seq=1), reading(seq=2, ts=NOON + 10)]) == [True, True]
        assert store.insert([reading(seq=2, ts=NOON + 10), reading(seq=3, ts=NOON + 20),
                             reading(seq=3, ts=NOON + 20)]) == [False, True, False]
        assert store.count() == 3
    finally:
        store.close()
    with psycopg.connect(url) as conn:
        calls = conn.execute("SELECT relation::text, time_column, chunk_interval,"
                             " interval_type::text, if_not_exists FROM stand_in_calls").fetchall()
    assert calls == [("readings", "ts_ms", "86400000", "integer", True)]
    assert "create_hypertable('readings', 'ts_ms'" in HYPERTABLE_SQL
    # every unique index holds the time column, as TimescaleDB requires of a hypertable
    assert _unique_indexes(url) == {"readings_dev_seq_ts": ["device_id", "seq", "ts_ms"]}
    # a restart finds the hypertable schema again without calling create_hypertable twice
    again = PostgresStorage(url)
    try:
        assert again.hypertable is True and again.timescaledb == "hypertable"
        assert again.insert([reading(seq=3, ts=NOON + 20), reading(seq=4, ts=NOON + 30)]) \
            == [False, True]
    finally:
        again.close()


def test_listed_but_unloadable_timescaledb_falls_back_to_a_plain_table(postgres):
    """pg_available_extensions lists it but CREATE EXTENSION fails (the real failure when
    timescaledb is not in shared_preload_libraries): a logged fallback, not a crash."""

    class Unloadable(PostgresStorage):
        @staticmethod
        def _timescaledb_available(cur):
            return True

    url = postgres.create_db("ts_unloadable")
    store = Unloadable(url)  # the real CREATE EXTENSION timescaledb, which fails here
    try:
        assert store.hypertable is False and store.timescaledb.startswith("not usable: ")
        assert "timescaledb" in store.timescaledb
        assert store.insert([reading(seq=1), reading(seq=1)]) == [True, False]
    finally:
        store.close()
    assert _unique_indexes(url) == {"readings_dev_seq": ["device_id", "seq"]}
