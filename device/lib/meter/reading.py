# SPDX-License-Identifier: MIT
"""The reading format: one JSON object per channel per interval (HTTP body, MQTT payload).

    encode(device_id, seq, ts, channel, current, voltage, power, apparent, pf,
           energy_mwh, frequency, interval) -> str

Version 1 fields: deviceId, seq, ts, channel, current, voltage, power, apparentPower,
powerFactor, energyKwh, frequency, interval. It is a superset of the seed servers' body
{"deviceId", "current", "voltage"}, so a server written for them accepts ours.

energyKwh is written from the integer milliwatt-hour counter as an exact decimal
(123.456789), never through a float: on the chip floats are single precision and a
float32 total near 1000 kWh cannot hold a 1 Wh step. `ts` is Unix time in seconds (UTC).
Servers deduplicate on (deviceId, seq); seq only grows, across reboots.

Both the firmware (to publish) and the collector (to validate) import this module.
"""

FORMAT_VERSION = 1

FIELDS = (
    "deviceId",
    "seq",
    "ts",
    "channel",
    "current",
    "voltage",
    "power",
    "apparentPower",
    "powerFactor",
    "energyKwh",
    "frequency",
    "interval",
)

# The seed systems' minimal body; the collector accepts it too.
MINIMAL_FIELDS = ("deviceId", "current", "voltage")


def kwh_text(energy_mwh):
    """Exact decimal kWh text of an integer milliwatt-hour count: 1234567 -> '1.234567'."""
    energy_mwh = int(energy_mwh)
    sign = "-" if energy_mwh < 0 else ""
    whole, frac = divmod(abs(energy_mwh), 1000000)
    return "%s%d.%06d" % (sign, whole, frac)


def _num(x, digits):
    # Fixed decimals keep payloads short and identical on CPython and MicroPython.
    text = "%.*f" % (digits, x)
    if text in ("nan", "inf", "-inf"):
        raise ValueError("reading value is not finite")
    return text


def _str(s):
    # device ids are validated by config to [A-Za-z0-9_-]; quote defensively anyway
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'


def encode(device_id, seq, ts, channel, current, voltage, power, apparent, pf,
           energy_mwh, frequency, interval):
    """One reading as a JSON object string (field order as FIELDS)."""
    return (
        "{"
        '"deviceId":' + _str(device_id)
        + ',"seq":%d' % seq
        + ',"ts":%d' % ts
        + ',"channel":%d' % channel
        + ',"current":' + _num(current, 4)
        + ',"voltage":' + _num(voltage, 2)
        + ',"power":' + _num(power, 2)
        + ',"apparentPower":' + _num(apparent, 2)
        + ',"powerFactor":' + _num(pf, 4)
        + ',"energyKwh":' + kwh_text(energy_mwh)
        + ',"frequency":' + _num(frequency, 3)
        + ',"interval":' + _num(interval, 3)
        + "}"
    )
