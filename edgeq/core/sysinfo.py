"""The machine a figure was measured on: CPU model, SIMD features, package versions."""
from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version

from edgeq.ondevice.agent import cpu_model_and_flags

PACKAGES = ("edgeq", "tensorflow", "tf-keras", "tensorflow-model-optimization", "onnx", "onnxruntime",
            "tf2onnx", "ai-edge-litert", "tflite-runtime", "numpy", "pydantic", "paramiko")
# /proc/cpuinfo flag -> feature name in the report
SIMD_FLAGS = {"sse4_2": "SSE4.2", "avx": "AVX", "avx2": "AVX2", "fma": "FMA", "avx512f": "AVX-512F",
              "avx512_vnni": "AVX512-VNNI", "avx_vnni": "AVX-VNNI", "avx512_bf16": "AVX512-BF16",
              "amx_int8": "AMX-INT8", "neon": "NEON", "asimd": "NEON", "asimddp": "DOTPROD",
              "i8mm": "I8MM", "sve": "SVE"}


def package_versions() -> dict[str, str | None]:
    out = {}
    for p in PACKAGES:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


def cpu_info(cpuinfo_text: str | None = None) -> dict:
    """This machine's CPU (or the one /proc/cpuinfo text describes): model, cores, SIMD features."""
    model, flags = cpu_model_and_flags(cpuinfo_text)  # the agent's parser: host and device CPUs read alike
    feats = sorted({v for k, v in SIMD_FLAGS.items() if k in flags})
    return {"model": model, "machine": platform.machine(), "cores": os.cpu_count(), "simd": feats,
            "int8_dot_product": any(f in feats for f in ("AVX512-VNNI", "AVX-VNNI", "DOTPROD", "AMX-INT8"))}


def host_identity() -> str:
    c = cpu_info()
    return f"{platform.node()} ({c['model']}, {c['cores']} cores)"


def loadavg() -> list[float] | None:
    """1, 5 and 15 minute load averages (None where the OS does not say)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def _proc_times() -> dict[int, tuple[str, int]]:
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        name = raw[raw.find("(") + 1:raw.rfind(")")]
        fields = raw[raw.rfind(")") + 2:].split()
        out[int(d)] = (name, int(fields[11]) + int(fields[12]))  # utime + stime, in clock ticks
    return out


def busy_processes(interval: float = 0.5, min_percent: float = 10.0, exclude_pid: int | None = None) -> list[dict] | None:
    """Other processes using at least `min_percent` of a core over `interval` seconds (None where /proc is absent)."""
    import time

    if not os.path.isdir("/proc"):
        return None
    exclude = {exclude_pid or os.getpid()}
    before = _proc_times()
    time.sleep(interval)
    after = _proc_times()
    tick = os.sysconf("SC_CLK_TCK")
    busy = []
    for pid, (name, t1) in after.items():
        if pid in exclude or pid not in before:
            continue
        pct = 100.0 * (t1 - before[pid][1]) / tick / interval
        if pct >= min_percent:
            busy.append({"pid": pid, "name": name, "cpu_percent": round(pct, 1)})
    return sorted(busy, key=lambda p: -p["cpu_percent"])[:10]
