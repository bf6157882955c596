# SPDX-License-Identifier: MIT
"""The collector: HTTP ingest and query API, live page, MQTT ingest, status and alerts.

    col = Collector(cfg).start()        # binds cfg.http ("host:port", port 0 = any free port)
    col.url                             # "http://127.0.0.1:8080"
    col.dashboard_url                   # where a person opens the live page (it asks for the token)
    col.stop()

Runs its own asyncio loop in a background thread, so tests, `ctmeter sim` and `ctmeter serve`
all drive it the same way. Auth: device tokens may only POST readings (for their own deviceId);
the admin token (Bearer header, or the session cookie the login form sets) reads everything.
"""

import asyncio
import csv
import hashlib
import hmac
import io
import json
import logging
import secrets
import threading
import time
from datetime import datetime
from pathlib import Path
from urllib.parse import parse_qs

from meter.reading import FIELDS

from ctmeter.serve import queries
from ctmeter.serve.alerts import Monitor
from ctmeter.serve.httpd import (
    DEFERRED,
    Response,
    Stream,
    error,
    json_response,
    start_http,
    stop_http,
)
from ctmeter.serve.storage import open_storage
from ctmeter.serve.validate import InvalidReading, parse_reading, to_json

log = logging.getLogger("ctmeter.serve")
INGEST_PATHS = ("/api/measurements", "/api/data", "/api/energy/add")
STATIC = Path(__file__).with_name("static")
COOKIE = "ctmeter_session"
MAX_BATCH = 32  # readings per POSTed JSON array
FLUSH_ROWS = 64  # rows handed to the storage writer at once, at the latest
STORED = Response(201, b'{"stored":true,"duplicate":false}')
DUPLICATE = Response(200, b'{"stored":false,"duplicate":true}')
MAX_LIMIT = 100000


def _new_loop():
    """uvloop (libuv; its transports run in C) when installed, else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


_decode = json.JSONDecoder().decode


def _loads(body):
    """JSON from a request body: UTF-8 straight to the decoder (json.loads on bytes first
    sniffs for UTF-16/32, which no meter sends, but which still works here as a fallback)."""
    try:
        text = body.decode()
    except UnicodeDecodeError:
        return json.loads(body)
    return _decode(text)


class _BatchAnswer:
    """One answer for a POSTed array of readings, once every row's commit is known: 503 if
    any part failed (the meter keeps the whole batch and retries it), else stored/duplicates."""

    def __init__(self, n, reply):
        self.n, self.left, self.stored, self.failed, self.reply = n, n, 0, None, reply

    def one(self, resp):
        if resp.status >= 300:
            self.failed = self.failed or resp
        elif resp.status == 201:
            self.stored += 1
        self.left -= 1
        if self.left == 0:
            n = self.stored
            self.reply(self.failed or json_response(
                201 if n else 200, {"stored": n, "duplicates": self.n - n}))


def _digest(token):
    return hashlib.sha256(token.encode()).digest()


class Hub:
    """Fans live events out to the page's server-sent-event streams; publish from any thread."""

    def __init__(self, loop):
        self.loop = loop
        self.clients = set()

    def publish(self, event, data):
        if self.clients:
            msg = f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()
            self.loop.call_soon_threadsafe(self._fanout, msg)

    def _fanout(self, msg):
        for q in list(self.clients):
            try:
                q.put_nowait(msg)
            except asyncio.QueueFull:  # a reader that stopped reading: drop it
                self.clients.discard(q)
                while not q.empty():
                    q.get_nowait()
                q.put_nowait(None)

    async def events(self):
        q = asyncio.Queue(2000)
        self.clients.add(q)
        try:
            yield b"retry: 2000\n\n"
            while True:
                try:
                    msg = await asyncio.wait_for(q.get(), 15)
                except TimeoutError:
                    msg = b": ping\n\n"
                if msg is None:
                    return
                yield msg
        finally:
            self.clients.discard(q)


class Collector:
    def __init__(self, cfg, store=None):
        self.cfg = cfg
        self.store = store
        self._own_store = store is None
        self._admin = _digest(cfg.admin_token) if cfg.admin_token else None
        self._device_by_token = {_digest(t): d for d, t in cfg.device_tokens.items()}
        self._sessions = set()
        self._pending = []
        self._flush_scheduled = False
        self.loop = None
        self.hub = None
        self.monitor = None
        self.mqtt = None
        self._thread = None
        self._server = None
        self.host, self.port = None, None
        self.stats = {"accepted": 0, "duplicates": 0, "rejected": 0}

    # -- lifetime ----------------------------------------------------------------------
    def start(self):
        if self.store is None:
            self.store = open_storage(self.cfg.db)
        self.loop = _new_loop()
        self.hub = Hub(self.loop)
        self.monitor = Monitor(self.store, self.cfg, self.hub.publish)
        ready = threading.Event()
        failure = []

        def run():
            asyncio.set_event_loop(self.loop)
            try:
                self.loop.run_until_complete(self._bind())
            except Exception as exc:  # noqa: BLE001  (reported to start()'s caller)
                failure.append(exc)
                ready.set()
                return
            ready.set()
            self.loop.run_forever()

        self._thread = threading.Thread(target=run, name="ctmeter-serve", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._close_store()
            raise failure[0]
        if self.cfg.mqtt:
            from ctmeter.serve.mqtt import MqttIngest

            self.mqtt = MqttIngest(self.cfg, self.ingest_rows, self.monitor)
            self.mqtt.start()
        return self

    async def _bind(self):
        host, _, port = self.cfg.http.rpartition(":")
        self._server = await start_http(self.handle, host or "127.0.0.1", int(port),
                                        self.cfg.max_body)
        self.host, self.port = self._server.sockets[0].getsockname()[:2]
        self._monitor_task = asyncio.ensure_future(self._monitor_loop())

    async def _monitor_loop(self):
        while True:
            await asyncio.sleep(self.cfg.monitor_period_s)
            try:
                await self.loop.run_in_executor(None, self.monitor.tick, time.time())
            except Exception:  # keep watching even if one check fails (e.g. db hiccup)
                log.exception("status check failed")

    @property
    def url(self):
        return f"http://{self.host}:{self.port}"

    @property
    def dashboard_url(self):
        return self.url + "/"

    def stop(self):
        if self.mqtt:
            self.mqtt.stop()
        if self.loop and self._thread and self._thread.is_alive():
            async def shutdown():
                self._monitor_task.cancel()
                await stop_http(self._server)
                await asyncio.gather(self._monitor_task, return_exceptions=True)
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
        if self.monitor:
            self.monitor.close()
        self._close_store()

    def _close_store(self):
        if self._own_store and self.store:
            self.store.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- ingest (shared by HTTP and MQTT) ------------------------------------------------
    def _after_store(self, rows, flags, nows):
        """Live page, status and alerts for rows whose commit is done (nows: receive times)."""
        new = []
        live = self.hub.clients
        seen = self.monitor.seen
        for row, stored, now in zip(rows, flags, nows, strict=True):
            if stored:
                new.append(row)
                if live:
                    self.hub.publish("reading", to_json(row))
            seen(row["device_id"], row["interval"], now, row if stored else None)
        self.stats["accepted"] += len(new)
        self.stats["duplicates"] += len(rows) - len(new)
        if new:
            self.monitor.on_readings(new)
        return new

    def ingest_rows(self, rows):
        """Store already-validated rows without waiting (MQTT); alerts run after the commit."""
        now = time.time()
        fut = self.store.submit(rows)

        def done(f):
            if f.exception() is None:
                try:
                    self._after_store(rows, f.result(), [now] * len(rows))
                except Exception:  # noqa: BLE001  (alerting must not kill the writer)
                    log.exception("post-store processing failed")
            else:
                log.error("storing %d MQTT readings failed: %s", len(rows), f.exception())

        fut.add_done_callback(done)
        return fut

    # -- HTTP ----------------------------------------------------------------------------
    def _identity(self, req):
        """'admin', a deviceId, or None."""
        auth = req.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            d = _digest(auth[7:].strip())
            if self._admin is not None and hmac.compare_digest(d, self._admin):
                return "admin"
            return self._device_by_token.get(d)  # keyed by digest: no timing hint on tokens
        cookie = req.headers.get("cookie", "")
        for part in cookie.split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and value in self._sessions:
                return "admin"
        return None

    def handle(self, req):
        """A Response, or a Future of one (ingest: answered when the batch commits), or a
        coroutine (queries) — see httpd.start_http."""
        if req.method == "POST" and req.path in INGEST_PATHS:
            return self._ingest(req)
        if req.path == "/healthz":
            return json_response(200, {"ok": True})
        if req.path in ("/", "/dashboard"):
            return self._page(req)
        if req.path == "/login":
            return self._login(req)
        if req.path.startswith("/static/"):
            return self._static(req.path[8:])
        if not req.path.startswith("/api/"):
            return error(404, "not found")
        who = self._identity(req)
        if who is None:
            self.stats["rejected"] += 1
            return error(401, "admin token required")
        if who != "admin":
            return error(403, "a device token can only post readings")
        return self._api(req)

    def _ingest(self, req):
        who = self._identity(req)
        if who is None:
            self.stats["rejected"] += 1
            return error(401, "missing or unknown Bearer token")
        now = time.time()
        try:
            obj = _loads(req.body)
            # A meter with several channels posts one JSON array per interval (the firmware's
            # HttpPoster.post_batch): all-or-nothing, validated whole before anything is queued.
            if isinstance(obj, list):
                if not 1 <= len(obj) <= MAX_BATCH:
                    raise InvalidReading(f"a batch holds 1 to {MAX_BATCH} readings")
                rows = [parse_reading(o, now) for o in obj]
            else:
                rows = [parse_reading(obj, now)]
        except (ValueError, RecursionError) as exc:
            self.stats["rejected"] += 1
            msg = str(exc) if isinstance(exc, InvalidReading) else "body is not valid JSON"
            return error(422 if isinstance(exc, InvalidReading) else 400, msg)
        if who != "admin" and any(who != row["device_id"] for row in rows):
            self.stats["rejected"] += 1
            return error(403, "this token may only post for its own deviceId")
        # Rows arriving in the same loop turn go to the writer as one batch and come back
        # with one cross-thread wake-up; each request is answered (req.reply) right then.
        # A busy turn (hundreds of sockets ready at once) hands over every FLUSH_ROWS rows,
        # so the first ones are being written while the loop still parses the rest.
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._end_of_turn)
        if len(rows) == 1:
            self._pending.append((rows[0], now, req.reply))
        else:
            answer = _BatchAnswer(len(rows), req.reply)
            self._pending.extend((row, now, answer.one) for row in rows)
        if len(self._pending) >= FLUSH_ROWS:
            self._flush()
        return DEFERRED

    def _end_of_turn(self):
        self._flush_scheduled = False
        if self._pending:
            self._flush()

    def _flush(self):
        batch, self._pending = self._pending, []
        loop = self.loop

        def done(flags, exc):  # in the writer thread
            try:
                loop.call_soon_threadsafe(self._resolve, batch, flags, exc)
            except RuntimeError:  # the loop stopped meanwhile (shutdown): nobody is waiting
                pass

        self.store.submit_callback([row for row, _, _ in batch], done)

    def _resolve(self, batch, flags, exc):
        if exc is not None:
            log.error("storing %d readings failed: %s", len(batch), exc)
            unavailable = error(503, "storage unavailable, retry later")
            for _, _, reply in batch:
                reply(unavailable)
            return
        # Answer everyone first (the commit is done), then the live page, status and alerts.
        for (_, _, reply), stored in zip(batch, flags, strict=True):
            reply(STORED if stored else DUPLICATE)
        try:
            self._after_store([row for row, _, _ in batch], flags, [now for _, now, _ in batch])
        except Exception:  # noqa: BLE001  (alerting must not stop ingest)
            log.exception("post-store processing failed")

    async def _blocking(self, fn, *args):
        return await self.loop.run_in_executor(None, fn, *args)

    def _time_arg(self, req, name, default=None):
        value = req.arg(name)
        if value in (None, ""):
            return default
        try:
            return float(value)
        except ValueError:
            pass
        try:
            dt = datetime.fromisoformat(value)
        except ValueError as exc:
            raise InvalidReading(f"{name} must be Unix seconds or ISO 8601") from exc
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=self.cfg.tz)
        return dt.timestamp()

    def _int_arg(self, req, name, default, low, high):
        value = req.arg(name)
        if value in (None, ""):
            return default
        if not value.isdigit() or not low <= int(value) <= high:
            raise InvalidReading(f"{name} must be an integer in [{low}, {high}]")
        return int(value)

    async def _api(self, req):
        try:
            return await self._api_routes(req)
        except InvalidReading as exc:
            return error(400, str(exc))

    async def _api_routes(self, req):
        path, get = req.path, req.method == "GET"
        now = time.time()
        if path == "/api/measurements" and get:
            start, end = self._time_arg(req, "from"), self._time_arg(req, "to")
            limit = self._int_arg(req, "limit", 50, 1, MAX_LIMIT)
            rows = await self._blocking(
                self.store.history, req.arg("deviceId"),
                None if start is None else start * 1000, None if end is None else end * 1000,
                limit)
            return json_response(200, {"measurements": rows})
        if path in ("/api/export.csv", "/api/measurements.csv") and get:
            start, end = self._time_arg(req, "from"), self._time_arg(req, "to")
            rows = await self._blocking(
                self.store.history, req.arg("deviceId"),
                None if start is None else start * 1000, None if end is None else end * 1000,
                None)
            return Response(200, _csv(rows), "text/csv; charset=utf-8",
                            [("Content-Disposition", 'attachment; filename="readings.csv"')])
        if path == "/api/status" and get:
            return json_response(200, {"now": now, "devices": self.monitor.status(now)})
        if path == "/api/usage/today" and get:
            out = await self._blocking(queries.usage_today, self.store, self.cfg, now,
                                       req.arg("deviceId"))
            return json_response(200, out)
        if path == "/api/summary" and get:
            period = req.arg("period", "daily")
            if period not in ("daily", "weekly", "monthly"):
                raise InvalidReading("period must be daily, weekly or monthly")
            days = self._int_arg(req, "days", 30, 1, 3660)
            start, end = queries.last_days(self.cfg, now, days)
            start = self._time_arg(req, "from", start)
            end = self._time_arg(req, "to", end)
            out = await self._blocking(queries.summary, self.store, self.cfg, period, start,
                                       end, req.arg("deviceId"))
            return json_response(200, {"period": period, "buckets": out,
                                       "currency": self.cfg.currency})
        if path == "/api/usage/monthly" and get:
            year = self._int_arg(req, "year", datetime.fromtimestamp(now, self.cfg.tz).year,
                                 1970, 9999)
            out = await self._blocking(queries.monthly_by_device, self.store, self.cfg, year)
            return json_response(200, out)
        if path == "/api/alerts" and get:
            active = {"active": True, "resolved": False}.get(req.arg("state", "all"))
            unread = True if req.arg("unread") in ("1", "true") else None
            out = await self._blocking(self.store.alerts, req.arg("deviceId"), active, unread)
            return json_response(200, {"alerts": out})
        if path.startswith("/api/alerts/") and req.method == "POST":
            parts = path.split("/")
            if len(parts) != 5 or not parts[3].isdigit() or parts[4] not in ("read", "resolve"):
                return error(404, "POST /api/alerts/<id>/read or /resolve")
            kwargs = {"read": True} if parts[4] == "read" else {"resolved_ms": now * 1000}
            ok = await self._blocking(lambda: self.store.update_alert(int(parts[3]), **kwargs))
            if not ok:
                return error(404, "no such alert")
            self.hub.publish("alert-update", {"id": int(parts[3]), parts[4]: True})
            return json_response(200, {"ok": True})
        if path == "/api/stream" and get:
            return Stream(self.hub.events())
        if path in INGEST_PATHS or path.startswith("/api/"):
            known = path in INGEST_PATHS or path in (
                "/api/measurements", "/api/status", "/api/usage/today", "/api/summary",
                "/api/usage/monthly", "/api/alerts", "/api/stream", "/api/export.csv")
            return error(405 if known else 404, "method not allowed" if known else "not found")
        return error(404, "not found")

    # -- page ----------------------------------------------------------------------------
    def _page(self, req):
        if self._identity(req) != "admin":
            return Response(200, (STATIC / "login.html").read_bytes(), "text/html; charset=utf-8")
        return Response(200, (STATIC / "dashboard.html").read_bytes(), "text/html; charset=utf-8",
                        [("Cache-Control", "no-store")])

    def _login(self, req):
        if req.method != "POST":
            return Response(303, b"", "text/plain", [("Location", "/")])
        form = parse_qs(req.body.decode("utf-8", "replace"))
        token = (form.get("token") or [""])[0]
        if self._admin is None or not hmac.compare_digest(_digest(token), self._admin):
            self.stats["rejected"] += 1
            return Response(401, (STATIC / "login.html").read_bytes().replace(
                b"<!--error-->", b'<p class="err">wrong token</p>'), "text/html; charset=utf-8")
        session = secrets.token_urlsafe(24)
        self._sessions.add(session)
        return Response(303, b"", "text/plain", [
            ("Location", "/"),
            ("Set-Cookie", f"{COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/"),
        ])

    def _static(self, name):
        if "/" in name or name not in ("dashboard.js", "dashboard.css"):
            return error(404, "not found")
        kind = "text/javascript" if name.endswith(".js") else "text/css"
        return Response(200, (STATIC / name).read_bytes(), kind + "; charset=utf-8")


def _csv(rows):
    buf = io.StringIO()
    w = csv.DictWriter(buf, FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue().encode()
