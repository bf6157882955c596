# SPDX-License-Identifier: MIT
"""MQTT publisher: readings, availability and Home Assistant discovery over umqtt.simple.

    pub = MqttPublisher("meter-1", "broker.lan", channels=(0, 1))
    pub.publish_reading(0, reading_json)   # connects (or reconnects) as needed; raises MqttError
    pub.poll()                             # from the main loop: keepalive ping when idle
    pub.close()                            # clean stop: retained "offline", DISCONNECT
    pub = MqttPublisher.from_url("mqtts://user:pass@broker.lan", "meter-1", cadata=ca_bytes)
    pub.publish_readings([json1, json2])  # channel taken from each reading

Topics (DESIGN.md): state on <prefix>/<deviceId>/<channel>/state (the reading JSON, QoS 1:
returns after the broker's PUBACK), availability on <prefix>/<deviceId>/status: "online"
retained after every connect, "offline" retained as the last will and on close(). Home
Assistant discovery configs (retained) go to homeassistant/sensor/<deviceId>/<object>/config
after every connect, so a broker that lost its retained store learns them again.

Failures raise MqttError with a `kind` (refused, timeout, dns, tls, protocol, network,
rejected, backoff, config); the caller keeps the reading in its outbox. Failed connects back
off exponentially (backoff_ms=(first, max)); during a back-off publish_reading raises kind
"backoff" at once instead of blocking the sampler. A publish on a connection that turns out to
be dead (broker restarted) reconnects once at once. Every socket operation has a timeout.

umqtt.simple 1.3.4 (vendored, unmodified) opens its socket with no timeout and does TLS through
ussl.wrap_socket without certificate checks. So we give it a link object in place of its socket
module: connect with a timeout and, for mqtts, meter.tlsca's verified context (CERT_REQUIRED,
server_hostname); umqtt's own ssl flag stays off. The password is never shown.
"""

import errno
import json
import socket
import sys

from meter.ha_discovery import DiscoveryError, check_id, discovery_configs

try:
    from time import ticks_add, ticks_diff, ticks_ms
except ImportError:  # CPython imports this module for discovery_configs (tests, host tools)
    from time import monotonic

    def ticks_ms():
        return int(monotonic() * 1000)

    def ticks_diff(a, b):
        return a - b

    def ticks_add(a, b):
        return a + b

try:
    from micropython import const
except ImportError:  # CPython
    from meter.cpython_shims import const


REFUSED = const("refused")
TIMEOUT = const("timeout")
DNS = const("dns")
TLS = const("tls")
PROTOCOL = const("protocol")
NETWORK = const("network")
REJECTED = const("rejected")  # CONNACK with an error code, e.g. bad credentials
BACKOFF = const("backoff")
CONFIG = const("config")
_CONNECT = const("connect")

class MqttError(OSError):
    """A connect or publish that did not complete. `kind` says why. An OSError, like the
    socket errors it stands for, so a main loop that guards its link with OSError holds."""

    def __init__(self, kind, message):
        super().__init__(kind + ": " + message)
        self.kind = kind


_simple = None


def _umqtt():
    """umqtt.simple, after aliasing the u-prefixed modules it imports if this port lacks them."""
    global _simple
    if _simple is None:
        for name in ("usocket", "ustruct", "ubinascii"):
            try:
                __import__(name)
            except ImportError:
                sys.modules[name] = __import__(name[1:])
        import umqtt.simple as simple

        simple.socket = _Net  # umqtt's only way to a socket: see the module docstring
        _simple = simple
    return _simple


class _Net:
    """Stands in for the socket module inside umqtt.simple; hands out the prepared link."""

    link = None

    @staticmethod
    def getaddrinfo(host, port, *_):
        ai = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        _Net.link.family = ai[0][0]
        return ai

    @staticmethod
    def socket(*_):
        return _Net.link


class _Link:
    """What umqtt sees as its socket: connect timeout, optional verified TLS, I/O timeouts."""

    def __init__(self, ctx, hostname, timeout_s):
        self.ctx = ctx
        self.hostname = hostname
        self.timeout_s = timeout_s
        self.phase = DNS
        self.family = socket.AF_INET
        self.raw = self.stream = None

    def connect(self, addr):
        self.phase = _CONNECT
        self.raw = self.stream = socket.socket(self.family, socket.SOCK_STREAM)
        self.raw.settimeout(self.timeout_s)
        self.raw.connect(addr)
        if self.ctx is not None:
            self.phase = TLS
            self.stream = self.ctx.wrap_socket(self.raw, server_hostname=self.hostname)
        self.phase = PROTOCOL

    def read(self, n):
        return self.stream.read(n)

    def write(self, buf, n=None):
        return self.stream.write(buf) if n is None else self.stream.write(buf, n)

    def setblocking(self, flag):
        # umqtt's wait_msg() switches to blocking after each read: keep the timeout instead
        self.stream.setblocking(flag)
        if flag:
            self.raw.settimeout(self.timeout_s)

    def close(self):
        for s in (self.stream, self.raw):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass  # already broken: nothing more to learn from it


def _kind(exc, phase):
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    if code in (errno.ETIMEDOUT, errno.EAGAIN, -0x6800):  # -0x6800: mbedTLS read timeout
        return TIMEOUT
    if phase == _CONNECT:
        # lwIP (ESP32) reports a refused connect as ECONNRESET
        return REFUSED if code in (errno.ECONNREFUSED, errno.ECONNRESET) else NETWORK
    return phase if phase in (DNS, TLS) else NETWORK


class MqttPublisher:
    def __init__(self, device_id, host, port=None, cadata=None, user=None, password=None,
                 prefix="ctmeter", channels=(0,), client_id=None, keepalive_s=60,
                 timeout_ms=5000, backoff_ms=(1000, 300000), discovery=True, voltage=True,
                 name=None, server_hostname=None, tls=None, clock=ticks_ms):
        _umqtt()  # load it before the TLS context fragments the heap
        try:
            check_id(device_id)
        except DiscoveryError as exc:
            raise MqttError(CONFIG, str(exc)) from None
        if not isinstance(prefix, str) or not prefix or "+" in prefix or "#" in prefix:
            raise MqttError(CONFIG, "topic prefix: non-empty, no '+' or '#'")
        if not host or not channels or not 0 < backoff_ms[0] <= backoff_ms[1]:
            raise MqttError(CONFIG, "need a host, channels and 0 < backoff first <= max")
        if password is not None and user is None:
            raise MqttError(CONFIG, "a password needs a user name")
        self.device_id = device_id
        self.host = host
        if tls is None:
            tls = cadata is not None
        self.port = port or (8883 if tls else 1883)
        self.prefix = prefix
        self.channels = tuple(channels)
        self.client_id = client_id or "ctmeter-" + device_id
        self.keepalive_s = keepalive_s
        self.timeout_s = timeout_ms / 1000
        self.backoff_ms = backoff_ms
        self.discovery = discovery
        self.voltage = voltage
        self.name = name
        self._user = user
        self._password = "" if user is not None and password is None else password
        self._hostname = server_hostname or host
        self._ctx = None
        if tls:  # a CA given for a plain mqtt:// broker is not used
            from meter import tlsca

            try:
                self._ctx = tlsca.context(cadata)
            except tlsca.CaError as exc:
                raise MqttError(CONFIG, str(exc)) from None
        self._clock = clock
        self.status_topic = prefix + "/" + device_id + "/status"
        self._client = self._link = None
        self._delay = 0
        self._next_try = self._last_tx = clock()
        self.connects = 0  # successful connects
        self.last_error = None  # kind of the last failure

    @classmethod
    def from_url(cls, url, device_id, cadata=None, user=None, password=None, **kw):
        """mqtt://[user[:password]@]host[:port] or mqtts://... (mqtts needs cadata).

        user/password given here win over those in the URL (keep secrets out of URLs)."""
        from meter import url as _url

        try:
            u = _url.parse(url)
        except _url.UrlError as exc:
            raise MqttError(CONFIG, str(exc)) from None
        if u.scheme[:4] != "mqtt":
            raise MqttError(CONFIG, "MQTT needs an mqtt:// or mqtts:// URL")
        if user is None:
            user, password = u.user, u.password if password is None else password
        return cls(device_id, u.host, u.port, cadata, user, password, tls=u.tls, **kw)

    def __repr__(self):
        s = "mqtt" if self._ctx is None else "mqtts"
        return f"<MqttPublisher {s}://{self.host}:{self.port} {self.device_id}>"

    @property
    def connected(self):
        return self._client is not None

    def backoff_left_ms(self):
        """Milliseconds until the next connect attempt is allowed (0 = now)."""
        if self._client is not None:
            return 0
        return max(0, ticks_diff(self._next_try, self._clock()))

    def connect(self):
        """Connect now (ignores back-off); announce "online" and the discovery configs."""
        simple = _umqtt()
        self._drop()
        link = self._link = _Link(self._ctx, self._hostname, self.timeout_s)
        client = simple.MQTTClient(self.client_id, self.host, self.port, user=self._user,
                                   password=self._password, keepalive=self.keepalive_s)
        client.set_last_will(self.status_topic, b"offline", retain=True, qos=1)
        _Net.link = link
        try:
            client.connect()
            self._client = client
            self._send(self.status_topic, b"online", True, 0)
            if self.discovery:
                for topic, cfg in discovery_configs(self.device_id, self.channels, self.prefix,
                                                    self.voltage, name=self.name):
                    self._send(topic, json.dumps(cfg), True, 0)
        except MqttError as exc:
            self._failed(exc.kind)
            raise
        except simple.MQTTException as exc:
            self._failed(REJECTED)
            raise MqttError(REJECTED, f"broker refused the session (code {exc})") from None
        except OSError as exc:
            kind = _kind(exc, link.phase)
            self._failed(kind)
            raise MqttError(kind, f"connect to {self.host}:{self.port} failed") from None
        except ValueError as exc:
            if link.phase != TLS:
                raise
            # MicroPython reports a failed certificate check as ValueError (mbedTLS's text)
            self._failed(TLS)
            raise MqttError(TLS, f"TLS with {self.host} failed ({exc})") from None
        except (AssertionError, IndexError, TypeError):
            # umqtt asserts on a malformed CONNACK and indexes short reads
            self._failed(PROTOCOL)
            raise MqttError(PROTOCOL, "unexpected answer from the broker") from None
        finally:
            _Net.link = None
        self._delay = 0
        self.connects += 1
        self.last_error = None

    def _failed(self, kind):
        self._drop()
        self.last_error = kind
        first, most = self.backoff_ms
        self._delay = first if self._delay == 0 else min(self._delay * 2, most)
        self._next_try = ticks_add(self._clock(), self._delay)

    def _drop(self):
        if self._link is not None:
            self._link.close()
        self._client = self._link = None

    def _send(self, topic, msg, retain, qos):
        try:
            self._client.publish(topic.encode() if isinstance(topic, str) else topic,
                                 msg.encode() if isinstance(msg, str) else msg, retain, qos)
        except OSError as exc:
            raise MqttError(_kind(exc, PROTOCOL), "publish failed") from None
        except (AssertionError, IndexError, TypeError):
            raise MqttError(PROTOCOL, "unexpected answer while publishing") from None
        self._last_tx = self._clock()

    def publish(self, topic, msg, retain=False, qos=1):
        """Publish on any topic, connecting first if needed. QoS 1 returns after the PUBACK."""
        for attempt in (0, 1):
            fresh = self._client is None
            if fresh:
                left = self.backoff_left_ms()
                if left > 0:
                    raise MqttError(BACKOFF, f"reconnect in {left} ms")
                self.connect()
            try:
                self._send(topic, msg, retain, qos)
                return
            except MqttError as exc:
                if fresh or attempt:
                    self._failed(exc.kind)
                    raise
                self._drop()  # an old connection was dead (broker restarted): one retry now

    def publish_reading(self, channel, payload):
        """Publish one reading JSON on <prefix>/<deviceId>/<channel>/state (QoS 1)."""
        if not isinstance(channel, int) or channel < 0:
            raise MqttError(CONFIG, "channel must be a non-negative int")
        self.publish(f"{self.prefix}/{self.device_id}/{channel}/state", payload)

    def publish_readings(self, bodies):
        """Publish reading JSON strings in order, each on its own channel's topic.

        Raises MqttError at the first failure: bodies before it were delivered."""
        for body in bodies:
            try:
                channel = json.loads(body)["channel"]
            except (ValueError, KeyError, TypeError):
                raise MqttError(CONFIG, "not a reading (no channel)") from None
            self.publish_reading(channel, body)

    def poll(self):
        """Call from the main loop: a keepalive ping when the link was idle half a keepalive."""
        if self._client is not None and self.keepalive_s and ticks_diff(
            self._clock(), self._last_tx
        ) >= self.keepalive_s * 500:
            try:
                self._client.ping()  # the PINGRESP is consumed by the next QoS 1 publish
            except OSError as exc:
                kind = _kind(exc, PROTOCOL)
                self._failed(kind)
                raise MqttError(kind, "keepalive failed") from None
            self._last_tx = self._clock()

    def close(self):
        """Clean stop: retained "offline", then DISCONNECT (the broker drops the last will)."""
        if self._client is not None:
            try:
                self._send(self.status_topic, b"offline", True, 1)
                self._client.disconnect()
            except (MqttError, OSError):
                pass  # going away anyway; the last will says offline if this did not
        self._drop()
