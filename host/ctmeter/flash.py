# SPDX-License-Identifier: MIT
"""Put MicroPython on a board with esptool's API, then deploy the meter.

    img = firmware_image(board)                  # cached download, checked; or image="x.bin"
    esp = open_chip("/dev/ttyUSB0", board)       # esptool ESPLoader; refuses a wrong chip
    result = flash(board, "/dev/ttyUSB0")        # -> FlashResult (image, chip, deploy result)

The image is checked before the port is opened, and the chip before anything is written:
- its sha256 against the one pinned in boards/<board>.json, or, since MicroPython publishes no
  checksums, against the hash recorded at its first download in the user's cache
  (`pins.json`, trust on first use: a later download that differs is refused);
- that it is an ESP image built for the board's chip (esptool's own image parser);
- that the chip esptool detects on the port is the board definition's chip.
Then: stub flasher, erase, write at the board's offset (esptool verifies the MD5), hard reset.
`image=` (--image) always works offline. The cache is $CTMETER_CACHE, else
$XDG_CACHE_HOME/ctmeter, else ~/.cache/ctmeter; $CTMETER_FIRMWARE_MIRROR replaces
https://micropython.org/resources/firmware/ as the download base.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ctmeter import transport as tp
from ctmeter.boards import BOARDS, list_boards, load_board
from ctmeter.errors import CommandError

PINS = "pins.json"
DEFAULT_BAUD = 460800


class ImageError(CommandError):
    def __init__(self, message, hint=""):
        super().__init__(message, hint, tp.EXIT_IMAGE)


@dataclass
class Image:
    path: Path
    data: bytes
    sha256: str
    checked_against: str  # where the expected hash came from, or "" if none


@dataclass
class FlashResult:
    image: Image
    chip: str
    deploy: object = None


def cache_dir() -> Path:
    env = os.environ.get("CTMETER_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "ctmeter"


def _say(notify, text):
    if notify is not None:
        notify(text)


def _load_pins(path: Path) -> dict:
    try:
        pins = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ImageError(f"cannot read the recorded image hashes in {path}: {exc}",
                         "fix or remove that file") from None
    return pins if isinstance(pins, dict) else {}


def _record_pin(path: Path, image_name: str, sha: str, url: str):
    pins = _load_pins(path)
    pins[image_name] = {"sha256": sha, "url": url,
                        "first_seen": datetime.datetime.now(datetime.UTC).isoformat(
                            timespec="seconds")}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(pins, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


def _download(url: str, progress=None) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            total = int(resp.headers.get("Content-Length") or 0)
            chunks, got = [], 0
            while True:
                chunk = resp.read(64 * 1024)
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
                if progress is not None:
                    progress("download", got, total or got, url.rsplit("/", 1)[-1])
            return b"".join(chunks)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ImageError(f"cannot download {url}: {reason}",
                         "pass --image FILE to flash an image you already have "
                         "(works offline)") from None


def _mismatch(what, got, expected, source, hint):
    return ImageError(f"{what} has sha256 {got}, but {source} says {expected}: refusing to "
                      "flash it", hint)


def firmware_image(board, image=None, sha256=None, cache=None, progress=None,
                   notify=None) -> Image:
    """The checked MicroPython image for `board` (see the module docstring)."""
    fw = board.firmware
    if fw is None:
        raise CommandError(f"board {board.name!r} has no firmware to flash (it is virtual)",
                           f"deploy to it instead: ctmeter deploy --board {board.name}",
                           tp.EXIT_USAGE)
    cache = Path(cache or cache_dir()) / "firmware"
    pins_path = cache / PINS
    if fw.sha256:
        expected, source = fw.sha256, f"boards/{board.name}.json"
    else:
        pin = _load_pins(pins_path).get(fw.image) or {}
        expected = pin.get("sha256")
        source = (f"the first download of {fw.image} recorded in {pins_path} "
                  f"on {pin.get('first_seen', '?')}") if expected else ""

    if image is not None:
        path = Path(image)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageError(f"cannot read image {path}: {exc.strerror}") from None
        got = hashlib.sha256(data).hexdigest()
        if sha256:
            if got != sha256.lower():
                raise _mismatch(f"image {path}", got, sha256, "--sha256",
                                "is it the file you meant?")
            return Image(path, data, got, "--sha256")
        if path.name == fw.image and expected:
            if got != expected:
                raise _mismatch(f"image {path}", got, expected, source,
                                "the file is damaged or not the published image")
            return Image(path, data, got, source)
        _say(notify, f"using {path} as given (sha256 {got}); not checked against a pinned "
                     "hash: pass --sha256 to check it")
        return Image(path, data, got, "")

    cache.mkdir(parents=True, exist_ok=True)
    path = cache / fw.image
    if path.exists():
        data = path.read_bytes()
        got = hashlib.sha256(data).hexdigest()
        if expected and got != expected:
            raise _mismatch(f"cached image {path}", got, expected, source,
                            f"remove {path} to download it again, or pass --image")
    else:
        mirror = os.environ.get("CTMETER_FIRMWARE_MIRROR")
        url = (mirror.rstrip("/") + "/" + fw.image) if mirror else fw.url
        _say(notify, f"downloading {url}")
        data = _download(url, progress)
        got = hashlib.sha256(data).hexdigest()
        if expected and got != expected:
            raise _mismatch(f"the download of {url}", got, expected, source,
                            "the server sent a different file; nothing was cached")
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)
    if not expected:
        _record_pin(pins_path, fw.image, got, fw.url)
        _say(notify, f"{fw.image}: MicroPython publishes no checksum, so its sha256 {got} is "
                     f"now recorded in {pins_path} (trust on first use); a later download "
                     "that differs will be refused")
        source = f"{pins_path} (recorded now)"
    return Image(path, data, got, source)


def _chip_class(chip: str):
    from esptool.targets import CHIP_DEFS

    return CHIP_DEFS[chip]


def check_image(board, img: Image):
    """Refuse an image that is not an ESP image for the board's chip (before any port I/O)."""
    from esptool.bin_image import LoadFirmwareImage
    from esptool.util import FatalError

    cls = _chip_class(board.chip)
    try:
        parsed = LoadFirmwareImage(board.chip, img.data)
    except (FatalError, Exception) as exc:  # esptool's parser raises struct.error & co on junk
        raise ImageError(f"{img.path} is not an ESP firmware image ({exc})",
                         "is it a MicroPython .bin for this board?") from None
    chip_id = getattr(parsed, "chip_id", None)
    if chip_id is not None and chip_id != cls.IMAGE_CHIP_ID:
        raise ImageError(f"{img.path} is built for another chip (image chip id {chip_id}, "
                         f"the {cls.CHIP_NAME} is {cls.IMAGE_CHIP_ID})",
                         f"use the image named in boards/{board.name}.json")


def _board_for_chip(chip_name: str, boards_dir=BOARDS) -> str:
    for name in list_boards(boards_dir):
        try:
            b = load_board(name, boards_dir)
        except CommandError:
            continue
        if b.firmware is not None and _chip_class(b.chip).CHIP_NAME == chip_name:
            return name
    return ""


def open_chip(port: str, board, connect_attempts: int = 3):
    """Open `port`, detect the chip through esptool; refuse one that is not `board.chip`.

    Returns the connected ESPLoader (its serial port is ours to close)."""
    from esptool.cmds import detect_chip
    from esptool.util import FatalError

    ser = tp.open_serial(port, baudrate=115200)
    try:
        try:
            esp = detect_chip(ser, connect_attempts=connect_attempts)
        except FatalError as exc:
            raise tp.DeviceError(f"no ESP bootloader answered on {port}: "
                                 f"{str(exc).splitlines()[0]}",
                                 "hold BOOT, press EN/RESET, release BOOT, and retry") \
                from None
        want = _chip_class(board.chip).CHIP_NAME
        if esp.CHIP_NAME != want:
            other = _board_for_chip(esp.CHIP_NAME)
            raise CommandError(f"the chip on {port} is an {esp.CHIP_NAME}, but board "
                               f"{board.name!r} is an {want}; nothing was written",
                               f"use --board {other}" if other else
                               "no board definition exists for that chip", tp.EXIT_CHIP)
        return esp
    except BaseException:
        ser.close()
        raise


def write_image(esp, board, img: Image, baud: int = DEFAULT_BAUD, erase: bool = True):
    """Stub flasher, faster baud, erase, write at the board's offset, hard reset."""
    from esptool.cmds import attach_flash, erase_flash, reset_chip, run_stub, write_flash

    esp = run_stub(esp)
    if baud and baud != esp.get_baud():
        esp.change_baud(baud)
    attach_flash(esp)
    if erase:
        erase_flash(esp)
    write_flash(esp, [(board.flash_offset, img.data)])
    reset_chip(esp, "hard-reset")
    return esp


def flash(board, port: str, image=None, sha256=None, baud: int = DEFAULT_BAUD,
          erase: bool = True, deploy_after: bool = True, cache=None, progress=None,
          notify=None, deploy_kwargs=None) -> FlashResult:
    """Check the image, check the chip, erase, write, reset; then deploy the meter."""
    from esptool.util import FatalError

    img = firmware_image(board, image, sha256, cache, progress, notify)
    check_image(board, img)
    esp = open_chip(port, board)
    chip = esp.CHIP_NAME
    try:
        _say(notify, f"{chip} on {port}: writing {img.path.name} at {board.flash_offset_hex}")
        esp = write_image(esp, board, img, baud, erase)
    except FatalError as exc:
        raise tp.DeviceError(f"flashing failed: {str(exc).splitlines()[0]}",
                             "the board may hold a partial image: run flash again") from None
    finally:
        esp._port.close()
    result = FlashResult(img, chip)
    if deploy_after:
        from ctmeter.deploy import deploy

        result.deploy = deploy(board, port, progress=progress, **(deploy_kwargs or {}))
    return result
