"""FP32/INT8 latency of TFLite (LiteRT) and ONNX Runtime against this CPU's compute floor, at realistic sizes.

    python benchmarks/runtime_floor.py [--models resnet50 mobilenet_v2] [--size 224] [--rounds 12] [--runs 10]
                                       [--issue N] [--ghz G] [--calibration 32]

ResNet-50 and MobileNetV2 are built with random weights (tf_keras.applications, weights=None: nothing is
downloaded) and converted by edgeq's own code to FP32 + INT8 TFLite and FP32 + INT8 ONNX (the host int8 scheme
of edgeq.methods.onnx.ort_int8). All artifacts of a model are timed in alternating rounds (1 thread, batch 1), so
every ratio comes from runs seconds apart; figures are medians of round medians with 95 % intervals.

The floor is the time the model's multiply-accumulates (counted from its Keras Conv2D, DepthwiseConv2D and
Dense layers) take at the core's peak vector MAC rate: MACs / (MAC per cycle x clock). The MAC rate comes from
the SIMD flags in /proc/cpuinfo (widest FMA / int8 dot-product instruction) times how many such instructions a
core issues per cycle, which /proc/cpuinfo does not say: it is assumed from the vendor and CPU family (printed,
and overridable with --issue). The clock is the highest /proc or sysfs reports (override: --ghz). It is a
compute-only bound: memory traffic, im2col/packing and non-MAC ops (pooling, activations, requantisation)
come on top, so "× floor" says how much of the runtime is not multiply-accumulate at peak rate.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from _common import (artifacts, build, count_macs, fmt_ci, interleaved, median_ci, predictor_invoker, ratio_ci,
                     work_dir)


@dataclass
class Peak:
    """A core's peak multiply-accumulates per cycle, FP32 and INT8, and how they were derived."""

    fp32_macs_per_cycle: int
    int8_macs_per_cycle: int
    ghz: float
    why: str

    def floor_ms(self, macs: int, precision: str) -> float:
        per_cycle = self.fp32_macs_per_cycle if precision == "fp32" else self.int8_macs_per_cycle
        return macs / (per_cycle * self.ghz * 1e9) * 1e3


def _cpuinfo(text: str | None = None) -> dict:
    text = text if text is not None else Path("/proc/cpuinfo").read_text()
    first = text.split("\n\n")[0]
    kv = {}
    for line in first.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            kv[k.strip()] = v.strip()
    return kv


def clock_ghz(kv: dict) -> tuple[float, str]:
    """The highest clock this machine reports: cpufreq's max where there is one, else /proc/cpuinfo's MHz."""
    p = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    if p.is_file():
        return int(p.read_text()) / 1e6, "cpufreq cpuinfo_max_freq"
    if kv.get("cpu MHz"):
        return float(kv["cpu MHz"]) / 1e3, ("/proc/cpuinfo 'cpu MHz' (no cpufreq here, e.g. a VM: boost clocks "
                                            "above it would lower the floor)")
    return 0.0, "no clock reported"


def issue_per_cycle(vendor: str, family: int, widest: int) -> tuple[int, str]:
    """Vector FMA / dot-product instructions of width `widest` a core issues per cycle: assumed, not readable."""
    if vendor == "AuthenticAMD":
        if family == 0x19 and widest == 512:
            return 1, "AMD family 19h (Zen 4): 512-bit ops run as two 256-bit halves, one per cycle"
        if family >= 0x1A:
            return 2, "AMD family 1Ah (Zen 5): two 512-bit FMA pipes"
        return 2, "AMD Zen 2/3: two 256-bit FMA pipes"
    if vendor == "GenuineIntel":
        if widest == 512:
            return 2, ("Intel with AVX-512: two 512-bit FMA units (Xeon Gold/Platinum and later; some Silver/Bronze "
                       "parts have one: --issue 1)")
        return 2, "Intel: two 256-bit FMA ports"
    return 1, f"{vendor or 'unknown vendor'}: one vector MAC instruction per cycle assumed"


def detect_peak(cpuinfo_text: str | None = None, issue: int | None = None, ghz: float | None = None) -> Peak:
    kv = _cpuinfo(cpuinfo_text)
    flags = set((kv.get("flags") or kv.get("Features") or "").split())
    vendor, family = kv.get("vendor_id", ""), int(kv.get("cpu family", "0") or 0)
    widest = 512 if "avx512f" in flags else 256 if "avx2" in flags or "avx" in flags else 128
    n, issue_why = issue_per_cycle(vendor, family, widest)
    if issue:
        n, issue_why = issue, "--issue"
    fp32 = widest // 32 * n
    fp32_why = f"FP32: {widest}-bit FMA = {widest // 32} MAC x {n}/cycle"
    if "amx_int8" in flags:
        int8, int8_why = 1024, "INT8: AMX-INT8 TMUL, 1024 MAC/cycle (only kernels that use AMX reach it)"
    elif "avx512_vnni" in flags:
        int8, int8_why = 64 * n, f"INT8: AVX512-VNNI VPDPBUSD = 64 u8 x s8 MAC x {n}/cycle"
    elif "avx_vnni" in flags or ("avx512_vnni" in flags and widest == 256):
        int8, int8_why = 32 * n, f"INT8: AVX-VNNI VPDPBUSD (256-bit) = 32 MAC x {n}/cycle"
    elif widest >= 256:
        int8, int8_why = 32 * n, (f"INT8: no VNNI; VPMADDUBSW pairs = 32 MAC x {n}/cycle at best (needs two more "
                                  "instructions to accumulate in int32: the true rate is lower)")
    else:
        int8, int8_why = 16 * n, f"INT8: 128-bit SIMD = 16 MAC x {n}/cycle"
    g, g_why = clock_ghz(kv)
    if ghz:
        g, g_why = ghz, "--ghz"
    why = (f"{kv.get('model name', '?')} ({vendor}, family {family:#x}); {fp32_why}; {int8_why}; "
           f"issue rate: {issue_why}; clock {g:.3g} GHz from {g_why}")
    return Peak(fp32, int8, g, why)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet50", "mobilenet_v2"])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=12, help=">= 6 for a 95 %% interval of the median")
    ap.add_argument("--runs", type=int, default=10, help="timed runs per artifact per round")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up runs per artifact per round")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calibration", type=int, default=32, help="INT8 calibration images (seeded noise)")
    ap.add_argument("--issue", type=int, default=None, help="override: vector MAC instructions per cycle")
    ap.add_argument("--ghz", type=float, default=None, help="override: clock in GHz")
    ap.add_argument("--dir", type=Path, default=None, help="artifact cache (default $EDGEQ_BENCH_DIR or /tmp)")
    a = ap.parse_args(argv)

    from edgeq.measure.predictors import OnnxPredictor, TFLitePredictor
    from edgeq.core.sysinfo import loadavg

    peak = detect_peak(issue=a.issue, ghz=a.ghz)
    print(f"peak per core: FP32 {peak.fp32_macs_per_cycle} MAC/cycle, INT8 {peak.int8_macs_per_cycle} MAC/cycle "
          f"at {peak.ghz:.3g} GHz\n  assumptions: {peak.why}")
    rows = []
    for name in a.models:
        model = build(name, a.size)
        macs = count_macs(model)
        paths = artifacts(name, a.size, a.calibration, a.dir or work_dir(), model=model)
        del model
        preds = {n: (TFLitePredictor(p, threads=a.threads) if n.endswith("tflite")
                     else OnnxPredictor(p, threads=a.threads, graph_optimization="all")) for n, p in paths.items()}
        import numpy as np

        x1 = np.random.default_rng(1).uniform(-1, 1, (1, a.size, a.size, 3)).astype(np.float32)
        load0 = loadavg()
        meds = interleaved({n: predictor_invoker(p, x1) for n, p in preds.items()}, a.rounds, a.runs, a.warmup,
                           log=lambda m: print("  " + m, flush=True))
        rows.append((name, macs, meds, load0, loadavg()))

    print(f"\n{a.threads} thread(s), batch 1, {a.size}x{a.size}; {a.rounds} interleaved rounds x {a.runs} runs "
          "(+{} warm-up) per artifact; median of round medians [95 % interval]".format(a.warmup))
    hdr = (f"{'model':<13}{'GMAC':>6}  {'runtime':<8}{'FP32 ms':>22}{'INT8 ms':>22}{'INT8/FP32':>22}"
           f"{'FP32 floor':>11}{'INT8 floor':>11}{'FP32 x floor':>15}{'INT8 x floor':>15}")
    print(hdr)
    print("-" * len(hdr))
    for name, macs, meds, load0, load1 in rows:
        g = macs["total"]
        for rt in ("tflite", "onnx"):
            f, i = meds[f"fp32_{rt}"], meds[f"int8_{rt}"]
            ff, fi = peak.floor_ms(g, "fp32"), peak.floor_ms(g, "int8")
            mf, mi = median_ci(f), median_ci(i)
            print(f"{name:<13}{g / 1e9:>6.2f}  {'TFLite' if rt == 'tflite' else 'ORT':<8}{fmt_ci(mf):>22}"
                  f"{fmt_ci(mi):>22}{fmt_ci(ratio_ci(i, f)):>22}{ff:>11.3g}{fi:>11.3g}"
                  f"{f'{mf[0] / ff:.2f} ({min(f) / ff:.2f})':>15}{f'{mi[0] / fi:.2f} ({min(i) / fi:.2f})':>15}")
        print(f"{'':<13}{'':>6}  ORT/TFLite: FP32 {fmt_ci(ratio_ci(meds['fp32_onnx'], meds['fp32_tflite']))}, "
              f"INT8 {fmt_ci(ratio_ci(meds['int8_onnx'], meds['int8_tflite']))}; load average {load0} -> {load1}")
    print("\nx floor = median / compute floor (in brackets: the fastest round's median, the least disturbed by other "
          "load); below 1 means the assumed peak is too low for this CPU (use --issue/--ghz).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
