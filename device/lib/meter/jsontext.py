# SPDX-License-Identifier: MIT
"""JSON typed at the console, parsed strictly: `loads(text)` or ValueError.

MicroPython's json.loads takes much that is not JSON and makes something of it:
`{"gain": }` and `{"gain"}` become {}, `[1 2]` and `[1,,2]` become [1, 2], `01` becomes 1,
`"\\x"` becomes "x". A typo must answer an error and change nothing (an empty calibration
object would reset the channel), so the text is first checked against the JSON grammar
(RFC 8259) and only then handed to json.loads. The check builds nothing: it walks the text
once. CPython's json is strict already; the check runs there too, which tests it.
Loaded per console command (meter.modules) and dropped after it.
"""

import json

try:
    from micropython import const
except ImportError:  # CPython
    from meter.cpython_shims import const

_MAX_DEPTH = const(8)  # deeper than any config or calibration value; bounds the recursion
# The text is walked as UTF-8 bytes: indexing or iterating a str interns each character
# it meets as a name (a qstr) for good on MicroPython, so typed text would grow the
# name table; a byte is a small int. Non-ASCII bytes only ever appear inside strings.
_WS = const(b" \t\n\r")
_DIGITS = const(b"0123456789")
_HEX = const(b"0123456789abcdefABCDEF")
_ESCAPES = const(b'"\\/bfnrt')
_QUOTE = const(0x22)
_BACKSLASH = const(0x5C)
_SPACE = const(0x20)
_MINUS = const(0x2D)
_ZERO = const(0x30)
_DOT = const(0x2E)
_COLON = const(0x3A)
_COMMA = const(0x2C)
_LBRACE = const(0x7B)
_RBRACE = const(0x7D)
_LBRACKET = const(0x5B)
_RBRACKET = const(0x5D)
_U = const(0x75)


def loads(text):
    check(text)
    return json.loads(text)


def check(s):
    """ValueError unless `s` is one JSON value (with surrounding white space)."""
    s = s.encode()
    i = _value(s, _ws(s, 0), 0)
    if _ws(s, i) != len(s):
        raise ValueError("extra data after the JSON value")


def _ws(s, i):
    n = len(s)
    while i < n and s[i] in _WS:
        i += 1
    return i


def _at(s, i, c):
    return i < len(s) and s[i] == c


def _value(s, i, depth):
    if depth > _MAX_DEPTH:
        raise ValueError("nested too deep")
    if i >= len(s):
        raise ValueError("a value is missing")
    c = s[i]
    if c == _LBRACE:
        return _members(s, _ws(s, i + 1), depth)
    if c == _LBRACKET:
        return _items(s, _ws(s, i + 1), depth)
    if c == _QUOTE:
        return _string(s, i)
    for word in (b"true", b"false", b"null"):
        if s[i:i + len(word)] == word:
            return i + len(word)
    return _number(s, i)


def _members(s, i, depth):
    if _at(s, i, _RBRACE):
        return i + 1
    while True:
        if not _at(s, i, _QUOTE):
            raise ValueError("a key (a string) is missing")
        i = _ws(s, _string(s, i))
        if not _at(s, i, _COLON):
            raise ValueError("':' is missing after a key")
        i = _ws(s, _value(s, _ws(s, i + 1), depth + 1))
        if _at(s, i, _RBRACE):
            return i + 1
        if not _at(s, i, _COMMA):
            raise ValueError("',' or '}' is missing")
        i = _ws(s, i + 1)


def _items(s, i, depth):
    if _at(s, i, _RBRACKET):
        return i + 1
    while True:
        i = _ws(s, _value(s, i, depth + 1))
        if _at(s, i, _RBRACKET):
            return i + 1
        if not _at(s, i, _COMMA):
            raise ValueError("',' or ']' is missing")
        i = _ws(s, i + 1)


def _string(s, i):
    n = len(s)
    i += 1
    while i < n:
        c = s[i]
        if c == _QUOTE:
            return i + 1
        if c < _SPACE:
            raise ValueError("a control character in a string")
        if c == _BACKSLASH:
            i += 1
            if i >= n:
                break
            if s[i] == _U:
                if len(s) < i + 5 or any(h not in _HEX for h in s[i + 1:i + 5]):
                    raise ValueError("a bad \\u escape")
                i += 4
            elif s[i] not in _ESCAPES:
                raise ValueError("a bad escape in a string")
        i += 1
    raise ValueError("a string is not closed")


def _digits(s, i):
    n = len(s)
    j = i
    while j < n and s[j] in _DIGITS:
        j += 1
    if j == i:
        raise ValueError("not a value")
    return j


def _number(s, i):
    if _at(s, i, _MINUS):
        i += 1
    if _at(s, i, _ZERO):  # one zero: in "01" the "1" is then left over, an error
        i += 1
    else:
        i = _digits(s, i)
    if _at(s, i, _DOT):
        i = _digits(s, i + 1)
    if i < len(s) and s[i] in b"eE":
        i += 1
        if i < len(s) and s[i] in b"+-":
            i += 1
        i = _digits(s, i)
    return i
