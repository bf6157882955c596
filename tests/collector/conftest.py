# SPDX-License-Identifier: MIT
"""Collector fixtures: a private PostgreSQL and mosquitto (started once per session on free
loopback ports, from tests/services/install.sh's packages), and storage/collector factories
parametrized over SQLite and PostgreSQL so the same tests run on both."""

import itertools
import json
import urllib.error
import urllib.request

import pytest
from ctmeter.serve import Collector, ServeConfig
from ctmeter.serve.services import TempMosquitto, TempPostgres
from ctmeter.serve.storage import open_storage

ADMIN = "admin-token-0123"
TOKENS = {"m1": "device-token-m1", "m2": "device-token-m2", "p1": "device-token-p1"}
_counter = itertools.count()


@pytest.fixture(scope="session")
def postgres():
    with TempPostgres() as pg:
        yield pg


@pytest.fixture(scope="session")
def mosquitto():
    with TempMosquitto() as mq:
        yield mq


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A fresh, empty database URL of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/ctmeter.db"
    pg = request.getfixturevalue("postgres")
    return pg.create_db(f"t{next(_counter)}")


@pytest.fixture
def store(db_url):
    s = open_storage(db_url)
    yield s
    s.close()


def make_config(db_url, **kw):
    base = dict(admin_token=ADMIN, device_tokens=dict(TOKENS), db=db_url, http="127.0.0.1:0",
                monitor_period_s=0.1)
    base.update(kw)
    return ServeConfig(**base)


@pytest.fixture
def collector(db_url):
    """Factory: collector(**config overrides) -> started Collector (stopped after the test)."""
    started = []

    def make(**kw):
        col = Collector(make_config(db_url, **kw)).start()
        started.append(col)
        return col

    yield make
    for col in started:
        col.stop()


class Client:
    """Tiny HTTP client for the tests: returns (status, decoded body)."""

    def __init__(self, base):
        self.base = base

    def request(self, method, path, body=None, token=None, raw=None, headers=None):
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers=dict(headers or {}))
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                status, payload, ctype = resp.status, resp.read(), resp.headers["Content-Type"]
        except urllib.error.HTTPError as exc:
            status, payload, ctype = exc.code, exc.read(), exc.headers["Content-Type"]
        if ctype and ctype.startswith("application/json"):
            return status, json.loads(payload)
        return status, payload.decode()

    def post(self, path, body, token=None, **kw):
        return self.request("POST", path, body, token, **kw)

    def get(self, path, token=ADMIN, **kw):
        return self.request("GET", path, None, token, **kw)
