# SPDX-License-Identifier: MIT
"""Parse the publishers' URLs: http, https, mqtt, mqtts.

    parse("https://collector.lan:8443/api/measurements")
        -> Url(scheme="https", host="collector.lan", port=8443, path="/api/measurements",
               tls=True, user=None, password=None)

Raises UrlError (a ValueError) with a message that never repeats a password. Pure: imports
under CPython and MicroPython.
"""

try:
    from micropython import const
except ImportError:  # CPython
    from meter.cpython_shims import const

_DEFAULT_PORTS = {"http": 80, "https": 443, "mqtt": 1883, "mqtts": 8883}
_TLS = const(("https", "mqtts"))


class UrlError(ValueError):
    pass


class Url:
    __slots__ = ("scheme", "host", "port", "path", "tls", "user", "password")

    def __init__(self, scheme, host, port, path, user=None, password=None):
        self.scheme = scheme
        self.host = host
        self.port = port
        self.path = path
        self.tls = scheme in _TLS
        self.user = user
        self.password = password

    def __repr__(self):
        # never shows the password
        auth = (self.user + ":***@") if self.user is not None else ""
        return f"<Url {self.scheme}://{auth}{self.host}:{self.port}{self.path}>"


def _port(text):
    if not text or len(text) > 5:
        raise UrlError("bad port in URL")
    for b in text.encode():  # bytes: iterating a str interns its characters (jsontext)
        if b < 0x30 or b > 0x39:
            raise UrlError("bad port in URL")
    port = int(text)
    if not 0 < port < 65536:
        raise UrlError("port out of range in URL")
    return port


def parse(url, default_path="/"):
    """Split `url` into a Url; `default_path` is used when the URL has no path."""
    if not isinstance(url, str):
        raise UrlError("URL must be a string")
    sep = url.find("://")
    if sep <= 0:
        raise UrlError("URL needs a scheme (http, https, mqtt, mqtts)")
    scheme = url[:sep].lower()
    if scheme not in _DEFAULT_PORTS:
        raise UrlError(f"unsupported URL scheme {scheme!r}")
    rest = url[sep + 3:]
    for b in rest.encode():
        if b <= 0x20 or b == 0x7F:
            raise UrlError("URL contains spaces or control characters")
    slash = rest.find("/")
    if slash < 0:
        netloc, path = rest, default_path
    else:
        netloc, path = rest[:slash], rest[slash:]
    if "#" in path:
        path = path[: path.find("#")]
    user = password = None
    at = netloc.rfind("@")
    if at >= 0:
        if scheme not in ("mqtt", "mqtts"):
            raise UrlError("credentials in an http URL are not supported; use the token")
        userinfo, netloc = netloc[:at], netloc[at + 1:]
        colon = userinfo.find(":")
        if colon >= 0:
            user, password = userinfo[:colon], userinfo[colon + 1:]
        else:
            user = userinfo
    port = _DEFAULT_PORTS[scheme]
    if netloc.startswith("["):
        end = netloc.find("]")
        if end < 0:
            raise UrlError("unterminated [IPv6] host in URL")
        host = netloc[1:end]
        tail = netloc[end + 1:]
        if tail:
            if tail[0] != ":":
                raise UrlError("bad host in URL")
            port = _port(tail[1:])
    else:
        colon = netloc.rfind(":")
        if colon >= 0:
            host = netloc[:colon]
            port = _port(netloc[colon + 1:])
        else:
            host = netloc
    if not host:
        raise UrlError("URL has no host")
    return Url(scheme, host, port, path or default_path, user, password)
