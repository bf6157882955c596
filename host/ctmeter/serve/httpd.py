# SPDX-License-Identifier: MIT
"""A small HTTP/1.1 server on an asyncio.Protocol: keep-alive, Content-Length bodies, limits.

    server = await start_http(handler, host, port, max_body=4096)
    def handler(req: Request) -> Response | DEFERRED | coroutine -> Response | Stream

Only what the collector needs: no chunked request bodies (411), headers up to 16 KiB (431),
bodies up to max_body (413, and the connection is closed without reading the body), idle
connections closed after a timeout. The standard library's http.server costs a thread per
connection and parses headers with the email package; this keeps 1,000 meters on one thread,
and an ingest request costs no task and no future: its handler returns DEFERRED and calls
`req.reply(response)` itself, once, on the loop thread, when the reading's batch has committed.
"""

import asyncio
import json
import logging
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger("ctmeter.serve")
MAX_HEAD = 16384
IDLE_S = 75.0
BODY_S = 10.0


@dataclass
class Request:
    method: str
    path: str
    query: dict
    headers: dict
    body: bytes
    peer: tuple = ()
    reply: object = None  # reply(Response): for handlers that answer later (DEFERRED)

    def arg(self, name, default=None):
        values = self.query.get(name)
        return values[-1] if values else default


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: list = field(default_factory=list)


DEFERRED = object()  # handler's promise to call req.reply(response) later


def json_response(status, obj, headers=None):
    return Response(status, json.dumps(obj, separators=(",", ":")).encode(),
                    "application/json", headers or [])


def error(status, message):
    return json_response(status, {"error": message})


class Stream:
    """A streamed response (server-sent events): `source` is an async iterator of bytes."""

    def __init__(self, source, content_type="text/event-stream", headers=None):
        self.source = source
        self.content_type = content_type
        self.headers = headers or []


_HEADS = {}  # (status, content type, length, keep-alive) -> head bytes, for plain answers


def _head(status, content_type, length, headers, keep_alive):
    if not headers:
        key = (status, content_type, length, keep_alive)
        head = _HEADS.get(key)
        if head is None:
            head = _build_head(status, content_type, length, (), keep_alive)
            if len(_HEADS) < 512:  # the ingest answers repeat; query answers vary in length
                _HEADS[key] = head
        return head
    return _build_head(status, content_type, length, headers, keep_alive)


def _build_head(status, content_type, length, headers, keep_alive):
    reason = HTTPStatus(status).phrase
    lines = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {content_type}"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
    lines.extend(f"{k}: {v}" for k, v in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class HttpServer:
    """The listening server, its open connections and the idle sweeper (uvloop's Server
    takes no extra attributes, so they live here)."""

    def __init__(self, server, conns, sweeper):
        self.server, self.conns, self.sweeper = server, conns, sweeper

    @property
    def sockets(self):
        return self.server.sockets


async def start_http(handler, host, port, max_body=4096):
    loop = asyncio.get_running_loop()
    conns = set()
    server = await loop.create_server(lambda: _Connection(handler, max_body, conns),
                                      host, port, backlog=2048)
    return HttpServer(server, conns, asyncio.ensure_future(_sweep(conns)))


async def stop_http(http):
    """Stop listening, drop every connection and wait for the handlers to finish."""
    http.sweeper.cancel()
    http.server.close()
    tasks = []
    for conn in list(http.conns):
        conn.transport.abort()
        if conn.task is not None:
            conn.task.cancel()
            tasks.append(conn.task)
    await asyncio.gather(http.sweeper, *tasks, return_exceptions=True)


async def _sweep(conns):
    """Close connections that sit idle or send a request too slowly (one timer for all,
    instead of a timer per request)."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(1.0)
        now = loop.time()
        for conn in list(conns):
            if conn.deadline is not None and conn.deadline < now:
                conn.transport.abort()


def _parse_head(head):
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ValueError("bad request line")
    method, target, version = parts
    headers = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise ValueError("bad header line")
        headers[name.lower()] = value.strip()
    if "?" not in target and "%" not in target:
        return method, target, {}, headers, version
    url = urlsplit(target)
    path = unquote(url.path)
    return method, path, parse_qs(url.query, keep_blank_values=True), headers, version


class _Connection(asyncio.Protocol):
    """One client connection: parses requests from the buffer and answers them in order
    (a pipelined request waits until the one before it has been answered)."""

    def __init__(self, handler, max_body, conns):
        self.handler = handler
        self.max_body = max_body
        self.conns = conns
        self.buf = bytearray()
        self.busy = False
        self.closed = False
        self.deadline = None
        self.transport = None
        self.task = None
        self.keep = True
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport):
        self.transport = transport
        self.peer = transport.get_extra_info("peername") or ()
        self.conns.add(self)
        self.deadline = self.loop.time() + IDLE_S

    def connection_lost(self, exc):
        self.closed = True
        self.conns.discard(self)

    def data_received(self, data):
        self.buf += data
        if not self.busy:
            self._next()
        elif len(self.buf) > MAX_HEAD + self.max_body:
            self.transport.pause_reading()  # a client pipelining far ahead: let it wait

    def _fail(self, status, message):
        self.transport.write(_simple(status, message))
        self.transport.close()
        self.closed = True
        self.buf.clear()

    def _next(self):
        """Start the next complete request in the buffer, if there is one."""
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD:
                self._fail(431, "request header too large")
            elif buf:
                self.deadline = self.loop.time() + BODY_S
            else:
                self.deadline = self.loop.time() + IDLE_S
            return
        if end > MAX_HEAD:
            return self._fail(431, "request header too large")
        try:
            method, path, query, headers, version = _parse_head(bytes(buf[:end]))
        except (ValueError, UnicodeError):
            return self._fail(400, "malformed request")
        if "transfer-encoding" in headers:
            return self._fail(411, "send a Content-Length body")
        length = headers.get("content-length", "0")
        if not length.isdigit() or len(length) > 12:
            return self._fail(400, "bad Content-Length")
        length = int(length)
        if length > self.max_body:
            return self._fail(413, f"body larger than {self.max_body} bytes")
        start = end + 4
        if len(buf) < start + length:
            if headers.get("expect", "").lower() == "100-continue" and len(buf) == start:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # curl waits for it
            self.deadline = self.loop.time() + BODY_S
            return
        body = bytes(buf[start:start + length])
        del buf[:start + length]
        self.deadline = None  # no timeout while the handler works
        conn = headers.get("connection", "").lower()
        keep = conn != "close" and (version == "HTTP/1.1" or conn == "keep-alive")
        self.busy = True
        self.keep = keep
        req = Request(method, path, query, headers, body, self.peer, self._reply)
        try:
            resp = self.handler(req)
        except Exception:  # a bug in one handler must not take the server down
            log.exception("error handling %s %s", method, path)
            resp = error(500, "internal error")
        if resp is DEFERRED:
            return
        if isinstance(resp, Response):
            self._send(resp, keep)
        else:  # a coroutine
            self.task = self.loop.create_task(self._answer(resp, req, keep))

    async def _answer(self, coro, req, keep):
        try:
            resp = await coro
        except Exception:  # a bug in one handler must not take the server down
            log.exception("error handling %s %s", req.method, req.path)
            resp = error(500, "internal error")
        if isinstance(resp, Stream):
            if not self.closed:
                await self._stream(resp)
            return
        self._send(resp, keep)

    def _reply(self, resp):
        """The answer to the request in flight (one at a time per connection)."""
        self._send(resp, self.keep)

    def _send(self, resp, keep):
        if self.closed:
            return
        self.task = None
        self.transport.write(_head(resp.status, resp.content_type, len(resp.body), resp.headers,
                                   keep) + resp.body)
        if not keep:
            self.transport.close()
            self.closed = True
            return
        self.busy = False
        self.transport.resume_reading()
        if self.buf:
            self._next()
        else:
            self.deadline = self.loop.time() + IDLE_S

    async def _stream(self, resp):
        t = self.transport
        t.write(_head(200, resp.content_type, None,
                      [("Cache-Control", "no-cache")] + resp.headers, False))
        try:
            async for chunk in resp.source:
                if self.closed:
                    break
                if t.get_write_buffer_size() > 1 << 20:  # the reader stopped reading
                    break
                t.write(chunk)
        finally:
            aclose = getattr(resp.source, "aclose", None)
            if aclose:
                await aclose()
            t.close()
            self.closed = True


def _simple(status, message):
    body = json.dumps({"error": message}).encode()
    return _head(status, "application/json", len(body), [], False) + body
