# SPDX-License-Identifier: MIT
"""CPython stand-ins for what the MicroPython compiler provides to viper code.

    try:
        import micropython
    except ImportError:
        from meter.cpython_shims import micropython, ptr16, ptr32

Under CPython the very same kernel bodies then run as plain Python. By default the shims cost
nothing (the decorator returns a thin wrapper, buffers are indexed directly). Inside
``with strict_int32():`` they emulate the chip instead:

- every argument annotated ``ptr8``/``ptr16``/``ptr32`` is wrapped in a bounds-checked pointer
  whose loads return ``Int32`` values; every ``int`` argument becomes ``Int32``;
- ``Int32`` is an ``int`` whose arithmetic (reflected ops, shifts and multiplication included)
  raises ``OverflowError`` as soon as a result leaves the signed 32-bit range, where the chip's
  viper code would silently wrap modulo 2**32;
- stores through a pointer must fit the element (0..255, 0..65535, signed int32);
- a viper return value must satisfy -2**30 <= r < 2**30: a larger one is a heap-allocated big
  int on the chip (small ints are 31-bit there).

This module is never imported on MicroPython.
"""

import contextlib

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
SMALL_INT_MIN = -(2**30)
SMALL_INT_MAX = 2**30 - 1

_strict = False


def strict_enabled():
    return _strict


@contextlib.contextmanager
def strict_int32(on=True):
    """Run kernels with chip (32-bit viper int) semantics checked; restores the old mode."""
    global _strict
    old = _strict
    _strict = on
    try:
        yield
    finally:
        _strict = old


def _check(value, what="viper int"):
    if value < INT32_MIN or value > INT32_MAX:
        raise OverflowError("%s %d leaves int32: on the chip it would wrap" % (what, value))
    return Int32(value)


def _plain(x):
    # Operands that are not ints (floats, ...) are not viper ints: refuse them.
    if isinstance(x, bool) or not isinstance(x, int):
        raise TypeError("viper int arithmetic with %r" % (x,))
    return int(x)


class Int32(int):
    """An int that refuses to leave int32 (see the module docstring)."""

    __slots__ = ()

    def __add__(self, o):
        return _check(int(self) + _plain(o))

    def __radd__(self, o):
        return _check(_plain(o) + int(self))

    def __sub__(self, o):
        return _check(int(self) - _plain(o))

    def __rsub__(self, o):
        return _check(_plain(o) - int(self))

    def __mul__(self, o):
        return _check(int(self) * _plain(o))

    def __rmul__(self, o):
        return _check(_plain(o) * int(self))

    def __lshift__(self, o):
        return _check(int(self) << _plain(o))

    def __rlshift__(self, o):
        return _check(_plain(o) << int(self))

    def __rshift__(self, o):
        return _check(int(self) >> _plain(o))

    def __rrshift__(self, o):
        return _check(_plain(o) >> int(self))

    def __and__(self, o):
        return _check(int(self) & _plain(o))

    __rand__ = __and__

    def __or__(self, o):
        return _check(int(self) | _plain(o))

    __ror__ = __or__

    def __xor__(self, o):
        return _check(int(self) ^ _plain(o))

    __rxor__ = __xor__

    def __floordiv__(self, o):
        return _check(int(self) // _plain(o))

    def __rfloordiv__(self, o):
        return _check(_plain(o) // int(self))

    def __mod__(self, o):
        return _check(int(self) % _plain(o))

    def __rmod__(self, o):
        return _check(_plain(o) % int(self))

    def __neg__(self):
        return _check(-int(self))

    def __pos__(self):
        return self

    def __abs__(self):
        return _check(abs(int(self)))

    def __invert__(self):
        return _check(~int(self))

    def __truediv__(self, o):
        raise TypeError("viper has no true division of ints")

    __rtruediv__ = __truediv__

    def __pow__(self, o, m=None):
        raise TypeError("viper has no ** on ints")

    __rpow__ = __pow__


class _Ptr:
    """A viper pointer over a buffer (array, bytearray, memoryview)."""

    _size = 1
    _lo = 0
    _hi = 255

    def __init__(self, buf):
        self._mv = memoryview(buf).cast("B")
        if self._size > 1:
            fmt = {2: "H", 4: "i"}[self._size]
            self._mv = self._mv.cast(fmt)

    def _index(self, i):
        i = int(i)
        if i < 0 or i >= len(self._mv):
            raise IndexError(
                "viper %s index %d outside the buffer (0..%d): on the chip this reads or "
                "writes memory it does not own" % (type(self).__name__, i, len(self._mv) - 1)
            )
        return i

    def __getitem__(self, i):
        return Int32(self._mv[self._index(i)])

    def __setitem__(self, i, v):
        v = int(v)
        if v < self._lo or v > self._hi:
            raise OverflowError(
                "store of %d through %s does not fit the element" % (v, type(self).__name__)
            )
        self._mv[self._index(i)] = v


class ptr8(_Ptr):  # noqa: N801 - the viper name
    _size = 1
    _lo, _hi = 0, 255


class ptr16(_Ptr):  # noqa: N801
    _size = 2
    _lo, _hi = 0, 65535


class ptr32(_Ptr):  # noqa: N801
    # The firmware keeps ptr32 data in array('i') (signed int32).
    _size = 4
    _lo, _hi = INT32_MIN, INT32_MAX


class uint(int):  # noqa: N801 - annotation name only
    pass


def _wrap_arg(kind, value):
    if kind in (ptr8, ptr16, ptr32):
        return kind(value)
    if kind is int:
        return _check(_plain(value), "viper int argument")
    return value


def _viper(func):
    import functools
    import inspect

    params = list(inspect.signature(func).parameters)
    kinds = [func.__annotations__.get(p) for p in params]

    @functools.wraps(func)
    def wrapper(*args):
        if not _strict:
            return func(*args)
        args = [_wrap_arg(k, a) for k, a in zip(kinds, args, strict=True)]
        result = func(*args)
        if result is not None:
            r = int(result)
            if r < SMALL_INT_MIN or r > SMALL_INT_MAX:
                raise OverflowError(
                    "%s returns %d: >= 2**30 in magnitude allocates a big int on the chip"
                    % (func.__name__, r)
                )
            return r  # a plain int: chip semantics end at the viper boundary
        return result

    wrapper.__wrapped_viper__ = func
    return wrapper


class _MicroPython:
    """The parts of the `micropython` module that device code uses."""

    @staticmethod
    def viper(func):
        return _viper(func)

    @staticmethod
    def native(func):
        return func

    @staticmethod
    def const(x):
        return x

    @staticmethod
    def heap_lock():
        return 0

    @staticmethod
    def heap_unlock():
        return 0


micropython = _MicroPython()
const = micropython.const
