# SPDX-License-Identifier: MIT
"""The counter store: round trip, corrupt slots, seq reservation, and 1,000 power cuts."""

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meter import persist
from meter.flashfs import FlashFS
from meter.persist import SLOTS, CounterStore, PersistError

from tests.fault_fs import FaultFS, PowerCut, compiled_meter


@pytest.fixture
def fs(tmp_path):
    return FlashFS(tmp_path)


def test_first_boot_round_trip_and_reboot(fs):
    s = CounterStore(fs, interval_s=300)
    assert s.load(channels=2) is False
    assert s.problems == []  # first boot is not a problem
    assert s.energy == [0, 0] and s.boots == 1
    seqs = [s.next_seq() for _ in range(5)]
    assert seqs == [0, 1, 2, 3, 4]
    s.save([123456789012, 7], now_ms=1000)

    s2 = CounterStore(fs)
    assert s2.load(channels=2) is True
    assert s2.energy == [123456789012, 7]
    assert s2.boots == 2
    assert s2.problems == []
    assert s2.next_seq() > 4


def test_corrupt_newest_slot_falls_back_and_is_reported(fs):
    s = CounterStore(fs)
    s.load(channels=1)
    s.save([100])
    s.save([200])  # newest
    newest = SLOTS[s._newest]
    data = bytearray(fs.read(newest))
    data[20] ^= 0x01
    fs.write(newest, bytes(data))
    s2 = CounterStore(fs)
    assert s2.load(channels=1) is True
    assert s2.energy == [100]
    assert any(newest in p and "checksum" in p for p in s2.problems)


def test_both_slots_corrupt_starts_from_zero_with_a_report(fs):
    fs.write(SLOTS[0], b"garbage")
    fs.write(SLOTS[1], b"")
    s = CounterStore(fs)
    assert s.load(channels=1) is False
    assert s.energy == [0]
    assert any("no valid counter state" in p for p in s.problems)
    assert len(s.problems) == 3


def test_channel_count_change_is_reported_and_kept_where_possible(fs):
    s = CounterStore(fs)
    s.load(channels=2)
    s.save([5, 6])
    s2 = CounterStore(fs)
    s2.load(channels=3)
    assert s2.energy == [5, 6, 0]
    assert any("2 channel" in p for p in s2.problems)


def test_seq_survives_reboot_without_clean_save(fs):
    s = CounterStore(fs, seq_reserve=10)
    s.load()
    used = [s.next_seq() for _ in range(37)]  # crosses several reserved blocks
    assert used == list(range(37))
    s2 = CounterStore(fs, seq_reserve=10)  # power cut: no save() at shutdown
    s2.load()
    assert s2.next_seq() > max(used)


def test_no_seq_handed_out_when_reservation_cannot_be_saved(tmp_path):
    s = CounterStore(FlashFS(tmp_path), seq_reserve=4)
    s.load()
    for _ in range(4):
        s.next_seq()

    class Full(FlashFS):
        def write(self, name, data):
            raise OSError(28, "ENOSPC")

    s.fs = Full(tmp_path)
    with pytest.raises(PersistError, match="write failed"):
        s.next_seq()
    assert s.seq == 4  # nothing handed out
    s.fs = FlashFS(tmp_path)
    assert s.next_seq() == 4


def test_should_persist_schedule():
    s = CounterStore(None, interval_s=300)
    assert s.should_persist(0)  # never saved
    s._last_ms = 1000
    assert not s.should_persist(1000 + 299_999)
    assert s.should_persist(1000 + 300_000)
    # across the 2**30 wrap of the ESP32's ticks_ms
    s._last_ms = (1 << 30) - 100_000
    assert not s.should_persist(100_000)
    assert s.should_persist(200_000)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError):
        CounterStore(None, interval_s=0)
    with pytest.raises(ValueError):
        CounterStore(None, seq_reserve=0)


@settings(max_examples=200, deadline=None)
@given(
    gen=st.integers(1, 2**40), seq=st.integers(0, 2**40), boots=st.integers(0, 10**6),
    energy=st.lists(st.integers(-(2**60), 2**60), min_size=1, max_size=4),
    data=st.data(),
)
def test_damaged_slot_never_decodes_to_another_state(gen, seq, boots, energy, data):
    good = persist.encode(gen, seq, boots, energy)
    assert persist.decode(good) == (gen, seq, boots, energy)
    # truncation anywhere (a torn write) is always detected
    cut = data.draw(st.integers(0, len(good) - 1))
    with pytest.raises(ValueError):
        persist.decode(good[:cut])
    # any single-byte change is detected or decodes to the same state
    pos = data.draw(st.integers(0, len(good) - 1))
    val = data.draw(st.integers(0, 255).filter(lambda v: v != good[pos]))
    bad = good[:pos] + bytes([val]) + good[pos + 1:]
    try:
        assert persist.decode(bad) == (gen, seq, boots, energy)
    except ValueError:
        pass


def run_until_cut(root, budget, junk, rng, interval_s, start_ms):
    """Boot, meter, persist on schedule until the power fails. Returns what happened."""
    fs = FaultFS(root, budget=budget, junk=junk)
    s = CounterStore(fs, interval_s=interval_s, seq_reserve=50)
    history = []  # (t_ms, energy) for every simulated second
    now = start_ms
    used_seq = -1
    try:
        s.load(channels=2, now_ms=now)
        energy = list(s.energy)
        while True:
            now += 1000
            energy[0] += rng.randrange(0, 3_600_000)  # up to 1 kW for 1 s, in mWs
            energy[1] += rng.randrange(0, 100_000)
            history.append((now, list(energy)))
            if now % 10_000 == 0:  # one reading per channel every 10 s
                used_seq = max(used_seq, s.next_seq(), s.next_seq())
            if s.should_persist(now):
                s.save(energy, now)
            if len(history) > 100_000:
                raise AssertionError("budget never ran out")
    except PowerCut:
        pass
    return s, history, now, used_seq


def test_1000_power_cuts_never_go_backwards_and_lose_at_most_one_interval(tmp_path):
    rng = random.Random(20240611)
    interval_s = 60
    root = tmp_path
    fs = FlashFS(root)
    boot = CounterStore(fs, interval_s=interval_s)
    boot.load(channels=2)
    last_loaded = list(boot.energy)
    max_seq = boot.next_seq()
    now = 0
    torn = fell_back = cut_in_boot = 0
    for _ in range(1000):
        # a save costs ~1 op + ~70 bytes; budgets land anywhere in the first few saves
        budget = rng.randrange(0, 6 * 75)
        s, history, now, used_seq = run_until_cut(root, budget, rng.random() < 0.5, rng,
                                                  interval_s, now)
        max_seq = max(max_seq, used_seq)
        if not history:
            cut_in_boot += 1
        # reboot on the surviving flash
        check = CounterStore(FlashFS(root), interval_s=interval_s)
        assert check.load(channels=2) is True, check.problems
        loaded = check.energy
        if any("invalid" in p for p in check.problems):
            torn += 1
        # never backwards (per channel) across cuts
        assert all(a >= b for a, b in zip(loaded, last_loaded, strict=True)), (loaded,
                                                                               last_loaded)
        if history:
            truth = history[-1][1]
            assert all(a <= b for a, b in zip(loaded, truth, strict=True))
            # loss at most one persist interval: what was metered interval_s before the cut
            # (or what this boot started from) is on flash
            t_cut = history[-1][0]
            floor = last_loaded
            for t, e in history:
                if t <= t_cut - interval_s * 1000:
                    floor = e
            assert all(a >= b for a, b in zip(loaded, floor, strict=True)), (loaded, floor)
            if loaded != truth:
                fell_back += 1
        # seq numbers stay above everything used before the cut
        assert check.seq > max_seq
        last_loaded = list(loaded)
        # the checking boot itself counted as a boot on flash; that is fine (seq moves up)
    # the campaign really exercised torn slot files and fallbacks
    assert torn > 100, torn
    assert fell_back > 100, fell_back
    assert cut_in_boot > 10, cut_in_boot


MP_SCRIPT = r"""
import os, json
from meter.flashfs import FlashFS
from meter.persist import CounterStore
from fault_fs import FaultFS, PowerCut
root = %(root)r
fs = FlashFS(root)
# one JSON line per result, printed as it comes: nothing accumulates in the 64 KB heap
s = CounterStore(fs, interval_s=60, seq_reserve=20)
print(json.dumps(s.load(channels=2)))
for i in range(30):
    s.next_seq()
s.save([2**40 + 5, 17], 0)
s2 = CounterStore(fs)
print(json.dumps([s2.load(channels=2), s2.energy, s2.boots, s2.seq]))
# injected cuts: every budget across one save, with and without junk bytes
energy = list(s2.energy)
for budget in range(0, 200, 7):
    energy = [energy[0] + 1000, energy[1] + 1]
    f = FaultFS(root, budget=budget, junk=budget %% 2 == 1)
    st = CounterStore(f)
    try:
        st.load(channels=2)
        st.save(energy)
        cut = False
    except PowerCut:
        cut = True
    chk = CounterStore(fs)
    chk.load(channels=2)
    print(json.dumps([cut, chk.energy, chk.seq, len(chk.problems), energy]))
"""


@pytest.mark.micropython
def test_round_trip_reboot_and_cuts_on_micropython(micropython, tmp_path):
    root = tmp_path / "flash"
    root.mkdir()
    path = compiled_meter(tmp_path / "mpy")
    out = micropython.run(MP_SCRIPT % {"root": str(root)}, heapsize="64k",
                          env={"MICROPYPATH": path})
    first, reboot, *cut_lines = [json.loads(line) for line in out.splitlines()]
    assert first is False
    ok, energy, boots, seq = reboot
    assert ok is True and energy == [2**40 + 5, 17] and boots == 2 and seq >= 30
    prev_energy, prev_seq = energy, seq
    cuts = 0
    for cut, e, seq_after, _, written in cut_lines:
        cuts += cut
        if not cut:
            assert e == written
        assert e[0] >= prev_energy[0] and e[1] >= prev_energy[1]  # never backwards
        assert seq_after > prev_seq  # every boot reserves above anything handed out
        prev_energy, prev_seq = e, seq_after
    assert 5 <= cuts < len(cut_lines) == len(range(0, 200, 7))
    # the same torn-file handling as CPython: compare with a CPython run of the same slots
    cp = CounterStore(FlashFS(root))
    cp.load(channels=2)
    assert cp.energy == prev_energy
