# SPDX-License-Identifier: MIT
"""Open a board's serial port on demand, with errors a person can act on.

    ser = open_serial("/dev/ttyUSB0")          # pyserial object (serial_for_url, exclusive)
    with connect("/dev/ttyUSB0") as dev:       # mpremote SerialTransport in the raw REPL
        dev.exec("print(1)")                   # every mpremote Transport method works
    # the port is closed (and the board back in the friendly REPL) whatever happened

Ports are opened with `serial.serial_for_url`, so `/dev/ttyUSB0`, a pty, `socket://host:port`
and `loop://` all work. Failures become PortError (a CommandError, exit code EXIT_PORT) with
the cause classified: a port that does not exist, one locked by another program, one we may
not open; errors while talking to the board become DeviceError (EXIT_DEVICE).
"""

from __future__ import annotations

import errno
import time
from contextlib import contextmanager

import serial
from meter.board import (  # the firmware's own stop line
    RESTART_MAX_S,
    RESTART_S,
    STOP_NOTE,
    STOP_PREFIX,
)
from mpremote.transport import TransportError, TransportExecError
from mpremote.transport_serial import SerialTransport

from ctmeter.errors import CommandError

# Exit codes shared by the commands that talk to a board (documented in `ctmeter flash --help`).
EXIT_USAGE = 2  # bad arguments or config, refused before touching the board
EXIT_PORT = 3  # port missing, busy or not permitted
EXIT_DEVICE = 4  # the board answered wrongly or not at all
EXIT_CHIP = 5  # the chip is not the board definition's chip
EXIT_IMAGE = 6  # the firmware image is missing, unverifiable or fails its checksum
EXIT_TIMEOUT = 7  # the meter did not report its boot line in time

EXIT_CODES_HELP = (
    "exit codes: 0 done, 1 other error, 2 bad arguments or config, 3 port missing/busy, "
    "4 board not answering, 5 wrong chip, 6 bad or unverified image, 7 no boot line in time"
)


class PortError(CommandError):
    """The serial port could not be opened."""

    def __init__(self, message, hint=""):
        super().__init__(message, hint, EXIT_PORT)


class DeviceError(CommandError):
    """The board did not answer as MicroPython should."""

    def __init__(self, message, hint=""):
        super().__init__(message, hint, EXIT_DEVICE)


def stop_reason(text: str) -> str | None:
    """The error of the last `ctmeter-stopped` line in `text` (meter.board.stopped), without
    its restart note, or None when there is none."""
    at = text.rfind(STOP_PREFIX)
    if at < 0:
        return None
    why = text[at + len(STOP_PREFIX):].split("\n", 1)[0].strip()
    return why.split(STOP_NOTE.split("%", 1)[0], 1)[0][:200]


def stopped_error(port: str, line: str, earlier=(), secrets=()) -> DeviceError:
    """The DeviceError for the meter's `ctmeter-stopped` line (meter.board.stopped): its
    error, where the traceback printed before it says it was raised, and what to do."""
    why = stop_reason(line) or ""
    where = [x.strip() for x in earlier if x.strip().startswith('File "')]
    if where:
        why += " at " + where[-1][5:]
    for s in secrets:
        why = why.replace(s, "***")
    return DeviceError(f"the meter on {port} stopped: {why}",
                       f"it restarts after {RESTART_S} s, waiting twice as long after each "
                       f"stop in a row (up to {RESTART_MAX_S} s), and stops the same way until "
                       f"the cause is fixed; the whole traceback: python -m serial.tools.miniterm "
                       f"{port} 115200")


def classify(port: str, exc: BaseException) -> PortError:
    """Turn a pyserial/OS error from opening `port` into a PortError saying what to do."""
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code == errno.ENOENT or "No such file" in text:
        return PortError(f"no such port {port}",
                         "is the board plugged in? list ports with "
                         "`python -m serial.tools.list_ports`")
    if code in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EBUSY) or "exclusively lock" in text:
        return PortError(f"port {port} is busy",
                         "is the port used by another program? close any console, mpremote "
                         "or screen session on it")
    if code in (errno.EACCES, errno.EPERM) or "Permission denied" in text:
        return PortError(f"no permission to open {port}",
                         "add yourself to the dialout (or uucp) group and log in again")
    return PortError(f"cannot open {port}: {text}")


def reopen_serial(port: str, deadline: float, baudrate: int = 115200,
                  timeout: float | None = 0.2):
    """After a reset, a native-USB board (ESP32-S2/S3/C3/C6 over its own USB) re-enumerates:
    its port goes away and comes back. Open it again before `deadline` (time.monotonic()),
    or None."""
    while time.monotonic() < deadline:
        try:
            return serial.serial_for_url(port, baudrate=baudrate, timeout=timeout,
                                         exclusive=True)
        except (serial.SerialException, OSError):
            time.sleep(0.3)
    return None


def open_serial(port: str, baudrate: int = 115200, timeout: float | None = 1.0,
                **kwargs) -> serial.SerialBase:
    """An open, exclusively locked pyserial port for `port` (any serial_for_url URL)."""
    if not port:
        raise PortError("no port given", "pass --port, e.g. --port /dev/ttyUSB0")
    try:
        return serial.serial_for_url(port, baudrate=baudrate, timeout=timeout, exclusive=True,
                                     **kwargs)
    except (serial.SerialException, OSError, ValueError) as exc:
        raise classify(port, exc) from exc


def _why_not(port: str) -> PortError:
    """Open the port once more to learn why mpremote could not (it only says 'failed')."""
    try:
        open_serial(port).close()
    except PortError as exc:
        return exc
    return PortError(f"cannot open {port}", "the port opened on a second try; retry")


@contextmanager
def connect(port: str, soft_reset: bool = True, timeout: float = 10):
    """mpremote's SerialTransport on `port`, in the raw REPL; always left and closed.

    `soft_reset` gives a fresh interpreter (main.py stopped, heap free); the watchdog, if the
    firmware armed one, keeps running, so callers keep their sessions short.
    """
    if not port:
        raise PortError("no port given", "pass --port, e.g. --port /dev/ttyUSB0")
    try:
        # a read timeout, or mpremote blocks for ever on a pty that never answers
        transport = SerialTransport(port, baudrate=115200, timeout=1)
    except TransportError as exc:
        raise _why_not(port) from exc
    except (serial.SerialException, OSError) as exc:
        raise classify(port, exc) from exc
    try:
        # Twice, half the time each: a board still booting (or busy in a long step) can miss
        # the one Ctrl-C mpremote sends; a second Ctrl-C then gets through.
        for attempt in (1, 2):
            try:
                transport.enter_raw_repl(soft_reset=soft_reset, timeout_overall=timeout / 2)
                break
            except TransportError as exc:
                if attempt == 2:
                    raise DeviceError(f"no MicroPython REPL on {port}",
                                      "is MicroPython flashed (ctmeter flash)? is this the "
                                      "board's port?") from exc
        yield transport
    finally:
        try:
            if transport.in_raw_repl:
                transport.exit_raw_repl()
        except (OSError, serial.SerialException):
            pass
        try:
            transport.close()
        except (OSError, serial.SerialException):
            pass


def run(transport, code: str, what: str) -> bytes:
    """Execute `code` on the board; a device-side exception becomes a DeviceError."""
    try:
        return transport.exec(code)
    except TransportExecError as exc:
        last = exc.error_output.strip().splitlines()[-1:] or ["?"]
        raise DeviceError(f"{what} failed on the board: {last[0]}") from exc
    except TransportError as exc:
        raise DeviceError(f"{what}: the board stopped answering ({exc})",
                          "did it reset? try again") from exc
    except (serial.SerialException, OSError) as exc:
        raise DeviceError(f"{what}: serial link lost ({exc})", "is the cable plugged in?") \
            from exc
