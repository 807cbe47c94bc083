"""Where two runs of one .tflite part: every op's output tensor from two sides (host and device, or two kernel
sets) compared in execution order, in LSB of that tensor's quantisation scale.

Each side is what the agent's `--tensors-out` mode returns (edgeq.ondevice.agent.TFLiteRunner.op_tensors): the
ops in execution order with the kernel that ran each, the tensors' metadata, and the raw tensors as stored (an
int8 tensor stays int8, so a difference of 1 is one quantisation step, exactly). A float tensor has no LSB: its
difference is given in its own units.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgeq.core.errors import EdgeqError
from edgeq.ondevice.agent import AgentError, TFLiteRunner, output_vs_plain_run

PROPAGATION_ROWS = 8  # ops shown after the first diverging one


@dataclass
class Side:
    """One run of the model with every tensor kept."""

    where: str  # "host" or the device's name
    runtime: str
    kernels: str  # what was asked: default | builtin | reference
    ops: list[dict]  # execution order: index, op, outputs, kernel
    tensors: dict[int, dict]  # tensor index -> name, dtype, shape, scale, zero_point
    arrays: dict[str, np.ndarray]  # t<index> -> [N, ...] raw values
    output_vs_plain_run: float | None = None  # model output kept-tensors run vs plain run (max |Δ|, raw units)

    @classmethod
    def from_answer(cls, where: str, answer: dict, arrays: dict[str, np.ndarray]) -> "Side":
        return cls(where, answer["runtime"], answer.get("kernels", "default"), answer["ops"],
                   {int(t["index"]): t for t in answer["tensors"]}, arrays, answer.get("output_vs_plain_run"))

    def kernels_used(self) -> dict[str, int]:
        """kernel -> how many ops it ran (the input pseudo-op left out)."""
        out: dict[str, int] = {}
        for o in self.ops[1:]:
            out[o["kernel"]] = out.get(o["kernel"], 0) + 1
        return out


@dataclass
class OpDiff:
    position: int  # place in execution order (0 = the quantised input)
    index: int  # the op's node index in the model (-1: the input)
    op: str
    tensor: str
    dtype: str
    elements: int
    differing: int
    max_lsb: float | None  # integer tensors: max |difference| in steps of the tensor's scale; None for float tensors
    max_abs: float  # the same in real units (dequantised), or in the float tensor's own units
    host_kernel: str
    device_kernel: str


@dataclass
class Bisect:
    artifact: str
    device: str
    images: int
    host: dict  # runtime, kernels asked, kernels used (kernel -> ops)
    device_side: dict
    ops: list[OpDiff]
    first: OpDiff | None = None
    verdict: str = ""
    output_max_lsb: float | None = None
    worst: OpDiff | None = None  # the op with the largest difference in LSB
    ops_differing: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["first"] = asdict(self.first) if self.first else None
        d["worst"] = asdict(self.worst) if self.worst else None
        return d


def _side_summary(s: Side) -> dict:
    return {"where": s.where, "runtime": s.runtime, "kernels_asked": s.kernels, "kernels_used": s.kernels_used(),
            "output_vs_plain_run": s.output_vs_plain_run}


def _diff(t: dict, a: np.ndarray, b: np.ndarray) -> tuple[int, float | None, float]:
    if np.issubdtype(a.dtype, np.integer):
        d = np.abs(a.astype(np.int64) - b.astype(np.int64))
        lsb = float(d.max()) if d.size else 0.0
        return int(np.count_nonzero(d)), lsb, lsb * (t["scale"] or 1.0)
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return int(np.count_nonzero(d)), None, float(d.max()) if d.size else 0.0


def compare(artifact: str, host: Side, device: Side) -> Bisect:
    """Tensor-by-tensor comparison in execution order; the first op whose output differs, and what follows."""
    if [(o["index"], o["op"]) for o in host.ops] != [(o["index"], o["op"]) for o in device.ops]:
        raise EdgeqError(f"{artifact}: the host and {device.where} list different ops for the same model file "
                         "(different interpreter builds?); a tensor-by-tensor comparison needs the same graph")
    rows = []
    for pos, (ho, do) in enumerate(zip(host.ops, device.ops)):
        for t in ho["outputs"]:
            a, b = host.arrays.get(f"t{t}"), device.arrays.get(f"t{t}")
            meta = host.tensors[int(t)]
            if a is None or b is None or a.shape != b.shape:
                raise EdgeqError(f"{artifact}: tensor {meta['name']} missing or of another shape on "
                                 f"{'the host' if a is None else device.where}; cannot compare")
            differing, lsb, mx = _diff(meta, a, b)
            rows.append(OpDiff(pos, int(ho["index"]), ho["op"], meta["name"], meta["dtype"], int(a.size), differing,
                               lsb, round(mx, 8), ho["kernel"], do["kernel"]))
    first = next((r for r in rows if r.differing), None)
    notes = [f"{s.where}: with every tensor kept, the model output "
             + ("equals that of a plain run (same kernels, no tensors kept)" if s.output_vs_plain_run == 0 else
                f"differs from a plain run's by up to {s.output_vs_plain_run:g} (raw units): the plain run delegates "
                "differently, so the figures here are of the kept-tensors run")
             for s in (host, device) if s.output_vs_plain_run is not None]
    n = int(next(iter(host.arrays.values())).shape[0]) if host.arrays else 0
    out = Bisect(artifact, device.where, n, _side_summary(host), _side_summary(device), rows, first,
                 ops_differing=sum(1 for r in rows if r.differing), notes=notes)
    last = rows[-1] if rows else None
    out.worst = max((r for r in rows if r.differing and r.max_lsb is not None), key=lambda r: r.max_lsb, default=None)
    out.output_max_lsb = last.max_lsb if last else None
    if first is None:
        out.verdict = (f"host and {device.where} agree tensor for tensor: all {len(rows)} tensors identical on "
                       f"{n} images")
    else:
        size = f"{first.max_lsb:g} LSB" if first.max_lsb is not None else f"{first.max_abs:g} (float)"
        out.verdict = (f"first difference at op {first.index} {first.op} (tensor '{first.tensor}'): max {size}, "
                       f"{first.differing} of {first.elements} elements differ (host kernel {first.host_kernel}, "
                       f"{device.where} kernel {first.device_kernel}); {out.ops_differing} of {len(rows)} tensors "
                       f"differ, the largest by {_lsb_text(out.worst)} (op {out.worst.index if out.worst else '-'} "
                       f"{out.worst.op if out.worst else ''}), the model output by {_lsb_text(last)}")
    return out


def _lsb_text(r: OpDiff | None) -> str:
    if r is None:
        return "-"
    return f"{r.max_lsb:g} LSB" if r.max_lsb is not None else f"{r.max_abs:g}"


def table_rows(b: Bisect) -> list[list[str]]:
    """The first diverging op and the PROPAGATION_ROWS ops after it (and the model output), as table rows."""
    if b.first is None:
        return []
    start = b.ops.index(b.first)
    shown = b.ops[start:start + 1 + PROPAGATION_ROWS]
    for extra in (b.worst, b.ops[-1]):
        if extra is not None and extra not in shown:
            shown.append(extra)
    shown.sort(key=lambda r: r.position)
    return [[str(r.index), r.op, r.tensor[:60], _lsb_text(r), f"{r.differing}/{r.elements}",
             f"{r.host_kernel} / {r.device_kernel}"] for r in shown]


HEADER = ["op", "type", "tensor", "max |Δ|", "differing", "kernels host / device"]


def markdown(b: Bisect) -> str:
    def esc(s: str) -> str:  # tensor names come from the model file: keep them from breaking the table
        return s.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")

    h, d = b.host, b.device_side
    lines = [f"## Bisect: {esc(b.artifact)} on host vs {esc(b.device)}", "",
             f"{b.images} evaluation images; every op's output tensor compared in execution order, in LSB of the "
             "tensor's quantisation scale (element counts over all images). Rows: the first diverging op, the "
             f"{PROPAGATION_ROWS} after it, the largest difference and the model output.", "",
             f"- host: {esc(h['runtime'])}, kernels asked: {h['kernels_asked']}, ran: "
             + ", ".join(f"{k} {v} ops" for k, v in h["kernels_used"].items()),
             f"- {esc(b.device)}: {esc(d['runtime'])}, kernels asked: {d['kernels_asked']}, ran: "
             + ", ".join(f"{k} {v} ops" for k, v in d["kernels_used"].items()), "",
             f"**{esc(b.verdict)}**", ""]
    rows = table_rows(b)
    if rows:
        lines += ["| " + " | ".join(esc(h) for h in HEADER) + " |", "|" + "---|" * len(HEADER)]
        lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
        lines.append("")
    lines += [f"- {esc(n)}" for n in b.notes]
    return "\n".join(lines).rstrip() + "\n"


def load_tensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors an agent saved (plain numeric .npz; pickled content is refused)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError) as e:
        raise EdgeqError(f"{path}: not a readable tensors file from the agent ({e})") from None


def host_side(path: Path, x: np.ndarray, kernels: str = "default", threads: int | None = 1,
              where: str = "host") -> Side:
    """This machine's run of the model with every tensor kept: the agent's own code, in process."""
    import warnings

    from edgeq.core.tfcompat import quiet_stderr

    try:
        with quiet_stderr(), warnings.catch_warnings():  # preserve_all_tensors warns it is for debugging: it is
            warnings.simplefilter("ignore")
            r = TFLiteRunner(str(path), threads, None, "litert", kernels, keep_all_tensors=True)
            x = np.asarray(x, np.float32)
            ops, t = r.op_tensors(x)
            diff = output_vs_plain_run(r, str(path), threads, "litert", x, t["arrays"])
    except AgentError as e:
        raise EdgeqError(f"{path}: host run with every tensor kept failed: {e}") from None
    return Side(where, r.runtime, kernels, ops, {int(m["index"]): m for m in t["tensors"]}, t["arrays"], diff)
