# SPDX-License-Identifier: MIT
"""1,000 malformed, unauthenticated and oversized requests: all 4xx, nothing stored, and the
collector keeps serving (on SQLite and PostgreSQL)."""

import json
import socket

from tests.collector.conftest import ADMIN, TOKENS, Client

GOOD = json.dumps({"deviceId": "m1", "seq": 1, "current": 1.0, "voltage": 230.0}).encode()


def raw(port, data, read_first=False):
    """Send raw bytes, return the status code of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            if read_first and b"\r\n\r\n" in b"".join(chunks):
                break
    head = b"".join(chunks).split(b"\r\n", 1)[0]
    return int(head.split()[1])


def post(path, body, token=None, extra=b""):
    auth = f"Authorization: Bearer {token}\r\n".encode() if token else b""
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n").encode() + auth + extra + b"\r\n" + body


CASES = [
    ("no token", lambda i: post("/api/measurements", GOOD)),
    ("wrong token", lambda i: post("/api/data", GOOD, f"guess-{i}")),
    ("admin token in cookie only", lambda i: post("/api/measurements", GOOD, None,
                                                  b"Cookie: ctmeter_session=forged\r\n")),
    ("other device", lambda i: post("/api/energy/add", GOOD, TOKENS["m2"])),
    ("not json", lambda i: post("/api/measurements", b"{deviceId: m1", TOKENS["m1"])),
    ("not utf-8", lambda i: post("/api/measurements", bytes([0xff, 0xfe, i % 256]),
                                 TOKENS["m1"])),
    # arrays are accepted all-or-nothing (multi-channel meters): one bad reading refuses all
    ("array with a bad reading", lambda i: post(
        "/api/measurements", b"[" + GOOD + b',{"deviceId":"m1","current":"x","voltage":1}]',
        TOKENS["m1"])),
    ("empty array", lambda i: post("/api/measurements", b"[]", TOKENS["m1"])),
    ("nested", lambda i: post("/api/measurements", b"[" * 2000 + b"]" * 2000, TOKENS["m1"])),
    ("wrong type", lambda i: post("/api/measurements", json.dumps(
        {"deviceId": "m1", "current": "1", "voltage": 230}).encode(), TOKENS["m1"])),
    ("out of range", lambda i: post("/api/measurements", json.dumps(
        {"deviceId": "m1", "current": 1, "voltage": 230, "powerFactor": 2}).encode(),
        TOKENS["m1"])),
    ("nan", lambda i: post("/api/measurements",
                           b'{"deviceId":"m1","current":NaN,"voltage":230}', TOKENS["m1"])),
    ("empty", lambda i: post("/api/measurements", b"", TOKENS["m1"])),
    ("chunked", lambda i: b"POST /api/measurements HTTP/1.1\r\nHost: x\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    ("bad length", lambda i: b"POST /api/measurements HTTP/1.1\r\nContent-Length: -3\r\n\r\n"),
    ("garbage line", lambda i: b"HELLO\r\n\r\n"),
    ("bad header", lambda i: b"POST /api/measurements HTTP/1.1\r\nno colon here\r\n\r\n"),
    ("huge headers", lambda i: b"GET / HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n"),
    ("query as device", lambda i: b"GET /api/measurements HTTP/1.1\r\nConnection: close\r\n"
                                  b"Authorization: Bearer " + TOKENS["m1"].encode() + b"\r\n\r\n"),
    ("unknown path", lambda i: post("/api/measurement", GOOD, TOKENS["m1"])),
]
OVERSIZED = ("oversized", lambda i: post("/api/measurements", b" " * 2000, TOKENS["m1"])
             .replace(b"Content-Length: 2000", b"Content-Length: 1000000"))


def test_thousand_bad_requests_all_4xx_nothing_stored(collector):
    col = collector()
    cases = CASES + [OVERSIZED]
    seen = {}
    for i in range(1000):
        name, make = cases[i % len(cases)]
        status = raw(col.port, make(i), read_first=name in ("oversized", "huge headers"))
        assert 400 <= status < 500, (name, status)
        seen.setdefault(name, set()).add(status)
    assert seen["oversized"] == {413} and seen["no token"] == {401}
    assert seen["other device"] == {403} and seen["huge headers"] == {431}
    assert seen["chunked"] == {411} and seen["wrong type"] == {422}
    c = Client(col.url)
    assert c.get("/api/measurements")[1]["measurements"] == []
    assert col.store.count() == 0
    # ... and it still serves
    assert c.post("/api/measurements", json.loads(GOOD), TOKENS["m1"])[0] == 201
    assert c.get("/api/measurements", token=ADMIN)[1]["measurements"][0]["deviceId"] == "m1"
