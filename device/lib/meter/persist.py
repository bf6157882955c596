# SPDX-License-Identifier: MIT
"""Power-cut-safe store for the energy counters, the reading sequence number and the boot count.

    store = CounterStore(fs, interval_s=300, seq_reserve=1000)   # ticks_diff=board's, optional
    store.load(channels=2)          # once at boot: newest valid slot, boots += 1, reserves seqs
    store.problems                  # what was wrong on flash (corrupt / missing slot), never raised
    energy = store.energy           # list of ints (the energy module's units), one per channel
    seq = store.next_seq()          # monotonic across reboots and power cuts
    if store.should_persist(now_ms):
        store.save(energy, now_ms)  # on the schedule ...
    store.save(energy)              # ... and at clean shutdown / reboot

Format: two slot files, persist.a and persist.b, each one line
``{"v":1,"gen":G,"seq":S,"boots":B,"energy":[...]} <crc32 hex>``. Saves alternate between
the slots, always overwriting the one that does *not* hold the newest valid state, so a cut
in the middle of a save (torn or empty file) leaves the previous save intact; load takes the
valid slot with the highest generation. A cut therefore never makes the counter go backwards
and loses at most what accumulated since the previous completed save: one persist interval.

Sequence numbers: `seq` on flash is a ceiling, not the last value used. Every number handed
out is below a ceiling that was already saved (the store saves ceiling = seq + seq_reserve
before crossing it, and at boot), so after any cut the next number is above every number
used before. Seqs are therefore monotonic but skip up to `seq_reserve` per reboot.
"""

import binascii
import json

from meter.errors import PersistError

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


_TICKS_HALF = const(0x20000000)  # ticks_ms wraps at 2**30 on the ESP32 family
_TICKS_MASK = const(0x3FFFFFFF)


def ticks_diff30(a, b):
    """a - b for millisecond ticks that wrap at 2**30 (the ESP32's ticks_ms period), also
    right for unwrapped clocks while |a - b| < 2**29 ms (6.2 days)."""
    return ((a - b + _TICKS_HALF) & _TICKS_MASK) - _TICKS_HALF


_FORMAT = const(1)
_MAX_FILE = const(1024)
SLOTS = ("persist.a", "persist.b")


def encode(gen, seq, boots, energy):
    body = json.dumps({"v": _FORMAT, "gen": gen, "seq": seq, "boots": boots,
                       "energy": list(energy)})
    return ("%s %08x\n" % (body, binascii.crc32(body.encode()) & 0xFFFFFFFF)).encode()


def _is_int(x):
    return type(x) is int


def decode(data):
    """(gen, seq, boots, energy) from one slot's bytes; ValueError saying why it is invalid."""
    if not data:
        raise ValueError("empty")
    if len(data) > _MAX_FILE:
        raise ValueError("too long")
    if data[-1:] != b"\n":
        raise ValueError("torn (no line end)")
    line = data[:-1]
    cut = line.rfind(b" ")
    if cut < 0:
        raise ValueError("no checksum")
    body, crc_text = line[:cut], line[cut + 1:]
    try:
        crc = int(crc_text, 16)
    except ValueError:
        raise ValueError("bad checksum text") from None
    if binascii.crc32(body) & 0xFFFFFFFF != crc:
        raise ValueError("checksum mismatch")
    try:
        obj = json.loads(body)
    except ValueError:
        raise ValueError("bad JSON") from None
    if not isinstance(obj, dict) or obj.get("v") != _FORMAT:
        raise ValueError("unknown format")
    gen, seq, boots, energy = obj.get("gen"), obj.get("seq"), obj.get("boots"), obj.get("energy")
    if not (_is_int(gen) and _is_int(seq) and _is_int(boots) and isinstance(energy, list)):
        raise ValueError("bad field types")
    if gen < 0 or seq < 0 or boots < 0:
        raise ValueError("negative field")
    for e in energy:
        if not _is_int(e):
            raise ValueError("bad energy value")
    return gen, seq, boots, energy


class CounterStore:
    """Energy counters + reading seq + boot count in two alternating CRC-checked slots."""

    def __init__(self, fs, interval_s=300, seq_reserve=1000, ticks_diff=ticks_diff30):
        if not _is_int(interval_s) or interval_s < 1:
            raise ValueError("persist interval_s must be an int >= 1")
        if not _is_int(seq_reserve) or seq_reserve < 1:
            raise ValueError("seq_reserve must be an int >= 1")
        self.fs = fs
        self.ticks_diff = ticks_diff  # the board's, when its clock wraps differently
        self.interval_ms = interval_s * 1000
        self.seq_reserve = seq_reserve
        self.energy = []
        self.boots = 0
        self.gen = 0  # generation of the newest save on flash (0: none)
        self.problems = []
        self.source = None  # slot file the state was loaded from
        self.saves = 0
        self.last_error = None
        self._seq = 0  # next seq to hand out
        self._ceiling = 0  # every seq < ceiling is covered by a save on flash
        self._newest = -1  # index of the slot holding the newest valid state
        self._last_ms = None

    # --- boot ---------------------------------------------------------------------------
    def load(self, channels=1, now_ms=None):
        """Read both slots, continue from the newest valid one, count this boot and reserve
        seqs (one save). Corrupt or missing slots are listed in `problems`, never raised.
        Returns True if a valid state was found."""
        best = None
        self.problems = []
        for i, name in enumerate(SLOTS):
            try:
                data = self.fs.read(name)
            except OSError:
                self.problems.append("%s: missing" % name)
                continue
            try:
                state = decode(data)
            except ValueError as e:
                self.problems.append("%s: invalid (%s)" % (name, e.args[0] if e.args else e))
                continue
            if best is None or state[0] > best[1][0]:
                best = (i, state)
        energy = [0] * channels
        if best is None:
            self.gen, self._ceiling, self.boots, self._newest = 0, 0, 0, -1
            self.source = None
            if len(self.problems) == 2 and all(p.endswith("missing") for p in self.problems):
                self.problems = []  # first boot: nothing to complain about
            else:
                self.problems.append("no valid counter state: starting from zero")
        else:
            i, (gen, ceiling, boots, saved) = best
            self.gen, self._ceiling, self.boots, self._newest = gen, ceiling, boots, i
            self.source = SLOTS[i]
            for c in range(min(channels, len(saved))):
                energy[c] = saved[c]
            if len(saved) != channels:
                self.problems.append(
                    "saved state has %d channel(s), configured %d" % (len(saved), channels))
        self.energy = energy
        self._seq = self._ceiling
        self.boots += 1
        self.save(energy, now_ms)  # records the boot and reserves a block of seqs
        return best is not None

    # --- sequence numbers ---------------------------------------------------------------
    def next_seq(self):
        """The next reading seq; saves a new ceiling first when the reserved block is used up
        (raises PersistError if that save fails: no seq is handed out unprotected)."""
        if self._seq >= self._ceiling:
            self.save(self.energy)
        s = self._seq
        self._seq = s + 1
        return s

    @property
    def seq(self):
        """The seq the next call to next_seq() returns (subject to a reservation save)."""
        return self._seq

    # --- schedule -----------------------------------------------------------------------
    def should_persist(self, now_ms):
        """True when a save is due: `interval_s` since the last save (or never saved)."""
        if self._last_ms is None:
            return True
        return self.ticks_diff(now_ms, self._last_ms) >= self.interval_ms

    def save(self, energy=None, now_ms=None):
        """Write the state to the slot not holding the newest valid state. Raises PersistError
        on an I/O error (the state stays in memory; the next save tries the same slot)."""
        if energy is not None:
            self.energy = list(energy)
        ceiling = self._ceiling
        if self._seq + self.seq_reserve // 2 >= ceiling:
            ceiling = self._seq + self.seq_reserve
        gen = self.gen + 1
        target = 1 if self._newest == 0 else 0
        data = encode(gen, ceiling, self.boots, self.energy)
        try:
            self.fs.write(SLOTS[target], data)
        except OSError as e:
            self.last_error = "%s: write failed (%s)" % (SLOTS[target], e)
            raise PersistError(self.last_error) from None
        self.gen, self._ceiling, self._newest = gen, ceiling, target
        self.saves += 1
        if now_ms is not None:
            self._last_ms = now_ms
        return gen

    def status(self):
        """A dict for the console's status line (no secrets here)."""
        return {"gen": self.gen, "seq": self._seq, "seq_ceiling": self._ceiling,
                "boots": self.boots, "saves": self.saves, "source": self.source,
                "problems": list(self.problems)}
