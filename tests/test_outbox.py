# SPDX-License-Identifier: MIT
"""The outbox: order, bounds, drops, corrupt records, reboots, power cuts, 6 h outage."""

import json
import random

import pytest
from meter import outbox, reading
from meter.flashfs import FlashFS
from meter.outbox import Outbox, OutboxError

from tests.fault_fs import FaultFS, PowerCut, compiled_meter


def rec(seq):
    return reading.encode("meter-1", seq, 1_790_000_000 + 10 * seq, 1, 1.5, 230.0, 345.0,
                          350.0, 0.98, 1_000_000 + seq, 50.0, 10.0)


def seq_of(line):
    return json.loads(line)["seq"]


def drain(box, batch=7):
    out = []
    while True:
        got = box.peek(batch)
        if not got:
            return out
        out += got
        box.ack(len(got))


@pytest.fixture
def fs(tmp_path):
    return FlashFS(tmp_path).subdir("outbox")


def test_fifo_order_depth_and_partial_ack(fs):
    box = Outbox(fs, seg_records=4, max_segments=10)
    assert box.depth() == 0 and box.peek() == []
    for i in range(10):
        box.append(rec(i))
    assert box.depth() == 10
    first = box.peek(3)
    assert [seq_of(x) for x in first] == [0, 1, 2]
    box.ack(2)  # only two delivered
    assert box.depth() == 8
    assert [seq_of(x) for x in drain(box)] == list(range(2, 10))
    assert box.depth() == 0
    # delivered segments are deleted, only the open tail stays
    assert [n for n in fs.listdir() if n.endswith(".seg")] == ["00000002.seg"]


def test_reboot_keeps_position_and_counters(fs):
    box = Outbox(fs, seg_records=4, max_segments=3)
    for i in range(14):  # 2 more than capacity 12: the oldest segment goes
        box.append(rec(i))
    assert box.dropped == 4
    box.peek(3)
    box.ack(3)
    box2 = Outbox(fs, seg_records=4, max_segments=3)  # reboot
    assert box2.dropped == 4
    assert box2.depth() == box.depth() == 7
    assert [seq_of(x) for x in drain(box2)] == list(range(7, 14))


def test_full_box_drops_oldest_and_counts_them(fs):
    box = Outbox(fs, seg_records=5, max_segments=4)
    assert box.capacity == 20
    n = 103
    for i in range(n):
        box.append(rec(i))
        assert box.depth() <= box.capacity
        assert box.depth() + box.dropped == i + 1
    kept = [seq_of(x) for x in drain(box)]
    assert kept == list(range(box.dropped, n))  # the newest, in order
    assert len(kept) >= (4 - 1) * 5
    assert box.dropped == n - len(kept)


def test_refuses_bad_records_and_stores_nothing(fs):
    box = Outbox(fs, max_record=300)
    with pytest.raises(OutboxError, match="exceeds 300"):
        box.append("x" * 301)
    with pytest.raises(OutboxError, match="one line"):
        box.append('{"a":1}\n{"b":2}')
    assert box.depth() == 0 and box.peek() == []
    with pytest.raises(OutboxError, match="peeked"):
        box.ack(1)


def test_corrupt_record_is_skipped_and_counted(fs):
    box = Outbox(fs, seg_records=8, max_segments=4)
    for i in range(12):
        box.append(rec(i))
    name = "00000000.seg"
    data = bytearray(fs.read(name))
    third = data.index(b"\n", data.index(b"\n") + 1) + 1
    data[third + 30] ^= 0x20  # flip a bit inside record 2
    fs.write(name, bytes(data))
    box = Outbox(fs, seg_records=8, max_segments=4)
    got = [seq_of(x) for x in drain(box, batch=5)]
    assert got == [0, 1] + list(range(3, 12))
    assert box.corrupt == 1
    assert Outbox(fs, seg_records=8, max_segments=4).corrupt == 1  # persisted


def test_garbage_lines_and_corrupt_head_file(fs):
    box = Outbox(fs, seg_records=4, max_segments=4)
    for i in range(6):
        box.append(rec(i))
    box.peek(2)
    box.ack(2)
    fs.write("head", b"not a head file\n")
    fs.append("00000001.seg", b"\xff" * 1000 + b"\n")  # an over-long garbage line
    box = Outbox(fs, seg_records=4, max_segments=4)
    assert any("head file invalid" in p for p in box.problems)
    box.append(rec(6))
    got = [seq_of(x) for x in drain(box)]
    # without a valid head it replays from the oldest segment (receivers dedupe on seq)
    assert got == list(range(0, 7))
    assert box.corrupt == 1


def test_six_hour_outage_replays_every_reading_in_order_once(tmp_path):
    """Server down for 6 simulated hours: one channel at 10 s = 2160 readings, within the
    documented default capacity; then the link is back and the box drains across reboots."""
    root = FlashFS(tmp_path)
    box = Outbox(root.subdir("outbox"))
    assert box.capacity == outbox.SEG_RECORDS * outbox.MAX_SEGMENTS == 2560
    t = 0
    seq = 0
    while t < 6 * 3600:
        box.append(rec(seq))
        seq += 1
        t += 10
        if seq % 500 == 0:  # a few reboots during the outage
            box = Outbox(root.subdir("outbox"))
    assert seq == 2160 and box.depth() == 2160 and box.dropped == 0
    rng = random.Random(6)
    delivered = []
    while box.depth():
        batch = box.peek(rng.randrange(1, 12))
        k = rng.randrange(0, len(batch) + 1)  # some posts fail: ack only what got through
        delivered += batch[:k]
        box.ack(k)
        if rng.random() < 0.01:
            box = Outbox(root.subdir("outbox"))
    seqs = [seq_of(x) for x in delivered]
    assert seqs == list(range(2160))  # every reading, in order, none twice
    assert box.dropped == 0 and box.corrupt == 0
    # and flash holds only the open tail segment plus the head file
    assert len([n for n in root.subdir("outbox").listdir() if n.endswith(".seg")]) == 1


def test_power_cuts_lose_at_most_the_record_being_written(tmp_path):
    rng = random.Random(1234)
    seg, nseg = 6, 50  # big enough that nothing is dropped in this run
    root = tmp_path
    FlashFS(root).subdir("outbox")
    next_seq = 0
    completed = []  # seqs whose append returned
    delivered = []
    cuts = 0
    for _ in range(300):
        fs = FaultFS(root, budget=rng.randrange(0, 3000), junk=rng.random() < 0.5)
        try:
            box = Outbox(fs.subdir("outbox"), seg_records=seg, max_segments=nseg)
            while True:
                if rng.random() < 0.6:
                    s = next_seq
                    next_seq += 1
                    box.append(rec(s))
                    completed.append(s)
                else:
                    batch = box.peek(rng.randrange(1, 6))
                    delivered += [seq_of(x) for x in batch]  # sent; the ack may be cut
                    box.ack(len(batch))
        except PowerCut:
            cuts += 1
    box = Outbox(FlashFS(root).subdir("outbox"), seg_records=seg, max_segments=nseg)
    delivered += [seq_of(x) for x in drain(box)]
    assert cuts == 300 and box.dropped == 0
    # in order: first deliveries strictly increasing; repeats are only re-sends of the
    # batch whose ack a cut interrupted
    firsts = []
    seen = set()
    for s in delivered:
        if s not in seen:
            seen.add(s)
            firsts.append(s)
    assert firsts == sorted(firsts)
    # nothing completed is lost
    assert set(completed) <= seen
    # only records whose append was cut may be missing or extra
    assert seen <= set(range(next_seq))
    assert len(delivered) - len(seen) <= 5 * cuts


MP_SCRIPT = r"""
import gc, json
from meter.flashfs import FlashFS
from meter.outbox import Outbox
from fault_fs import FaultFS, PowerCut
root = %(root)r
fs = FlashFS(root).subdir("outbox")
line = '{"deviceId":"meter-1","seq":%%d,"ts":1790000000,"channel":1,"current":1.5000,' \
       '"voltage":230.00,"power":345.00,"apparentPower":350.00,"powerFactor":0.9800,' \
       '"energyKwh":1.000000,"frequency":50.000,"interval":10.000}'
box = Outbox(fs)
for i in range(%(n)d):
    box.append(line %% i)
depth = box.depth()
gc.collect()
free_before = gc.mem_free()
box = Outbox(fs)  # reboot
got = 0
bad = 0
low = free_before
while True:
    batch = box.peek(8)
    if not batch:
        break
    for b in batch:
        bad += json.loads(b)["seq"] != got  # in order, none missing, none twice
        got += 1
    box.ack(len(batch))
    gc.collect()
    low = min(low, gc.mem_free())
# a few injected cuts while appending
cuts = 0
n = %(n)d
for budget in (5, 40, 150, 257, 600):
    f = FaultFS(root, budget=budget, junk=budget %% 2 == 1).subdir("outbox")
    try:
        b2 = Outbox(f)
        while True:
            b2.append(line %% n)
            n += 1
    except PowerCut:
        cuts += 1
box = Outbox(fs)
after = []
while True:
    batch = box.peek(8)
    if not batch:
        break
    after += [json.loads(b)["seq"] for b in batch]
    box.ack(len(batch))
print(json.dumps({"depth": depth, "got": got, "bad": bad, "cuts": cuts, "after": after, "n": n,
                  "corrupt": box.corrupt, "free_before": free_before, "low": low}))
"""


@pytest.mark.micropython
def test_outbox_on_micropython_64k_heap(micropython, tmp_path):
    """~2000 records (~500 KB, eight times the heap) stored and replayed at 64 KB of heap."""
    root = tmp_path / "flash"
    root.mkdir()
    path = compiled_meter(tmp_path / "mpy")
    n = 2000
    out = micropython.run(MP_SCRIPT % {"root": str(root), "n": n}, heapsize="64k",
                          env={"MICROPYPATH": path}, timeout=120)
    res = json.loads(out)
    assert res["depth"] == n
    assert res["got"] == n and res["bad"] == 0
    assert res["cuts"] == 5
    after = res["after"]
    assert after == sorted(after) and len(after) == len(set(after))
    # each cut loses at most the record it tore (each boot starts at the next seq)
    assert len(after) >= (res["n"] - n) - 5
    assert res["low"] > 16 * 1024  # streaming: the heap never fills while draining
