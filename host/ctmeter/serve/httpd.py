# SPDX-License-Identifier: MIT
"""A small asyncio HTTP/1.1 server: keep-alive, Content-Length bodies, size limits, streaming.

    server = await start_http(handler, host, port, max_body=4096)
    async def handler(req: Request) -> Response | Stream

Only what the collector needs: no chunked request bodies (411), headers up to 16 KiB (431),
bodies up to max_body (413, and the connection is closed without reading the body), idle
connections closed after a timeout. The standard library's http.server costs a thread per
connection and parses headers with the email package; this keeps 1,000 meters on one thread.
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

    def arg(self, name, default=None):
        values = self.query.get(name)
        return values[-1] if values else default


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: list = field(default_factory=list)


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


def _head(status, content_type, length, headers, keep_alive):
    reason = HTTPStatus(status).phrase
    lines = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {content_type}"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
    lines.extend(f"{k}: {v}" for k, v in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def start_http(handler, host, port, max_body=4096):
    async def client(reader, writer):
        await _serve_connection(handler, reader, writer, max_body)

    return await asyncio.start_server(client, host, port, limit=MAX_HEAD, backlog=2048)


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
    url = urlsplit(target)
    path = unquote(url.path)
    return method, path, parse_qs(url.query, keep_blank_values=True), headers, version


async def _serve_connection(handler, reader, writer, max_body):
    loop = asyncio.get_running_loop()
    transport = writer.transport
    peer = writer.get_extra_info("peername") or ()
    try:
        while True:
            timer = loop.call_later(IDLE_S, transport.abort)
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                writer.write(_simple(431, "request header too large"))
                break
            finally:
                timer.cancel()
            try:
                method, path, query, headers, version = _parse_head(head[:-4])
            except (ValueError, UnicodeError):
                writer.write(_simple(400, "malformed request"))
                break
            if "transfer-encoding" in headers:
                writer.write(_simple(411, "send a Content-Length body"))
                break
            length = headers.get("content-length", "0")
            if not length.isdigit() or len(length) > 12:
                writer.write(_simple(400, "bad Content-Length"))
                break
            length = int(length)
            if length > max_body:
                writer.write(_simple(413, f"body larger than {max_body} bytes"))
                break
            body = b""
            if length:
                timer = loop.call_later(BODY_S, transport.abort)
                try:
                    body = await reader.readexactly(length)
                finally:
                    timer.cancel()
            conn = headers.get("connection", "").lower()
            keep = conn != "close" and (version == "HTTP/1.1" or conn == "keep-alive")
            req = Request(method, path, query, headers, body, peer)
            try:
                resp = await handler(req)
            except Exception:  # a bug in one handler must not take the server down
                log.exception("error handling %s %s", method, path)
                resp = error(500, "internal error")
            if isinstance(resp, Stream):
                await _stream(writer, resp)
                break
            writer.write(_head(resp.status, resp.content_type, len(resp.body), resp.headers,
                               keep) + resp.body)
            await writer.drain()
            if not keep:
                break
    except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
        pass
    finally:
        try:
            writer.close()
        except RuntimeError:  # loop closing
            pass


async def _stream(writer, resp):
    writer.write(_head(200, resp.content_type, None,
                       [("Cache-Control", "no-cache")] + resp.headers, False))
    await writer.drain()
    try:
        async for chunk in resp.source:
            writer.write(chunk)
            await writer.drain()
    finally:
        aclose = getattr(resp.source, "aclose", None)
        if aclose:
            await aclose()


def _simple(status, message):
    body = json.dumps({"error": message}).encode()
    return _head(status, "application/json", len(body), [], False) + body
