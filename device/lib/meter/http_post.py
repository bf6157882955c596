# SPDX-License-Identifier: MIT
"""Minimal HTTP/1.1 POST over a socket, with a hard deadline and verified TLS.

    poster = HttpPoster("https://collector.lan/api/measurements", token, cadata=ca_der_or_pem,
                        timeout_ms=5000)
    status = poster.post(reading_json)          # -> int HTTP status (2xx = delivered)
    status = poster.post_batch([r1, r2, r3])    # one JSON array in one request
    post(url, body, token)                      # one-shot form

Network and TLS failures raise PostError whose `kind` is one of KINDS (refused, timeout,
dns, tls, protocol, network, config); a non-2xx answer is *returned*, not raised, so the caller
decides (keep the reading in the outbox and back off). The whole request, from DNS to the
status line, is bounded by `timeout_ms`: a server that accepts and never answers, or trickles
its answer, costs at most that long. Only the status line is read (at most _MAX_STATUS bytes);
the rest of the answer is discarded by closing the connection (we send Connection: close).

Why not micropython-lib `requests`: it does not verify certificates and has no overall
deadline. Here https uses meter.tlsca (tls.SSLContext, CERT_REQUIRED, the CA given as DER or
PEM bytes) and server_hostname for SNI and name checking.

The bearer token never appears in exception messages, reprs or logs.
"""

import errno
import socket

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x

try:
    from time import ticks_diff, ticks_ms
except ImportError:  # CPython: this module imports there (tests, tooling), it is not run there
    import time as _time

    def ticks_ms():
        return int(_time.monotonic() * 1000)

    def ticks_diff(a, b):
        return a - b


_MAX_STATUS = const(128)  # longest status line we accept
_MAX_DRAIN = const(1024)  # headers and body read after the status line, at most
_DRAIN_PIECE = const(128)  # read (and allocated) at once while draining, at most
_MIN_SLICE_MS = const(1)  # smallest socket timeout we set while the deadline runs out
_MBEDTLS_ERR_SSL_TIMEOUT = const(-0x6800)

REFUSED = const("refused")
TIMEOUT = const("timeout")
DNS = const("dns")
TLS = const("tls")
PROTOCOL = const("protocol")
NETWORK = const("network")
CONFIG = const("config")
KINDS = const((REFUSED, TIMEOUT, DNS, TLS, PROTOCOL, NETWORK, CONFIG))

_TIMEOUT_ERRNOS = (errno.ETIMEDOUT, errno.EAGAIN)


_HEAD = const("POST %s HTTP/1.1\r\nHost: %s\r\n%sContent-Type: application/json\r\n"
               "Content-Length: %d\r\nConnection: close\r\nUser-Agent: ctmeter\r\n\r\n")


class PostError(Exception):
    """A request that did not produce an HTTP status. `kind` is one of KINDS."""

    def __init__(self, kind, message):
        super().__init__(kind + ": " + message)
        self.kind = kind


def _errno(exc):
    if exc.args and isinstance(exc.args[0], int):
        return exc.args[0]
    return None


def _is_timeout(code):
    return code in _TIMEOUT_ERRNOS or code == _MBEDTLS_ERR_SSL_TIMEOUT


class _Deadline:
    def __init__(self, timeout_ms):
        self.start = ticks_ms()
        self.timeout_ms = timeout_ms

    def left_ms(self):
        return self.timeout_ms - ticks_diff(ticks_ms(), self.start)

    def arm(self, sock, what):
        """Set the socket timeout to what is left, or raise timeout if nothing is."""
        left = self.left_ms()
        if left <= 0:
            raise PostError(TIMEOUT, f"no answer within {self.timeout_ms} ms ({what})")
        sock.settimeout(max(left, _MIN_SLICE_MS) / 1000)


def _check_header_value(value, name):
    for b in value.encode():  # bytes: iterating a str interns its characters (jsontext)
        if b < 0x20 or b == 0x7F:
            # the value may be a secret: name the header, never echo the value
            raise PostError(CONFIG, name + " contains control characters")


class HttpPoster:
    """POSTs JSON to one URL. Keeps the parsed URL (as plain fields: meter.url is needed
    only here, and the meter drops it before the request) and the TLS context."""

    def __init__(self, url, token=None, cadata=None, timeout_ms=5000,
                 default_path="/api/measurements"):
        from meter import url as _url

        try:
            u = _url.parse(url, default_path)
        except _url.UrlError as exc:
            raise PostError(CONFIG, str(exc)) from None
        if u.scheme not in ("http", "https"):
            raise PostError(CONFIG, "HTTP publisher needs an http or https URL")
        self._scheme, self._host, self._port, self._path = u.scheme, u.host, u.port, u.path
        if token is not None:
            if not isinstance(token, str):
                raise PostError(CONFIG, "token must be a string")
            _check_header_value(token, "token")
        if not isinstance(timeout_ms, int) or timeout_ms <= 0:
            raise PostError(CONFIG, "timeout_ms must be a positive integer")
        self._token = token
        self.timeout_ms = timeout_ms
        self._ctx = None
        if u.tls:
            from meter import tlsca

            try:
                self._ctx = tlsca.context(cadata)
            except tlsca.CaError as exc:
                raise PostError(CONFIG, str(exc)) from None
        default = 443 if u.tls else 80
        host = ("[" + u.host + "]") if ":" in u.host else u.host
        self._host_header = host if u.port == default else f"{host}:{u.port}"

    def __repr__(self):
        return f"<HttpPoster {self.url}>"

    @property
    def url(self):
        """The URL without secrets (for status and logs)."""
        return f"{self._scheme}://{self._host_header}{self._path}"

    def post(self, body):
        """POST one JSON document (str or bytes). Returns the HTTP status code."""
        return self._request(body)  # written from the str itself: no encoded copy

    def post_batch(self, bodies):
        """POST several JSON readings as one JSON array. Returns the HTTP status code.

        The receiver must accept an array (all-or-nothing: 2xx = every reading delivered).
        """
        if not bodies:
            raise PostError(CONFIG, "empty batch")
        # one joined copy and one bracketed: each copy of a batch is a block in one piece
        return self._request("[%s]" % ",".join(
            b if isinstance(b, str) else b.decode() for b in bodies))

    # -- one request ---------------------------------------------------------------------------

    def _request(self, body):
        host = self._host
        deadline = _Deadline(self.timeout_ms)
        try:
            ai = socket.getaddrinfo(host, self._port, 0, socket.SOCK_STREAM)
        except OSError as exc:
            code = _errno(exc)
            if code is not None and _is_timeout(code):
                raise PostError(TIMEOUT, f"name lookup for {host} timed out") from None
            raise PostError(DNS, f"cannot resolve {host}") from None
        if not ai:
            raise PostError(DNS, f"cannot resolve {host}")
        af, kind, proto, _, addr = ai[0]
        raw = socket.socket(af, kind, proto)
        try:
            self._connect(raw, addr, deadline)
            stream = raw
            if self._ctx is not None:
                stream = self._handshake(raw, deadline)
            self._send(raw, stream, body, deadline)
            status = self._status(raw, stream, deadline)
            self._drain(raw, stream, deadline)
            return status
        finally:
            try:
                raw.close()
            except OSError:
                pass  # closing a broken socket tells us nothing new

    def _connect(self, raw, addr, deadline):
        deadline.arm(raw, "connect")
        try:
            raw.connect(addr)
        except OSError as exc:
            code = _errno(exc)
            if code is not None and _is_timeout(code):
                raise PostError(TIMEOUT, f"connect to {self._host_header} timed out") from None
            if code in (errno.ECONNREFUSED, errno.ECONNRESET):
                # lwIP (ESP32) reports a refused connect as ECONNRESET
                raise PostError(REFUSED, f"{self._host_header} refused the connection") from None
            raise PostError(NETWORK, f"connect to {self._host_header} failed ({code})") from None

    def _handshake(self, raw, deadline):
        deadline.arm(raw, "TLS handshake")
        try:
            return self._ctx.wrap_socket(raw, server_hostname=self._host)
        except OSError as exc:
            code = _errno(exc)
            if code is not None and _is_timeout(code):
                raise PostError(TIMEOUT, "TLS handshake timed out") from None
            raise PostError(TLS, f"TLS handshake with {self._host_header} failed ({exc})") from None
        except ValueError as exc:  # e.g. certificate name/verification details on some ports
            raise PostError(TLS, f"TLS handshake with {self._host_header} failed ({exc})") from None

    def _send(self, raw, stream, body, deadline):
        # str or bytes, written through a memoryview (MicroPython gives a str's UTF-8 bytes):
        # the head in one piece, and nothing encoded or concatenated again
        body = memoryview(body)
        head = _HEAD % (self._path, self._host_header,
                        "" if self._token is None else
                        "Authorization: Bearer " + self._token + "\r\n", len(body))
        for view in (memoryview(head), body):
            while len(view):
                deadline.arm(raw, "sending")
                try:
                    n = stream.write(view)
                except OSError as exc:
                    raise self._io_error(exc, "sending the request") from None
                if not n:
                    raise PostError(TIMEOUT, "sending the request stalled")
                view = view[n:]

    def _status(self, raw, stream, deadline):
        line = bytearray()
        while True:
            deadline.arm(raw, "waiting for the answer")
            try:
                b = stream.read(1)
            except OSError as exc:
                raise self._io_error(exc, "reading the answer") from None
            if b is None:
                continue  # non-blocking read with nothing yet: the deadline bounds this loop
            if not b:
                raise PostError(PROTOCOL, "connection closed before a status line")
            if b == b"\n":
                break
            line.extend(b)
            if len(line) > _MAX_STATUS:
                raise PostError(PROTOCOL, "status line too long")
        parts = bytes(line).split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise PostError(PROTOCOL, "not an HTTP/1.x status line")
        code = parts[1]
        if len(code) != 3 or not code.isdigit():
            raise PostError(PROTOCOL, "bad status code")
        return int(code)

    def _drain(self, raw, stream, deadline):
        # Read a short answer to its end so the server sees an orderly close rather than a
        # reset; a long or endless one is cut at _MAX_DRAIN bytes or the deadline. In small
        # pieces: readline(n) takes an n-byte block at once, which a heap fragmented by days
        # of work may not have, and the status is known by now: no failure here may lose it.
        budget = _MAX_DRAIN
        length = 0
        at_start = True  # the piece read next starts a header line
        try:
            while budget > 0:
                deadline.arm(raw, "draining")
                piece = stream.readline(min(budget, _DRAIN_PIECE))
                if not piece:
                    return
                budget -= len(piece)
                if at_start:
                    if piece in (b"\r\n", b"\n"):
                        break
                    if piece[:15].lower() == b"content-length:":
                        length = int(piece[15:].strip())
                at_start = piece[-1] == 10  # b"\n", compared without a new object
            if not 0 < length <= budget:
                return
            while length > 0:
                deadline.arm(raw, "draining")
                piece = stream.read(min(length, _DRAIN_PIECE))
                if not piece:
                    return
                length -= len(piece)
        except (OSError, ValueError, PostError, MemoryError):
            pass  # the status is what counts; the rest of the answer is optional

    def _io_error(self, exc, what):
        code = _errno(exc)
        if code is not None and _is_timeout(code):
            return PostError(TIMEOUT, f"{what}: no progress within {self.timeout_ms} ms")
        if self._ctx is not None and code is not None and code < 0:
            return PostError(TLS, f"{what}: TLS error {code}")
        return PostError(NETWORK, f"{what} failed ({code})")


def post(url, body, token=None, cadata=None, timeout_ms=5000):
    """One-shot POST of one JSON document; returns the HTTP status code."""
    return HttpPoster(url, token, cadata=cadata, timeout_ms=timeout_ms).post(body)
