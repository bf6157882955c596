# SPDX-License-Identifier: MIT
"""make bench: the re-implemented algorithms on pure sines, the variant generator, the runner."""

import json
import math

import numpy as np
import pytest

from bench import algorithms as alg
from bench import kernels_bench, run

FS = 4000.0
APC = 0.025  # A per count


def sine_codes(n, amp, mean=2048.0, freq=50.0, fs=FS, phase=0.3):
    k = np.arange(n)
    return np.round(mean + amp * np.sin(2 * math.pi * freq * k / fs + phase)).astype(np.int64)


def test_emonlib_pure_sine_and_offset_filter():
    codes = sine_codes(1480 * 4, 1000.0)
    rs = alg.emonlib_calc_irms(codes, APC)
    assert [r.start for r in rs] == [0, 1480, 2960, 4440] and all(r.n == 1480 for r in rs)
    want = 1000.0 / math.sqrt(2) * APC
    for r in rs:
        assert r.irms == pytest.approx(want, rel=0.01)
    # the offset starts where the caller says and follows x at 1/1024 per sample
    cold = alg.emonlib_calc_irms(codes, APC, offset=1000.0)
    assert cold[0].irms > 1.25 * want
    assert cold[-1].irms == pytest.approx(want, rel=0.01)
    # one sample, by hand: offset 2048 + (3048-2048)/1024, filtered = 3048 - offset
    one = alg.emonlib_calc_irms([3048], 1.0, n_samples=1)[0].irms
    assert one == pytest.approx(1000.0 - 1000.0 / 1024, rel=1e-12)


def test_esphome_pure_sine_windows_and_repeats():
    vpc = 0.0008
    codes = sine_codes(int(FS), 900.0)
    rs = alg.esphome_ct_clamp(codes, vpc, APC / vpc, FS, drop_repeats=False)
    assert len(rs) == 5 and all(r.n == 800 for r in rs)
    for r in rs:
        assert r.irms == pytest.approx(900.0 / math.sqrt(2) * APC, rel=0.005)
    # a constant signal: every repeat is dropped, one sample left, rms 0
    flat = alg.esphome_ct_clamp(np.full(800, 1500), vpc, 1.0, FS)
    assert flat[0].irms == 0.0


def test_esphome_sums_are_float32():
    # a tiny AC signal on a large DC level: E[x^2] - E[x]^2 in float32 cancels badly,
    # so the published formula must differ from the float64 truth, unlike ctmeter's
    codes = sine_codes(800, 3.0, mean=3000.0)
    vpc = 0.0008
    r = alg.esphome_ct_clamp(codes, vpc, 1.0, FS, drop_repeats=False)[0].irms
    v = codes * vpc
    exact = float(np.sqrt(np.mean(v * v) - np.mean(v) ** 2))
    assert abs(r / exact - 1.0) > 1e-3


def test_tasmota_peak_to_peak():
    codes = sine_codes(int(FS * 0.35), 800.0)
    rs = alg.tasmota_adc_ct(codes, APC, FS)
    assert len(rs) == 10 and all(r.n == 140 for r in rs)
    for r in rs:
        assert r.irms == pytest.approx(800.0 / math.sqrt(2) * APC, rel=0.005)
    # exactly (max - min) / 2 / sqrt(2) * scale
    assert alg.tasmota_adc_ct([100, 300] * 70, 1.0, FS)[0].irms == pytest.approx(
        200 / 2 / math.sqrt(2))


@pytest.mark.parametrize("bad", [[], [4096], [-1], [[1, 2]]])
def test_algorithms_refuse_bad_codes(bad):
    with pytest.raises(alg.AlgorithmError):
        alg.tasmota_adc_ct(bad, 1.0, FS)


def test_variants_come_from_one_source():
    viper = kernels_bench.variant_source("viper")
    native = kernels_bench.variant_source("native")
    plain = kernels_bench.variant_source("bytecode")
    assert viper == kernels_bench.KERNELS_PY.read_text().rstrip("\n") + "\n"
    assert native.count("@micropython.native") == 3 and "@micropython.viper" not in native
    assert "@micropython." not in plain.replace("micropython.const", "")
    # apart from the decorator lines the three texts are the same lines
    strip = [[ln for ln in t.splitlines() if not ln.startswith("@micropython.")]
             for t in (viper, native, plain)]
    assert [ln for ln in strip[2] if ln] == [ln for ln in strip[0] if ln]
    assert strip[0] == strip[1]
    with pytest.raises(kernels_bench.BenchError):
        kernels_bench.variant_source("asm")


def test_run_tiny_configuration_keeps_other_sections(tmp_path):
    (tmp_path / "bench").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "bench" / "results.json").write_text(json.dumps({"ingest": {"keep": 1}}))
    (tmp_path / "docs" / "BENCHMARKS.md").write_text(
        "# Benchmarks\n\n<!-- ingest:start -->\nINGEST TEXT\n<!-- ingest:end -->\n")
    assert run.main(["--out-dir", str(tmp_path), "--quick",
                     "--sections", "kernels,accuracy"]) == 0
    data = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert data["ingest"] == {"keep": 1}
    k = data["kernels"]
    for e in kernels_bench.EMITTERS:
        for name in kernels_bench.KERNELS:
            assert k["ns_per_sample"][e][name] > 0
            assert k["code_bytes"][name][e]["body_bytes"] > 0
    # viper code is faster than bytecode on the unix port
    assert k["ns_per_sample"]["viper"]["channel_stats"] < k["ns_per_sample"]["bytecode"][
        "channel_stats"]
    acc = data["accuracy"]
    assert [r["percent"] for r in acc["rows"]] == [0, 1, 100]
    assert set(acc["rows"][1]["algorithms"]) == set(acc["algorithms"])
    doc = (tmp_path / "docs" / "BENCHMARKS.md").read_text()
    assert "INGEST TEXT" in doc and doc.count("<!-- kernels:start -->") == 1
    assert "| `channel_stats` |" in doc and "| 100 |" in doc and "CPU(s)" in doc

    # a second run replaces our sections in place; a failed ingest is recorded, not raised
    run.write(tmp_path, {"ingest": {"error": "no collector"}}, ["ingest"])
    doc2 = (tmp_path / "docs" / "BENCHMARKS.md").read_text()
    assert "INGEST TEXT" not in doc2 and "no collector" in doc2
    assert doc2.count("<!-- kernels:start -->") == 1 and "| `channel_stats` |" in doc2
    assert json.loads((tmp_path / "bench" / "results.json").read_text())["ingest"] == {
        "error": "no collector"}


def test_heap_section_measures_the_firmware_on_the_unix_port(tmp_path, monkeypatch):
    from bench import heap, heap_floor

    # the 32-bit port needs node and npm; its failure is recorded, not raised
    monkeypatch.setattr(heap, "wasm", lambda: (_ for _ in ()).throw(
        heap.HeapBenchError("node and npm are needed")))
    # the smallest-heap search, shortened: 0.2 simulated days per size in 8 KB steps, 80-112
    # KB from the filesystem (the meter does not start in 80 KB and runs in 112), 56-88 KB
    # from a ROMFS partition (it does not start in 56 KB): make bench's soak is 2 days
    search = heap_floor.smallest

    def smallest(romfs=False):
        low, high = (56, 88) if romfs else (80, 112)
        return search(days=0.2, low_kb=low, high_kb=high, step_kb=8, romfs=romfs)

    monkeypatch.setattr(heap_floor, "smallest", smallest)
    (tmp_path / "bench").mkdir()
    (tmp_path / "docs").mkdir()
    assert run.main(["--out-dir", str(tmp_path), "--sections", "heap"]) == 0
    h = json.loads((tmp_path / "bench" / "results.json").read_text())["heap"]
    g = h["unix"]["groups"]
    assert set(g) == {name for name, _ in heap.GROUPS} | {heap.UNIX_ONLY[0]}
    # every group is real code, and the resident set is the largest
    assert all(v > 2000 for v in g.values()), g
    assert g["resident"] == max(g.values())
    assert h["unix"]["names"]["count"] > 500 and h["unix"]["names"]["bytes"] > 10000
    assert h["wasm"] == {"error": "node and npm are needed"}
    # the whole firmware, running: more than its resident code and names, delivering
    fw = h["firmware"]
    lo, hi = fw["between_windows"]["min"], fw["between_windows"]["max"]
    assert g["resident"] + h["unix"]["names"]["bytes"] < lo <= hi < fw["answering_status"]
    assert hi - lo < 2048  # flat from window to window
    assert fw["posts_ok"] >= 4
    doc = (tmp_path / "docs" / "BENCHMARKS.md").read_text()
    assert "| resident | %.1f KB |" % (g["resident"] / 1024) in doc
    assert "32-bit port not measured: node and npm are needed" in doc
    # the smallest heap: a size that ran, the size below it failing for lack of memory
    fl = h["floor"]
    assert fl["kb"] in (88, 96, 104, 112), fl
    assert fl["tried"][str(fl["kb"])] == "ran"
    assert fl["below"]["kb"] == fl["kb"] - 8
    assert "MemoryError" in fl["below"]["failure"], fl
    assert f"**{fl['kb']} KB**" in doc and fl["below"]["failure"] in doc
    # with the modules run in place from a ROMFS partition: less in use, a smaller heap
    rom = h["firmware_romfs"]
    assert rom["code"] == "ROMFS" and rom["posts_ok"] >= 4
    assert rom["between_windows"]["max"] < lo - 16384, (rom, fw)
    fr = h["floor_romfs"]
    assert fr["code"] == "ROMFS" and fr["kb"] < fl["kb"], (fr, fl)
    assert fr["below"]["kb"] == fr["kb"] - 8, fr
    assert "MemoryError" in fr["below"]["failure"] or "out of memory" in fr["below"]["failure"]
    assert f"**{fr['kb']} KB**" in doc and "in a ROMFS partition" in doc
