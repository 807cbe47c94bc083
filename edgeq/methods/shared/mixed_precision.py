"""Mixed precision under an accuracy budget: one precision per weight layer, the smallest artifact whose measured
held-back drop stays within the budget. Format-independent: a backend makes and runs the real model of a plan.

1. Per layer and candidate precision, an error estimate (how much that layer alone at that precision changes the
   output error of the all-int8 model against FP32, measured on held-back images) and its weight bytes (`Layer`).
2. `solve`: for an error budget E, the plan of least bytes whose summed error is <= E, one precision per layer — a
   multiple-choice knapsack solved exactly by scipy's MILP (HiGHS).
3. `search`: bisection of E over a few solver runs; each plan is made for real and measured on every
   held-back image against FP32 (per-image KL of the outputs, the top-1 drop expected from the continuous margin
   error, and the paired top-1 drop with its interval). A plan is accepted when the expected drop (or the counted
   one, where larger) plus the interval half-width the evaluation split will have is within the budget; the
   smallest accepted plan is kept (never the last one tried); when none is accepted nothing is shipped (the naive
   artifact of the format or FP32 is), so no plan measured worse than the naive artifact ships.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from edgeq.core.stats import images_to_decide, paired_test

PRECISIONS = ("int4", "int8", "float")  # candidate weight precisions, smallest first
BYTES_PER_WEIGHT = {"int4": 0.5, "int8": 1.0, "float": 4.0}
Z95 = 1.959964


@dataclass(frozen=True)
class Layer:
    """One weight layer: its op type and, per candidate precision, (weight bytes, error estimate)."""

    name: str
    op_type: str
    weights: int  # elements of its weight tensor
    error: dict[str, float]  # precision -> output error it adds to the all-int8 model (int8: 0; float: < 0)
    sqnr_loss_db: dict[str, float] = field(default_factory=dict)  # precision -> SQNR the op loses (dB), as measured
    # the weight layer writing the tensor this one reads: float here only with it float too (a float layer still
    # reads an int8 tensor when its producer writes one; an outlier channel in it is only avoided by both)
    float_with: str | None = None

    def bytes_at(self, precision: str) -> int:
        return int(math.ceil(self.weights * BYTES_PER_WEIGHT[precision]))


Plan = dict[str, str]  # layer name -> precision


def plan_bytes(layers: list[Layer], plan: Plan) -> int:
    return sum(la.bytes_at(plan[la.name]) for la in layers)


def plan_error(layers: list[Layer], plan: Plan) -> float:
    return float(sum(la.error[plan[la.name]] for la in layers))


def uniform_plan(layers: list[Layer], precision: str) -> Plan:
    """Every layer at `precision` where it is a candidate, else at the nearest wider one (int4 -> int8 -> float)."""
    order = PRECISIONS[PRECISIONS.index(precision):]
    return {la.name: next(p for p in order if p in la.error) for la in layers}


def solve(layers: list[Layer], error_budget: float) -> Plan | None:
    """The plan of fewest weight bytes whose summed error is <= `error_budget` (one precision per layer), or None
    when no plan meets it (the MILP is infeasible)."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    choices = [(i, p) for i, la in enumerate(layers) for p in PRECISIONS if p in la.error]
    if not choices:
        return {}
    cost = np.array([layers[i].bytes_at(p) for i, p in choices], float)
    err = np.array([layers[i].error[p] for i, p in choices], float)
    one = np.zeros((len(layers), len(choices)))
    for k, (i, _) in enumerate(choices):
        one[i, k] = 1.0
    # ties in bytes (a layer whose int4 and int8 cost the same) go to the lower error
    cost = cost + 1e-3 * err / max(float(np.abs(err).max()), 1e-30)  # < 1 byte
    constraints = [LinearConstraint(one, 1, 1), LinearConstraint(err[None], -np.inf, error_budget)]
    col = {(layers[i].name, p): k for k, (i, p) in enumerate(choices)}
    pairs = [(col[(la.name, "float")], col[(la.float_with, "float")]) for la in layers
             if la.float_with and (la.name, "float") in col and (la.float_with, "float") in col]
    if pairs:  # x[layer, float] <= x[producer, float]
        dep = np.zeros((len(pairs), len(choices)))
        for r, (a, b) in enumerate(pairs):
            dep[r, a], dep[r, b] = 1.0, -1.0
        constraints.append(LinearConstraint(dep, -np.inf, 0))
    slack = 1e-9 * max(1.0, abs(error_budget))  # the least-error plan itself stays feasible at its own error
    constraints[1] = LinearConstraint(err[None], -np.inf, error_budget + slack)
    res = milp(cost, integrality=np.ones(len(choices)), bounds=Bounds(0, 1), constraints=constraints)
    if res.status != 0 or res.x is None:
        return None
    return {layers[i].name: p for (i, p), x in zip(choices, res.x) if x > 0.5}


# ------------------------------------------------------------------ measuring a real artifact of a plan
def _is_probability(z: np.ndarray) -> bool:
    return bool(z.min() >= 0 and np.allclose(z.sum(1), 1.0, atol=0.05))


def _probs(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    if _is_probability(z):
        p = z
    else:
        e = np.exp(z - z.max(1, keepdims=True))
        p = e / e.sum(1, keepdims=True)
    p = np.clip(p, 1e-6, None)
    return p / p.sum(1, keepdims=True)


def output_kl(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    """Per-image KL(FP32 || quantized) of the class distributions (softmax of logits; outputs that already are
    probabilities are used as they are)."""
    p, q = _probs(ref), _probs(got)
    return np.sum(p * (np.log(p) - np.log(q)), 1)


def expected_drop(ref: np.ndarray, got: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(expected top-1 drop, expected rate of changed answers) from the continuous output error: per image the
    FP32 margin between its top two classes, and the probability that the quantized model's error on such a
    margin (its distribution over all the images, as measured: no shape assumed) flips it. Every image contributes
    a probability, not a 0/1 outcome, so the estimate moves smoothly where top-1 on a few hundred images moves in
    steps of 1/n.

    Probabilities are compared as logs floored at 1/256 (an int8 softmax output's step), so output rounding of
    classes nobody picks is not counted as error."""
    def logits(z: np.ndarray) -> np.ndarray:
        z = z.astype(np.float64)
        return np.log(np.clip(z, 1 / 256, None)) if _is_probability(z) else z

    zr, zq = logits(ref), logits(got)
    order = np.argsort(-zr, 1)
    rows = np.arange(len(zr))
    t1, t2 = order[:, 0], order[:, 1]
    margin = zr[rows, t1] - zr[rows, t2]
    err = np.sort((zq[rows, t1] - zq[rows, t2]) - margin)
    flip = np.searchsorted(err, -margin, side="left") / max(len(err), 1)  # P(error < -margin)
    drop = float(np.mean((t1 == y) * flip) - np.mean((t2 == y) * flip))
    return drop, float(flip.mean())


@dataclass
class Measured:
    """One real model measured on every held-back image against FP32."""

    label: str
    plan: Plan | None  # None: the naive artifact of the format (not a plan of this search)
    error_budget: float | None
    estimated_error: float | None
    weight_bytes: int | None
    file_bytes: int
    n: int
    kl_mean: float
    drop_pt: float
    drop_ci95_pt: tuple[float, float]
    mcnemar_p: float
    discordant: int
    expected_drop_pt: float = 0.0  # from the continuous output error (`expected_drop`)
    expected_changed: float = 0.0  # expected fraction of images whose answer changes
    accepted: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["plan_counts"] = None if self.plan is None else {p: sum(v == p for v in self.plan.values())
                                                            for p in PRECISIONS}
        d.pop("plan")
        return d


def measure(label: str, ref: np.ndarray, y: np.ndarray, got: np.ndarray, file_bytes: int, *,
            plan: Plan | None = None, layers: list[Layer] | None = None, error_budget: float | None = None,
            seconds: float = 0.0) -> Measured:
    """The paired top-1 test against FP32 and the mean per-image KL, on the same held-back images."""
    t = paired_test(ref.argmax(1) == y, got.argmax(1) == y)
    drop, changed = expected_drop(ref, got, y)
    return Measured(label, plan, error_budget, None if plan is None else round(plan_error(layers, plan), 6),
                    None if plan is None else plan_bytes(layers, plan), int(file_bytes), t.n,
                    round(float(output_kl(ref, got).mean()), 6), round(t.drop * 100, 3),
                    (round(t.ci95[0] * 100, 3), round(t.ci95[1] * 100, 3)), round(t.p, 6), t.b + t.c,
                    round(drop * 100, 3), round(changed, 5), seconds=round(seconds, 1))


def predicted_upper_pt(m: Measured, eval_images: int) -> float:
    """The upper end of the drop interval the evaluation split is expected to give: the drop expected from the
    continuous output error, or the counted held-back drop where that is larger (the expectation counts only flips
    between the top two classes, so it runs low once errors are large), plus the 95 % half-width a paired difference
    has on `eval_images` images (variance (changed rate - drop^2) / n; the changed rate expected or counted,
    whichever is larger)."""
    d = max(m.expected_drop_pt, m.drop_pt) / 100
    changed = max(m.expected_changed, m.discordant / max(m.n, 1))
    var = max(changed - d * d, 0.0)
    return round(100 * (d + Z95 * math.sqrt(var / max(eval_images, 1))), 3)


def acceptable(m: Measured, budget_pt: float, eval_images: int) -> bool:
    """Within the budget as far as the held-back images can tell: the evaluation interval predicted from the
    continuous error (`predicted_upper_pt`) ends within it."""
    return predicted_upper_pt(m, eval_images) <= budget_pt


def decidable(m: Measured, budget_pt: float) -> dict:
    """Whether the held-back images decide the budget for this model (the drop's interval wholly on one side of it),
    and if not, roughly how many would (interval half-width ~ 1/sqrt(n))."""
    lo, hi = m.drop_ci95_pt
    status = True if hi <= budget_pt else False if lo > budget_pt else None
    need = None
    if status is None:
        need = images_to_decide(m.n, (hi - lo) / 200, abs(budget_pt - m.drop_pt) / 100)
    return {"within_budget": status, "n": m.n, "images_to_decide": need}


@dataclass
class SearchResult:
    budget_pt: float
    eval_images: int
    naive: Measured
    tried: list[Measured]
    best: Measured | None  # the plan to ship, or None (then why_not says why)
    why_not: str | None = None
    held_back_decides: dict | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"budget_pt": self.budget_pt, "eval_images": self.eval_images, "naive": self.naive.to_dict(),
                "tried": [m.to_dict() for m in self.tried], "best": self.best.to_dict() if self.best else None,
                "why_not": self.why_not, "held_back_decides": self.held_back_decides, "seconds": self.seconds}


def search(layers: list[Layer], make: Callable[[Plan, str], tuple[np.ndarray, int]], ref: np.ndarray, y: np.ndarray,
           naive: Measured, *, budget_pt: float, eval_images: int, rounds: int,
           log: Callable[[str], None] = print) -> SearchResult:
    """Bisect the error budget over `rounds` solver runs; keep the smallest plan measured within the budget.

    `make(plan, label)` builds the real model of `plan` and returns its outputs on the held-back images and its file
    bytes. `naive` is the naive artifact of the format measured on the same images: a plan is only shipped when it is
    within the budget (and smaller than the naive artifact when that is within it too)."""
    t0 = time.perf_counter()
    tried: list[Measured] = []
    seen: dict[tuple, Measured] = {}

    def run(plan: Plan, e_budget: float | None, label: str) -> Measured:
        key = tuple(sorted(plan.items()))
        if key in seen:
            return seen[key]
        t = time.perf_counter()
        out, size = make(plan, label)
        m = measure(label, ref, y, out, size, plan=plan, layers=layers, error_budget=e_budget,
                    seconds=time.perf_counter() - t)
        m.accepted = acceptable(m, budget_pt, eval_images)
        tried.append(m)
        seen[key] = m
        log(f"  {label}: {m.weight_bytes:,} weight bytes, estimated error {m.estimated_error:.3g}; held-back drop "
            f"{m.drop_pt:+.2f} pt [{m.drop_ci95_pt[0]:+.2f}, {m.drop_ci95_pt[1]:+.2f}], expected "
            f"{m.expected_drop_pt:+.2f} pt, KL {m.kl_mean:.4f}, predicted upper {predicted_upper_pt(m, eval_images):.2f}"
            f" -> {'accepted' if m.accepted else 'over'} (n={m.n})")
        return m

    e_hi = plan_error(layers, uniform_plan(layers, "int4"))
    e_lo = sum(min(la.error.values()) for la in layers)  # every layer at its least-error precision
    e_8 = plan_error(layers, uniform_plan(layers, "int8"))
    if not run(uniform_plan(layers, "int4"), e_hi, "all int4").accepted:
        at8 = solve(layers, e_8) or uniform_plan(layers, "int8")
        lo, hi = (e_8, e_hi) if run(at8, e_8, "int8-error plan").accepted else (e_lo, e_8)
        if lo == e_lo and e_lo < e_8:  # float layers must buy accuracy back: is it possible at all?
            least = solve(layers, e_lo)
            if least is not None and not run(least, e_lo, "least-error plan").accepted:
                lo = hi  # nothing to bisect: no plan is predicted better than the least-error one
        for k in range(rounds):
            if hi - lo <= 1e-9 * max(abs(hi), abs(lo), 1e-12):
                break
            mid = (lo + hi) / 2
            plan = solve(layers, mid)
            if plan is None:
                lo = mid
                continue
            lo, hi = (mid, hi) if run(plan, mid, f"round {k + 1}").accepted else (lo, mid)
    best, why = choose(tried, naive, budget_pt)
    decides = decidable(best or naive, budget_pt)
    return SearchResult(budget_pt, eval_images, naive, tried, best, why, decides,
                        round(time.perf_counter() - t0, 1))


def choose(tried: list[Measured], naive: Measured, budget_pt: float) -> tuple[Measured | None, str | None]:
    """The plan to ship: the smallest accepted one (ties: lower KL), unless the naive artifact is within the budget
    and no larger; with none accepted, None and why (the budget cannot be met: ship the naive artifact or FP32)."""
    ok = [m for m in tried if m.accepted]
    if ok:
        best = min(ok, key=lambda m: (m.file_bytes, m.kl_mean))
        if naive.accepted and naive.file_bytes <= best.file_bytes:
            return None, (f"the naive artifact ({naive.label}, {naive.file_bytes:,} bytes) is within the budget and "
                          f"no larger than the smallest plan within it ({best.file_bytes:,} bytes): ship it")
        return best, None
    closest = min(tried, key=lambda m: (m.drop_pt, m.kl_mean), default=None)
    seen = (f"; the closest plan measured, {closest.label}, lost {closest.drop_pt:+.2f} pt (KL {closest.kl_mean:.4f})"
            if closest else "")
    return None, (f"the {budget_pt:g} pt budget cannot be met: no plan measured within it on the held-back images "
                  f"(naive {naive.label}: {naive.drop_pt:+.2f} pt, KL {naive.kl_mean:.4f}{seen}); nothing made: "
                  f"ship {naive.label} or FP32")


def nsr_added(sqnr_in_db: float, sqnr_out_db: float) -> float:
    """The noise-to-signal power ratio an op adds: its output's minus its input's (never negative)."""
    return max(0.0, 10 ** (-sqnr_out_db / 10) - 10 ** (-sqnr_in_db / 10))

