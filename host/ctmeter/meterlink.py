# SPDX-License-Identifier: MIT
"""Talk to a running meter over its serial console, in the console's JSON mode.

    with MeterLink.open("/dev/ttyUSB0", timeout=30) as link:
        status = link.cmd("status")          # the answer without "ok"/"cmd"
        raw = link.cmd_raw("cal zero 0")     # the whole answer, {"ok": false, ...} included
        link.last_line                       # the answer's line exactly as the meter sent it
    # the port is closed and the console back in the mode it was in before

This is the meter's line console (device/lib/meter/console.py), not MicroPython's REPL: the
meter keeps measuring while it answers. Opening asks `mode`, switches to `mode json` and
remembers the old mode; closing restores it (set `link.restore_mode` to choose another).

Answers are matched to commands: a line counts only if it is a JSON object with "ok" whose
"cmd" is the command's first word or first two words (config get, cal zero, ...), or an
error line without "cmd" (the meter names no command when it could not parse one).
Everything else - boot lines, human-mode chatter, answers to someone else's earlier
command, partial lines - is skipped. One command at a time: the meter's input buffer holds
~260 bytes, and a busy meter (`cal zero` measures for seconds, `scope` waits for its
samples) reads the next line only when it is done, so each command waits up to `timeout`
seconds for its answer.

Errors: the port cannot be opened -> PortError (transport.py); no answer in time, the link
lost, the meter restarted, stopped (its `ctmeter-stopped` line) or not running (a REPL
answered) -> DeviceError; the meter answered {"ok": false} -> MeterError (cmd() only)
with the meter's own error text. Error messages name the command, never the typed line (it
may carry a password).
"""

from __future__ import annotations

import json
import time

import serial
from meter.board import STOP_PREFIX  # the firmware's own
from meter.console import BOOT_PREFIX, MAX_LINE, NO_MEMORY_ERROR  # the firmware's own

from ctmeter import transport as tp
from ctmeter.errors import CommandError

_READ_SLICE_S = 0.05  # how long one serial read may block while waiting for an answer
# `mode` is asked again after this long without an answer (a board reset by opening its port
# misses lines until its console is up: see _handshake)
_HANDSHAKE_S = 5.0
# A meter short of heap drops a line and says so with a constant: this human line, or in
# JSON mode {"ok": false, "error": NO_MEMORY_ERROR} (no "cmd"). The line was not run, so it
# is sent again after a pause, at most _NO_MEMORY_RETRIES times.
NO_MEMORY_LINE = "error: " + NO_MEMORY_ERROR
_NO_MEMORY_RETRIES = 3
_NO_MEMORY_PAUSE_S = 0.3
_RESTORE_S = 5.0  # waiting for the answer to the restoring `mode human` on close
_CHATTER_LINES = 8
_PROMPTS = (b">>> ", b"raw REPL; CTRL-B to exit\r\n>")  # MicroPython is not running the meter


class MeterError(CommandError):
    """The meter answered {"ok": false}: `error` is its message, `answer` the whole dict."""

    def __init__(self, command: str, error: str, answer: dict | None = None):
        super().__init__(f"{command}: {error}" if command else error,
                         exit_code=tp.EXIT_DEVICE)
        self.command = command
        self.error = error
        self.answer = answer or {}


class OutOfMemory(tp.DeviceError):
    """The meter dropped the command for lack of heap, every time it was sent."""


class LinkLost(tp.DeviceError):
    """The serial port failed under us (unplugged, or a native-USB board that reset)."""


def command_name(line: str) -> str:
    """What a command is called in messages: `cal zero 0` -> "cal zero", `scope 0 9` ->
    "scope"; never an argument (it may be a password)."""
    words = line.split()
    if len(words) > 1 and words[1].isalpha() and words[1].islower():
        return f"{words[0]} {words[1]}"
    return words[0] if words else ""


def _answers_to(line: str) -> set:
    """The "cmd" values an answer to `line` may carry: the first word or the first two
    (the meter's two-word commands: config get, cal zero, ...)."""
    words = line.split()
    return {words[0], " ".join(words[:2])}


def check_line(line: str) -> str:
    """The line as it will be sent, or CommandError (usage) if the meter would refuse it."""
    text = line.strip()
    if not text:
        raise CommandError("empty command", "try `help`", tp.EXIT_USAGE)
    if any(c < " " and c != "\t" or c == "\x7f" for c in text):
        raise CommandError("control characters in the command", exit_code=tp.EXIT_USAGE)
    if len(text.encode()) > MAX_LINE:
        raise CommandError(f"command longer than the meter's {MAX_LINE}-byte line",
                           exit_code=tp.EXIT_USAGE)
    return text


class MeterLink:
    """A meter's console in JSON mode over an open pyserial port (see the module doc)."""

    def __init__(self, ser, port: str, timeout: float = 30.0):
        self.ser = ser
        self.port = port
        self.timeout = float(timeout)
        self.previous_mode = None  # the console mode found on open ("human" or "json")
        self.restore_mode = None  # the mode left on close (defaults to previous_mode)
        self.boot = None  # the last ctmeter-boot line's JSON seen on this link
        self.last_line = ""  # the last answer, exactly as received
        self._buf = bytearray()
        self._json = False
        self._chatter = []  # the last lines that were no answer (a traceback explains a stop)

    # ---------------------------------------------------------------- lifecycle
    @classmethod
    def open(cls, port: str, timeout: float = 30.0, baudrate: int = 115200) -> MeterLink:
        """Open `port`, switch the console to JSON mode; use as a context manager."""
        ser = tp.open_serial(port, baudrate=baudrate, timeout=_READ_SLICE_S)
        link = cls(ser, port, timeout)
        try:
            link._handshake()
        except BaseException:
            link._close_port()
            raise
        return link

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Restore the console mode found on open (best effort) and close the port."""
        try:
            want = self.restore_mode or self.previous_mode
            if self.ser is not None and self._json and want == "human":
                self._ask_mode("mode human", "human", time.monotonic() + _RESTORE_S)
        except (CommandError, OSError, serial.SerialException):
            pass  # the link is gone: nothing to restore
        finally:
            self._close_port()

    def _close_port(self):
        if self.ser is not None:
            try:
                self.ser.close()
            except (OSError, serial.SerialException):
                pass
            self.ser = None

    def _handshake(self):
        deadline = time.monotonic() + self.timeout
        self._drain()
        mode = self._ask_mode("mode", None, deadline)
        if mode is None:
            raise self._silent("mode")
        self.previous_mode = mode
        if mode != "json" and self._ask_mode("mode json", "json", deadline) is None:
            raise self._silent("mode json")
        self._json = True

    def _ask_mode(self, line, want, deadline):
        """Send a `mode` line until it is answered (with `want`, if given) before `deadline`.

        Repeating is harmless (`mode` changes nothing, `mode json` twice is `mode json`) and
        needed: a board whose auto-reset fires on open, or one still booting, misses lines
        until its console is up (a boot line tells), and a meter short of memory drops a
        line and says so."""
        while time.monotonic() < deadline:
            self._send(line)
            retry_at = min(deadline, time.monotonic() + _HANDSHAKE_S)
            while True:
                got = self._readline(retry_at)
                if got is None or _dropped(got):
                    if got is not None:
                        time.sleep(_NO_MEMORY_PAUSE_S)
                    break  # ask again
                if got.startswith(BOOT_PREFIX):
                    self._note_boot(got)
                    break  # asked before the console was up
                if got.startswith("mode: "):
                    mode = got[6:].strip()
                else:
                    msg = _json_answer(got)
                    if msg is None:
                        self._check_repl(got)
                        continue
                    if msg.get("cmd") != "mode" or not msg.get("ok"):
                        continue
                    mode = msg.get("mode")
                if mode in ("human", "json") and (want is None or mode == want):
                    return mode
        return None

    # ---------------------------------------------------------------- commands
    def cmd(self, line: str, timeout: float | None = None, progress=None,
            retries: int = _NO_MEMORY_RETRIES) -> dict:
        """The meter's answer to `line` without "ok"/"cmd"; MeterError on {"ok": false}."""
        answer = self.cmd_raw(line, timeout, progress, retries)
        if not answer.get("ok"):
            raise MeterError(command_name(line), str(answer.get("error") or "failed"), answer)
        return {k: v for k, v in answer.items() if k not in ("ok", "cmd")}

    def cmd_raw(self, line: str, timeout: float | None = None, progress=None,
                retries: int = _NO_MEMORY_RETRIES) -> dict:
        """The meter's whole answer to `line` (ok, cmd, error included); never raises on
        {"ok": false}. `progress(nbytes)` is called as the answer's bytes arrive; a line the
        meter dropped for lack of memory is sent again up to `retries` times, then
        OutOfMemory."""
        text = check_line(line)
        name = command_name(text)
        names = _answers_to(text)
        if "reboot" in names:
            raise CommandError("use MeterLink.reboot() for `reboot` (the meter answers with "
                               "its boot line)", exit_code=tp.EXIT_USAGE)
        if "mode" in names:
            raise CommandError("the link keeps the console in JSON mode; set "
                               "link.restore_mode to choose the mode left on close",
                               exit_code=tp.EXIT_USAGE)
        self._drain()
        self._send(text)
        seconds = self.timeout if timeout is None else float(timeout)
        deadline = time.monotonic() + seconds
        received = 0
        dropped = 0
        while True:
            line_in = self._readline(deadline, progress, received)
            if line_in is None:
                raise _timeout_error(name, self.port, seconds)
            received += len(line_in) + 1
            if _dropped(line_in):
                dropped += 1
                if dropped > retries:
                    raise OutOfMemory(f"the meter is out of memory: `{name}` dropped "
                                      f"{dropped} times", "its heap is too small or "
                                      "fragmented: see `ctmeter diag` (heap), reboot it")
                time.sleep(_NO_MEMORY_PAUSE_S)
                self._send(text)
                continue
            if line_in.startswith(BOOT_PREFIX):
                self._note_boot(line_in)
                self._json = False  # a restarted console is in its configured mode again
                raise tp.DeviceError(f"the meter restarted while running `{name}`",
                                     "it reset (watchdog, power, reboot); run the command "
                                     "again")
            msg = _json_answer(line_in)
            if msg is None:
                self._check_repl(line_in)
                continue
            if msg.get("cmd") in names or ("cmd" not in msg and not msg.get("ok")):
                self.last_line = line_in
                return msg

    def reboot(self, timeout: float | None = None) -> dict:
        """Send `reboot`, wait for the meter's boot line (its JSON), and re-enter JSON mode.
        A port that goes away meanwhile (a native-USB board re-enumerating) is opened again."""
        self._drain()
        self._send("reboot")
        seconds = self.timeout if timeout is None else float(timeout)
        deadline = time.monotonic() + seconds
        while True:
            try:
                line = self._readline(deadline)
            except LinkLost:
                # a native-USB board's port goes away while it resets: open it again
                self._close_port()
                self.ser = tp.reopen_serial(self.port, deadline, timeout=_READ_SLICE_S)
                if self.ser is None:
                    raise
                self._buf.clear()
                continue
            if line is None:
                raise tp.DeviceError(f"no boot line from {self.port} within {seconds:g} s "
                                     "after `reboot`", "is the meter running?")
            if line.startswith(BOOT_PREFIX):
                self._note_boot(line)
                break
        self._json = False
        restore = self.restore_mode or self.previous_mode
        self._handshake()  # the console restarted in its configured mode
        self.restore_mode = restore
        return self.boot

    # ---------------------------------------------------------------- serial I/O
    def _send(self, text):
        try:
            self.ser.write(text.encode() + b"\r\n")
            self.ser.flush()
        except (OSError, serial.SerialException) as exc:
            raise LinkLost(f"serial link to {self.port} lost ({exc})",
                           "is the cable plugged in?") from exc

    def _read_some(self):
        try:
            return self.ser.read(max(1, self.ser.in_waiting))
        except (OSError, serial.SerialException) as exc:
            raise LinkLost(f"serial link to {self.port} lost ({exc})",
                           "is the cable plugged in?") from exc

    def _readline(self, deadline, progress=None, received=0):
        """The next complete line (stripped text) before `deadline`, or None."""
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                raw = bytes(self._buf[:nl])
                del self._buf[:nl + 1]
                line = raw.decode("utf-8", "replace").strip()
                if line.startswith(STOP_PREFIX):
                    raise tp.stopped_error(self.port, line, self._chatter)
                return line
            if time.monotonic() >= deadline:
                if self._buf.endswith(_PROMPTS[0]) or self._buf.endswith(_PROMPTS[1]):
                    raise self._repl_error()
                return None
            chunk = self._read_some()
            if chunk:
                self._buf += chunk
                if progress is not None:
                    progress(received + len(self._buf))

    def _drain(self):
        """Skip whatever arrived before a command (stale answers, chatter); keep boot info."""
        while True:
            try:
                waiting = self.ser.in_waiting
            except (OSError, serial.SerialException) as exc:
                raise LinkLost(f"serial link to {self.port} lost ({exc})") from exc
            if not waiting:
                break
            self._buf += self._read_some()
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                break
            line = bytes(self._buf[:nl]).decode("utf-8", "replace").strip()
            del self._buf[:nl + 1]
            if line.startswith(BOOT_PREFIX):
                self._note_boot(line)
            elif line and not line.startswith("{"):
                self._chatter = (self._chatter + [line])[-_CHATTER_LINES:]

    def _note_boot(self, line):
        try:
            self.boot = json.loads(line[len(BOOT_PREFIX):])
        except ValueError:
            self.boot = {}

    def _check_repl(self, line):
        # The meter is not running: MicroPython's REPL tried to execute our command.
        if line.startswith("NameError:") or line.startswith(">>> "):
            raise self._repl_error()
        self._chatter = (self._chatter + [line])[-_CHATTER_LINES:]

    def _repl_error(self):
        why = ""
        for line in reversed(self._chatter):  # the meter's last words, e.g. "MemoryError: "
            head = line.split(":", 1)[0]
            if head.endswith("Error") or head.endswith("Exception") or head == "KeyboardInterrupt":
                why = f" (it stopped with {line[:120]})"
                break
        return tp.DeviceError(f"the MicroPython REPL answered on {self.port}, not the meter{why}",
                              "the meter is stopped: reset the board (or `ctmeter deploy`) to "
                              "start main.py")

    def _silent(self, what):
        if self._buf.endswith(_PROMPTS[0]) or self._buf.endswith(_PROMPTS[1]):
            return self._repl_error()
        return tp.DeviceError(f"no meter console answered `{what}` on {self.port}",
                              "is the meter running (ctmeter deploy) and this its port? "
                              "a board in the REPL does not answer")


def _dropped(line):
    """True for the meter's "out of memory, line dropped" notice, human or JSON."""
    if line == NO_MEMORY_LINE:
        return True
    msg = _json_answer(line) if line.startswith('{"ok": false') else None
    return msg is not None and "cmd" not in msg and msg.get("error") == NO_MEMORY_ERROR


def _json_answer(line):
    """The line as an answer dict (a JSON object with "ok"), or None."""
    if not line.startswith("{"):
        return None
    try:
        msg = json.loads(line)
    except ValueError:
        return None  # a partial or garbled line
    if not isinstance(msg, dict) or "ok" not in msg:
        return None
    return msg


def _timeout_error(name, port, seconds):
    return tp.DeviceError(f"no answer to `{name}` from {port} within {seconds:g} s",
                          "is the meter running? a busy meter may need a longer --timeout")
