# SPDX-License-Identifier: MIT
"""Deploying lib/ to a ROMFS partition, and the virtual chip's partition itself.

A MicroPython built with ROMFS runs .mpy modules in place from a flash partition; `ctmeter
deploy` uses it when the board has one. Here the board is the virtual one with its ROM
partition (ctmeter.virtual.rom_partition: a file mapped into the chip's memory, served by
`vfs.rom_ioctl` in chip/sim_vfs.py); every byte goes through mpremote's transport and
`mpremote romfs deploy`'s own code over the board's pty.
"""

import hashlib
import subprocess
import time
from pathlib import Path

import pytest
from ctmeter import deploy as api
from ctmeter import romfs
from ctmeter.boards import load_board
from ctmeter.paths import micropython_binary
from ctmeter.virtual import rom_partition
from ctmeter.virtual.supervisor import VirtualBoard

from tests.test_virtual_board import FlatSource  # a flat 2048-code input at 1 kHz

pytestmark = pytest.mark.skipif(not rom_partition.available(),
                                reason="MICROPYTHON is a separate binary: no ROM partition")

HEAP = "256k"


@pytest.fixture(scope="module")
def built():
    return api.build(load_board("virtual"))


def _mp(script, cwd, *args):
    return subprocess.run([micropython_binary(), "-X", "heapsize=1m", str(script), *args],
                          capture_output=True, text=True, timeout=60, cwd=cwd)


def test_image_holds_every_lib_file_byte_for_byte(built, tmp_path):
    img = romfs.image(built)
    assert img.startswith(b"\xd2\xcd\x31")
    assert romfs.image(dict(reversed(list(built.items())))) == img  # stable
    (tmp_path / "lib.romfs").write_bytes(img)
    script = tmp_path / "list.py"
    script.write_text(
        "import vfs, os, hashlib, binascii\n"
        "vfs.mount(vfs.VfsRom(open('lib.romfs', 'rb').read()), '/rom')\n"
        "def walk(d):\n"
        "    for e in os.ilistdir(d):\n"
        "        p = d + '/' + e[0]\n"
        "        if e[1] == 0x4000:\n"
        "            walk(p)\n"
        "        else:\n"
        "            h = hashlib.sha256(open(p, 'rb').read()).digest()\n"
        "            print(p[5:], binascii.hexlify(h).decode())\n"
        "walk('/rom')\n")
    proc = _mp(script, tmp_path)
    assert proc.returncode == 0, proc.stderr
    listed = dict(line.split() for line in proc.stdout.splitlines())
    lib = {d: f.sha256 for d, f in built.items() if d.startswith("lib/")}
    assert len(lib) > 30 and listed == lib  # boot.py/main.py stay out of the ROM


def test_partition_file_and_refusals(tmp_path):
    part = rom_partition.path_for(tmp_path / "flash")
    assert part == tmp_path / "flash.romfs"
    rom_partition.ensure(part)
    assert part.read_bytes() == b"\xff" * rom_partition.SIZE  # erased flash
    rom_partition.write_image(part, b"\xd2\xcd\x31\x00")
    assert part.read_bytes()[:5] == b"\xd2\xcd\x31\x00\xff"
    with pytest.raises(ValueError, match="does not fit"):
        rom_partition.write_image(part, b"x" * (rom_partition.SIZE + 1))
    assert part.stat().st_size == rom_partition.SIZE


def test_chip_rom_ioctl_as_mpremote_uses_it(tmp_path):
    """The chip's partition: one, in place, erased by whole blocks, written where asked,
    bad arguments refused with a negative errno; writes reach the file."""
    part = rom_partition.ensure(tmp_path / "p.romfs")
    chip = Path(rom_partition.__file__).with_name("chip")
    script = tmp_path / "ioctl.py"
    script.write_text(
        f"import sys\nsys.path.insert(0, {str(chip)!r})\n"
        "import sim_vfs as vfs\n"
        "print(vfs.rom_ioctl(1), len(vfs.rom_ioctl(2, 0)), vfs.rom_ioctl(2, 1) < 0)\n"
        "print(vfs.rom_ioctl(6, 0), vfs.rom_ioctl(3, 0, 4096, 10))\n"
        "print(vfs.rom_ioctl(4, 0, 4096, b'abc'), vfs.rom_ioctl(5, 0))\n"
        "print(vfs.rom_ioctl(3, 0, 100, 4) < 0, vfs.rom_ioctl(4, 0, 262143, b'ab') < 0)\n"
        "print(bytes(vfs.rom_ioctl(2, 0)[4095:4100]))\n"
        "print(vfs.mount_rom(sys.path), '/rom' in sys.path)\n")
    data = bytearray(part.read_bytes())
    data[4096:4200] = b"\x00" * 104  # a written block: the erase must reset it to 0xFF
    part.write_bytes(bytes(data))
    proc = subprocess.run([*rom_partition.command(part), "-X", "heapsize=256k", str(script)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"1 {rom_partition.SIZE} True", "4096 4", "0 0", "True True",
        r"b'\xffabc\xff'", "False False"]  # erased partition: nothing mounted
    after = part.read_bytes()
    assert after[4096:4099] == b"abc" and after[4099:8192] == b"\xff" * (8192 - 4099)


def _files_under(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_deploy_puts_lib_in_the_rom_and_back(built, tmp_path):
    flash = tmp_path / "flash"
    board = load_board("virtual")
    vb = VirtualBoard(flash, FlatSource(), firmware="flash", heapsize=HEAP, romfs=True).start()
    try:
        # a board with ROMFS: lib/ goes there as one image; boot.py, main.py and board.json
        # to the filesystem; the meter then starts with its modules only in the ROM
        r = api.deploy(board, vb.port, files=built, timeout=60)
        assert r.rom == "written" and r.boot["problems"] == []
        assert not (flash / "lib").exists()
        assert sorted(r.copied) == ["board.json", "boot.py", "main.py"]
        img = romfs.image(built)
        assert vb.rom.read_bytes()[:len(img)] == img
        # nothing changed: nothing written
        r = api.deploy(board, vb.port, files=built, timeout=60)
        assert (r.rom, r.copied, r.removed) == ("unchanged", [], [])
        # --no-romfs: lib/ to the filesystem, and our old image erased (it would shadow lib/)
        r = api.deploy(board, vb.port, files=built, timeout=60, romfs=False)
        assert r.rom == "erased" and r.boot["problems"] == []
        assert "lib/meter/app.mpy" in _files_under(flash)
        assert vb.rom.read_bytes()[:3] == b"\xff\xff\xff"
        # and back: the image again, the filesystem copies removed as stale
        r = api.deploy(board, vb.port, files=built, timeout=60)
        assert r.rom == "written" and "lib/meter/app.mpy" in r.removed
        assert not any(p.startswith("lib/") for p in _files_under(flash))
        assert r.boot["problems"] == []
    finally:
        vb.stop()


def test_a_board_without_romfs_gets_lib_on_its_filesystem(built, tmp_path):
    flash = tmp_path / "flash"
    vb = VirtualBoard(flash, FlatSource(), firmware="flash", heapsize=HEAP).start()
    try:
        r = api.deploy(load_board("virtual"), vb.port, files=built, timeout=60)
        assert r.rom is None and r.boot["problems"] == []
        assert hashlib.sha256((flash / "lib/meter/app.mpy").read_bytes()).hexdigest() == \
            built["lib/meter/app.mpy"].sha256
        assert not rom_partition.path_for(flash).exists()
    finally:
        vb.stop()


def test_mpremote_romfs_cli_sees_the_partition_and_the_image(built, tmp_path):
    """The chip's rom_ioctl as mpremote's own CLI expects it: `romfs query` before and
    after a deploy, `romfs deploy` of an image built by `romfs build`."""
    import sys

    mpremote = str(Path(sys.executable).with_name("mpremote"))
    vb = VirtualBoard(tmp_path / "flash", FlatSource(), firmware="flash", heapsize=HEAP,
                      romfs=True).start()

    def run(*args):
        proc = subprocess.run([mpremote, "connect", vb.port, *args], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    src = tmp_path / "src"
    (src / "lib").mkdir(parents=True)
    (src / "lib" / "hello.py").write_text("print('from rom')\n")
    try:
        before = run("romfs", "query")
        assert f"ROMFS0 partition has size {rom_partition.SIZE} bytes" in before
        assert "Not a valid ROMFS" in before
        run("romfs", "-o", str(tmp_path / "img.romfs"), "--no-mpy", "build", str(src))
        run("romfs", "deploy", str(tmp_path / "img.romfs"))
        after = run("romfs", "query")
        img = (tmp_path / "img.romfs").read_bytes()
        assert "Raw contents: " + img[:12].hex(":") in after, after  # what was built
        assert "ROMFS image size: " in after and "Not a valid" not in after
        run("reset")  # mounted at the next start, /rom/lib first on sys.path
        time.sleep(1.0)
        assert run("exec", "import hello").strip() == "from rom"
    finally:
        vb.stop()
