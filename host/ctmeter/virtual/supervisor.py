# SPDX-License-Identifier: MIT
"""Run the firmware as a virtual board behind a pseudo-terminal.

    board = VirtualBoard(flash_dir, source)      # source: e.g. a sensor-model stream
    board.start()
    print(board.port)                            # /dev/pts/N: mpremote, ctmeter console, ...
    ...
    board.stop()

The chip is the MicroPython unix port running chip/chip.py in `flash_dir` (the simulated
littlefs): boot.py, main.py, then a REPL that speaks mpremote's raw REPL (chip/chip_repl.py,
loaded only then: while the meter runs, the chip itself holds 3.4 KB of heap). The supervisor
relays bytes between the pty and the chip's stdin/stdout, turns Ctrl-C into SIGINT (the
chip's UART interrupt; sent while the chip waits in a system call, see _interrupt), and
restarts the chip when it resets: hard reset (machine.reset(), the meter's `reboot`, a
watchdog) runs boot.py and main.py again; a soft reset from the raw REPL skips main.py, as
on a board. The flash directory persists across all of them.
"""

import os
import select
import shutil
import signal
import subprocess
import threading
import time
import tty
from contextlib import contextmanager
from pathlib import Path

from ctmeter.paths import DEVICE, micropython_binary, micropython_path
from ctmeter.virtual import rom_partition
from ctmeter.virtual.feed import SensorFeed

CHIP_DIR = Path(__file__).with_name("chip")
HARD_RESET, SOFT_RESET, SOFT_RESET_RAW = 99, 98, 97
# how a chip run ends when SIGINT finds no handler: killed by the signal, or MicroPython's
# exit status for an uncaught KeyboardInterrupt
_INTERRUPTED = (-signal.SIGINT, 130)
_STALL_S = 2.0  # a port not read for this long is stalled: its output is dropped
_INTERRUPT_WAIT_S = 3.0  # longest wait for a chip to enter a system call (see _interrupt)
_TRANSCRIPT_BYTES = 32768  # how much of the chip's recent output `transcript()` keeps


def _stopped_in_syscall(pid):
    """For a process just sent SIGSTOP: True if it stopped inside a system call, False if in
    its own code, None if /proc does not tell (no /proc/PID/syscall on this kernel)."""
    for _ in range(200):  # SIGSTOP is asynchronous: wait until it has stopped
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return None
        if state in ("T", "t"):
            break
        if state in ("Z", "X"):
            return False
        time.sleep(0.0002)
    else:
        return False
    try:
        with open(f"/proc/{pid}/syscall") as f:
            first = f.read().split()[0]
    except (OSError, IndexError):
        return None
    return first not in ("running", "-1")


class VirtualBoard:
    def __init__(self, flash_dir, source, clock="fast", timelapse_s=0.0, heapsize="64k",
                 epoch=None, extra_env=None, firmware="repo", romfs=False):
        self.flash_dir = Path(flash_dir)
        self.flash_dir.mkdir(parents=True, exist_ok=True)
        self.source = source
        self.clock = clock
        self.timelapse_s = timelapse_s
        self.heapsize = heapsize
        self.epoch = epoch
        self.extra_env = dict(extra_env or {})
        if firmware not in ("repo", "flash"):
            raise ValueError("firmware is 'repo' or 'flash'")
        # "repo": the firmware runs from the checkout's device/ (boot.py and main.py are
        # copied to the flash if missing), for tests and `make sim`.
        # "flash": only what was deployed to the flash runs, as on a board (lib/ in the flash).
        self.firmware = firmware
        # romfs=True: the chip has a ROMFS partition (rom_partition.py), as a MicroPython
        # built with ROMFS has; `ctmeter deploy` then puts lib/ there. Kept in a file beside
        # the flash folder (rom_partition.path_for), so it survives resets like the flash.
        self.rom = None
        if romfs:
            if not rom_partition.available():
                raise ValueError("a ROM partition needs the PyPI unix port (micropython_run) "
                                 "in this Python, not MICROPYTHON=<binary>")
            self.rom = rom_partition.path_for(self.flash_dir)
        self.port = None
        self._note = self.flash_dir.with_name(self.flash_dir.name + ".reset")
        self.resets = []  # exit codes of past chip runs
        self.feed = None
        self._master = self._slave = None
        self._child = None
        self._mode = "power-on"
        self._stop = threading.Event()
        self._hold_until = 0.0
        self._stalled = False
        self._child_lock = threading.Lock()
        self._threads = []
        self._transcript = bytearray()
        self._halted = False
        self._prompt = threading.Event()  # the chip's last output ended in the REPL prompt
        self._signal_lock = threading.Lock()
        self.safe_interrupts = 0  # Ctrl-C delivered while the chip was in a system call

    def transcript(self):
        """The chip's last output (up to _TRANSCRIPT_BYTES, whether or not anybody read the
        port) with a `[chip exit CODE -> MODE]` line at each restart: what a test prints
        when a board did something it did not expect."""
        return bytes(self._transcript).decode(errors="replace")

    def _note_output(self, data):
        if data.endswith(b">>> "):
            self._prompt.set()
        self._transcript += data
        if len(self._transcript) > _TRANSCRIPT_BYTES:
            del self._transcript[:-_TRANSCRIPT_BYTES]

    # lifecycle
    def start(self):
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        # Output with nobody reading the port is dropped (as a board's USB does), never
        # allowed to block the chip for long (see _emit).
        os.set_blocking(self._master, False)
        self.port = os.ttyname(self._slave)
        if self.firmware == "repo":
            for name in ("boot.py", "main.py"):
                if not (self.flash_dir / name).exists() and (DEVICE / name).exists():
                    shutil.copy(DEVICE / name, self.flash_dir / name)
        if self.rom is not None:
            rom_partition.ensure(self.rom)
        if self.epoch is None:
            self.epoch = time.time()
        self.feed = SensorFeed(self.source, str(self.flash_dir.parent)).start()
        self._spawn("power-on")
        for target in (self._pump_in, self._pump_out_supervise):
            t = threading.Thread(target=target, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self, graceful=False, wait_s=5.0):
        """Power the board off. graceful=True first sends Ctrl-C (as `make sim` does on
        its own Ctrl-C) and waits up to wait_s for the REPL prompt, so a meter saves its
        energy counter before the power goes; otherwise it is a power cut."""
        if graceful:
            with self._child_lock:
                child = self._child
            if child is not None and child.poll() is None:
                self._prompt.clear()
                self._interrupt(child)
                self._prompt.wait(wait_s)
        self._stop.set()
        self._end_child()
        if self.feed:
            self.feed.stop()
        # The relay threads must be gone before the pty's fds are closed: a thread still in
        # os.read(fd) after the close reads whatever file gets that fd number next (another
        # process's pipe, a socket), stealing its bytes.
        for t in self._threads:
            t.join(5)
            if t.is_alive():  # the chip was restarting as we stopped: end that run too
                self._end_child()
                t.join(5)
        for fd in (self._master, self._slave):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _end_child(self):
        with self._child_lock:
            child = self._child
        if child and child.poll() is None:
            child.terminate()
            try:
                child.wait(5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def power_cut(self):
        """Kill the chip at this instant (no clean shutdown) and power it on again."""
        with self._child_lock:
            child = self._child
        child.kill()

    @contextmanager
    def halted(self):
        """Freeze the chip (as a debugger halts it) for the duration of the block: nothing
        runs and it resumes where it stopped. On the fast and realtime clocks the halted
        time then counts as time that passed (the board's clock ran on); on the exact clock
        it does not."""
        with self._child_lock:
            child = self._child
        with self._signal_lock:
            self._halted = True
            os.kill(child.pid, signal.SIGSTOP)
        try:
            yield self
        finally:
            with self._signal_lock:
                os.kill(child.pid, signal.SIGCONT)
                self._halted = False

    # internals
    def _env(self):
        env = dict(os.environ)
        # as on a board: the flash root and its lib/ (relative to the chip's cwd)
        path = [str(CHIP_DIR)]
        if self.firmware == "repo":
            path.append(micropython_path())
        path += ["", "lib"]
        env["MICROPYPATH"] = os.pathsep.join(path)
        env["CTMETER_FEED"] = self.feed.env_value
        env["CTMETER_RESET_NOTE"] = str(self._note)
        env["CTMETER_CLOCK"] = self.clock
        env["CTMETER_TIMELAPSE_S"] = str(self.timelapse_s)
        # the wall clock at the first power-on (now, unless given): runs on across resets
        env["CTMETER_EPOCH"] = str(int(self.epoch))
        last = self.feed.last_frame
        if last is not None:  # a restart: the world goes on from the last sample taken
            env["CTMETER_SIM_START_NS"] = str(last * 1000000000 // self.source.sample_rate_hz)
        env.update(self.extra_env)
        return env

    def _spawn(self, mode):
        # The chip starts with SIGINT ignored: a Ctrl-C that comes while it is starting (the
        # PyPI unix port boots a CPython first) is lost, as on a board still booting, instead
        # of killing it; MicroPython takes SIGINT over once chip.py runs. Its own session:
        # a terminal's Ctrl-C goes to the host program, not (unsafely, see _interrupt) to it.
        mp = [micropython_binary()] if self.rom is None else rom_partition.command(self.rom)
        cmd = ["/bin/sh", "-c", 'trap "" INT; exec "$@"', "chip", *mp,
               "-X", f"heapsize={self.heapsize}", str(CHIP_DIR / "chip.py"), mode]
        child = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, cwd=self.flash_dir, env=self._env(),
                                 bufsize=0, start_new_session=True)
        with self._child_lock:
            self._child = child
            self._mode = mode

    def _pump_in(self):
        """pty -> chip stdin; Ctrl-C becomes SIGINT, as the UART interrupt does on a board."""
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._master], [], [], 0.2)
                if not ready:
                    continue
                data = os.read(self._master, 4096)
            except BlockingIOError:
                continue
            except OSError:
                return
            for b in data:
                if b == 3:
                    # One interrupt per burst of Ctrl-C: a second SIGINT landing while the
                    # first is being handled would break out of the handler itself.
                    if time.monotonic() >= self._hold_until:
                        with self._child_lock:
                            child = self._child
                        self._interrupt(child)
                        # let the interrupt land before the next bytes reach the chip
                        self._hold_until = time.monotonic() + 0.15
                    continue
                delay = self._hold_until - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                self._write_child(bytes([b]))

    def _interrupt(self, child):
        """Ctrl-C: SIGINT to the chip, at an instant where it is blocked in a system call.

        The PyPI unix port is built without a GIL, so MICROPY_ASYNC_KBD_INTR is on: its
        SIGINT handler raises KeyboardInterrupt straight out of whatever C code was running.
        Landing inside the heap's own code (an allocation, a collection, a dict insert) that
        corrupts the heap: in a gc.collect() it left the heap locked for good, and in 1 of
        13 runs of two deploy tests under load a module's globals were found empty. A board
        raises KeyboardInterrupt between bytecodes instead. So the chip is stopped (SIGSTOP),
        and only if it stopped inside a system call (reading its stdin or the sensor feed,
        sleeping: no heap code is half done) does SIGINT go in before it resumes; otherwise
        it resumes and is tried again a moment later. A chip that never makes a system call
        for _INTERRUPT_WAIT_S (a tight loop) gets the signal regardless, as before.
        """
        if child.poll() is not None:
            return
        deadline = time.monotonic() + _INTERRUPT_WAIT_S
        while not self._stop.is_set() and time.monotonic() < deadline:
            with self._signal_lock:  # never resume a chip that halted() froze
                if self._halted:
                    break
                try:
                    os.kill(child.pid, signal.SIGSTOP)
                    try:
                        in_syscall = _stopped_in_syscall(child.pid)
                        if in_syscall is None:
                            break  # no /proc view of it here: plain SIGINT
                        if in_syscall:
                            os.kill(child.pid, signal.SIGINT)
                            self.safe_interrupts += 1
                            return
                    finally:
                        os.kill(child.pid, signal.SIGCONT)
                except ProcessLookupError:
                    return
            time.sleep(0.001)
        try:
            child.send_signal(signal.SIGINT)
        except ProcessLookupError:
            pass

    def _write_child(self, data):
        for _ in range(200):
            if self._stop.is_set():
                return
            with self._child_lock:
                child = self._child
            try:
                child.stdin.write(data)
                return
            except (BrokenPipeError, ValueError, OSError):
                time.sleep(0.01)  # the chip is restarting

    def _emit(self, chunk):
        """Chip output -> pty, every byte while somebody reads the port.

        A reader that is slow for a moment (mpremote on a busy machine) gets everything: the
        write waits for room up to _STALL_S. A port nobody has read for that long is stalled
        and its output is dropped at once until a reader makes room again, so the chip is
        never held up for long (a board's USB-CDC drops output with no host the same way).
        """
        view = memoryview(chunk)
        deadline = None
        while view:
            try:
                view = view[os.write(self._master, view):]
                self._stalled = False
                continue
            except BlockingIOError:
                pass
            except OSError:
                return  # the port is closed: stopping
            if self._stalled or self._stop.is_set():
                return
            now = time.monotonic()
            if deadline is None:
                deadline = now + _STALL_S
            if now >= deadline:
                self._stalled = True
                return
            try:
                select.select([], [self._master], [], min(deadline - now, 0.05))
            except (OSError, ValueError):
                return

    def _reset_reason(self, code):
        """Why the chip run ended: the reason it noted (sim_machine.chip_exit) if any, which
        outlives a Ctrl-C that killed it while it wound down; else its exit status."""
        try:
            noted = self._note.read_text()
            self._note.unlink()
            return int(noted)
        except (OSError, ValueError):
            return code

    def _pump_out_supervise(self):
        """chip stdout -> pty; restart the chip when it resets."""
        while not self._stop.is_set():
            with self._child_lock:
                child = self._child
            while True:
                chunk = child.stdout.read1(4096) if hasattr(child.stdout, "read1") \
                    else child.stdout.read(4096)
                if not chunk:
                    break
                self._note_output(chunk)
                self._emit(chunk)
            code = self._reset_reason(child.wait())
            self.resets.append(code)
            if self._stop.is_set():
                return
            if code in _INTERRUPTED:
                # Ctrl-C reached the chip while it was starting, before its REPL could take
                # it: start the same way again (a board takes Ctrl-C at any time)
                mode = self._mode
            else:
                mode = "soft-raw" if code == SOFT_RESET_RAW else \
                    "soft" if code == SOFT_RESET else "power-on"
            self._note_output(f"\n[chip exit {code} -> {mode}]\n".encode())
            self._spawn(mode)
