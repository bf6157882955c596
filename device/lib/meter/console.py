# SPDX-License-Identifier: MIT
"""The device console: line commands on stdin while the meter keeps measuring.

    con = Console({"status": on_status}, print, mode="human", channels=2, inputs=3,
                  source=board.console_source(), app_errors=(ConfigError,),
                  secrets=lambda: (cfg.password, cfg.token),
                  commands="meter.commands", context=meter, drop=True)
    con.register("cal zero", on_cal_zero)       # argument spec comes from COMMANDS
    ...
    con.poll()          # in the main loop, between sampling bursts: bounded work, no
                        # allocation while nothing has arrived

This module is the resident part: it assembles input bytes into lines in a preallocated
buffer, keeps the console's state (mode, bound handlers) and calls a command's handler.
What a line needs besides is loaded for it (meter.modules): the command table, strict
argument parsing and help (meter.console_cmds), then, with the parser dropped again when
drop=True (the firmware), the handler's `commands` module, and the answer's redaction and
formatting (meter.console_out). All of it, with the `transient` modules the commands load,
is dropped after the answer, so ~30 KB of code that is used a few times a day neither
occupies the heap the meter needs nor piles up within one line (`config set` loads the
config rules while the parser is gone).

A command's handler is, in this order: a callable bound with register() (or passed in
`handlers`), else the function of the `commands` module named like the command with "_"
for spaces (`cal zero` -> cal_zero(context, ch)). The command set and every argument spec,
the argument rules, the response format and the redaction rules are documented in
meter.console_cmds.

Input lines: \\r, \\n and \\r\\n end a line; backspace/DEL edit; at most MAX_LINE bytes
(longer lines are answered "line too long" as a whole). A handler may keep the meter
running (and so call poll() again): that nested poll returns at once, input waits.
"""

# %-formatting is MicroPython's cheapest string formatting.
# ruff: noqa: UP031

from meter import modules

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


MAX_LINE = const(240)  # bytes per line; stdin holds ~260, so one line fits whole
_POLL_BYTES = const(64)  # bytes taken per poll() call: bounds the time stolen from sampling
CMDS = const("meter.console_cmds")  # reads a line (per line, dropped before the handler runs)
OUT = const("meter.console_out")  # prints the answer (per answer)
# What the meter prints on its serial port besides answers; host tools import these.
BOOT_PREFIX = const("ctmeter-boot ")  # + JSON, once per start (meter.app)
NO_MEMORY_ERROR = const("out of memory, line dropped")
# built once at import: printing them when the heap is exhausted allocates nothing new
_NO_MEMORY = "error: " + NO_MEMORY_ERROR
_NO_MEMORY_JSON = '{"ok": false, "error": "' + NO_MEMORY_ERROR + '"}'

# The commands that take no arguments, answered without loading the parser (meter.
# console_cmds, ~7 KB of code on the 64-bit port) when typed exactly: `status` and `read`
# are what host tools ask over and over. tests/test_console.py checks this is the set of
# COMMANDS without arguments; anything else typed goes through the parser. So is `mode`
# with a valid mode or none (host tools open with `mode json`), answered here.
_BARE = const(("status", "read", "adc", "cal show", "reboot"))
_MODES = const(("mode", "mode json", "mode human"))

_BS = const(8)
_LF = const(10)
_CR = const(13)
_DEL = const(127)


class ConsoleError(Exception):
    """A line or its arguments are malformed; handlers may raise it too."""


class LineReader:
    """Assembles bytes into lines in a preallocated buffer; push() allocates nothing."""

    def __init__(self, max_line=MAX_LINE):
        self._buf = bytearray(max_line)
        self._max = max_line
        self._n = 0
        self._over = False
        self._cr = False

    def push(self, b):
        """Add one byte; True when a line has ended (then call take())."""
        if b == _LF and self._cr:  # the LF of a CRLF
            self._cr = False
            return False
        self._cr = b == _CR
        if b == _CR or b == _LF:
            return True
        if self._over:
            return False
        if b == _BS or b == _DEL:
            n = self._n
            while n:  # drop one whole UTF-8 character
                n -= 1
                if self._buf[n] & 0xC0 != 0x80:
                    break
            self._n = n
            return False
        if self._n >= self._max:
            self._over = True
            return False
        self._buf[self._n] = b
        self._n += 1
        return False

    def take(self):
        """The ended line as bytes, as typed (b"" when empty), and reset; ConsoleError if it
        was too long. Its content is checked when it is handled."""
        n, over = self._n, self._over
        self._n, self._over = 0, False
        if over:
            raise ConsoleError("line too long (max %d bytes)" % self._max)
        return bytes(self._buf[:n])


class Console:
    def __init__(self, handlers=None, out=print, mode="human", channels=1, inputs=None,
                 source=None, app_errors=(), secrets=None, max_line=MAX_LINE, commands=None,
                 context=None, drop=False, transient=(), stream=None):
        if mode not in ("human", "json"):
            raise ValueError("mode must be 'human' or 'json'")
        self.out = out
        # JSON answers are written to `stream` (a .write(str) object) piece by piece when
        # given, instead of as one string through out() (meter.console_out.respond)
        self.stream = stream
        self.mode = mode
        self.channels = channels
        self.inputs = channels if inputs is None else inputs
        self.source = source
        self.errors = (ConsoleError,) + tuple(app_errors)
        self.secrets = secrets
        self.max_line = max_line
        self.commands = commands
        self.context = context
        self.drop = drop
        self.transient = transient  # more modules the commands load, dropped with them
        self.bound = {}  # name -> (handler, args or None, help or None)
        self._reader = LineReader(max_line)
        self._busy = False  # a handler is running: poll() must not re-enter
        for name in handlers or ():
            self.register(name, handlers[name])

    def register(self, name, handler, args=None, help=None):
        """Bind a handler; args/help override (or, for a new command, define) the spec."""
        if name in ("help", "mode"):
            raise ValueError(name + " is answered by the console itself")
        if not 1 <= len(name.split()) <= 2:
            raise ValueError("command names have one or two words: " + repr(name))
        for i, a in enumerate(args or ()):
            if getattr(a[1], "rest", False) and i != len(args) - 1:
                raise ValueError(name + ": a rest-of-line argument must come last")
        self.bound[name] = (handler, args, help)

    # -- input

    def poll(self, max_bytes=_POLL_BYTES):
        """Take at most max_bytes from the source and answer every line completed.
        Returns the number of responses. Allocates nothing when no input is waiting."""
        src = self.source
        if self._busy or src is None or not src.any():
            return 0
        reader = self._reader
        handled = 0
        while max_bytes > 0 and src.any():
            b = src.read1()
            if b < 0:
                break
            max_bytes -= 1
            if reader.push(b) and self._line_done():
                handled += 1
        return handled

    def feed(self, data):
        """Push bytes as if they arrived on the source; returns the number of responses."""
        if self._busy:
            raise ConsoleError("console busy")
        handled = 0
        for b in data:
            if self._reader.push(b) and self._line_done():
                handled += 1
        return handled

    def _line_done(self):
        try:
            line = self._reader.take()
        except ConsoleError as e:
            line = e
        except MemoryError:
            # no room for the line's bytes: it is lost, but still answered (a host types it
            # again on this answer); the reader was reset before the copy
            self._no_memory()
            return True
        if not line:
            return False
        return self.handle(line)

    def handle(self, line):
        """Answer one complete line (bytes or str, or the ConsoleError of an unusable line)
        with exactly one response; True if there was one (a blank line has none)."""
        self._busy = True
        try:
            call = self._bare(line)
            if call is None:
                call = modules.use(CMDS).handle(self, line)
            if call is True or call is False:
                return call
            if self.drop:  # the parser's code leaves the heap before the handler runs
                modules.drop(CMDS)
            return self._call(call[0], call[1])
        except MemoryError:
            # the parser could not be loaded (or a handler ran out): the line is lost, the
            # meter is not; the message is a constant, printing it allocates nothing new
            self._no_memory()
            return True
        finally:
            self._busy = False
            if self.drop:
                modules.drop(CMDS)
                modules.drop(OUT)
                if self.commands:
                    modules.drop(self.commands)
                for name in self.transient:
                    modules.drop(name)

    def _bare(self, line):
        # (name, []) for a line that is exactly a command without arguments (surrounding
        # blanks aside) that no bound handler gave arguments to, True when it was `mode`
        # (answered here); else None: the parser reads it
        if isinstance(line, Exception) or len(line) > 12:
            return None
        try:
            name = (line if isinstance(line, str) else line.decode()).strip(" \t")
        except ValueError:  # not UTF-8: the parser says why
            return None
        if name in _MODES:
            if name != "mode":
                self.mode = name[5:]
            modules.use(OUT).respond(self, "mode", {"mode": self.mode}, None)
            return True
        if name not in _BARE:
            return None
        bound = self.bound.get(name)
        if bound is not None and bound[1]:
            return None
        return name, []

    def _no_memory(self):
        self.out(_NO_MEMORY_JSON if self.mode == "json" else _NO_MEMORY)

    def _call(self, name, values):
        # The handler: bound with register(), else the commands module's function (which
        # takes the context first). Its exceptions become the answer's error.
        bound = self.bound.get(name)
        fn = bound[0] if bound is not None else None
        if fn is None and self.commands:
            fn = getattr(modules.use(self.commands), name.replace(" ", "_"), None)
            if fn is not None:
                values.insert(0, self.context)
        result = error = None
        if fn is None:
            error = "not available"
        else:
            # A handler may run the meter loop (scope, cal zero collect live windows),
            # which polls the console again: that poll leaves input waiting until we return.
            try:
                result = fn(*values)
            except self.errors as e:
                error = str(e) or type(e).__name__
            except Exception as e:  # noqa: BLE001 - reported, the meter keeps running
                error = "internal error: " + type(e).__name__
            if error is None and result is None:
                result = {}
            elif error is None and not isinstance(result, dict):
                result, error = None, "internal error: handler returned no dict"
        fn = values = None
        modules.use(OUT).respond(self, name, result, error)
        return True
