# SPDX-License-Identifier: MIT
"""Verified TLS client contexts for the publishers (https, mqtts).

    ctx = tlsca.context(ca_bytes)    # tls.SSLContext, CERT_REQUIRED, the given CA(s) loaded
    sock = ctx.wrap_socket(sock, server_hostname=host)

`ca_bytes` is one DER certificate or PEM text with one or more certificates. PEM is decoded
here rather than by mbedTLS because some MicroPython builds (the unix port used by the tests
among them) leave out mbedTLS's PEM parser, and load_verify_locations then rejects every PEM
file as "invalid cert". Raises CaError (a ValueError) on a missing or unusable CA. Set the clock
(ntptime) before the first handshake on a board: certificate validity is checked against it.
"""

try:
    from micropython import const
except ImportError:  # CPython
    from meter.cpython_shims import const

_BEGIN = const(b"-----BEGIN CERTIFICATE-----")
_END = const(b"-----END CERTIFICATE-----")


class CaError(ValueError):
    pass


def certificates(cadata):
    """The DER certificates in `cadata` (DER bytes, or PEM as str or bytes)."""
    if isinstance(cadata, str):
        cadata = cadata.encode()
    if not isinstance(cadata, (bytes, bytearray)) or not cadata:
        raise CaError("CA certificate must be DER or PEM bytes")
    cadata = bytes(cadata)
    if _BEGIN not in cadata:
        if cadata[0] != 0x30:  # a DER certificate is an ASN.1 SEQUENCE
            raise CaError("CA certificate is neither PEM nor DER")
        return [cadata]
    from binascii import a2b_base64

    certs = []
    pos = cadata.find(_BEGIN)
    while pos >= 0:
        end = cadata.find(_END, pos)
        if end < 0:
            raise CaError("PEM certificate without an END line")
        try:
            certs.append(a2b_base64(b"".join(cadata[pos + len(_BEGIN) : end].split())))
        except ValueError:
            raise CaError("PEM certificate is not valid base64") from None
        pos = cadata.find(_BEGIN, end)
    return certs


def context(cadata):
    """A client tls.SSLContext that only accepts servers certified by a CA in `cadata`."""
    try:
        import tls
    except ImportError:
        raise CaError("TLS needs the tls module (MicroPython >= 1.23)") from None
    if not cadata:
        raise CaError("TLS needs a CA certificate to verify the server")
    ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = tls.CERT_REQUIRED
    for der in certificates(cadata):
        try:
            ctx.load_verify_locations(der)
        except (ValueError, OSError) as exc:
            raise CaError(f"cannot load the CA certificate ({exc})") from None
    return ctx
