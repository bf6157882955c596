# SPDX-License-Identifier: MIT
"""The board files load, carry the chip facts DESIGN.md lists, and bad files are refused."""

import copy
import json

import pytest
from ctmeter import boards
from ctmeter.boards import BoardError, list_boards, load_board, load_board_file
from ctmeter.errors import CommandError

# The facts from DESIGN.md "Traps", written out independently of boards.CHIPS.
EXPECTED = {
    "esp32": ("esp32", "xtensawin", 0x1000, "ESP32_GENERIC", set(range(32, 40))),
    "esp32s2": ("esp32s2", "xtensawin", 0x1000, "ESP32_GENERIC_S2", set(range(1, 11))),
    "esp32s3": ("esp32s3", "xtensawin", 0x0, "ESP32_GENERIC_S3", set(range(1, 11))),
    "esp32c3": ("esp32c3", "rv32imc", 0x0, "ESP32_GENERIC_C3", set(range(0, 5))),
    "esp32c6": ("esp32c6", "rv32imc", 0x0, "ESP32_GENERIC_C6", set(range(0, 7))),
}


def test_required_boards_present():
    names = list_boards()
    assert {"esp32", "esp32s3", "esp32c3"} <= set(names)
    assert names == sorted(names)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_board_facts(name):
    chip, arch, offset, fw_board, adc1 = EXPECTED[name]
    b = load_board(name)
    assert (b.chip, b.mpy_cross_arch, b.flash_offset) == (chip, arch, offset)
    assert b.firmware.board == fw_board
    assert b.firmware.image == f"{fw_board}-{b.firmware.date}-v{b.firmware.version}.bin"
    assert b.firmware.url == f"https://micropython.org/resources/firmware/{b.firmware.image}"
    # No checksum was taken from a verified download here: it must be null and say why.
    assert b.firmware.sha256 is None
    assert "trust on first use" in b.firmware.sha256_source
    assert set(b.adc1_pins) <= adc1
    assert set(b.current_pins) | ({b.voltage_pin} - {None}) <= set(b.adc1_pins)
    assert (b.atten, b.adc_bits, b.vref_mv_nominal) == (11, 12, 1100)
    assert b.usable_mv[0] < b.usable_mv[1]


def test_chip_specific_ranges_and_defaults():
    esp32 = load_board("esp32")
    assert esp32.usable_mv == (150, 2450) and esp32.nonlinear_above_raw == 2880
    assert esp32.current_pins == (34, 35, 32, 33) and esp32.voltage_pin == 36
    assert load_board("esp32s3").usable_mv == (0, 3100)
    assert load_board("esp32c3").usable_mv == (0, 2500)
    assert load_board("esp32s3").flash_offset_hex == "0x0"


def test_files_are_plain_json_and_device_data_serialises():
    for name in list_boards():
        b = load_board(name)
        text = (boards.BOARDS / f"{name}.json").read_text()
        assert json.loads(text) == b.raw
        dev = b.device_data()
        assert json.loads(json.dumps(dev)) == dev
        assert dev["default_pins"]["current"] == list(b.current_pins)
        assert "firmware" not in dev  # the device needs pins, not flashing facts


def test_virtual_board_has_nothing_to_flash():
    b = load_board("virtual")
    assert (b.chip, b.mpy_cross_arch, b.firmware) == ("unix", "x64", None)
    assert set(b.current_pins) <= set(b.adc1_pins)


def test_only_a_virtual_board_may_omit_firmware(tmp_path):
    data = copy.deepcopy(load_board("esp32").raw)
    data["firmware"] = None
    (tmp_path / "esp32.json").write_text(json.dumps(data))
    with pytest.raises(BoardError, match="firmware"):
        load_board("esp32", directory=tmp_path)


def test_board_error_is_a_command_error():
    with pytest.raises(CommandError):
        load_board("nosuchboard")


@pytest.mark.parametrize("name", ["../esp32", "ESP32", "", "esp32.json", None])
def test_bad_board_names(name):
    with pytest.raises(BoardError):
        load_board(name)


def test_unknown_board_lists_known_ones():
    with pytest.raises(BoardError) as exc:
        load_board("esp8266")
    assert "esp32c3" in str(exc.value)


def _mutations():
    # (description, mutate(dict), text the error must contain)
    def setter(path, value):
        def apply(d):
            *parents, last = path
            for p in parents:
                d = d[p]
            d[last] = value
        return apply

    def deleter(path):
        def apply(d):
            *parents, last = path
            for p in parents:
                d = d[p]
            del d[last]
        return apply

    return [
        ("unknown key", setter(["pins"], [1]), "unknown key"),
        ("unknown firmware key", setter(["firmware", "md5"], "x"), "firmware.md5"),
        ("unknown pin key", setter(["default_pins", "neutral"], 5), "default_pins.neutral"),
        ("missing key", deleter(["atten"]), "missing key"),
        ("missing firmware key", deleter(["firmware", "sha256"]), "firmware.sha256"),
        ("ADC2 pin", setter(["adc1_pins"], [32, 33, 25]), "not on ADC1"),
        ("ADC2 default pin", setter(["default_pins", "current"], [34, 4]), "not in this board"),
        ("duplicate pin", setter(["default_pins", "current"], [34, 34]), "used twice"),
        ("voltage is a current pin", setter(["default_pins", "voltage"], 34), "used twice"),
        ("five channels", setter(["default_pins", "current"], [32, 33, 34, 35, 39]), "1 to 4"),
        ("no channels", setter(["default_pins", "current"], []), "1 to 4"),
        ("pin as string", setter(["default_pins", "voltage"], "36"), "GPIO number"),
        ("bad arch", setter(["mpy_cross_arch"], "rv32imc"), "xtensawin"),
        ("typo arch", setter(["mpy_cross_arch"], "xtensa"), "mpy_cross_arch"),
        ("bad offset", setter(["flash_offset"], "0x0"), "0x1000"),
        ("unaligned offset", setter(["flash_offset"], "0x1001"), "aligned"),
        ("offset not hex", setter(["flash_offset"], "4096"), "hex string"),
        ("offset float", setter(["flash_offset"], 4096.0), "hex string"),
        ("unknown chip", setter(["chip"], "esp8266"), "unknown chip"),
        ("bad atten", setter(["atten"], 12), "atten"),
        ("atten as text", setter(["atten"], "11"), "atten"),
        ("atten bool", setter(["atten"], True), "atten"),
        ("bad bits", setter(["adc_bits"], 10), "adc_bits"),
        ("vref out of spread", setter(["vref_mv_nominal"], 3300), "vref"),
        ("usable range reversed", setter(["usable_mv"], [2450, 150]), "usable_mv"),
        ("usable above chip", setter(["usable_mv"], [0, 3300]), "usable_mv"),
        ("nonlinear out of range", setter(["nonlinear_above_raw"], 5000), "nonlinear"),
        ("bad image name", setter(["firmware", "image"], "esp32.bin"), "<YYYYMMDD>"),
        ("image disagrees", setter(["firmware", "version"], "1.27.0"), "disagrees"),
        ("wrong url", setter(["firmware", "url"], "http://example.com/x.bin"), "firmware.url"),
        ("bad sha", setter(["firmware", "sha256"], "abc"), "64"),
        ("sha without source", setter(["firmware", "sha256"], "a" * 64), "verified download"),
        ("name mismatch", setter(["name"], "esp32s3"), "does not match"),
        ("bad format", setter(["format"], 2), "format"),
        ("empty title", setter(["title"], " "), "title"),
    ]


@pytest.mark.parametrize("desc,mutate,expect", _mutations(), ids=[m[0] for m in _mutations()])
def test_bad_files_are_refused(tmp_path, desc, mutate, expect):
    data = copy.deepcopy(load_board("esp32").raw)
    mutate(data)
    path = tmp_path / "esp32.json"
    path.write_text(json.dumps(data))
    with pytest.raises(BoardError) as exc:
        load_board_file(path)
    assert expect in str(exc.value), str(exc.value)
    assert str(path) in str(exc.value)  # the message names the file


def test_valid_copy_with_verified_sha_loads(tmp_path):
    data = copy.deepcopy(load_board("esp32c3").raw)
    data["firmware"]["sha256"] = "0" * 64
    data["firmware"]["sha256_source"] = "sha256sum of a download verified against a second mirror"
    (tmp_path / "esp32c3.json").write_text(json.dumps(data))
    b = load_board("esp32c3", directory=tmp_path)
    assert b.firmware.sha256 == "0" * 64
    assert list_boards(tmp_path) == ["esp32c3"]


@pytest.mark.parametrize("text", ["", "{", "[]", "null", '{"format": 1}'])
def test_broken_json_is_refused(tmp_path, text):
    path = tmp_path / "esp32.json"
    path.write_text(text)
    with pytest.raises(BoardError):
        load_board_file(path)


def test_non_utf8_file_is_refused(tmp_path):
    path = tmp_path / "esp32.json"
    path.write_bytes(b'{"name": "\xff"}')
    with pytest.raises(BoardError, match="cannot read"):
        load_board_file(path)
