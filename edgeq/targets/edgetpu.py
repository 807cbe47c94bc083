"""Coral Edge TPU: static compatibility check of a .tflite, edgetpu_compiler on this machine (it is
x86-64 only) with its log parsed, then the agent runs the `_edgetpu.tflite` with the libedgetpu delegate."""
from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

from edgeq.core.errors import RuntimeUnavailable, TargetError, first_line
from edgeq.core.formats import format_refusal
from edgeq.measure.predictors import load_tflite_interpreter
from edgeq.targets.base import Compatibility, Deployable, LatencyStats
from edgeq.targets.edgetpu_ops import (CONSTANT_DTYPES, INSTALL_COMPILER, INSTALL_RUNTIME, MAX_NON_UNIT_DIMS, QUANTIZED_DTYPES, SUPPORTED_OPS)


def _graph(path: Path):
    """An interpreter that shows the model's own ops (no default XNNPACK delegate node)."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        interp = Interpreter(model_path=str(path),
                             experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    except ImportError:  # pragma: no cover - other interpreters

        interp, _ = load_tflite_interpreter(Path(path))
    except (ValueError, RuntimeError) as e:
        raise TargetError(f"{path}: not a loadable .tflite model ({first_line(e)})") from None
    return interp, [op for op in interp._get_ops_details() if op["op_name"] != "DELEGATE"]


def check_edgetpu(path: Path, artifact_name: str = "", target: str = "edgetpu") -> Compatibility:
    """Fully int8, every op in the Edge TPU's supported set, static shapes of at most 3 non-unit dims."""
    interp, ops = _graph(Path(path))
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    # activations: what ops produce plus the graph inputs (weights may have 4 non-unit dims)
    activations = {int(i) for op in ops for i in op["outputs"]} | {d["index"] for d in interp.get_input_details()}
    problems: list[str] = []
    warnings: list[str] = []
    unsupported: dict[str, int] = {}
    for op in ops:
        name = op["op_name"]
        where = f"{name}#{op['index']}"
        if name not in SUPPORTED_OPS:
            unsupported[name] = unsupported.get(name, 0) + 1
            problems.append(f"{where}: op {name} is not in the Edge TPU's supported set (it would run on the CPU)")
        for idx in list(op["inputs"]) + list(op["outputs"]):
            t = tensors.get(int(idx)) if idx >= 0 else None
            if t is None:
                continue
            dt = np.dtype(t["dtype"]).name
            allowed = QUANTIZED_DTYPES if int(idx) in activations else QUANTIZED_DTYPES + CONSTANT_DTYPES
            if dt not in allowed:
                problems.append(f"{where}: tensor '{t['name']}' is {dt}; the Edge TPU needs a fully int8 model")
                break
    for t in (tensors[i] for i in sorted(activations) if i in tensors):
        sig = [int(d) for d in t.get("shape_signature", t["shape"])]
        if any(d == -1 for d in sig[1:]):
            problems.append(f"tensor '{t['name']}' has a dynamic shape {sig}; the Edge TPU needs static shapes")
        elif sig and sig[0] == -1:
            warnings.append(f"tensor '{t['name']}' has a dynamic batch dimension {sig} (allocated at 1); if "
                            "edgetpu_compiler reports dynamic-sized tensors, export with a fixed batch of 1")
        shape = [int(d) for d in t["shape"]]
        if any(d > 1 for d in shape[:-MAX_NON_UNIT_DIMS]):
            problems.append(f"tensor '{t['name']}' {shape}: only the 3 innermost dimensions may exceed 1")
    problems = list(dict.fromkeys(problems))
    op_counts: dict[str, int] = {}
    for op in ops:
        op_counts[op["op_name"]] = op_counts.get(op["op_name"], 0) + 1
    warnings = sorted(set(warnings))
    details = {"ops": op_counts, "unsupported_ops": unsupported,
               "warnings": warnings[:3] + ([f"... and {len(warnings) - 3} more"] if len(warnings) > 3 else [])}
    return Compatibility(not problems, target, artifact_name, problems, details)


# ------------------------------------------------------------------ edgetpu_compiler
_NUM = {
    "compiler_version": re.compile(r"Edge TPU Compiler version (\S+)"),
    "input_model": re.compile(r"^Input model: (.+)$", re.M),
    "output_model": re.compile(r"^Output model: (.+)$", re.M),
    "subgraphs": re.compile(r"Number of Edge TPU subgraphs: (\d+)"),
    "total_ops": re.compile(r"Total number of operations: (\d+)"),
    "ops_on_tpu": re.compile(r"Number of operations that will run on Edge TPU: (\d+)"),
    "ops_on_cpu": re.compile(r"Number of operations that will run on CPU: (\d+)"),
    "on_chip_memory_used": re.compile(r"On-chip memory used for caching model parameters: (\S+)"),
    "off_chip_memory_used": re.compile(r"Off-chip memory used for streaming uncached model parameters: (\S+)"),
}
_ROW = re.compile(r"^([A-Z][A-Z0-9_]+)\s+(\d+)\s+(\S.*?)\s*$")
MAPPED = "Mapped to Edge TPU"


def parse_compiler_log(text: str) -> dict:
    """edgetpu_compiler's stdout -> version, success, op counts and the per-operator table."""
    out: dict = {"success": "compiled successfully" in text and "Compilation failed" not in text}
    for key, rx in _NUM.items():
        m = rx.search(text)
        if m:
            v = m.group(1).strip()
            out[key] = int(v) if v.isdigit() else v
    rows = []
    table = text.split("Operator", 1)[1] if re.search(r"^Operator\s+Count\s+Status", text, re.M) else ""
    for line in table.splitlines()[1:]:
        m = _ROW.match(line.strip())
        if m:
            rows.append({"op": m.group(1), "count": int(m.group(2)), "status": m.group(3),
                         "mapped": m.group(3) == MAPPED})
    out["operators"] = rows
    out["mapped"] = sum(r["count"] for r in rows if r["mapped"])
    out["not_mapped"] = sum(r["count"] for r in rows if not r["mapped"])
    out["not_mapped_ops"] = sorted({f"{r['op']} ({r['status']})" for r in rows if not r["mapped"]})
    # when every op is mapped, the compiler does not print the two "will run on" lines
    if rows:
        out.setdefault("ops_on_tpu", out["mapped"])
        out.setdefault("ops_on_cpu", out["not_mapped"])
    errors = [ln.strip() for ln in text.splitlines() if ln.strip().startswith(("ERROR", "Compilation failed", "Invalid"))]
    if errors:
        out["errors"] = errors
    return out


def find_compiler(compiler: str = "edgetpu_compiler") -> str:
    exe = shutil.which(compiler)
    if exe is None:
        raise RuntimeUnavailable(f"{compiler} not found on this machine ({platform.node()}, {platform.machine()}); "
                                 f"{INSTALL_COMPILER}")
    return exe


def compile_edgetpu(tflite: Path, out_dir: Path, compiler: str = "edgetpu_compiler",
                    timeout: float = 600) -> tuple[Path, dict]:
    """Run edgetpu_compiler; the compiled model and the parsed log (also saved beside it as JSON)."""
    exe = find_compiler(compiler)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        p = subprocess.run([exe, "-s", "-o", str(out_dir), str(tflite)], capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        raise TargetError(f"{compiler} did not finish within {timeout:.0f} s on {tflite.name}") from None
    log = p.stdout + p.stderr
    (out_dir / f"{tflite.stem}_edgetpu.compiler.log").write_text(log)
    parsed = parse_compiler_log(log)
    compiled = out_dir / f"{tflite.stem}_edgetpu.tflite"
    if p.returncode != 0 or not parsed["success"] or not compiled.exists():
        why = "; ".join(parsed.get("errors", [])) or (log.strip().splitlines() or ["no output"])[-1]
        raise TargetError(f"{compiler} failed on {tflite.name} (exit {p.returncode}): {why}")
    (out_dir / f"{tflite.stem}_edgetpu.compiler.json").write_text(json.dumps(parsed, indent=2))
    return compiled, parsed


class EdgeTpuTarget:
    """check on the host, compile on the host, run on the device with the libedgetpu delegate."""

    def __init__(self, session, graph_optimization: str = "all", compiler: str | None = None):
        self.session = session  # graph_optimization: the DeviceTarget constructor; no ONNX runs here
        self.name = session.name
        self.kind = "edgetpu"
        self.compiler = compiler or session.device.edgetpu_compiler
        self.last_answer: dict = {}

    def check(self, artifact, run_dir: Path) -> Compatibility:
        refused = format_refusal(artifact.format, self.kind)
        if refused:
            return Compatibility(False, self.name, artifact.name, [refused])
        return check_edgetpu(artifact.abspath(run_dir), artifact.name, self.name)

    def prepare(self, artifact, run_dir: Path) -> Deployable:
        src = artifact.abspath(run_dir)
        out_dir = Path(run_dir) / "devices" / "edgetpu" / artifact.sha256[:16]
        compiled = out_dir / f"{src.stem}_edgetpu.tflite"
        parsed_file = out_dir / f"{src.stem}_edgetpu.compiler.json"
        if compiled.exists() and parsed_file.exists():  # same input bytes -> same compiled model
            parsed = json.loads(parsed_file.read_text())
        else:
            compiled, parsed = compile_edgetpu(src, out_dir, self.compiler)
        remote = self.session.upload(compiled)
        return Deployable(artifact.name, compiled, artifact.format, "edgetpu", self.name,
                          {"remote_path": remote, "compiler": parsed})

    def benchmark(self, deployable: Deployable, runs: int, warmup: int, threads: int | None,
                  inputs_remote: str | None = None, return_outputs: bool = False) -> LatencyStats:
        dev = self.session.device
        try:
            stats, self.last_answer = self.session.benchmark(deployable.details["remote_path"], runs, warmup, threads,
                                                             inputs_remote, delegate=dev.delegate,
                                                             return_outputs=return_outputs)
        except RuntimeUnavailable as e:
            raise RuntimeUnavailable(f"{e}; {INSTALL_RUNTIME}") from None
        return stats
