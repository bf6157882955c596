# SPDX-License-Identifier: MIT
"""`ctmeter flash` against esptool's real API with only the chip faked.

The fake sits at the lowest boundary that needs no hardware: the serial port. `FakeEspSerial`
is a pyserial port class registered for `fakeesp://<chip>` URLs, so ctmeter opens it with
`serial_for_url` exactly as it opens /dev/ttyUSB0, and everything above it is the real code:
ctmeter's checks, esptool's `detect_chip`, reset sequences, SLIP framing, stub upload,
`erase_flash`, compressed `write_flash` with its MD5 verification, and `reset_chip`. The fake
answers the ESP32 ROM bootloader and flasher-stub commands esptool sends (SYNC, READ_REG,
WRITE_REG, GET_SECURITY_INFO refused as the ESP32 ROM does, MEM_*, SPI_ATTACH, CHANGE_BAUDRATE,
ERASE_FLASH, FLASH_DEFL_*, SPI_FLASH_MD5) over a 4 MB flash array, and logs every command, so
the tests can assert that a refused flash sent no write or erase at all.

What this cannot cover without a board (run `make flash BOARD=esp32 PORT=/dev/ttyUSB0`):
the DTR/RTS auto-reset circuit really entering download mode, the real ROM and stub code,
baud-rate switching on a real UART, flash chip timing, eFuse-dependent paths (secure boot,
flash encryption, chip revisions), native-USB re-enumeration, and MicroPython actually
booting from the written image.
"""

import hashlib
import http.server
import json
import os
import pty
import random
import struct
import subprocess
import sys
import threading
import types
import zlib
from pathlib import Path

import pytest
import serial
from ctmeter import cli
from ctmeter import flash as flash_api
from ctmeter.boards import load_board
from ctmeter.errors import CommandError
from ctmeter.transport import EXIT_CHIP, EXIT_IMAGE, EXIT_PORT
from esptool.bin_image import ELFSection, ESP32C3FirmwareImage, ESP32FirmwareImage
from esptool.targets import CHIP_DEFS

ROOT = Path(__file__).resolve().parents[1]
PY = str(ROOT / ".venv" / "bin" / "python")
if not Path(PY).exists():
    PY = sys.executable

ESP32 = CHIP_DEFS["esp32"]
FLASH_SIZE = 4 * 1024 * 1024
FLASH_ID = 0x1640EF  # Winbond W25Q32: 4 MB


class FakeEspSerial(serial.serialutil.SerialBase):
    """An ESP32 in download mode behind a serial port (ROM loader, then the flasher stub)."""

    instances = []

    def open(self):
        self.is_open = True
        self.out = bytearray()  # bytes the chip sends to the host
        self.inbuf = bytearray()
        self.stub = False
        self.log = []  # command names, in order
        self.flash = bytearray(b"\xff" * FLASH_SIZE)
        self.written = []  # (offset, bytes) of each completed deflated write
        self._defl = None
        self.regs = {ESP32.CHIP_DETECT_MAGIC_REG_ADDR: ESP32.MAGIC_VALUE,
                     ESP32.SPI_REG_BASE + ESP32.SPI_W0_OFFS: FLASH_ID}
        FakeEspSerial.instances.append(self)

    def close(self):
        self.is_open = False

    def _reconfigure_port(self, force_update=False):
        pass

    def _update_dtr_state(self):
        self.log.append("DTR")

    def _update_rts_state(self):
        self.log.append("RTS")

    def fileno(self):
        # no modem-control ioctl here: esptool falls back as on a port without it
        raise OSError(25, "Inappropriate ioctl for device")

    @property
    def in_waiting(self):
        return len(self.out)

    def read(self, size=1):
        data = bytes(self.out[:size])
        del self.out[:size]
        return data

    def reset_input_buffer(self):
        self.out.clear()

    def reset_output_buffer(self):
        pass

    def flush(self):
        pass

    def write(self, data):
        self.inbuf += data
        while True:
            start = self.inbuf.find(b"\xc0")
            end = self.inbuf.find(b"\xc0", start + 1)
            if start < 0 or end < 0:
                break
            frame = bytes(self.inbuf[start + 1:end])
            del self.inbuf[:end + 1]
            if frame:
                self._packet(frame.replace(b"\xdb\xdc", b"\xc0").replace(b"\xdb\xdd", b"\xdb"))
        return len(data)

    # protocol
    def _send(self, payload):
        self.out += b"\xc0" + payload.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc") \
            + b"\xc0"

    def _reply(self, op, val=0, data=b"", error=0):
        status = bytes([1 if error else 0, error]) + (b"" if self.stub else b"\x00\x00")
        body = data + status
        self._send(struct.pack("<BBHI", 1, op, len(body), val) + body)

    def _packet(self, pkt):
        _, op, _, _ = struct.unpack("<BBHI", pkt[:8])
        data = pkt[8:]
        name = next((k for k, v in ESP32.ESP_CMDS.items() if v == op), hex(op))
        self.log.append(name)
        if name == "SYNC":
            for _ in range(8):
                self._reply(op, val=0 if self.stub else 0x20120707)
        elif name == "READ_REG":
            (addr,) = struct.unpack("<I", data[:4])
            self._reply(op, val=self.regs.get(addr, 0))
        elif name == "WRITE_REG":
            addr, value = struct.unpack("<II", data[:8])
            if addr != ESP32.SPI_REG_BASE:  # the SPI command register: "done" at once
                self.regs.setdefault(addr, value)
            self._reply(op)
        elif name in ("MEM_BEGIN", "MEM_DATA", "SPI_ATTACH", "SPI_SET_PARAMS",
                      "CHANGE_BAUDRATE"):
            self._reply(op)
        elif name == "MEM_END":
            self._reply(op)
            flag, entry = struct.unpack("<II", data[:8])
            if entry:
                self.stub = True
                self._send(b"OHAI")
        elif name == "ERASE_FLASH" and self.stub:
            self.flash[:] = b"\xff" * FLASH_SIZE
            self._reply(op)
        elif name == "FLASH_DEFL_BEGIN":
            size, _, _, offset = struct.unpack("<IIII", data[:16])
            self._defl = [zlib.decompressobj(), offset, bytearray()]
            self._reply(op)
        elif name == "FLASH_DEFL_DATA":
            (length,) = struct.unpack("<I", data[:4])
            self._defl[2] += self._defl[0].decompress(data[16:16 + length])
            self._reply(op)
        elif name == "FLASH_BEGIN":  # uncompressed writes (incompressible data)
            size, _, _, offset = struct.unpack("<IIII", data[:16])
            self._defl = [None, offset, bytearray()]
            self._reply(op)
        elif name == "FLASH_DATA":
            (length,) = struct.unpack("<I", data[:4])
            self._defl[2] += data[16:16 + length]
            self._reply(op)
        elif name in ("FLASH_DEFL_END", "FLASH_END"):
            _, offset, raw = self._defl
            self.flash[offset:offset + len(raw)] = raw
            self.written.append((offset, bytes(raw)))
            self._reply(op)
        elif name == "SPI_FLASH_MD5":
            addr, size = struct.unpack("<II", data[:8])
            digest = hashlib.md5(self.flash[addr:addr + size]).digest()
            self._reply(op, data=digest if self.stub else digest.hex().encode())
        else:  # what the ESP32 ROM answers to a command it does not know
            self._reply(op, error=0x05)

    def wrote_anything(self):
        return any(n in ("ERASE_FLASH", "FLASH_DEFL_DATA", "FLASH_DATA", "FLASH_BEGIN",
                         "FLASH_DEFL_BEGIN", "ERASE_REGION") for n in self.log)


@pytest.fixture
def fake_chip(monkeypatch):
    """`fakeesp://esp32` opens a FakeEspSerial through pyserial's URL handlers."""
    pkg = types.ModuleType("ctmeter_test_fakeesp")
    pkg.__path__ = []
    mod = types.ModuleType("ctmeter_test_fakeesp.protocol_fakeesp")
    mod.Serial = FakeEspSerial
    monkeypatch.setitem(sys.modules, pkg.__name__, pkg)
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setattr(serial, "protocol_handler_packages",
                        serial.protocol_handler_packages + [pkg.__name__])
    FakeEspSerial.instances.clear()
    yield FakeEspSerial.instances


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("CTMETER_CACHE", str(path))
    monkeypatch.delenv("CTMETER_FIRMWARE_MIRROR", raising=False)
    return path


def make_image(path, cls=ESP32FirmwareImage, size=40000):
    """A real ESP image (esptool's own writer); its pseudo-random 6-bit payload compresses
    to several 16 KiB deflate blocks."""
    img = cls()
    img.entrypoint = 0x40080000
    payload = bytes(b & 0x3F for b in random.Random(size).randbytes(size))
    img.segments = [ELFSection(b".dram0.data", 0x3FFB0000, payload, 0)]
    img.save(str(path))
    return Path(path).read_bytes()


def put_in_cache(cache, board, data):
    d = cache / "firmware"
    d.mkdir(parents=True, exist_ok=True)
    (d / board.firmware.image).write_bytes(data)
    return d / board.firmware.image


# ------------------------------------------------------------------------------- the chip

def test_flash_writes_image_at_board_offset_after_erase(fake_chip, cache, tmp_path):
    board = load_board("esp32")
    data = make_image(tmp_path / "fw.bin")
    result = flash_api.flash(board, "fakeesp://esp32", image=tmp_path / "fw.bin",
                             deploy_after=False)
    chip = fake_chip[-1]
    assert result.chip == "ESP32"
    assert chip.stub  # esptool uploaded and started the (fake) stub
    log = [n for n in chip.log if n not in ("DTR", "RTS")]
    assert log.index("ERASE_FLASH") < log.index("FLASH_DEFL_BEGIN")
    assert chip.written == [(0x1000, data)]  # the ESP32 image goes at 0x1000
    assert chip.flash[0x1000:0x1000 + len(data)] == data
    assert chip.flash[:0x1000] == b"\xff" * 0x1000  # erased, nothing written below
    assert "SPI_FLASH_MD5" in log  # esptool verified what it wrote
    assert not chip.is_open  # port released


def test_wrong_chip_is_refused_before_any_write(fake_chip, cache, tmp_path):
    board = load_board("esp32c3")  # the board file says C3, the port has an ESP32
    make_image(tmp_path / "c3.bin", ESP32C3FirmwareImage)
    with pytest.raises(CommandError) as err:
        flash_api.flash(board, "fakeesp://esp32", image=tmp_path / "c3.bin",
                        deploy_after=False)
    assert err.value.exit_code == EXIT_CHIP
    assert "is an ESP32, but board 'esp32c3' is an ESP32-C3" in str(err.value)
    assert "--board esp32" in str(err.value)
    chip = fake_chip[-1]
    assert "READ_REG" in chip.log  # it was asked who it is ...
    assert not chip.wrote_anything() and not chip.stub  # ... and nothing more
    assert not chip.is_open


def test_wrong_chip_through_cli_exit_code(fake_chip, cache, tmp_path, capsys):
    make_image(tmp_path / "c3.bin", ESP32C3FirmwareImage)
    code = cli.main(["flash", "--board", "esp32c3", "--port", "fakeesp://esp32",
                     "--image", str(tmp_path / "c3.bin"), "--no-deploy"])
    assert code == EXIT_CHIP
    assert "ctmeter: the chip on fakeesp://esp32 is an ESP32" in capsys.readouterr().err
    assert not fake_chip[-1].wrote_anything()


def test_image_for_another_chip_refused_before_opening_port(fake_chip, cache, tmp_path):
    make_image(tmp_path / "c3.bin", ESP32C3FirmwareImage)
    with pytest.raises(CommandError) as err:
        flash_api.flash(load_board("esp32"), "fakeesp://esp32", image=tmp_path / "c3.bin",
                        deploy_after=False)
    assert err.value.exit_code == EXIT_IMAGE and "another chip" in str(err.value)
    assert fake_chip == []  # the port was never opened


def test_not_an_image_refused(fake_chip, cache, tmp_path):
    (tmp_path / "junk.bin").write_bytes(b"<html>404</html>" * 100)
    with pytest.raises(CommandError) as err:
        flash_api.flash(load_board("esp32"), "fakeesp://esp32", image=tmp_path / "junk.bin")
    assert err.value.exit_code == EXIT_IMAGE and "not an ESP firmware image" in str(err.value)
    assert fake_chip == []


# ---------------------------------------------------------------------- checksums and TOFU

def test_bad_checksum_against_pinned_board_sha_refused_before_any_write(fake_chip, cache,
                                                                         tmp_path):
    data = json.loads((ROOT / "boards" / "esp32.json").read_text())
    data["firmware"]["sha256"] = "0" * 64
    data["firmware"]["sha256_source"] = "test: a pinned hash from a verified download"
    boards = tmp_path / "boards"
    boards.mkdir()
    (boards / "esp32.json").write_text(json.dumps(data))
    board = load_board("esp32", boards)
    put_in_cache(cache, board, make_image(tmp_path / "fw.bin"))
    with pytest.raises(CommandError) as err:
        flash_api.flash(board, "fakeesp://esp32", deploy_after=False)
    assert err.value.exit_code == EXIT_IMAGE
    assert "boards/esp32.json says " + "0" * 64 in str(err.value)
    assert fake_chip == []  # refused before the port was even opened


def test_sha256_flag_mismatch_refused(fake_chip, cache, tmp_path):
    make_image(tmp_path / "fw.bin")
    with pytest.raises(CommandError) as err:
        flash_api.flash(load_board("esp32"), "fakeesp://esp32", image=tmp_path / "fw.bin",
                        sha256="ab" * 32)
    assert err.value.exit_code == EXIT_IMAGE and "--sha256 says" in str(err.value)
    assert fake_chip == []


class _Server:
    """A local stand-in for micropython.org (CTMETER_FIRMWARE_MIRROR) serving `files`."""

    def __init__(self, files):
        self.files = files
        self.hits = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.hits += 1
                body = outer.files.get(self.path.rsplit("/", 1)[-1])
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/firmware"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_trust_on_first_use_records_then_refuses_a_different_download(cache, tmp_path,
                                                                       monkeypatch):
    board = load_board("esp32")
    assert board.firmware.sha256 is None  # no verified hash shipped: TOFU applies
    first = make_image(tmp_path / "a.bin")
    server = _Server({board.firmware.image: first})
    monkeypatch.setenv("CTMETER_FIRMWARE_MIRROR", server.url)
    said = []
    try:
        img = flash_api.firmware_image(board, notify=said.append)
        assert img.data == first and img.sha256 == hashlib.sha256(first).hexdigest()
        pins = json.loads((cache / "firmware" / "pins.json").read_text())
        assert pins[board.firmware.image]["sha256"] == img.sha256
        assert any("trust on first use" in s for s in said)  # it says so

        again = flash_api.firmware_image(board)  # from the cache, no second download
        assert again.sha256 == img.sha256 and server.hits == 1

        # the cache is lost and the server now sends something else: refused, not cached
        (cache / "firmware" / board.firmware.image).unlink()
        server.files[board.firmware.image] = make_image(tmp_path / "b.bin", size=30000)
        with pytest.raises(CommandError) as err:
            flash_api.firmware_image(board)
        assert err.value.exit_code == EXIT_IMAGE
        assert "first download" in str(err.value)
        assert not (cache / "firmware" / board.firmware.image).exists()

        # a cached file altered on disk is refused too
        (cache / "firmware" / board.firmware.image).write_bytes(first[:-1] + b"\x00")
        with pytest.raises(CommandError) as err:
            flash_api.firmware_image(board)
        assert "cached image" in str(err.value)
    finally:
        server.close()


def test_offline_download_failure_points_to_image_flag(cache, monkeypatch):
    monkeypatch.setenv("CTMETER_FIRMWARE_MIRROR", "http://127.0.0.1:9/nothing")
    with pytest.raises(CommandError) as err:
        flash_api.firmware_image(load_board("esp32"))
    assert err.value.exit_code == EXIT_IMAGE and "--image" in str(err.value)


def test_virtual_board_is_not_flashable(cache):
    with pytest.raises(CommandError) as err:
        flash_api.firmware_image(load_board("virtual"))
    assert "ctmeter deploy" in str(err.value)


# ------------------------------------------------------------------ the real CLI, real ports

def run_cli(*args, env=None):
    return subprocess.run([PY, "-m", "ctmeter", *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env={**os.environ, **(env or {})})


def test_cli_missing_port(tmp_path):
    make_image(tmp_path / "fw.bin")
    proc = run_cli("flash", "--board", "esp32", "--port", str(tmp_path / "ttyUSB9"),
                   "--image", str(tmp_path / "fw.bin"))
    assert proc.returncode == EXIT_PORT
    assert f"ctmeter: no such port {tmp_path / 'ttyUSB9'}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_busy_port(tmp_path):
    make_image(tmp_path / "fw.bin")
    master, slave = pty.openpty()
    name = os.ttyname(slave)
    holder = serial.Serial(name, exclusive=True)  # another program holds the port
    try:
        proc = run_cli("flash", "--board", "esp32", "--port", name,
                       "--image", str(tmp_path / "fw.bin"))
    finally:
        holder.close()
        os.close(master)
        os.close(slave)
    assert proc.returncode == EXIT_PORT
    assert f"port {name} is busy" in proc.stderr
    assert "is the port used by another program?" in proc.stderr


def test_cli_bad_checksum_exit_code(tmp_path):
    make_image(tmp_path / "fw.bin")
    proc = run_cli("flash", "--board", "esp32", "--port", "/dev/null-never-opened",
                   "--image", str(tmp_path / "fw.bin"), "--sha256", "cd" * 32)
    assert proc.returncode == EXIT_IMAGE
    assert "ctmeter: image" in proc.stderr and "refusing to flash it" in proc.stderr


def test_cli_help():
    proc = run_cli("flash", "--help")
    assert proc.returncode == 0
    assert "--image" in proc.stdout and "exit codes" in proc.stdout
