# SPDX-License-Identifier: MIT
"""`ctmeter sim` end to end: virtual board -> HTTP -> collector on SQLite -> printed readings,
and the simulated load changed with --load and by lines typed on its stdin."""

import os
import queue
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
from ctmeter.model import Channel, Frontend, Inductive, Mains, Profile, Resistive, Standby, Stream
from ctmeter.sim_cmd import LoadControl, LoadSpecError, parse_load, stop_in
from ctmeter.transport import EXIT_USAGE


def _sim(tmp_path, *extra):
    proc = subprocess.run(
        [sys.executable, "-m", "ctmeter", "sim", "--clock", "fast", "--duration", "5",
         "--http", "127.0.0.1:0", "--dir", str(tmp_path / "sim"), *extra],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc


def _printed(out):
    """(seq, total kWh) of each reading line."""
    return [(int(s), float(kwh)) for s, kwh in
            re.findall(r"reading seq=(\d+) ch1 [\d.]+ A .* total ([\d.]+) kWh", out)]


def test_sim_runs_the_whole_chain(tmp_path):
    proc = _sim(tmp_path, "--fresh")
    out = proc.stdout
    head = out[:400] + "\n--- stderr:\n" + proc.stderr[-400:]
    assert re.search(r"virtual board on /dev/pts/\d+", out), head
    assert re.search(r"dashboard http://127\.0\.0\.1:\d+/", out), head
    readings = re.findall(r"reading seq=(\d+) ch1 ([\d.]+) A ([\d.]+) W", out)
    assert len(readings) >= 3
    seqs = [int(s) for s, _, _ in readings]
    assert seqs == list(range(len(seqs)))  # every reading, in order (a fast clock too)
    assert [s for s, _ in _printed(out)] == seqs
    assert (tmp_path / "sim" / "ctmeter.db").exists()
    assert (tmp_path / "sim" / "flash" / "config.json").exists()
    token = (tmp_path / "sim" / "admin-token").read_text().strip()
    assert token and token not in out + proc.stderr  # secrets never printed
    assert (tmp_path / "sim" / "admin-token").stat().st_mode & 0o077 == 0

    # again on the same folder: the meter carries on, its clock after the first run's last
    # reading (a fast clock ran ahead of the wall clock), and the readings the first run
    # left in the database are not printed as this run's
    before = _stored(tmp_path)
    again = _printed(_sim(tmp_path).stdout)
    assert again, "the second run printed no reading"
    assert not {s for s, _ in again} & set(before)
    stamps = [ts for _, ts in sorted(_stored(tmp_path).items())]  # in seq order
    assert len(stamps) > len(before) and stamps == sorted(stamps)  # time never went back
    assert again[0][1] >= max(kwh for _, kwh in _printed(out))  # the counter went on


def _stored(tmp_path):
    """seq -> ts_ms of every reading in the sim's database."""
    with sqlite3.connect(tmp_path / "sim" / "ctmeter.db") as db:
        return dict(db.execute("SELECT seq, ts_ms FROM readings"))


# ---------------------------------------------------------------- the simulated load

def test_load_specs():
    r = parse_load("2000W")
    assert isinstance(r, Resistive) and r.watts == 2000
    r = parse_load(" 8.5 a ")
    assert isinstance(r, Resistive) and r.irms == 8.5
    r = parse_load("900W pf 0.7")
    assert isinstance(r, Inductive) and r.watts == 900 and r.pf == 0.7
    assert parse_load("off") is None and parse_load("0") is None
    assert parse_load("profile") == "profile"
    for bad in ("", "banana", "2000", "-5A", "0.5kW", "100000W", "900W pf 3", "8A pf"):
        with pytest.raises(LoadSpecError) as exc:
            parse_load(bad)
        assert exc.value.exit_code == EXIT_USAGE, bad


def test_load_control_changes_the_stream_from_the_next_samples():
    household = Profile().add(Standby(watts=5.0), 0.0).add(Resistive(watts=2000), 30.0, 40.0)
    stream = Stream([Channel(Frontend("sct013-030", ideal=True), household)],
                    mains=Mains.clean(), sample_rate=4000, seed=1)
    loads = LoadControl(stream)
    stream.read(0, 4000)  # 1 s delivered: a change cannot rewrite it
    assert loads.handle("load 2300W").startswith("load: 2300 W resistive (10.000 A")
    t = stream.truth(1.0, 5.0)
    assert t.p[0] == pytest.approx(2300, rel=1e-6)
    assert stream.truth(0.0, 1.0).p[0] == pytest.approx(5.0, rel=0.05)  # the past stays
    stream.read(4000, 36000)  # up to 10 s
    assert loads.handle("load off") == "load: off from t=10.0 s"
    assert stream.truth(10.0, 12.0).irms[0] == 0.0
    stream.read(40000, 40000)  # up to 20 s
    assert "household" in loads.handle("load profile")
    assert stream.truth(25.0, 29.0).p[0] == pytest.approx(5.0, rel=0.05)  # standby again
    assert stream.truth(31.0, 39.0).p[0] == pytest.approx(2005.0, rel=0.01)  # and the heater
    assert loads.handle("load") == "load: the simulated household"
    m = re.match(r"ref: ([\d.]+) A, ([\d.]+) V[^,]*, ([\d.]+) W, pf ([\d.]+) \(true",
                 loads.handle("ref"))
    assert m and float(m.group(2)) == pytest.approx(230, rel=1e-3)  # a clean grid
    assert float(m.group(1)) == 0.0 and float(m.group(3)) == 0.0  # off until 20 s
    assert "cannot read the load 'banana'" in loads.handle("load banana")
    assert "unknown command" in loads.handle("lod 5A")
    assert loads.handle("   ") is None


def test_sim_shows_a_stop_line_once_it_has_ended():
    line = "ctmeter-stopped MemoryError: memory allocation failed (restart in 20 s, Ctrl-C"
    assert stop_in("boot\n" + line[:30]) is None  # still being written
    assert stop_in("boot\n" + line + " for the REPL)\r\n") == \
        "MemoryError: memory allocation failed"
    assert stop_in("") is None


def test_sim_refuses_a_bad_load_before_starting(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ctmeter", "sim", "--clock", "fast", "--duration", "5",
         "--no-collector", "--dir", str(tmp_path / "sim"), "--load", "lots"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == EXIT_USAGE
    assert "cannot read the load 'lots'" in proc.stderr
    assert not (tmp_path / "sim").exists()


class _Lines:
    """The sim's stdout, line by line, as it comes."""

    def __init__(self, stream):
        self.q = queue.Queue()
        self.seen = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream):
        for line in stream:
            self.q.put(line.rstrip("\n"))

    def wait(self, pattern, timeout=60, count=1):
        """The `count`-th line matching `pattern` from now on (earlier ones skipped)."""
        deadline = time.monotonic() + timeout
        found = []
        while time.monotonic() < deadline:
            try:
                line = self.q.get(timeout=0.2)
            except queue.Empty:
                continue
            self.seen.append(line)
            m = re.search(pattern, line)
            if m:
                found.append(m)
                if len(found) == count:
                    return m
        raise AssertionError(f"no {count} x {pattern!r} in: {self.seen[-20:]}")


def _sigint_default():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_sim_load_from_the_command_line_and_stdin(tmp_path):
    reading = r"reading seq=(\d+) ch1 ([\d.]+) A (-?[\d.]+) W"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ctmeter", "sim", "--clock", "fast", "--duration", "60",
         "--http", "127.0.0.1:0", "--dir", str(tmp_path / "sim"), "--fresh",
         "--load", "2000W"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONFAULTHANDLER="1"),  # a hang dumps every thread (below)
        # as from a terminal: a suite started in the background (`cmd &` in a script)
        # passes SIGINT on ignored, and Python then never raises KeyboardInterrupt
        preexec_fn=_sigint_default)
    out = _Lines(proc.stdout)
    try:
        assert "load 2000 W resistive" in out.wait(r"ctmeter sim: load .*load profile").group(0)
        # uncalibrated meter (a real unit's ratio error, an uncalibrated voltage sensor)
        m = out.wait(reading, count=3)
        assert float(m.group(3)) == pytest.approx(2000, rel=0.05)

        proc.stdin.write("load 8.5A\n")
        proc.stdin.flush()
        out.wait(r"load: 1955 W resistive \(8\.500 A at 230 V\) from t=")
        m = out.wait(reading, count=12)  # the first few may still be the old load
        assert float(m.group(2)) == pytest.approx(8.5, rel=0.03)

        proc.stdin.write("load ten amps\nload off\n")
        proc.stdin.flush()
        out.wait(r"load: cannot read the load 'ten amps'")
        out.wait(r"load: off from t=")
        m = out.wait(reading, count=12)
        assert float(m.group(2)) < 0.1 and abs(float(m.group(3))) < 1.0
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # faulthandler: where each thread is stuck
            proc.wait(timeout=10)
            raise AssertionError("ctmeter sim did not stop on Ctrl-C:\n"
                                 + proc.stderr.read()) from None
    assert proc.returncode == 0, proc.stderr.read()


def test_sigterm_stops_the_sim_cleanly(tmp_path):
    # a service manager (or `kill`) stops it with SIGTERM: board and collector shut down,
    # exit status 0, as with Ctrl-C (before, SIGTERM killed it on the spot: status -15)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ctmeter", "sim", "--clock", "fast", "--http", "127.0.0.1:0",
         "--dir", str(tmp_path / "sim"), "--fresh"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = _Lines(proc.stdout)
    try:
        board = out.wait(r"virtual board on (/dev/pts/\d+)")
        out.wait(r"reading seq=")
        assert _running_in(tmp_path / "sim" / "flash")  # the chip, while the sim runs
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
    err = proc.stderr.read()
    assert rc == 0, err
    assert "ctmeter sim: stopping" in err
    # the chip went with it: no process runs in the board's flash any more
    assert board and not _running_in(tmp_path / "sim" / "flash")


def _running_in(folder):
    """Pids of processes whose working directory is `folder` (the virtual chip's is its
    flash)."""
    found = []
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and os.readlink(f"/proc/{pid}/cwd") == str(folder):
                found.append(int(pid))
        except OSError:
            continue
    return found


def test_sim_without_stdin_runs_without_its_load_console():
    # started with fd 0 closed (a service, some CI runners), sys.stdin is None
    import queue

    from ctmeter.sim_cmd import _read_lines
    lines = queue.Queue()
    _read_lines(None, lines)
    assert lines.get_nowait() is None


def test_sim_says_when_the_meter_cannot_start(tmp_path):
    # a heap far too small for the firmware: the meter stops at start-up and restarts; the
    # sim says why instead of showing nothing
    proc = subprocess.run(
        [sys.executable, "-m", "ctmeter", "sim", "--clock", "fast", "--duration", "4",
         "--heap", "64k", "--no-collector", "--dir", str(tmp_path / "sim"), "--fresh"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    stops = re.findall(r"ctmeter sim: the meter stopped: MemoryError: (.*)", proc.stdout)
    assert len(stops) >= 2, proc.stdout  # once per restart, not once per poll
    assert len(stops) <= 8, proc.stdout


@pytest.mark.parametrize("romfs", [False, True], ids=["source", "romfs"])
def test_sim_with_romfs_runs_in_a_heap_too_small_for_the_sources(tmp_path, romfs):
    """--romfs: the modules run in place from the partition; in 96 KB the meter then reads,
    while from the sources (compiled on the chip) it cannot start in 96 KB."""
    proc = subprocess.run(
        [sys.executable, "-m", "ctmeter", "sim", "--clock", "fast", "--duration", "5",
         "--heap", "96k", "--http", "127.0.0.1:0", "--dir", str(tmp_path / "sim"), "--fresh",
         *(["--romfs"] if romfs else [])],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    readings = re.findall(r"reading seq=(\d+) ch1 ([\d.]+) A", proc.stdout)
    stops = re.findall(r"ctmeter sim: the meter stopped: MemoryError", proc.stdout)
    if romfs:
        assert len(readings) >= 3 and not stops, proc.stdout[-800:]
        assert (tmp_path / "sim" / "flash.romfs").read_bytes()[:3] == b"\xd2\xcd\x31"
    else:
        assert stops and not readings, proc.stdout[-800:]


def test_sim_refuses_a_bad_heap_size(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ctmeter", "sim", "--heap", "lots", "--duration", "1",
         "--dir", str(tmp_path / "sim")],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == EXIT_USAGE
    assert "--heap 'lots' is not a heap size" in proc.stderr
    assert not (tmp_path / "sim").exists()  # refused before anything was made
