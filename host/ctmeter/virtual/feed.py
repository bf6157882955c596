# SPDX-License-Identifier: MIT
"""Serve ADC frames from a sample source to the firmware's unix board over two FIFOs.

    feed = SensorFeed(source, workdir); feed.start()
    env = {"CTMETER_FEED": feed.env_value}      # given to the MicroPython child
    ...
    feed.stop()

`source` is anything with `nch`, `sample_rate_hz` and `frames(k0, n) -> ndarray (n, nch)`
of uint16 codes (the sensor model's stream, a replayed capture, ...). The protocol is the
one device/lib/meter/board_unix.py speaks: a 12-byte request '<QI' (first frame, count)
answered by count*nch little-endian uint16. The feed also counts the frames it served, which
gives the sampling duty independently of the firmware's own report.

A finite source (a recorded file) ends by returning fewer than `n` frames. The feed then
sets `feed.exhausted` (a threading.Event) and leaves that request unanswered: the firmware
waits in its ADC read, as on a board whose signal stopped, so every reading it finished
before that request has been delivered and none is made from a partial window. Whoever owns
the feed waits on `exhausted` and stops the board.
"""

import os
import struct
import threading

import numpy as np

_REQ = struct.Struct("<QI")


class SensorFeed:
    def __init__(self, source, workdir):
        self.source = source
        self.req_path = os.path.join(workdir, "adc-req.fifo")
        self.resp_path = os.path.join(workdir, "adc-resp.fifo")
        for path in (self.req_path, self.resp_path):
            if os.path.exists(path):
                os.unlink(path)
            os.mkfifo(path)
        self.frames_served = 0
        self.requests = 0
        self.first_frame = None
        self.last_frame = None
        self.error = None
        self.exhausted = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name="sensor-feed", daemon=True)

    @property
    def env_value(self):
        return f"{self.req_path},{self.resp_path}"

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        # Unblock a thread waiting in open(): open the other ends and keep them open until it
        # has left (closing the response reader at once would leave it blocked again).
        held = []
        try:
            held.append(os.open(self.resp_path, os.O_RDONLY | os.O_NONBLOCK))
        except OSError:
            pass
        try:
            held.append(os.open(self.req_path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass  # no reader waiting on the request FIFO
        self._thread.join(timeout=5)
        for fd in held:
            os.close(fd)

    def duty(self):
        """Fraction of the simulated time span covered by served frames."""
        with self._lock:
            if self.first_frame is None or self.last_frame == self.first_frame:
                return 0.0
            return self.frames_served / (self.last_frame - self.first_frame)

    def _serve(self):
        while not self._stop.is_set():
            # one session per firmware run; a reset reopens both FIFOs
            try:
                with open(self.req_path, "rb", buffering=0) as req, \
                        open(self.resp_path, "wb", buffering=0) as resp:
                    self._session(req, resp)
            except BrokenPipeError:
                continue
            except Exception as exc:  # reported to the test/CLI that owns the feed
                self.error = exc
                return

    def _session(self, req, resp):
        while not self._stop.is_set():
            head = req.read(_REQ.size)
            if len(head) < _REQ.size:
                return  # firmware exited or reset
            k0, n = _REQ.unpack(head)
            frames = np.asarray(self.source.frames(k0, n), dtype="<u2")
            if frames.ndim == 2 and frames.shape[0] < n and frames.shape[1] == self.source.nch:
                # the source has ended: hold the firmware in this read until stop()
                self.exhausted.set()
                self._stop.wait()
                return
            if frames.shape != (n, self.source.nch):
                raise ValueError(f"source returned {frames.shape}, expected {(n, self.source.nch)}")
            # counted before the answer goes out: once the chip has its frames it can print
            # what it read, and whoever watches its port may look at these straight away
            with self._lock:
                self.requests += 1
                self.frames_served += n
                if self.first_frame is None:
                    self.first_frame = k0
                self.last_frame = k0 + n
            resp.write(frames.tobytes())
