# SPDX-License-Identifier: MIT
"""Turn an incoming reading (HTTP body, MQTT payload) into one checked row, or say why not.

    parse_reading(obj, now) -> dict        # raises InvalidReading
    parse_panel(panel, obj, now) -> dict   # seed-style DATA/PM/<panel> {power_kw, energy_kwh}

The field names come from the firmware's own format module (meter.reading). Only the seeds'
minimal fields are required; power defaults to current x voltage. Unknown keys are ignored
(a newer firmware may add some), but every known key must have the right type and range.
"""

import math
import re

from meter.reading import FIELDS, MINIMAL_FIELDS  # noqa: F401  (FIELDS: see tests)

DEVICE_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
MAX_KEYS = 64
EARLIEST_TS = 946684800  # 2000-01-01: a clock that was never set is an error, not a reading
FUTURE_SLACK_S = 86400

# field -> (low, high) for numbers; checked after the type
RANGES = {
    "seq": (0, 2**63 - 1),
    "channel": (0, 63),
    "current": (0.0, 100000.0),
    "voltage": (0.0, 100000.0),
    "power": (-1e9, 1e9),
    "apparentPower": (0.0, 1e9),
    "powerFactor": (-1.0, 1.0),
    "energyKwh": (0.0, 1e12),
    "frequency": (0.0, 1000.0),
    "interval": (0.001, 86400.0),
}
INTEGER_FIELDS = ("seq", "channel")


class InvalidReading(ValueError):
    """The body is not an acceptable reading; the message says which field and why."""


_CHECKS = tuple((k, lo, hi, k in INTEGER_FIELDS) for k, (lo, hi) in RANGES.items())


def _bad_number(key, value, integer):
    if type(value) not in (int, float) or (integer and type(value) is not int):
        return InvalidReading(f"{key} must be {'an integer' if integer else 'a number'}")
    if value != value or value in (math.inf, -math.inf):
        return InvalidReading(f"{key} must be finite")
    low, high = RANGES[key]
    return InvalidReading(f"{key} out of range [{low}, {high}]")


def parse_reading(obj, now, source="http"):
    """A checked row dict from a decoded JSON reading. `now` is the receive time (Unix s)."""
    if not isinstance(obj, dict):
        raise InvalidReading("body must be a JSON object")
    if len(obj) > MAX_KEYS:
        raise InvalidReading("too many keys")
    for key in MINIMAL_FIELDS:
        if key not in obj:
            raise InvalidReading(f"missing field {key}")
    device_id = obj["deviceId"]
    if not isinstance(device_id, str) or not DEVICE_ID.match(device_id):
        raise InvalidReading("deviceId must be 1-64 characters of A-Z a-z 0-9 _ . : -")
    row = {"device_id": device_id, "received": now, "source": source}
    get = obj.get
    for key, low, high, integer in _CHECKS:  # the hot path of ingest: kept tight
        value = get(key)
        if value is not None:
            kind = type(value)  # exact types: true/false are not numbers here
            if not ((kind is int or (kind is float and not integer)) and low <= value <= high):
                raise _bad_number(key, value, integer)
        row[key] = value
    ts = obj.get("ts")
    if ts is None:
        ts = now
    elif isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
        raise InvalidReading("ts must be a number (Unix seconds)")
    elif not EARLIEST_TS <= ts <= now + FUTURE_SLACK_S:
        raise InvalidReading("ts is not a plausible Unix time (is the device clock set?)")
    row["ts"] = ts
    if row["channel"] is None:
        row["channel"] = 0
    if row["power"] is None:
        row["power"] = row["current"] * row["voltage"]
    if row["apparentPower"] is None:
        row["apparentPower"] = row["current"] * row["voltage"]
    return to_storage(row)


def parse_panel(panel, obj, now):
    """A row from a seed-style panel message: topic DATA/PM/<panel>, {power_kw, energy_kwh}."""
    if not isinstance(obj, dict):
        raise InvalidReading("panel payload must be a JSON object")
    if not DEVICE_ID.match(panel or ""):
        raise InvalidReading("panel name must be 1-64 characters of A-Z a-z 0-9 _ . : -")
    out = {"deviceId": panel, "current": 0.0, "voltage": 0.0}
    if "power_kw" not in obj:
        raise InvalidReading("missing field power_kw")
    for src, dst, scale in (("power_kw", "power", 1000.0), ("energy_kwh", "energyKwh", 1.0)):
        if src in obj:
            value = obj[src]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidReading(f"{src} must be a number")
            out[dst] = value * scale
    for key in ("ts", "seq", "voltage", "current", "interval"):
        if key in obj:
            out[key] = obj[key]
    return parse_reading(out, now, source="mqtt-panel")


def to_storage(row):
    """Storage units: integer milliseconds for times, integer milliwatt-hours for energy."""
    energy = row.pop("energyKwh")
    row["energy_mwh"] = None if energy is None else round(energy * 1_000_000)
    row["ts_ms"] = round(row.pop("ts") * 1000)
    row["received_ms"] = round(row.pop("received") * 1000)
    return row


def to_json(row):
    """The API's view of a stored row: the reading format's field names and units."""
    energy = row.get("energy_mwh")
    return {
        "deviceId": row["device_id"],
        "seq": row.get("seq"),
        "ts": row["ts_ms"] / 1000,
        "channel": row.get("channel"),
        "current": row.get("current"),
        "voltage": row.get("voltage"),
        "power": row.get("power"),
        "apparentPower": row.get("apparentPower"),
        "powerFactor": row.get("powerFactor"),
        "energyKwh": None if energy is None else energy / 1_000_000,
        "frequency": row.get("frequency"),
        "interval": row.get("interval"),
    }
