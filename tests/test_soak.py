# SPDX-License-Identifier: MIT
"""Seven simulated days of a household load on the virtual board, firmware as deployed.

The firmware runs as `ctmeter deploy` puts it on a board (mpy-cross bytecode under lib/,
boot.py, main.py, config.json), with the sampling loop heap-locked (CTMETER_HEAP_LOCK=1:
any allocation while a burst is read and accumulated raises at once and is counted in
status `mem_errors`), posting a reading per minute to a local receiver. Time-lapse: each
0.2 s window is followed by 9.8 s of skipped time, so a week takes under two minutes; the
meter still integrates every second (energy integrates elapsed time, not sampled time).
The board's "exact" clock keeps the host's CPU time out of simulated time, so the run is
the same on a busy machine (with "fast", host time between windows made the kWh error
wander by about 0.2 %).

Heap: the issue asks for 64 KB. With the modules in a ROMFS partition (run in place from
the flash, as `ctmeter deploy` does on a board whose MicroPython has one; the virtual
board's partition: ctmeter.virtual.rom_partition) the week runs in 64 KB, the ROMFS
parametrization here: it ran six weeks in six when it was set; at 60 KB the start-up runs
out (the 3.5 KB window buffer). Modules in lib/ (loaded into the heap; the only way on a
stock ESP32_GENERIC image, which has no ROMFS partition) need more on this 64-bit port:
92 KB ran two days twice (bench), 88 KB runs out at start-up; the week runs here at
104 KB, 8 KB above the 96 KB where it ran every time before this round of changes.
Figures: `make bench`, heap section (KB = 1024 bytes); what stays in the heap: README,
Known gaps.
"""

import threading
from http.server import ThreadingHTTPServer

import pytest
from ctmeter.meterlink import MeterLink
from ctmeter.virtual.meter import StreamSource, deploy_to_flash, household_stream, meter_config
from ctmeter.virtual.supervisor import VirtualBoard

from tests.test_firmware_sim import Receiver, wait_sim_time

SOAK_HEAP = "104k"
ROMFS_HEAP = "64k"  # the figure; modules in a ROMFS partition (docstring)
DAYS = 7
FS = 4000


@pytest.mark.slow
@pytest.mark.parametrize("romfs, heap", [(False, SOAK_HEAP), (True, ROMFS_HEAP)],
                         ids=["lib", "romfs"])
def test_seven_days_heap_flat_and_kwh_on_truth(tmp_path, romfs, heap):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    server.state = {"down": False, "received": []}
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/api/measurements"
    stream = household_stream(DAYS, seed=5, sample_rate=FS)
    config = meter_config(stream, {"device_id": "soak", "interval_s": 60,
                                   "http": {"enabled": True, "url": url,
                                            "token": "s3cret-token"}})
    deploy_to_flash(tmp_path / "flash", config, build_dir=tmp_path / "build", romfs=romfs)
    vb = VirtualBoard(tmp_path / "flash", StreamSource(stream), clock="exact", timelapse_s=9.8,
                      heapsize=heap, firmware="flash", romfs=romfs,
                      extra_env={"CTMETER_HEAP_LOCK": "1"}).start()
    samples = []
    try:
        con = MeterLink.open(vb.port, timeout=60)
        for day in range(DAYS + 1):
            wait_sim_time(vb, max(600, day * 86400), timeout=300)
            st = con.cmd("status")
            samples.append((day, st["heap_used"], st["heap_free"], st["mem_errors"]))
        read = con.cmd("read")
        final = con.cmd("status")
        first = vb.feed.first_frame / FS
        resets = list(vb.resets)
        con.close()
    finally:
        vb.stop()
        server.shutdown()
    print("day, heap_used, heap_free, mem_errors:", samples)

    assert resets == []  # no crash, no watchdog reset, no MemoryError reboot
    assert all(s[3] == 0 for s in samples)  # nothing allocated in a heap-locked burst
    used = [s[1] for s in samples[1:]]  # after the first day: warmed up
    assert max(used) - min(used) <= 1024, samples  # flat: no growth over the week

    last = first + read["uptime_ms"] / 1000
    assert last - first >= DAYS * 86400
    true_kwh = stream.energy_wh(0, first, last) / 1000
    kwh = float(read["ch1"]["energy_kwh"])
    print("kWh meter %.3f truth %.3f error %+.4f %%" % (kwh := float(read["ch1"]["energy_kwh"]),
          true_kwh, 100 * (kwh / true_kwh - 1)))
    assert true_kwh > 10  # a real household week, not an idle line
    assert kwh == pytest.approx(true_kwh, rel=0.002)

    print("final status:", {k: final[k] for k in ("seq", "outbox", "last_post", "posts_ok",
                                                  "posts_failed", "rejected", "duty")})
    seqs = sorted({r["seq"] for r in server.state["received"]})
    assert len(seqs) >= DAYS * 1440 * 0.99  # a reading a minute, delivered
    assert seqs == list(range(seqs[0], seqs[-1] + 1))
