# SPDX-License-Identifier: MIT
"""ctmeter.minify: the build's renames of names only one module uses.

The rules are tested on small packages whose behaviour is compared before and after (run
under CPython); the firmware's own modules are renamed and checked on the unix port.
"""

import ast
import json
import subprocess
import sys

import pytest
from ctmeter import minify
from ctmeter.paths import DEVICE_LIB, micropython_binary

PKG = {
    "pkg": "",
    "pkg.consts": (
        "from micropython import const\n"
        "WIDTH = const(8)\n"
        "NAME = const('eight')\n"
        "_HIDDEN = const(3)\n"
        "SHARED = const(5)\n"
        "def width():\n"
        "    return WIDTH * _HIDDEN\n"
    ),
    "pkg.user": (
        "from pkg import consts as C\n"
        "from pkg.consts import SHARED\n"
        "\n"
        "def _helper(amount, factor):\n"
        "    return amount * factor\n"
        "\n"
        "class Box:\n"
        "    def __init__(self, size):\n"
        "        self._size = size\n"
        "        self._seen = 0\n"
        "        self.public = size\n"
        "\n"
        "    def _grow(self, by):\n"
        "        self._seen += 1\n"
        "        return self._size + by\n"
        "\n"
        "    def grow(self, by):\n"
        "        return self._grow(by)\n"
        "\n"
        "    def same(self, other):\n"
        "        return self._peer == other._peer\n"
        "\n"
        "def run(keyword_only=2):\n"
        "    b = Box(C.WIDTH)\n"
        "    b._peer = 1\n"
        "    text = C.NAME + '/' + str(getattr(b, '_seen'))\n"
        "    return [_helper(b.grow(3), keyword_only), b.same(b), text, SHARED, b._seen,\n"
        "            f'{b.public}']\n"
        "\n"
        "def call():\n"
        "    return run(keyword_only=3)\n"
    ),
    "pkg.sub": (
        "from micropython import const\n"
        "from pkg.user import Box\n"
        "\n"
        "WIDTH = const(3)  # its own, not pkg.consts'\n"
        "\n"
        "class Bigger(Box):\n"
        "    def __init__(self, size):\n"
        "        super().__init__(size)\n"
        "        self._extra = size * 2\n"
        "\n"
        "    def total(self):\n"
        "        return self._extra + self.grow(0) + WIDTH\n"
    ),
}
SHIM = "def const(x):\n    return x\n"


def _write(root, sources):
    for mod, text in sources.items():
        path = root.joinpath(*mod.split("."))
        if mod == "pkg":
            path.mkdir(parents=True, exist_ok=True)
            (path / "__init__.py").write_text(text)
        else:
            path.with_suffix(".py").write_text(text)
    (root / "micropython.py").write_text(SHIM)


def _run(root):
    code = ("import json, pkg.user, pkg.sub, pkg.consts\n"
            "print(json.dumps([pkg.user.run(), pkg.user.call(), pkg.sub.Bigger(4).total(),"
            " pkg.consts.width()]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def renamed():
    return minify.minify(PKG)


def test_behaviour_is_unchanged(tmp_path, renamed):
    new, _ = renamed
    _write(tmp_path / "a", PKG)
    _write(tmp_path / "b", new)
    assert _run(tmp_path / "b") == _run(tmp_path / "a")


def test_what_is_renamed_and_what_is_not(renamed):
    new, names = renamed
    user = {v: k for k, v in names["pkg.user"].items()}  # original -> stand-in
    assert set(user.values()) <= set(minify.STATIC_NAMES)
    assert "_helper" in user and "_grow" in user and "_size" in user  # private, self only
    assert "amount" in user and "factor" in user  # parameters never passed by keyword
    assert "_seen" not in user  # named in a string (getattr)
    assert "_peer" not in user  # read off something that is not self
    assert "keyword_only" not in user  # passed by keyword
    assert "grow" not in user and "run" not in user and "Box" not in user  # public
    assert "SHARED" not in names["pkg.consts"]  # imported by name elsewhere
    assert names["pkg.consts"] == {"_WIDTH": "WIDTH", "_NAME": "NAME"}
    assert names["pkg.sub"]["_WIDTH"] == "WIDTH"  # a sibling's own NAME: folded there too
    assert "C.WIDTH" not in new["pkg.user"] and "C.NAME" not in new["pkg.user"]
    assert "'eight'" in new["pkg.user"]  # written in where it is read


def test_lines_stay_where_they_were(renamed):
    new, _ = renamed
    for mod, text in PKG.items():
        old_lines, new_lines = text.splitlines(), new[mod].splitlines()
        assert len(old_lines) == len(new_lines)
        for a, b in zip(old_lines, new_lines, strict=True):
            assert (a.strip() == "") == (b.strip() == "")
            assert len(a) - len(a.lstrip()) == len(b) - len(b.lstrip())  # indentation


def test_a_subclass_in_another_module_gets_other_stand_ins(renamed):
    _, names = renamed
    user = {v: k for k, v in names["pkg.user"].items()}
    box_attrs = {user["_size"], user["_grow"]}
    extra = {k for k, v in names["pkg.sub"].items() if v == "_extra"}
    assert extra and not extra & box_attrs  # Bigger's _extra never lands on Box's slots


def test_a_source_that_does_not_match_is_refused(monkeypatch):
    monkeypatch.setattr(minify, "_apply", lambda text, rename, inline: text)
    with pytest.raises(minify.MinifyError):
        minify.minify(PKG)


def _device_sources():
    out = {}
    for f in sorted(DEVICE_LIB.rglob("*.py")):
        parts = f.relative_to(DEVICE_LIB).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f.read_text()
    return out


def test_the_firmware_renamed_parses_and_keeps_its_public_names():
    src = _device_sources()
    new, names = minify.minify(src)
    assert sum(len(n) for n in names.values()) > 250  # the point: a few hundred names go
    for mod, text in new.items():
        before = {n.name for n in ast.walk(ast.parse(src[mod]))
                  if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name[0] != "_"}
        after = {n.name for n in ast.walk(ast.parse(text))
                 if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        assert before <= after, mod  # what other modules and the host call stays


def test_the_renamed_firmware_interns_fewer_names(tmp_path):
    # every module of the build imported on the unix port, renamed and as written
    from ctmeter.boards import load_board
    from ctmeter.deploy import build

    counts = {}
    for rename in (True, False):
        out = tmp_path / str(rename)
        build(load_board("virtual"), out_dir=out, rename=rename)
        mods = sorted(".".join(p.relative_to(out / "lib").with_suffix("").parts)
                      for p in (out / "lib" / "meter").glob("*.mpy")
                      if p.stem not in ("__init__", "board_esp32", "mqtt_pub", "ha_discovery",
                                        "cpython_shims"))
        script = "import micropython\n" + "".join(f"import {m}\n" for m in mods) + \
            "micropython.qstr_info()\n"
        proc = subprocess.run([micropython_binary(), "-X", "heapsize=1m", "-c", script],
                              env={"MICROPYPATH": str(out / "lib")}, capture_output=True,
                              text=True, timeout=60, check=True)
        counts[rename] = int(proc.stdout.split("n_qstr=")[1].split(",")[0])
    assert counts[True] < counts[False] - 200, counts
    names = json.loads((tmp_path / "True" / "names.json").read_text())
    assert names["meter.app"]  # the map back to the source's names is written
