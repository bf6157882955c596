# SPDX-License-Identifier: MIT
"""Home Assistant MQTT discovery configs for a ctmeter (pure: CPython and MicroPython).

    for topic, cfg in discovery_configs("meter-1", channels=(1, 2)):
        publish(topic, json.dumps(cfg), retain=True)

Per channel: current (A), power (W), apparent power (VA), power factor, energy (kWh,
device_class energy, state_class total_increasing, fed by the reading's exact energyKwh);
per device, from the first channel: voltage (V) and frequency (Hz). Every config names the
state topic <prefix>/<deviceId>/<channel>/state with a value_template into the reading JSON,
the availability topic <prefix>/<deviceId>/status (online/offline), a unique_id and one device
block, so Home Assistant groups the sensors under one device. `channels` are the numbers that
appear in the readings' "channel" field.
"""

try:
    from micropython import const
except ImportError:  # CPython
    from meter.cpython_shims import const


class DiscoveryError(ValueError):
    pass


# object id, reading field, name, unit, device_class, state_class; per channel
_SENSORS = const((
    ("current", "current", "Current", "A", "current", "measurement"),
    ("power", "power", "Power", "W", "power", "measurement"),
    ("apparent_power", "apparentPower", "Apparent power", "VA", "apparent_power", "measurement"),
    ("power_factor", "powerFactor", "Power factor", None, "power_factor", "measurement"),
    ("energy", "energyKwh", "Energy", "kWh", "energy", "total_increasing"),
))
# once per device, from the first channel's readings
_DEVICE_SENSORS = const((
    ("voltage", "voltage", "Voltage", "V", "voltage", "measurement"),
    ("frequency", "frequency", "Frequency", "Hz", "frequency", "measurement"),
))


def check_id(text, what="device id"):
    """Topic-safe ids: 1..64 of letters, digits, '_' and '-' (no '/', '+', '#')."""
    ok = isinstance(text, str) and 0 < len(text) <= 64
    if ok:
        for b in text.encode():  # bytes: iterating a str interns its characters (jsontext)
            if not (0x61 <= b <= 0x7A or 0x41 <= b <= 0x5A or 0x30 <= b <= 0x39
                    or b == 0x5F or b == 0x2D):
                ok = False
    if not ok:
        raise DiscoveryError(what + ": 1..64 letters, digits, '_' or '-'")


def discovery_configs(device_id, channels=(0,), prefix="ctmeter", voltage=True,
                      discovery_prefix="homeassistant", name=None):
    """Yield (topic, config dict) for each Home Assistant sensor of this meter."""
    check_id(device_id)
    base = prefix + "/" + device_id
    device = {
        "identifiers": ["ctmeter_" + device_id],
        "name": name or "ctmeter " + device_id,
        "manufacturer": "ctmeter",
        "model": "ESP32 current-transformer meter",
    }
    specs = [(ch, f"ch{ch}_", f" ch{ch}", s) for ch in channels for s in _SENSORS]
    if voltage and channels:
        specs += [(channels[0], "", "", s) for s in _DEVICE_SENSORS]
    for ch, oid, label_tail, (obj, field, label, unit, dclass, sclass) in specs:
        oid += obj
        cfg = {
            "name": label + label_tail,
            "unique_id": device_id + "_" + oid,
            "state_topic": f"{base}/{ch}/state",
            "value_template": "{{ value_json." + field + " }}",
            "availability_topic": base + "/status",
            "payload_available": "online",
            "payload_not_available": "offline",
            "device_class": dclass,
            "state_class": sclass,
            "device": device,
        }
        if unit:
            cfg["unit_of_measurement"] = unit
        yield f"{discovery_prefix}/sensor/{device_id}/{oid}/config", cfg
