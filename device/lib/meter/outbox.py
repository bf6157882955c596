# SPDX-License-Identifier: MIT
"""Bounded on-flash FIFO of readings that could not be delivered yet, replayed in order.

    box = Outbox(fs.subdir("outbox"))     # scans the directory: survives reboots and cuts
    box.append(reading_json)              # str or bytes, one line, <= MAX_RECORD bytes
    batch = box.peek(8)                   # oldest first, at most 8 records, never the whole box
    ...deliver batch[:k] in order...
    box.ack(k)                            # the first k of the last peek are gone for good
    box.depth(), box.dropped, box.corrupt, box.capacity

Publishers keep order by sending a new reading directly only while depth() == 0;
otherwise they append it and drain the box oldest first.

Capacity (defaults): SEG_RECORDS = 64 records per segment file x MAX_SEGMENTS = 40 segments
= 2560 records. A reading is ~240 bytes (<= MAX_RECORD = 400), 9 bytes of framing each:
~640 KB on flash typically, at most 40 x 64 x 409 B = 1.05 MB. That is 7.1 hours of one
channel at the default 10 s interval (1.8 h with four channels). When an append needs a new
segment and all MAX_SEGMENTS exist, the oldest segment is deleted as a whole and its
undelivered records are added to `dropped` (persisted): after an overflow the box still holds
at least (MAX_SEGMENTS - 1) x SEG_RECORDS = 2496 of the newest records.

Flash layout: segment files "%08d.seg" (numbered upwards; only the newest is appended to,
so an append never rewrites older data) and "head", written by temp + rename, holding the
position of the oldest undelivered record and the dropped/corrupt counters. Each record is
one line "<crc32 hex> <payload>\\n". A power cut can tear only the record being appended
(the torn line is closed with a newline at the next boot and skipped as corrupt) or the
head update (rename is atomic: at worst the last acked batch is replayed once more; the
receiver deduplicates on seq). Corrupt records are skipped and counted in `corrupt`.
Reading streams one line at a time (readline with a bound), so RAM use is one batch.
"""

import binascii

from meter.errors import OutboxError

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


SEG_RECORDS = const(64)
MAX_SEGMENTS = const(40)
MAX_RECORD = const(400)
_FRAME = const(10)  # 8 hex digits, space, newline
_HEAD = const("head")
_SUFFIX = const(".seg")


def _seg_name(n):
    return "%08d%s" % (n, _SUFFIX)


def _crc(data):
    return binascii.crc32(data) & 0xFFFFFFFF


def frame(payload):
    """The on-flash line of one record (bytes)."""
    return ("%08x " % _crc(payload)).encode() + payload + b"\n"


class Outbox:
    def __init__(self, fs, seg_records=SEG_RECORDS, max_segments=MAX_SEGMENTS,
                 max_record=MAX_RECORD):
        if seg_records < 1 or max_segments < 2 or max_record < 1:
            raise ValueError("outbox: need seg_records >= 1, max_segments >= 2, max_record >= 1")
        self.fs = fs
        self.seg_records = seg_records
        self.max_segments = max_segments
        self.max_record = max_record
        self.capacity = seg_records * max_segments
        self.dropped = 0
        self.corrupt = 0
        self.problems = []
        self._marks = []
        self._torn = False
        self._open()

    # --- boot -----------------------------------------------------------------------------
    def _open(self):
        fs = self.fs
        segs = []
        for name in fs.listdir():
            if name.endswith(".tmp"):
                fs.discard(name)
            elif name.endswith(_SUFFIX):
                try:
                    segs.append(int(name[: -len(_SUFFIX)]))
                except ValueError:
                    self.problems.append("outbox: stray file %s ignored" % name)
        segs.sort()
        head = self._read_head()
        if head is None:
            hs = segs[0] if segs else 0
            self.head_seg, self.head_off, self.head_idx = hs, 0, 0
        else:
            self.head_seg, self.head_off, self.head_idx, self.dropped, self.corrupt = head
            if segs and self.head_seg < segs[0]:
                self.head_seg, self.head_off, self.head_idx = segs[0], 0, 0
        for n in segs:
            if n < self.head_seg:  # delivered or dropped; removal was cut short
                fs.discard(_seg_name(n))
        live = [n for n in segs if n >= self.head_seg]
        self.tail_seg = live[-1] if live else self.head_seg
        self.tail_count = self._close_tail() if live else 0

    def _read_head(self):
        try:
            data = self.fs.read(_HEAD)
        except OSError:
            return None
        try:
            text = data.decode()
            body, crc = text.rstrip("\n").rsplit(" ", 1)
            if _crc(body.encode()) != int(crc, 16):
                raise ValueError("checksum mismatch")
            vals = [int(x) for x in body.split(" ")]
            if len(vals) != 5 or min(vals) < 0:
                raise ValueError("bad fields")
            return vals
        except (ValueError, UnicodeError) as e:
            self.problems.append("outbox: head file invalid (%s), replaying from the oldest"
                                 % (e.args[0] if e.args else "?"))
            return None

    def _write_head(self):
        body = "%d %d %d %d %d" % (self.head_seg, self.head_off, self.head_idx,
                                   self.dropped, self.corrupt)
        self.fs.replace(_HEAD, ("%s %08x\n" % (body, _crc(body.encode()))).encode())

    def _close_tail(self):
        """Count the tail segment's lines; close a line torn by a power cut with a newline."""
        name = _seg_name(self.tail_seg)
        count = 0
        last = b"\n"
        try:
            with self.fs.open(name) as f:
                while True:
                    chunk = f.read(256)
                    if not chunk:
                        break
                    count += chunk.count(b"\n")
                    last = chunk[-1:]
        except OSError:
            return 0
        if last != b"\n":
            self.fs.append(name, b"\n")
            count += 1
            self.problems.append("outbox: torn record closed in %s" % name)
        return count

    # --- writing --------------------------------------------------------------------------
    def append(self, payload):
        """Store one record at the tail. Raises OutboxError for a record that is too long or
        not one line; on a flash error drops the oldest segment once and retries."""
        if isinstance(payload, str):
            payload = payload.encode()
        if len(payload) > self.max_record:
            raise OutboxError("outbox: record of %d bytes exceeds %d" % (len(payload),
                                                                          self.max_record))
        if b"\n" in payload or b"\r" in payload:
            raise OutboxError("outbox: record must be one line")
        line = frame(payload)
        if self.tail_count >= self.seg_records:
            self.tail_seg += 1
            self.tail_count = 0
            self._torn = False
            while self.tail_seg - self.head_seg + 1 > self.max_segments:
                self._drop_head()
        try:
            self._append_line(line)
        except OSError as e:
            if self.head_seg >= self.tail_seg:
                self.dropped += 1
                raise OutboxError("outbox: cannot store record (%s)" % e) from None
            self._drop_head()  # flash full: make room
            self._append_line(line)

    def _append_line(self, line):
        if self._torn:  # an earlier append failed midway: close its fragment first
            line = b"\n" + line
        try:
            self.fs.append(_seg_name(self.tail_seg), line)
        except OSError:
            self._torn = True
            raise
        if self._torn:
            self.tail_count += 1
            self._torn = False
        self.tail_count += 1

    def _seg_len(self, n):
        return self.tail_count if n == self.tail_seg else self.seg_records

    def _drop_head(self):
        old = self.head_seg
        self.dropped += max(0, self._seg_len(old) - self.head_idx)
        self.head_seg, self.head_off, self.head_idx = old + 1, 0, 0
        self._marks = []
        self._write_head()
        self.fs.discard(_seg_name(old))

    # --- reading --------------------------------------------------------------------------
    def depth(self):
        """Records not yet acknowledged (corrupt ones included until they are passed)."""
        if self.head_seg == self.tail_seg:
            return max(0, self.tail_count - self.head_idx)
        middle = (self.tail_seg - self.head_seg - 1) * self.seg_records
        return max(0, self.seg_records - self.head_idx) + middle + self.tail_count

    def peek(self, n=8):
        """Up to n oldest records (str), in order, without removing them."""
        out = []
        marks = []
        seg, off, idx = self.head_seg, self.head_off, self.head_idx
        skipped = 0
        limit = self.max_record + _FRAME
        while len(out) < n:
            try:
                f = self.fs.open(_seg_name(seg))
            except OSError:
                f = None
            if f is None:
                if seg >= self.tail_seg:
                    break
                seg, off, idx = seg + 1, 0, 0
                continue
            with f:
                f.seek(off)
                while len(out) < n:
                    line = f.readline(limit)
                    if not line:
                        break
                    off += len(line)
                    if line[-1:] != b"\n":
                        if len(line) < limit:  # end of file without newline: incomplete
                            off -= len(line)
                            break
                        while line and line[-1:] != b"\n":  # over-long: skip the rest
                            line = f.readline(limit)
                            off += len(line)
                        idx += 1
                        skipped += 1
                        continue
                    idx += 1
                    payload = self._check(line)
                    if payload is None:
                        skipped += 1
                        continue
                    out.append(payload)
                    marks.append((seg, off, idx, skipped))
                    skipped = 0
            if len(out) >= n or seg >= self.tail_seg:
                break
            seg, off, idx = seg + 1, 0, 0
        self._marks = marks
        if not out and skipped and (seg, off, idx) != (self.head_seg, self.head_off,
                                                       self.head_idx):
            # only corrupt lines were ahead: pass them for good
            self._set_head(seg, off, idx, skipped)
        return out

    @staticmethod
    def _check(line):
        if len(line) < _FRAME or line[8:9] != b" ":
            return None
        payload = line[9:-1]
        try:
            if int(line[:8], 16) != _crc(payload):
                return None
            return payload.decode()
        except (ValueError, UnicodeError):
            return None

    def ack(self, k):
        """Remove the first k records of the last peek() (they were delivered)."""
        if k <= 0:
            return
        if k > len(self._marks):
            raise OutboxError("outbox: ack(%d) but only %d records were peeked"
                              % (k, len(self._marks)))
        seg, off, idx, _ = self._marks[k - 1]
        skipped = 0
        for m in self._marks[:k]:
            skipped += m[3]
        self._set_head(seg, off, idx, skipped)

    def _set_head(self, seg, off, idx, skipped):
        old = self.head_seg
        if seg < self.tail_seg and idx >= self.seg_records:
            seg, off, idx = seg + 1, 0, 0
        self.head_seg, self.head_off, self.head_idx = seg, off, idx
        self.corrupt += skipped
        self._marks = []
        self._write_head()
        for n in range(old, seg):
            self.fs.discard(_seg_name(n))

    def status(self):
        return {"depth": self.depth(), "capacity": self.capacity, "dropped": self.dropped,
                "corrupt": self.corrupt, "segments": self.tail_seg - self.head_seg + 1}
