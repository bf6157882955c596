# SPDX-License-Identifier: MIT
"""The smallest heap the deployed firmware runs in: the number the issue's 64 KB target is
about, measured instead of written down.

    python -m bench.heap_floor            # prints the result as JSON
    from bench.heap_floor import smallest; r = smallest()

The meter is the soak's (tests/test_soak.py): the firmware as `ctmeter deploy` writes it,
one current channel on a household load profile (ctmeter.virtual.meter.household_stream),
voltage, a reading a minute posted over HTTP to a local receiver, the sampling loop
heap-locked (CTMETER_HEAP_LOCK=1), on the virtual board's exact clock in time-lapse. A size
*runs* when the meter starts, never resets, counts no MemoryError and no other error,
answers `status` at 10 minutes and at every simulated day, and delivers a reading for every
minute (99 %), in each of two runs (at the edge, timing varies what is allocated where: a
size can run once and fail the next time). Sizes are searched by bisection on a 4 KB grid
between the target (64 KB) and 160 KB: that assumes a meter that runs in N KB also runs in
N + 4, which held wherever sizes were tried by hand (see tests/test_soak.py). Each run is a
fresh board and a fresh flash.

Why the smallest size rather than what is in use: fragmentation. A heap with 19 KB free can
still fail to find 1 KB in one piece, so only running the meter tells whether a size works;
the failure at the size just below says what ran out first.
"""

import json
import os
import select
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from meter.board import STOP_PREFIX  # the firmware's own stop line
from meter.console import BOOT_PREFIX  # the firmware's own start-up line

TARGET_KB = 64  # the target, on the 64-bit unix port
CEILING_KB = 160
STEP_KB = 4
DAYS = 2  # simulated days per run (a week takes ~45 s)
RUNS = 2  # a size runs when it runs this many times in a row: at the edge a size may run
# once and fail the next time (at 108 KB 3 weeks of 4 counted a MemoryError)
FS = 4000
_STATUS_TIMEOUT_S = 20.0
_DAY_TIMEOUT_S = 120.0  # wall time allowed per simulated day (a day takes ~6 s here)


class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        docs = doc if isinstance(doc, list) else [doc]
        with self.server.lock:
            self.server.seqs.update(d["seq"] for d in docs if isinstance(d, dict) and "seq" in d)
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def _checkpoints(days):
    """Simulated seconds at which `status` is asked: 10 minutes, each whole day, the end."""
    end = days * 86400
    points = {min(600, end), end}
    points.update(d * 86400 for d in range(1, int(days) + 1) if d * 86400 < end)
    return sorted(points)


class _Port:
    """The board's console in JSON mode: whole lines, and everything it printed kept.

    Not ctmeter.meterlink: that sends a line again when the meter drops it for lack of
    memory, which is what this benchmark must see."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        self.text = b""
        self._pending = b""

    def lines(self, timeout_s):
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if select.select([self.fd], [], [], 0.1)[0]:
                chunk = os.read(self.fd, 65536)
                self.text = (self.text + chunk)[-65536:]
                self._pending += chunk
                *done, self._pending = self._pending.split(b"\n")
                yield from (x.strip() for x in done)
            else:
                yield None  # nothing yet: lets the caller check the board

    def ask_status(self):
        os.write(self.fd, b"status\r\n")
        for line in self.lines(_STATUS_TIMEOUT_S):
            if line and line.startswith(b"{"):
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if msg.get("cmd") == "status" or "error" in msg:
                    return msg
        return None

    def close(self):
        os.close(self.fd)


def _crash(text):
    """What a crashed meter printed last: its exception and where it was raised, or None."""
    lines = text.decode(errors="replace").splitlines()
    for i in range(len(lines) - 1, -1, -1):
        line = lines[i].strip()
        if "Error" in line and ":" in line and not line.startswith(("{", STOP_PREFIX)):
            where = [x.strip() for x in lines[:i] if x.strip().startswith("File ")]
            when = "start-up" if not any(BOOT_PREFIX in x for x in lines[:i]) else "running"
            return f"{when}: {line}" + (f" ({where[-1]})" if where else "")
    return None


def start_receiver():
    """A local HTTP receiver answering 201 to every post (the seqs it got in .seqs):
    (server, measurements URL). Shut it down with server.shutdown(); server_close()."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.daemon_threads = True
    server.lock = threading.Lock()
    server.seqs = set()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/api/measurements"


def run_at(heap_kb, days=DAYS, build_dir=None, romfs=False):
    """None if the soak's meter ran `days` simulated days in a heap of heap_kb KB, else the
    first thing that went wrong (text). romfs=True: deployed as a board with a ROMFS
    partition gets it (lib/ in the ROM, run in place; ctmeter.romfs)."""
    from ctmeter.virtual.meter import StreamSource, deploy_to_flash, household_stream, meter_config
    from ctmeter.virtual.supervisor import VirtualBoard

    server, url = start_receiver()
    stream = household_stream(days, seed=5, sample_rate=FS)
    config = meter_config(stream, {"device_id": "floor", "interval_s": 60,
                                   "console": {"mode": "json"},
                                   "http": {"enabled": True, "url": url,
                                            "token": "floor-token"}})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            flash = Path(tmp) / "flash"
            deploy_to_flash(flash, config, build_dir=Path(tmp) / "build", romfs=romfs)
            vb = VirtualBoard(flash, StreamSource(stream), clock="exact", timelapse_s=9.8,
                              heapsize=f"{heap_kb}k", firmware="flash", romfs=romfs,
                              extra_env={"CTMETER_HEAP_LOCK": "1"}).start()
            port = None
            try:  # the board stops before its flash folder goes (it writes until then)
                port = _Port(vb.port)
                return _judge(vb, port, server, days)
            finally:
                if port is not None:
                    port.close()
                vb.stop()
    finally:
        server.shutdown()
        server.server_close()


def _judge(vb, port, server, days):
    for at in _checkpoints(days):
        why = _run_until(vb, port, at)
        if why:
            return why
        last = port.ask_status()
        if last is None:  # a line lost for memory is answered: this is a stop or a reset
            return (_crash(port.text) or (_reset(vb) if vb.resets else None)
                    or f"no answer to status at {at} s")
        if "error" in last:
            return f"status at {at} s: {last['error']}"
        if last["mem_errors"] or last["errors"]:
            return (f"at {at} s: {last['mem_errors']} MemoryError(s), "
                    f"{last['errors']} other error(s) ({last['last_error']})")
        if vb.resets:
            return _reset(vb)
    expected = int(days * 86400 / 60 * 0.99) - 1
    if len(server.seqs) < expected:
        return f"{len(server.seqs)} readings delivered of {expected}"
    return None


def _reset(vb):
    from ctmeter.virtual.supervisor import HARD_RESET

    if vb.resets[0] == HARD_RESET:  # machine.reset() without a stop line: Meter's own
        return "the meter restarted itself (out of memory window after window)"
    return f"the board reset (exit {vb.resets[0]})"


def _run_until(vb, port, sim_s):
    """Wait for the board's simulated time to reach sim_s; the failure text, or None."""
    deadline = time.monotonic() + _DAY_TIMEOUT_S * max(1.0, sim_s / 86400)
    for _ in port.lines(deadline - time.monotonic()):
        last = vb.feed.last_frame
        if last is not None and last / FS >= sim_s:
            return None
        if vb.resets:
            return _crash(port.text) or _reset(vb)
        if b">>> " in port.text[-200:]:  # the meter ended: the chip is at its REPL
            return _crash(port.text) or "the meter stopped"
    return _crash(port.text) or f"simulated time did not reach {sim_s} s"


def smallest(days=DAYS, low_kb=TARGET_KB, high_kb=CEILING_KB, step_kb=STEP_KB, runs_each=RUNS,
             romfs=False):
    """The smallest size (KB, on the step grid) that runs `runs_each` times in a row, with
    what failed below it."""
    tried = {}

    def runs(kb):
        for _ in range(runs_each):
            tried[kb] = run_at(kb, days, romfs=romfs)
            if tried[kb] is not None:
                return False
        return True

    out = {"days": days, "runs_each": runs_each, "step_kb": step_kb, "target_kb": TARGET_KB,
           "config": "one current channel, voltage, HTTP every minute",
           "code": "ROMFS" if romfs else "lib/ on the filesystem"}
    if runs(low_kb):
        out.update(kb=low_kb, below=None)
    elif not runs(high_kb):
        out.update(kb=None, below={"kb": high_kb, "failure": tried[high_kb]})
    else:
        lo, hi = low_kb, high_kb  # lo fails, hi runs
        while hi - lo > step_kb:
            mid = lo + (hi - lo) // 2 // step_kb * step_kb
            if runs(mid):
                hi = mid
            else:
                lo = mid
        out.update(kb=hi, below={"kb": lo, "failure": tried[lo]})
    out["tried"] = {str(k): v or "ran" for k, v in sorted(tried.items())}
    return out


def markdown(r):
    if r.get("kb") is None:
        return (f"The soak's meter ({r['config']}) did not run {r['days']} simulated days "
                f"in any size tried, up to {r['below']['kb']} KB: {r['below']['failure']}.")
    where = "in a ROMFS partition" if r.get("code") == "ROMFS" else "on the filesystem"
    text = (f"Smallest heap that runs the soak's meter ({r['config']}; heap-locked sampling; "
            f"modules {where}) "
            f"for {r['days']} simulated days, {r.get('runs_each', 1)} runs in a row, searched in "
            f"{r['step_kb']} KB steps "
            f"(`bench/heap_floor.py`): **{r['kb']} KB** (the issue's target: "
            f"{r['target_kb']} KB).")
    if r.get("below"):
        text += f" At {r['below']['kb']} KB: {r['below']['failure']}."
    return text


if __name__ == "__main__":
    print(json.dumps(smallest(), indent=1))
