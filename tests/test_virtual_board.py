# SPDX-License-Identifier: MIT
"""The virtual board speaks MicroPython's REPL well enough for plain mpremote.

These run the real `mpremote` CLI against the pty of a virtual board whose main.py is a
trivial loop (the meter itself is tested elsewhere): exec, fs ls/cp/cat, reset, and Ctrl-C
breaking into a running main.py.
"""

import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ctmeter.virtual.supervisor import HARD_RESET, VirtualBoard

MPREMOTE = str(Path(sys.executable).with_name("mpremote"))

MAIN = """
import time
n = 0
while True:
    n += 1
    time.sleep_ms(20)
"""


class FlatSource:
    nch = 1
    sample_rate_hz = 1000

    def frames(self, k0, n):
        return np.full((n, 1), 2048, dtype=np.uint16)


def start_board(tmp_path, main=MAIN):
    """A virtual board whose flash holds only `main` as main.py, started."""
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "main.py").write_text(main)
    return VirtualBoard(flash, FlatSource()).start()


@pytest.fixture
def board(tmp_path):
    vb = start_board(tmp_path)
    yield vb
    vb.stop()


def mpremote(board, *args, timeout=30):
    proc = subprocess.run([MPREMOTE, "connect", board.port, *args], capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_exec_interrupts_main_and_runs_code(board):
    time.sleep(0.5)  # main.py is running its endless loop
    out = mpremote(board, "exec", "print(6 * 7)")
    # Ctrl-C broke into main.py; mpremote's soft reset then skipped main.py, as on a board
    assert out.split() == ["42"]
    assert board.resets and board.resets[-1] == 97


def test_fs_cp_ls_cat_roundtrip(board, tmp_path):
    local = tmp_path / "data.txt"
    local.write_text("line\n" * 300)
    mpremote(board, "fs", "cp", str(local), ":data.txt")
    assert (board.flash_dir / "data.txt").read_text() == local.read_text()
    listing = mpremote(board, "fs", "ls")
    assert "data.txt" in listing and "main.py" in listing
    assert mpremote(board, "fs", "cat", ":data.txt") == local.read_text()
    back = tmp_path / "back.txt"
    mpremote(board, "fs", "cp", ":data.txt", str(back))
    assert back.read_text() == local.read_text()


def test_reset_restarts_chip_and_keeps_flash(board):
    mpremote(board, "exec", "open('marker', 'w').write('kept')")
    mpremote(board, "reset")
    deadline = time.monotonic() + 10
    while HARD_RESET not in board.resets and time.monotonic() < deadline:
        time.sleep(0.05)
    assert HARD_RESET in board.resets
    assert mpremote(board, "exec", "print(open('marker').read())").strip() == "kept"


def test_exception_in_raw_command_is_reported(board):
    proc = subprocess.run([MPREMOTE, "connect", board.port, "exec", "1/0"], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode != 0
    assert "ZeroDivisionError" in proc.stdout + proc.stderr


def test_halted_freezes_the_chip_and_it_resumes_where_it_stopped(tmp_path):
    vb = start_board(tmp_path, (
        "import time\nn = 0\nwhile True:\n    n += 1\n    print('tick', n)\n"
        "    time.sleep_ms(20)\n"))
    fd = os.open(vb.port, os.O_RDWR | os.O_NOCTTY)

    def ticks(seconds):
        return [int(x) for x in re.findall(rb"tick (\d+)", _read_for(fd, seconds))]

    try:
        before = ticks(0.6)
        with vb.halted():
            ticks(0.2)  # what was already on its way
            during = ticks(0.6)
        after = ticks(0.6)
        resets = list(vb.resets)
    finally:
        os.close(fd)
        vb.stop()
    assert len(before) > 5 and during == []
    assert after and after[0] > before[-1] and resets == []  # the same run, continued


def _read_for(fd, seconds, until=None, whole_line=False):
    """What the port prints within `seconds` (less if `until` shows up first; with
    `whole_line`, once the line holding it has ended: the meter writes a JSON answer in
    pieces, and its "cmd" key comes before the end)."""
    def done(out):
        at = out.find(until) if until else -1
        return at >= 0 and (not whole_line or out.find(b"\n", at) >= 0)

    out, end = b"", time.monotonic() + seconds
    while time.monotonic() < end and not done(out):
        if select.select([fd], [], [], 0.05)[0]:
            out += os.read(fd, 4096)
    return out


def test_ctrl_c_while_the_chip_restarts_is_taken_as_a_board_takes_it(board):
    # mpremote's next command often sends Ctrl-C while the chip is still restarting from
    # the last one's soft reset; it must land in the raw REPL, not kill the chip into a
    # power-on that runs main.py (that made `mpremote fs cp` hang on a busy machine)
    time.sleep(0.5)  # main.py is running its endless loop
    fd = os.open(board.port, os.O_RDWR | os.O_NOCTTY)
    try:
        os.write(fd, b"\r\x03\x03")
        time.sleep(0.3)
        os.write(fd, b"\x01")
        assert b"raw REPL" in _read_for(fd, 5, until=b">")
        os.write(fd, b"\x04")  # soft reset from the raw REPL ...
        assert b"soft reboot" in _read_for(fd, 5, until=b"soft reboot")
        for _ in range(100):   # ... with Ctrl-C all through the restart
            os.write(fd, b"\x03")
            time.sleep(0.005)
        time.sleep(0.5)
        _read_for(fd, 0.3)
        os.write(fd, b"print(6 * 7)\x04")
        out = _read_for(fd, 5, until=b"\x04>")
    finally:
        os.close(fd)
    assert re.search(rb"OK42\r?\n\x04\x04>", out), out
    assert HARD_RESET not in board.resets  # main.py was not started again


def test_a_slow_reader_gets_every_byte(tmp_path):
    # the port's buffer fills while the reader is busy; the chip waits for room rather
    # than drop output somebody is reading
    vb = start_board(tmp_path, (
        "import time\nfor n in range(4000):\n    print('line %05d' % n + '.' * 40)\n"
        "print('end')\nwhile True:\n    time.sleep_ms(50)\n"))
    fd = os.open(vb.port, os.O_RDWR | os.O_NOCTTY)
    out = b""
    try:
        deadline = time.monotonic() + 60
        while b"end\n" not in out and time.monotonic() < deadline:
            out += _read_for(fd, 0.05)
            time.sleep(0.3)  # a reader that is slower than the chip
    finally:
        os.close(fd)
        vb.stop()
    numbers = [int(x) for x in re.findall(rb"line (\d+)", out)]
    assert numbers == list(range(4000))


def test_stop_ends_the_relay_threads_before_closing_the_port(tmp_path):
    # A relay thread left in os.read() on the pty's fd after stop() closed it would read
    # whatever file got that fd number next: in CI it stole the first line a later test's
    # `ctmeter sim` printed to its stdout pipe.
    vb = start_board(tmp_path)
    fd = os.open(vb.port, os.O_RDWR | os.O_NOCTTY)
    try:
        os.write(fd, b"\r\n")
        time.sleep(0.3)
    finally:
        os.close(fd)
    vb.stop()
    assert vb._threads and not any(t.is_alive() for t in vb._threads)
    # and the fd numbers it used are free for others without a reader lurking
    r, w = os.pipe()
    try:
        os.write(w, b"mine\n")
        time.sleep(0.3)
        assert os.read(r, 100) == b"mine\n"
    finally:
        os.close(r)
        os.close(w)


GC_LOOP_MAIN = """\
import gc, time
keep = [str(i) * 3 for i in range(200)]
n = 0
started = False
while True:
    try:
        if not started:  # inside the try: a Ctrl-C in this write is caught too
            started = True
            print("ready")
        while True:
            for _ in range(20):
                junk = [bytearray(16) for _ in range(20)]
                gc.collect()
            time.sleep_us(20)
    except KeyboardInterrupt:
        n += 1
        try:
            more = [bytearray(64) for _ in range(50)]
            ok = all(keep[i] == str(i) * 3 for i in range(200))
            print("interrupt", n, "ok" if ok else "DAMAGED")
        except MemoryError as exc:
            print("interrupt", n, "MemoryError", exc)
"""


def test_ctrl_c_never_lands_inside_the_heap_code(tmp_path):
    # The PyPI unix port raises KeyboardInterrupt straight out of its SIGINT handler
    # (MICROPY_ASYNC_KBD_INTR). Landing in gc.collect() left the heap locked for good
    # ("memory allocation failed, heap is locked"), elsewhere it emptied a module's globals.
    # The supervisor interrupts the chip only where it waits in a system call (here the
    # short sleep), as a board only raises KeyboardInterrupt between bytecodes.
    vb = start_board(tmp_path, GC_LOOP_MAIN)
    fd = os.open(vb.port, os.O_RDWR | os.O_NOCTTY)
    try:
        assert b"ready" in _read_for(fd, 15, until=b"ready")
        # each Ctrl-C once the chip's last line is written (a Ctrl-C while it still writes
        # it lands, correctly, in that write, outside the loop's try)
        time.sleep(0.16)
        out = b""
        for i in range(1, 41):
            os.write(fd, b"\x03")
            # the whole answer ("ok", or 5 s for anything else: the check below shows it)
            out += _read_for(fd, 5, until=b"interrupt %d ok" % i)
            time.sleep(0.16)  # past the supervisor's one-interrupt-per-burst hold
        lines = [ln for ln in out.decode(errors="replace").splitlines()
                 if ln.startswith("interrupt")]
        assert lines == [f"interrupt {i} ok" for i in range(1, 41)], out[-2000:]
        # every one sent while the chip waited in a system call (this needs a readable
        # /proc/PID/syscall: without one the supervisor can only signal blindly)
        assert vb.safe_interrupts == 40
    finally:
        os.close(fd)
        vb.stop()


def test_a_graceful_stop_lets_the_meter_save_its_energy(tmp_path):
    # `make sim` stops on Ctrl-C: the meter gets a Ctrl-C of its own and saves its counter
    # (no scheduled save in this run: the persist interval is a simulated day), so the
    # next sim carries on from the same kWh; a plain stop() is a power cut.
    import json

    from ctmeter.model import Channel, Frontend, Mains, Resistive, Stream
    from ctmeter.virtual.meter import start_virtual_meter
    from meter.flashfs import FlashFS
    from meter.persist import CounterStore

    stream = Stream([Channel(Frontend("sct013-030", ideal=True), Resistive(watts=2000))],
                    mains=Mains.clean(), voltage=Frontend("zmpt101b", ideal=True),
                    sample_rate=4000, seed=1)
    flash = tmp_path / "flash"

    def run_and_stop(graceful):
        vb = start_virtual_meter(flash, stream, {"persist_interval_s": 86400,
                                                 "console": {"mode": "json"}})
        fd = os.open(vb.port, os.O_RDWR | os.O_NOCTTY)
        try:
            assert b"ctmeter-boot" in _read_for(fd, 20, until=b"ctmeter-boot")
            time.sleep(1.0)
            os.write(fd, b"status\r\n")
            out = _read_for(fd, 10, until=b'"cmd": "status"', whole_line=True)
            line = [ln for ln in out.splitlines() if b'"cmd": "status"' in ln]
            assert line, vb.transcript()[-2000:]
            kwh = float(json.loads(line[0])["energy_kwh"][0])
        finally:
            os.close(fd)
            vb.stop(graceful=graceful)
        store = CounterStore(FlashFS(str(flash)))
        store.load(channels=4)
        return kwh, store.energy[0] / 1e6  # mWh -> kWh

    shown, saved = run_and_stop(graceful=True)
    assert shown > 0.05  # 2 kW for well over a simulated minute
    assert saved >= shown - 0.001  # all of it, up to the status line's 1 Wh rounding
    shown2, saved2 = run_and_stop(graceful=False)
    assert shown2 > saved + 0.05  # it carried on from the saved counter ...
    assert saved2 == pytest.approx(saved, abs=1e-9)  # ... and a power cut saved nothing new


WORLD_MAIN = """
import os
from array import array
from meter.board_unix import UnixBoard
b = UnixBoard([34], None, 11, 1000)
buf = array('H', range(100))
b.sleep_ms(%d)
b.read_frames(buf, 0, 100)
print('WORLD', b.unix_time(), b.ticks_ms())
try:
    os.stat('once')
except OSError:
    open('once', 'w').close()
    import machine
    machine.reset()
"""


def _worlds(out):
    return len(re.findall(rb"WORLD \d+ \d+\r?\n", out))


def _read_until(fd, seconds, count):
    """Read the port until `count` whole WORLD lines have come (or `seconds` passed)."""
    out, end = b"", time.monotonic() + seconds
    while time.monotonic() < end and _worlds(out) < count:
        if select.select([fd], [], [], 0.05)[0]:
            out += os.read(fd, 4096)
    return out


@pytest.mark.parametrize("how", ["reset", "power_cut"])
def test_a_reset_does_not_rewind_the_world(tmp_path, how):
    """After a reset (or a power cut) the chip's run starts where the world was: the sensor
    feed and the wall clock go on from the last sample taken; the ticks start again."""
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "main.py").write_text(WORLD_MAIN % 60000)
    if how == "power_cut":
        (flash / "once").write_text("")  # main.py does not reset by itself
    vb = VirtualBoard(flash, FlatSource(), epoch=1_700_000_000).start()
    fd = os.open(vb.port, os.O_RDWR | os.O_NOCTTY)
    try:
        out = _read_until(fd, 15, 1)
        frames_before = vb.feed.last_frame
        if how == "power_cut":
            vb.power_cut()
        out += _read_until(fd, 15, 2 - _worlds(out))
    finally:
        os.close(fd)
        vb.stop()
    runs = [(int(t), int(k)) for t, k in re.findall(rb"WORLD (\d+) (\d+)", out)]
    assert len(runs) == 2, out
    (t1, k1), (t2, k2) = runs
    # each run sleeps 60 s, then reads 0.1 s of samples: the second starts after the first
    assert t1 >= 1_700_000_060 and t2 >= t1 + 60, runs
    assert 60000 <= k1 < 61000 and 60000 <= k2 < 61000, runs  # ticks count from each start
    assert frames_before >= 60100 and vb.feed.last_frame >= frames_before + 60100, (
        frames_before, vb.feed.last_frame)  # frames at 1 kHz
