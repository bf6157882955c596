# SPDX-License-Identifier: MIT
"""Recorded physical waveforms -> ADC codes through the same sensor and front end.

    w = load_waveform("voelkerb_kettle_2kHz.csv")     # CSV header time_s,current_A[,voltage_V]
    r = codes_from_waveform(w.time_s, w.current_a, w.voltage_v, sensor="sct013-000",
                            sample_rate=4000, seed=1)
    r.codes (n, 1 or 2) uint16;  r.t (n,) sample times;  r.frontends
    r.truth(t1, t2) -> Irms / P / S / Vrms from the recorded physical samples in [t1, t2)

Resampling is linear (default) or band-limited (Kaiser-windowed sinc, `method="sinc"`). The
sensor's phase lead is a time advance of lead/360 of a mains cycle (freq_hz). The truth comes
from the recording itself, never from the codes.
"""

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctmeter.model.frontend import Frontend, noise_blocks


class WaveformError(ValueError):
    pass


@dataclass
class Waveform:
    time_s: np.ndarray
    current_a: np.ndarray
    voltage_v: np.ndarray | None
    source: str = ""

    @property
    def sample_rate(self):
        return (len(self.time_s) - 1) / (self.time_s[-1] - self.time_s[0])


def load_waveform(path):
    """Read a physical waveform CSV; WaveformError names the file and the problem."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except OSError as exc:
        raise WaveformError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    rows = [r for r in rows if r and not r[0].lstrip().startswith("#")]
    if not rows:
        raise WaveformError(f"{path}: empty file")
    header = [h.strip() for h in rows[0]]
    if header[:2] != ["time_s", "current_A"] or header[2:] not in ([], ["voltage_V"]):
        raise WaveformError(f"{path}: header must be time_s,current_A[,voltage_V], got "
                            f"{','.join(header)}")
    try:
        data = np.array([[float(x) for x in r] for r in rows[1:]], dtype=np.float64)
    except ValueError as exc:
        raise WaveformError(f"{path}: non-numeric value: {exc}") from exc
    if data.ndim != 2 or data.shape[0] < 2 or data.shape[1] != len(header):
        raise WaveformError(f"{path}: needs at least 2 rows of {len(header)} columns")
    if not np.all(np.isfinite(data)):
        raise WaveformError(f"{path}: contains non-finite values")
    return _checked(data[:, 0], data[:, 1], data[:, 2] if data.shape[1] == 3 else None,
                    str(path))


def _checked(time_s, current_a, voltage_v, source="<arrays>"):
    t = np.asarray(time_s, dtype=np.float64)
    i = np.asarray(current_a, dtype=np.float64)
    v = None if voltage_v is None else np.asarray(voltage_v, dtype=np.float64)
    if t.ndim != 1 or t.shape != i.shape or (v is not None and v.shape != t.shape):
        raise WaveformError(f"{source}: time, current (and voltage) must be 1-D, same length")
    if len(t) < 2 or np.any(np.diff(t) <= 0):
        raise WaveformError(f"{source}: time must be strictly increasing")
    return Waveform(t, i, v, source)


def resample(time_s, x, t_out, method="linear", taps=16):
    """Values of the sampled signal (time_s, x) at t_out: linear or Kaiser-windowed sinc
    (uniform input spacing; `taps` input samples each side)."""
    time_s, x, t_out = (np.asarray(a, dtype=np.float64) for a in (time_s, x, t_out))
    if method == "linear":
        return np.interp(t_out, time_s, x)
    if method != "sinc":
        raise WaveformError(f"unknown resampling method {method!r} (linear or sinc)")
    dt = (time_s[-1] - time_s[0]) / (len(time_s) - 1)
    pos = (t_out - time_s[0]) / dt
    base = np.floor(pos).astype(np.int64)
    k = np.arange(-taps + 1, taps + 1)
    idx = base[:, None] + k[None, :]
    d = pos[:, None] - idx
    beta = 8.0
    r = np.clip(d / (taps + 1), -1.0, 1.0)
    w = np.sinc(d) * np.i0(beta * np.sqrt(1.0 - r * r)) / np.i0(beta)
    valid = (idx >= 0) & (idx < len(x))
    w = np.where(valid, w, 0.0)
    vals = x[np.clip(idx, 0, len(x) - 1)]
    norm = w.sum(axis=1)
    return np.where(norm != 0, (w * vals).sum(axis=1) / np.where(norm != 0, norm, 1), 0.0)


@dataclass
class WaveformCodes:
    codes: np.ndarray  # (n, ncols) uint16: current, then voltage if given
    t: np.ndarray
    sample_rate: float
    frontends: list
    waveform: Waveform

    def truth(self, t1=None, t2=None):
        """Irms, P, S, Vrms of the recorded physical signal over its samples in [t1, t2)."""
        w = self.waveform
        t1 = w.time_s[0] if t1 is None else t1
        t2 = w.time_s[-1] + 1e-12 if t2 is None else t2
        m = (w.time_s >= t1) & (w.time_s < t2)
        if not np.any(m):
            raise WaveformError(f"no recorded samples in [{t1}, {t2})")
        i = w.current_a[m]
        irms = float(np.sqrt(np.mean(i * i)))
        out = {"irms": irms, "n": int(m.sum())}
        if w.voltage_v is not None:
            v = w.voltage_v[m]
            vrms = float(np.sqrt(np.mean(v * v)))
            p = float(np.mean(v * i))
            out.update(vrms=vrms, p=p, s=vrms * irms, pf=p / (vrms * irms) if irms else 0.0)
        return out


def codes_from_waveform(time_s, current_a, voltage_v=None, sensor="sct013-000",
                        sample_rate=4000.0, burden_ohm=None, frontend=None,
                        voltage_sensor="zmpt101b", voltage_frontend=None, method="linear",
                        freq_hz=50.0, seed=0, ideal=False, **frontend_kw):
    """Sample a recorded waveform at `sample_rate` through sensor + front end -> codes.
    Pass a ready `frontend` (and `voltage_frontend`) or let them be built from `sensor`,
    `burden_ohm`, `ideal`, `seed` and any other Frontend keyword."""
    w = _checked(time_s, current_a, voltage_v)
    if not sample_rate > 0:
        raise WaveformError("sample_rate must be > 0")
    if frontend is None:
        frontend = Frontend(sensor, burden_ohm=burden_ohm, ideal=ideal, seed=seed,
                            **frontend_kw)
    fes = [frontend]
    n = int(math.floor((w.time_s[-1] - w.time_s[0]) * sample_rate)) + 1
    t = w.time_s[0] + np.arange(n) / sample_rate
    lead = frontend.phase_lead_deg / 360.0 / freq_hz
    x = resample(w.time_s, w.current_a, np.minimum(t + lead, w.time_s[-1]), method)
    cols = [frontend.codes(x, noise_blocks(seed, 0, 0, n))]
    if w.voltage_v is not None:
        if voltage_frontend is None:
            voltage_frontend = Frontend(voltage_sensor, ideal=ideal, seed=seed + 1000,
                                        **frontend_kw)
        fes.append(voltage_frontend)
        lead = voltage_frontend.phase_lead_deg / 360.0 / freq_hz
        x = resample(w.time_s, w.voltage_v, np.minimum(t + lead, w.time_s[-1]), method)
        cols.append(voltage_frontend.codes(x, noise_blocks(seed, 1, 0, n)))
    return WaveformCodes(np.stack(cols, axis=1), t, float(sample_rate), fes, w)
