# SPDX-License-Identifier: MIT
"""`make bench`: run every benchmark, write bench/results.json and docs/BENCHMARKS.md.

    python -m bench.run [--out-dir DIR] [--sections kernels,accuracy,ingest] [--quick]
    from bench.run import main; main(["--out-dir", tmp, "--quick", "--sections", "kernels"])

Sections: kernels (bench/kernels_bench.py), accuracy (bench/accuracy.py), heap (bench/heap.py:
the firmware's code on the heap, 64-bit unix and 32-bit webassembly ports; bench/heap_floor.py:
the smallest heap the deployed meter runs in) and ingest
(bench/ingest.py, the collector's benchmark, run in a subprocess with modest parameters; a
failure is recorded in the results, not raised). results.json keeps the keys of sections not
run; BENCHMARKS.md keeps every section outside this module's markers (`<!-- intro:... -->`,
`<!-- kernels:... -->`, `<!-- accuracy:... -->`). Numbers in the document are only those
measured by this run or kept from an earlier one, with the machine and date they came from.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from ctmeter.paths import ROOT

from bench import accuracy, heap, heap_floor, kernels_bench

SECTIONS = ("kernels", "accuracy", "heap", "ingest")
INTRO = """# Benchmarks

Written by `make bench` (`python -m bench.run`); the machine-readable numbers are in
`bench/results.json`. Every number below was measured by the run named in its section (machine,
MicroPython version, date); nothing is estimated. Host timings are of the MicroPython unix port
on a shared CI-class machine: they rank the emitters, they are not ESP32 timings."""


class RunError(RuntimeError):
    pass


def machine():
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "date": datetime.date.today().isoformat()}


def _replace_section(text, name, body):
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    section = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        return head + section + rest.split(end, 1)[1]
    return text.rstrip("\n") + "\n\n" + section + "\n"


def _machine_line(m, mp=None):
    s = f"Measured {m['date']} on {m['nproc']} CPU(s), {m['cpu']}, Python {m['python']}"
    if mp:
        s += f", MicroPython `{mp}`"
    return s + "."


def kernels_markdown(r):
    m = r["machine"]
    ns = r["ns_per_sample"]
    sp = r["speedup_vs_bytecode"]
    lines = [
        "## Kernels: viper vs. native vs. bytecode",
        "",
        _machine_line(m, r["micropython"]),
        "",
        "The three variants are generated from the one source text of "
        "`device/lib/meter/kernels.py` by swapping its `@micropython.viper` decorator "
        "(viper, `@micropython.native`, none = bytecode); all three must return identical sums. "
        f"Each kernel walks one column of {r['frames']} two-column frames (50 Hz sines at "
        f"4 kHz) on the unix port; best of {r['reps']} runs, in ns per sample.",
        "",
        "| kernel | viper ns/sample | native ns/sample | bytecode ns/sample "
        "| viper speed-up | native speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for k in kernels_bench.KERNELS:
        lines.append(f"| `{k}` | {ns['viper'][k]:.2f} | {ns['native'][k]:.1f} "
                     f"| {ns['bytecode'][k]:.1f} | {sp['viper'][k]:.1f}x "
                     f"| {sp['native'][k]:.2f}x |")
    cb = r["code_bytes"]
    lines += [
        "",
        f"Code size for `{r['march']}` (ESP32/S2/S3), from `mpy-cross -march={r['march']}`: "
        "each kernel is compiled twice in a module holding the kernels.py header (imports and "
        "constants), once whole and once with its body after the docstring replaced by "
        "`pass` (same name, signature, decorator). The .mpy size difference is what the body "
        "adds: Xtensa machine code for viper and native (plus a few bytes of length "
        "fields), bytecode for the plain variant.",
        "",
        "| kernel | viper bytes | native bytes | bytecode bytes |",
        "|---|---|---|---|",
    ]
    for k in kernels_bench.KERNELS:
        lines.append(f"| `{k}` | {cb[k]['viper']['body_bytes']} "
                     f"| {cb[k]['native']['body_bytes']} | {cb[k]['bytecode']['body_bytes']} |")
    return "\n".join(lines)


def accuracy_markdown(r):
    m = r["machine"]
    names = list(r["algorithms"])
    rows = [row for row in r["rows"] if row["percent"] > 0]
    zero = [row for row in r["rows"] if row["percent"] == 0]
    lines = [
        "## Accuracy: Irms error vs. load",
        "",
        _machine_line(m),
        "",
        f"Sensor model `{r['sensor']}` (rating {r['rating']:g} A), {r['board']}, resistive "
        f"loads, {r['sample_rate_hz']:g} samples/s, seed {r['seed']}. For each load one stream "
        "of ADC codes is generated and every algorithm reads that same stream. All start from "
        f"the nominal scale ({r['amps_per_count']:.5f} A/count) and get a one-point "
        f"calibration at {r['ref_percent']:g} % of rating (gain = mean true / mean reading; "
        "ctmeter through `Calibration(gain=...)`). Readings start after a "
        f"{r['warmup_s']:g} s warm-up and span {r['measure_s']:g} s; each is compared with the "
        "model's exact Irms over its own time span. Cells: mean |error| % (max |error| %) "
        "over the readings.",
        "",
        "| load % of rating | true Irms A | " + " | ".join(r["algorithms"][n] for n in names)
        + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for row in rows:
        cells = []
        for n in names:
            e = row["algorithms"][n]
            cells.append(f"{e['mean_abs_err_pct']:.2f} ({e['max_abs_err_pct']:.2f})")
        lines.append(f"| {row['percent']:g} | {row['true_irms_a']:.3f} | " + " | ".join(cells)
                     + " |")
    lines += ["", "Readings per load point: " + ", ".join(
        f"{n} {rows[0]['algorithms'][n]['n_readings']}" for n in names) + "."]
    if "emonlib" in names:
        fc = ", ".join(f"{row['percent']:g} %: "
                       f"{row['algorithms']['emonlib']['first_call_err_pct']:.1f}"
                       for row in rows)
        lines += ["", "EmonLib's very first call on a cold start (offset filter starting at "
                  f"mid-scale 2048), |error| %: {fc}. These readings are excluded above."]
    if zero:
        z = zero[0]["algorithms"]
        zs = ", ".join(f"{n} {z[n]['mean_reading_a']:.3f} A" for n in names)
        lines += ["", f"Noise floor: with no load at all the calibrated readings are {zs} "
                  "(mean over the span). No calibration `noise_floor` is configured here (with "
                  "one above the floor, ctmeter reads 0 below it instead)."]
        if "ctmeter" in names:
            low = rows[0]
            f0 = z["ctmeter"]["mean_reading_a"]
            t = low["true_irms_a"]
            q = ((1.0 + (f0 / t) ** 2) ** 0.5 - 1.0) * 100.0
            lines[-1] += (f" At {low['percent']:g} % ({t:.3f} A) ctmeter's floor of {f0:.3f} A "
                          f"added in quadrature accounts for +{q:.2f} % of its "
                          f"{low['algorithms']['ctmeter']['mean_abs_err_pct']:.2f} % error.")
    hi = [row for row in rows if row["max_code"] > 2880]
    if hi:
        lines += ["", "Peak codes: " + ", ".join(
            f"{row['percent']:g} % {row['min_code']}..{row['max_code']}" for row in rows)
            + ". From " + f"{hi[0]['percent']:g} % on the peaks pass code 2880, where the "
            "ESP32's 11 dB transfer curve bends (in the model, as on the chip); that error is "
            "in the codes, so every algorithm shares it and a one-point gain cannot remove it "
            "(a calibration `table` can)."]
    clipped = [row for row in rows if row["min_code"] == 0 or row["max_code"] == 4095]
    if clipped:
        lines[-1] += (" At " + ", ".join(f"{row['percent']:g} %" for row in clipped)
                      + " the codes reach 0 or 4095: the ADC clips.")
    g = ", ".join(f"{n} {v:.4f}" for n, v in r["gains"].items())
    lines += ["", f"Calibration gains: {g}."]
    return "\n".join(lines)


def heap_markdown(r):
    m = r["machine"]
    wasm = r.get("wasm", {})
    lines = [
        "## Firmware heap: code and names per job",
        "",
        _machine_line(m, r.get("micropython")) + (
            f" 32-bit: `{wasm['micropython']}`." if wasm.get("micropython") else ""),
        "",
        "What the firmware's code takes on the MicroPython heap (`bench/heap.py`): the "
        "resident modules, and what each per-use job loads on top of them (dropped after "
        "it); every name interned first, as the firmware does at start. Code only: the "
        "meter's data and the virtual chip itself come on top (the second table). A "
        "console line loads its parser, drops "
        "it, then loads the handlers and the answer's formatting (with, for `config set`, "
        "the config change). The 32-bit port (webassembly, from npm) "
        "stands in for the ESP32's word size; it runs the kernels as bytecode "
        "where the chip runs machine code outside the heap. The issue's target is a 64 KB "
        "heap on the 64-bit port.",
        "",
        heap.markdown(r),
    ]
    for key in ("floor", "floor_romfs"):
        if r.get(key):
            lines += ["", heap_floor.markdown(r[key])]
    return "\n".join(lines)


def ingest_section(r):
    """The collector's own Markdown for its result (bench/ingest.py), or None."""
    try:
        from bench import ingest
        return ingest._markdown(r)
    except Exception:  # noqa: BLE001 - their formatter may change; the JSON still has it
        return None


def _ingest_one(backend, timeout, seconds, saturation_s):
    code = ("import json; from bench.ingest import run; "
            f"r = run(seconds={seconds!r}, saturation_s={saturation_s!r}, "
            f"backends=({backend!r},), write=False); "
            "print('@@RESULT@@' + json.dumps(r))")
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return None, f"did not finish within {timeout} s"
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("@@RESULT@@"):
            return json.loads(line[len("@@RESULT@@"):]), None
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return None, f"exited {proc.returncode}: " + " / ".join(tail)


def run_ingest(backends=("sqlite", "postgresql"), timeout=150, seconds=5.0, saturation_s=3.0):
    """bench.ingest.run(write=False), one subprocess per backend so one failure loses only
    that backend; its dict with failures under "errors", or {"error": ...} if none ran."""
    if not (ROOT / "bench" / "ingest.py").exists():
        return {"error": "bench/ingest.py does not exist"}
    merged = None
    errors = {}
    for b in backends:
        r, err = _ingest_one(b, timeout, seconds, saturation_s)
        if err:
            errors[b] = err
        elif merged is None:
            merged = r
        else:
            merged["backends"].update(r["backends"])
    if merged is None:
        return {"error": "; ".join(f"{b}: {e}" for b, e in errors.items())}
    if errors:
        merged["errors"] = errors
    return merged


def write(out_dir, results, sections):
    """Merge `results` into out_dir/bench/results.json and rewrite our doc sections."""
    out_dir = Path(out_dir)
    rpath = out_dir / "bench" / "results.json"
    dpath = out_dir / "docs" / "BENCHMARKS.md"
    rpath.parent.mkdir(parents=True, exist_ok=True)
    dpath.parent.mkdir(parents=True, exist_ok=True)
    data = {}
    if rpath.exists():
        try:
            data = json.loads(rpath.read_text())
        except ValueError:
            data = {}
    data.update(results)
    tmp = rpath.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(rpath)

    text = dpath.read_text() if dpath.exists() else ""
    text = _replace_section(text, "intro", INTRO) if text else (
        f"<!-- intro:start -->\n{INTRO}\n<!-- intro:end -->\n")
    if "kernels" in sections and "kernels" in results:
        text = _replace_section(text, "kernels", kernels_markdown(results["kernels"]))
    if "accuracy" in sections and "accuracy" in results:
        text = _replace_section(text, "accuracy", accuracy_markdown(results["accuracy"]))
    if "heap" in sections and "heap" in results:
        text = _replace_section(text, "heap", heap_markdown(results["heap"]))
    if "ingest" in sections and "ingest" in results:
        r = results["ingest"]
        md = None if "error" in r else ingest_section(r)
        if md is not None:
            start, end = "<!-- ingest:start -->", "<!-- ingest:end -->"
            body = md.replace(start, "").replace(end, "").strip("\n")
            text = _replace_section(text, "ingest", body)
        elif "error" in r:
            text = _replace_section(text, "ingest", "## Ingest\n\nNot measured in the last "
                                    f"run ({machine()['date']}): {r['error']}")
    tmp = dpath.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(dpath)
    return rpath, dpath


def main(argv=None):
    ap = argparse.ArgumentParser(description="Run ctmeter's benchmarks (make bench).")
    ap.add_argument("--out-dir", default=str(ROOT),
                    help="where bench/results.json and docs/BENCHMARKS.md go (default: repo)")
    ap.add_argument("--sections", default=",".join(SECTIONS))
    ap.add_argument("--quick", action="store_true", help="tiny configuration (tests)")
    a = ap.parse_args(argv)
    sections = [s for s in a.sections.split(",") if s]
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        ap.error(f"unknown section(s) {bad}; choose from {SECTIONS}")
    m = machine()
    results = {}
    t0 = time.perf_counter()
    if "kernels" in sections:
        kw = {"frames": 2000, "reps": 3} if a.quick else {}
        results["kernels"] = dict(kernels_bench.run(**kw), machine=m)
        ns = results["kernels"]["ns_per_sample"]
        print("kernels (ns/sample, viper/native/bytecode): " + ", ".join(
            f"{k} {ns['viper'][k]:.2f}/{ns['native'][k]:.1f}/{ns['bytecode'][k]:.1f}"
            for k in kernels_bench.KERNELS), flush=True)
    if "accuracy" in sections:
        kw = ({"percents": (1, 100), "warmup_s": 1.5, "measure_s": 0.8} if a.quick else {})
        results["accuracy"] = dict(accuracy.run(**kw), machine=m)
        for row in results["accuracy"]["rows"]:
            if row["percent"] > 0:
                print(f"accuracy {row['percent']:g} %: " + ", ".join(
                    f"{n} {e['mean_abs_err_pct']:.2f}%" for n, e in row["algorithms"].items()),
                    flush=True)
    if "heap" in sections:
        from ctmeter.paths import micropython_binary

        mp = subprocess.run([micropython_binary(), "-c", "import sys; print(sys.version)"],
                            capture_output=True, text=True).stdout.strip()
        results["heap"] = dict(heap.run(), machine=m, micropython=mp,
                               floor=heap_floor.smallest(),
                               floor_romfs=heap_floor.smallest(romfs=True))
        h = results["heap"]
        print("heap (KB, 64-bit): " + ", ".join(
            f"{k} {v / 1024:.1f}" for k, v in h["unix"]["groups"].items()), flush=True)
        for fw in (h["firmware"], h["firmware_romfs"]):
            lo, hi = fw["between_windows"]["min"] / 1024, fw["between_windows"]["max"] / 1024
            print(f"firmware in use (KB, 64-bit, {fw['code']}): between windows "
                  f"{lo:.1f}-{hi:.1f}, answering status {fw['answering_status'] / 1024:.1f}",
                  flush=True)
        for fl in (h["floor"], h["floor_romfs"]):
            print(f"smallest heap for {fl['days']} simulated days ({fl['code']}): {fl['kb']} "
                  "KB (tried: " + ", ".join(f"{k}: {v}" for k, v in fl["tried"].items()) + ")",
                  flush=True)
        if "error" in h["wasm"]:
            print("heap 32-bit: not measured: " + h["wasm"]["error"], flush=True)
    if "ingest" in sections:
        results["ingest"] = run_ingest()
        if "error" in results["ingest"]:
            print(f"ingest: not measured: {results['ingest']['error']}", flush=True)
        else:
            print("ingest: " + json.dumps({k: {"readings_per_s": b["paced"]["readings_per_s"],
                                                "p99_ms": b["paced"]["p99_ms"]}
                                            for k, b in results["ingest"]["backends"].items()}),
                  flush=True)
    rpath, dpath = write(a.out_dir, results, sections)
    print(f"wrote {rpath} and {dpath} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
