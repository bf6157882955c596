# SPDX-License-Identifier: MIT
"""Reading validation: the firmware's own encoder output is accepted, bad fields are named."""

import json

import pytest
from ctmeter.serve.validate import RANGES, InvalidReading, parse_panel, parse_reading, to_json
from meter.reading import FIELDS, MINIMAL_FIELDS, encode

NOW = 1_780_000_000.0


def test_known_fields_follow_the_reading_format():
    assert set(RANGES) | {"deviceId", "ts"} == set(FIELDS)


def test_firmware_encoding_round_trips_exactly():
    text = encode("m1", 7, int(NOW) - 5, 1, 4.3456, 231.5, 990.12, 1000.5, 0.9896,
                  123456789012, 50.01, 10.0)
    row = parse_reading(json.loads(text), NOW)
    assert row["energy_mwh"] == 123456789012  # exact, not through float32
    assert row["seq"] == 7 and row["channel"] == 1 and row["ts_ms"] == (int(NOW) - 5) * 1000
    back = to_json(row)
    assert back["energyKwh"] == 123456.789012
    assert set(back) == set(FIELDS)


def test_seed_minimal_body_accepted_with_defaults():
    row = parse_reading({k: v for k, v in zip(MINIMAL_FIELDS, ("seed", 2.0, 230.0),
                                              strict=True)}, NOW)
    assert row["power"] == 460.0 and row["seq"] is None and row["channel"] == 0
    assert row["ts_ms"] == NOW * 1000 and row["energy_mwh"] is None


@pytest.mark.parametrize("body, word", [
    ([], "object"),
    ({"current": 1, "voltage": 2}, "deviceId"),
    ({"deviceId": "", "current": 1, "voltage": 2}, "deviceId"),
    ({"deviceId": "a b", "current": 1, "voltage": 2}, "deviceId"),
    ({"deviceId": "m", "current": "1", "voltage": 2}, "current"),
    ({"deviceId": "m", "current": True, "voltage": 2}, "current"),
    ({"deviceId": "m", "current": -1, "voltage": 2}, "current"),
    ({"deviceId": "m", "current": 1, "voltage": 2, "seq": 1.5}, "seq"),
    ({"deviceId": "m", "current": 1, "voltage": 2, "seq": -1}, "seq"),
    ({"deviceId": "m", "current": 1, "voltage": 2, "powerFactor": 1.5}, "powerFactor"),
    ({"deviceId": "m", "current": 1, "voltage": 2, "ts": 12}, "ts"),
    ({"deviceId": "m", "current": 1, "voltage": 2, "ts": NOW + 10 * 86400}, "ts"),
    ({"deviceId": "m", "current": 1, "voltage": 2, "energyKwh": float("inf")}, "energyKwh"),
    ({"deviceId": "m", "current": 1, "voltage": 2, "interval": 0}, "interval"),
])
def test_bad_fields_are_named(body, word):
    with pytest.raises(InvalidReading, match=word):
        parse_reading(body, NOW)


def test_panel_payload_maps_kw_and_kwh():
    row = parse_panel("panel-7", {"power_kw": 1.5, "energy_kwh": 12.5}, NOW)
    assert row["device_id"] == "panel-7" and row["power"] == 1500.0
    assert row["energy_mwh"] == 12_500_000 and row["source"] == "mqtt-panel"
    with pytest.raises(InvalidReading, match="power_kw"):
        parse_panel("panel-7", {"power_kw": "x"}, NOW)
