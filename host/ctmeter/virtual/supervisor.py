# SPDX-License-Identifier: MIT
"""Run the firmware as a virtual board behind a pseudo-terminal.

    board = VirtualBoard(flash_dir, source)      # source: e.g. a sensor-model stream
    board.start()
    print(board.port)                            # /dev/pts/N: mpremote, ctmeter console, ...
    ...
    board.stop()

The chip is the MicroPython unix port running chip/chip.py in `flash_dir` (the simulated
littlefs): boot.py, main.py, then a REPL that speaks mpremote's raw REPL. The supervisor
relays bytes between the pty and the chip's stdin/stdout, turns Ctrl-C into SIGINT (the
chip's UART interrupt), and restarts the chip when it resets: hard reset (machine.reset(),
the meter's `reboot`, a watchdog) runs boot.py and main.py again; a soft reset from the raw
REPL skips main.py, as on a board. The flash directory persists across all of them.
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
from ctmeter.virtual.feed import SensorFeed

CHIP_DIR = Path(__file__).with_name("chip")
HARD_RESET, SOFT_RESET, SOFT_RESET_RAW = 99, 98, 97


class VirtualBoard:
    def __init__(self, flash_dir, source, clock="fast", timelapse_s=0.0, heapsize="64k",
                 epoch=None, extra_env=None, firmware="repo"):
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
        self.port = None
        self.resets = []  # exit codes of past chip runs
        self.feed = None
        self._master = self._slave = None
        self._child = None
        self._stop = threading.Event()
        self._hold_until = 0.0
        self._child_lock = threading.Lock()
        self._threads = []

    # lifecycle
    def start(self):
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        # Output with nobody reading the port is dropped (as a board's USB does), never
        # allowed to block the chip.
        os.set_blocking(self._master, False)
        self.port = os.ttyname(self._slave)
        if self.firmware == "repo":
            for name in ("boot.py", "main.py"):
                if not (self.flash_dir / name).exists() and (DEVICE / name).exists():
                    shutil.copy(DEVICE / name, self.flash_dir / name)
        self.feed = SensorFeed(self.source, str(self.flash_dir.parent)).start()
        self._spawn("power-on")
        for target in (self._pump_in, self._pump_out_supervise):
            t = threading.Thread(target=target, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self):
        self._stop.set()
        with self._child_lock:
            child = self._child
        if child and child.poll() is None:
            child.terminate()
            try:
                child.wait(5)
            except subprocess.TimeoutExpired:
                child.kill()
        if self.feed:
            self.feed.stop()
        for fd in (self._master, self._slave):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass

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
        os.kill(child.pid, signal.SIGSTOP)
        try:
            yield self
        finally:
            os.kill(child.pid, signal.SIGCONT)

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
        env["CTMETER_CLOCK"] = self.clock
        env["CTMETER_TIMELAPSE_S"] = str(self.timelapse_s)
        if self.epoch is not None:
            env["CTMETER_EPOCH"] = str(int(self.epoch))
        env.update(self.extra_env)
        return env

    def _spawn(self, mode):
        cmd = [micropython_binary(), "-X", f"heapsize={self.heapsize}",
               str(CHIP_DIR / "chip.py"), mode]
        child = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, cwd=self.flash_dir, env=self._env(),
                                 bufsize=0)
        with self._child_lock:
            self._child = child

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
                    with self._child_lock:
                        child = self._child
                    if child.poll() is None:
                        child.send_signal(signal.SIGINT)
                    # let the interrupt land before the next bytes reach the chip
                    self._hold_until = time.monotonic() + 0.15
                    continue
                delay = self._hold_until - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                self._write_child(bytes([b]))

    def _write_child(self, data):
        for _ in range(200):
            with self._child_lock:
                child = self._child
            try:
                child.stdin.write(data)
                return
            except (BrokenPipeError, ValueError, OSError):
                time.sleep(0.01)  # the chip is restarting

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
                try:
                    os.write(self._master, chunk)
                except OSError:
                    pass  # nobody is reading the port: dropped
            code = child.wait()
            self.resets.append(code)
            if self._stop.is_set():
                return
            mode = "soft-raw" if code == SOFT_RESET_RAW else \
                "soft" if code == SOFT_RESET else "power-on"
            self._spawn(mode)
