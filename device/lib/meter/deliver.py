# SPDX-License-Identifier: MIT
"""Readings out of the meter: make them at the end of an interval, deliver them in order,
keep what cannot be delivered in the outbox and drain it when the link is back.

    modules.use("meter.deliver").readings(meter)   # an interval ended (the clock is set)
    modules.use("meter.deliver").drain(meter)      # the outbox holds readings, link ready
    modules.use("meter.deliver").flush(meter)      # readings a MemoryError left unsent

Loaded for each use and dropped after it by meter.app, together with what it imports
(meter.reading, meter.outbox, meter.http_post, meter.url, meter.tlsca): ~30 KB of code on
the 64-bit unix port that is needed for a few milliseconds every interval. All state
stays in the Meter (backoff, counters, outbox depth), so nothing here outlives a call: the
HTTP poster (parsed URL, TLS context) is made again for each use, which costs far less
than the TLS handshake that follows it.

Delivery: HTTP when it is enabled (MQTT is then a live mirror, best effort), else MQTT
with the same outbox discipline. A new reading goes out directly only while the outbox is
empty, so order holds. An HTTP 400/413/422 refuses the reading itself: it is dropped and
counted (`rejected`) instead of blocking the outbox for ever; 401/403, 408, 429 and 5xx
keep it and back off (2 s doubling to 5 min).
"""

import gc
import math

from meter import modules

try:
    from micropython import const
except ImportError:  # CPython
    from meter.cpython_shims import const

_BACKOFF_MIN_MS = const(2000)
_BACKOFF_MAX_MS = const(300000)
_DRAIN_BATCHES = const(4)  # outbox batches per loop turn while draining (each costs a round trip)
_BATCH = const(8)
# HTTP answers that refuse the reading itself: resending cannot help
_REJECTED = const((400, 413, 422))


def poster(m):
    """The HTTP poster for the meter's config (PostError when the config cannot work)."""
    # The URL parser first, from this shallow frame (modules.use collects before a load):
    # imported inside HttpPoster instead, deep in the first load, it was what a 92 KB heap
    # could not find at start-up from lib/ (bench/heap_floor.py). Dropped again below.
    modules.use("meter.url")
    from meter.http_post import HttpPoster

    h = m.conf["http"]
    http = HttpPoster(h["url"], h["token"] or None, cadata=m.cadata(),
                      timeout_ms=int(h["timeout_s"] * 1000), default_path=h["path"])
    if m.mqtt is None:  # MQTT keeps them loaded; the poster no longer needs them
        modules.drop("meter.url")  # its code leaves before the request is built
        modules.drop("meter.tlsca")
    return http


def check_http(m):
    """Why the HTTP config cannot work (text), or None: the meter's start-up check."""
    from meter.http_post import PostError

    try:
        poster(m)
    except PostError as exc:
        return str(exc)
    return None


def readings(m):
    """One reading per channel for the interval that ended; sent, or kept in the outbox."""
    out = _made(m)
    # the reading format leaves the heap before the HTTP client comes in (the send is
    # the delivery's peak): nothing here holds it once _made has returned
    modules.drop("meter.reading")
    if not m.http and m.mqtt is None:
        return
    # Held by the meter until sent or stored: if loading the HTTP client or the outbox
    # fails for lack of memory, the next window's flush() tries again; nothing is lost.
    m.unsent += out
    gc.collect()
    if m.http and m.mqtt is not None:
        _mirror(m, out)  # a live mirror; HTTP is the delivery that keeps order
    flush(m)


def _made(m):
    from meter import reading

    ts = m.board.unix_time()
    out = []
    for i in range(m.nchan):
        a = m.intervals[i]
        if a.t <= 0:
            continue
        s = a.s / a.t
        p = a.p / a.t
        out.append(reading.encode(m.device, m.store.next_seq(), ts, i + 1,
                                  math.sqrt(a.i2 / a.t), math.sqrt(a.v2 / a.t), p, s,
                                  p / s if s > 0 else 0.0, m.energy[i].mwh, a.f / a.t, a.t))
        a.reset()
    return out


def flush(m):
    """Send the meter's unsent readings, or store them in the outbox (after older ones)."""
    if not m.unsent:
        return
    if m.outbox_depth == 0 and m.link_ready() and _send(m, m.unsent):
        m.unsent = []
        return
    store(m)


def store(m):
    """Put the unsent readings in the outbox, after older ones, without trying to send them
    (Meter.shutdown: the meter stops, or restarts because delivery no longer fits)."""
    box = _outbox(m)
    try:
        while m.unsent:
            box.append(m.unsent[0])
            m.unsent.pop(0)
    finally:
        m.outbox_seen(box)


def drain(m):
    """Deliver the outbox, oldest first, while the link answers."""
    box = _outbox(m)
    try:
        for _ in range(_DRAIN_BATCHES):
            batch = box.peek(_BATCH)
            if not batch or not _send(m, batch):
                return
            box.ack(len(batch))
    finally:
        m.outbox_seen(box)


def _outbox(m):
    # imported only when a reading must wait or the outbox drains: usually neither
    from meter.outbox import Outbox

    return Outbox(m.outbox_fs)


def _send(m, bodies):
    """Deliver in order over the delivering link. True if done."""
    if m.http:
        from meter.http_post import PostError

        try:
            http = poster(m)
        except (PostError, OSError):  # e.g. the CA file became unreadable since the start
            _failed(m, "error: config")
            return False
        return _post(m, http, bodies)
    try:
        m.mqtt.publish_readings(bodies)
    except OSError as exc:  # MqttError is an OSError. Bodies before the failure went
        # out; they go again from the outbox (QoS 1 is at-least-once anyway: receivers
        # deduplicate on seq)
        m.mqtt_result = "error: %s" % getattr(exc, "kind", "network")
        _failed(m, m.mqtt_result)
        return False
    m.mqtt_result = "ok"
    _delivered(m)
    return True


def _post(m, http, bodies):
    from meter.http_post import PostError

    try:
        status = http.post_batch(bodies) if len(bodies) > 1 else http.post(bodies[0])
    except PostError as exc:
        _failed(m, "error: %s" % exc.kind)
        return False
    if 200 <= status < 300:
        m.post_result = "ok %d" % status
        _delivered(m)
        return True
    if status in _REJECTED:
        if len(bodies) > 1:  # a batch is all or nothing: find the refused ones
            for body in bodies:
                if not _post(m, http, (body,)):
                    return False
            return True
        m.rejected += 1
        m.post_result = "rejected: http %d" % status
        return True
    _failed(m, "http %d" % status)
    return False


def _delivered(m):
    m.posts_ok += 1
    m.backoff_ms = 0
    m.retry_at = None


def _failed(m, why):
    m.post_result = why
    m.posts_failed += 1
    m.backoff_ms = min(_BACKOFF_MAX_MS, max(_BACKOFF_MIN_MS, m.backoff_ms * 2))
    m.retry_at = (m.board.ticks_ms() + m.backoff_ms) & 0x3FFFFFFF  # ticks wrap at 2**30


def _mirror(m, bodies):
    try:
        m.mqtt.publish_readings(bodies)
        m.mqtt_result = "ok"
    except OSError as exc:  # MqttError is an OSError
        m.mqtt_result = "error: %s" % getattr(exc, "kind", "network")
