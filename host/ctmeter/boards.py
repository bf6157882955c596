# SPDX-License-Identifier: MIT
"""Board definitions: one plain JSON file per board in boards/, read by one loader.

    board = load_board("esp32")          # -> Board (frozen dataclass), or raises BoardError
    list_boards()                        # -> ["esp32", "esp32c3", ...]
    load_board_file(path)                # validate any file (e.g. a user's own board)
    board.raw                            # the validated JSON dict, as deploy copies it

A file is checked strictly: unknown or missing keys, a pin that is not on ADC1 of its chip,
an mpy-cross arch or a flash offset that does not match the chip, a firmware image name that
does not follow `<BOARD>-<YYYYMMDD>-v<version>.bin` are all refused with a BoardError naming
the file and the key. The chip facts below are the checks, the files are the data.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ctmeter.errors import CommandError
from ctmeter.paths import BOARDS

FORMAT = 1
FIRMWARE_URL = "https://micropython.org/resources/firmware/{image}"


@dataclass(frozen=True)
class Chip:
    arch: str  # mpy-cross -march
    flash_offset: int  # where the MicroPython image goes
    adc1_pins: frozenset  # GPIOs on ADC1 (ADC2 is unusable while Wi-Fi is on)
    max_usable_mv: int  # upper bound of any plausible usable range at 11 dB


CHIPS = {
    "esp32": Chip("xtensawin", 0x1000, frozenset(range(32, 40)), 2600),
    "esp32s2": Chip("xtensawin", 0x1000, frozenset(range(1, 11)), 2600),
    "esp32s3": Chip("xtensawin", 0x0, frozenset(range(1, 11)), 3300),
    "esp32c3": Chip("rv32imc", 0x0, frozenset(range(0, 5)), 2700),
    "esp32c6": Chip("rv32imc", 0x0, frozenset(range(0, 7)), 3300),
    # The virtual board (`ctmeter sim`): the MicroPython unix port on x86-64 modelling an
    # ESP32's ADC. Nothing is flashed to it ("firmware": null), deploy compiles for x64.
    "unix": Chip("x64", 0x0, frozenset(range(32, 40)), 2600),
}
VIRTUAL_CHIPS = {"unix"}

ATTENUATIONS_DB = (0, 2.5, 6, 11)  # MicroPython's ADC.ATTN_0DB .. ATTN_11DB
MAX_CURRENT_CHANNELS = 4

_TOP_KEYS = {
    "format", "name", "title", "chip", "mpy_cross_arch", "flash_offset", "firmware",
    "adc_bits", "vref_mv_nominal", "atten", "usable_mv", "nonlinear_above_raw",
    "adc1_pins", "default_pins", "notes",
}
_OPTIONAL_KEYS = {"notes", "nonlinear_above_raw"}
_FIRMWARE_KEYS = {"board", "version", "date", "image", "url", "sha256", "sha256_source"}
_PIN_KEYS = {"current", "voltage"}
_IMAGE_RE = re.compile(r"^([A-Z0-9_]+)-(\d{8})-v(\d+\.\d+\.\d+(?:-preview[.\w]*)?)\.bin$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_NAME_RE = re.compile(r"^[a-z0-9_]{1,32}$")


class BoardError(CommandError):
    """A board file is missing or invalid."""


@dataclass(frozen=True)
class Firmware:
    board: str
    version: str
    date: str
    image: str
    url: str
    sha256: str | None
    sha256_source: str


@dataclass(frozen=True)
class Board:
    name: str
    title: str
    chip: str
    mpy_cross_arch: str
    flash_offset: int
    firmware: Firmware | None  # None only for a virtual chip
    adc_bits: int
    vref_mv_nominal: int
    atten: float
    usable_mv: tuple
    nonlinear_above_raw: int | None
    adc1_pins: tuple
    current_pins: tuple
    voltage_pin: int | None
    notes: str = ""
    path: Path | None = None
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def flash_offset_hex(self) -> str:
        return hex(self.flash_offset)

    def device_data(self) -> dict:
        """What the firmware needs on the board (pins, ADC facts), JSON-serialisable."""
        keys = ("name", "chip", "adc_bits", "vref_mv_nominal", "atten", "usable_mv",
                "nonlinear_above_raw", "adc1_pins", "default_pins")
        return {k: self.raw.get(k) for k in keys}


def list_boards(directory: Path = BOARDS) -> list:
    """Names of the board files in `directory`, sorted."""
    return sorted(p.stem for p in Path(directory).glob("*.json"))


def load_board(name: str, directory: Path = BOARDS) -> Board:
    """Load and validate boards/<name>.json."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise BoardError(f"bad board name {name!r}", hint="use one of: " + _known(directory))
    path = Path(directory) / f"{name}.json"
    if not path.is_file():
        raise BoardError(f"no board named {name!r}", hint="known boards: " + _known(directory))
    return load_board_file(path)


def load_board_file(path) -> Board:
    """Load and validate one board file; the file's stem must equal its "name"."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise BoardError(f"{path}: cannot read: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise BoardError(f"{path}: not valid JSON: {exc}") from exc
    return validate(data, path)


def validate(data, path=None) -> Board:
    """Check a board dict and build the Board; raises BoardError naming the bad key."""
    where = str(path) if path else "board"

    def fail(msg):
        raise BoardError(f"{where}: {msg}")

    if not isinstance(data, dict):
        fail("the file must hold a JSON object")
    _check_keys(data, _TOP_KEYS, _OPTIONAL_KEYS, "", fail)
    if data["format"] != FORMAT:
        fail(f"format: expected {FORMAT}, got {data['format']!r}")

    name = _str(data, "name", fail)
    if not _NAME_RE.match(name):
        fail(f"name: {name!r} must be lowercase letters, digits or _")
    if path is not None and Path(path).stem != name:
        fail(f"name: {name!r} does not match the file name {Path(path).name!r}")
    title = _str(data, "title", fail)

    chip_name = _str(data, "chip", fail)
    chip = CHIPS.get(chip_name)
    if chip is None:
        fail(f"chip: unknown chip {chip_name!r} (known: {', '.join(sorted(CHIPS))})")

    arch = _str(data, "mpy_cross_arch", fail)
    if arch != chip.arch:
        fail(f"mpy_cross_arch: {chip_name} needs {chip.arch!r}, not {arch!r}")

    offset = _offset(data.get("flash_offset"), fail)
    if offset != chip.flash_offset:
        fail(f"flash_offset: the {chip_name} image goes at {hex(chip.flash_offset)}, "
             f"not {hex(offset)}")

    if chip_name in VIRTUAL_CHIPS and data["firmware"] is None:
        firmware = None  # nothing to flash: the unix port runs from the host
    else:
        firmware = _firmware(data["firmware"], fail)

    adc_bits = _int(data, "adc_bits", fail)
    if adc_bits != 12:
        fail(f"adc_bits: expected 12, got {adc_bits}")
    vref = _int(data, "vref_mv_nominal", fail)
    if not 1000 <= vref <= 1200:
        fail(f"vref_mv_nominal: {vref} is outside Espressif's 1000-1200 mV spread")
    atten = data["atten"]
    if isinstance(atten, bool) or atten not in ATTENUATIONS_DB:
        fail(f"atten: {atten!r} is not one of {ATTENUATIONS_DB} dB")

    usable = data["usable_mv"]
    if (not isinstance(usable, list) or len(usable) != 2
            or not all(_is_int(v) for v in usable)
            or not 0 <= usable[0] < usable[1] <= chip.max_usable_mv):
        fail(f"usable_mv: {usable!r} must be [low, high] mV with 0 <= low < high "
             f"<= {chip.max_usable_mv}")
    nonlinear = data.get("nonlinear_above_raw")
    if nonlinear is not None and not (_is_int(nonlinear) and 0 < nonlinear < 2**adc_bits):
        fail(f"nonlinear_above_raw: {nonlinear!r} must be null or a raw code below 4096")

    adc1 = data["adc1_pins"]
    if (not isinstance(adc1, list) or not adc1 or not all(_is_int(p) for p in adc1)
            or len(set(adc1)) != len(adc1)):
        fail("adc1_pins: must be a non-empty list of distinct GPIO numbers")
    not_adc1 = sorted(set(adc1) - chip.adc1_pins)
    if not_adc1:
        fail(f"adc1_pins: GPIO {not_adc1} not on ADC1 of the {chip_name} "
             f"(ADC1 is GPIO {_ranges(chip.adc1_pins)})")

    current, voltage = _default_pins(data["default_pins"], set(adc1), chip_name, fail)
    notes = data.get("notes", "")
    if not isinstance(notes, str):
        fail("notes: must be a string")

    return Board(
        name=name, title=title, chip=chip_name, mpy_cross_arch=arch, flash_offset=offset,
        firmware=firmware, adc_bits=adc_bits, vref_mv_nominal=vref, atten=atten,
        usable_mv=tuple(usable), nonlinear_above_raw=nonlinear, adc1_pins=tuple(adc1),
        current_pins=current, voltage_pin=voltage, notes=notes,
        path=Path(path) if path else None, raw=data,
    )


def _check_keys(obj, allowed, optional, prefix, fail):
    unknown = sorted(set(obj) - allowed)
    if unknown:
        fail(f"unknown key(s) {', '.join(prefix + k for k in unknown)}")
    missing = sorted(allowed - optional - set(obj))
    if missing:
        fail(f"missing key(s) {', '.join(prefix + k for k in missing)}")


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _int(data, key, fail):
    v = data[key]
    if not _is_int(v):
        fail(f"{key}: expected an integer, got {v!r}")
    return v


def _str(data, key, fail, prefix=""):
    v = data[key]
    if not isinstance(v, str) or not v.strip():
        fail(f"{prefix}{key}: expected a non-empty string, got {v!r}")
    return v


def _offset(value, fail):
    # A string "0x1000" (as esptool spells it) or an integer.
    if _is_int(value):
        offset = value
    elif isinstance(value, str) and re.fullmatch(r"0x[0-9a-fA-F]{1,8}", value):
        offset = int(value, 16)
    else:
        fail(f"flash_offset: {value!r} must be a hex string like \"0x1000\" or an integer")
    if offset < 0 or offset % 0x1000:
        fail(f"flash_offset: {hex(offset)} is not a 4 KiB-aligned flash address")
    return offset


def _firmware(fw, fail):
    if not isinstance(fw, dict):
        fail("firmware: must be an object")
    _check_keys(fw, _FIRMWARE_KEYS, set(), "firmware.", fail)
    for key in ("board", "version", "date", "image", "url", "sha256_source"):
        _str(fw, key, fail, "firmware.")
    m = _IMAGE_RE.match(fw["image"])
    if not m:
        fail(f"firmware.image: {fw['image']!r} is not named <BOARD>-<YYYYMMDD>-v<version>.bin")
    if m.groups() != (fw["board"], fw["date"], fw["version"]):
        fail(f"firmware.image: {fw['image']!r} disagrees with firmware.board/date/version "
             f"({fw['board']}, {fw['date']}, {fw['version']})")
    if fw["url"] != FIRMWARE_URL.format(image=fw["image"]):
        fail(f"firmware.url: expected {FIRMWARE_URL.format(image=fw['image'])}")
    sha = fw["sha256"]
    if sha is not None and not (isinstance(sha, str) and _SHA_RE.match(sha)):
        fail("firmware.sha256: must be null or 64 lowercase hex digits")
    if sha is not None and fw["sha256_source"].lower().startswith("none"):
        fail("firmware.sha256_source: a sha256 needs the verified download it came from")
    return Firmware(**{k: fw[k] for k in _FIRMWARE_KEYS})


def _default_pins(pins, adc1, chip_name, fail):
    if not isinstance(pins, dict):
        fail("default_pins: must be an object {\"current\": [...], \"voltage\": pin or null}")
    _check_keys(pins, _PIN_KEYS, set(), "default_pins.", fail)
    current = pins["current"]
    voltage = pins["voltage"]
    if (not isinstance(current, list) or not 1 <= len(current) <= MAX_CURRENT_CHANNELS
            or not all(_is_int(p) for p in current)):
        fail(f"default_pins.current: 1 to {MAX_CURRENT_CHANNELS} GPIO numbers")
    if voltage is not None and not _is_int(voltage):
        fail("default_pins.voltage: a GPIO number or null")
    used = current + ([voltage] if voltage is not None else [])
    if len(set(used)) != len(used):
        fail(f"default_pins: a pin is used twice in {used}")
    bad = sorted(set(used) - adc1)
    if bad:
        fail(f"default_pins: GPIO {bad} not in this board's ADC1 pins on the {chip_name}")
    return tuple(current), voltage


def _ranges(pins):
    pins = sorted(pins)
    return f"{pins[0]}-{pins[-1]}" if pins == list(range(pins[0], pins[-1] + 1)) else str(pins)


def _known(directory):
    return ", ".join(list_boards(directory)) or "(none)"
