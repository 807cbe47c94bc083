"""`edgeq compare RUN_A RUN_B [...]`: finished runs side by side, the first one the baseline.

Artifacts are matched by name. Where two runs were evaluated on the same images (same eval-set
fingerprint) and kept their predictions, accuracy is compared with the exact paired McNemar test;
otherwise by their Wilson intervals, and the table says so. Latencies of two runs were not timed
interleaved, so their ratio gets the conservative interval [lo_B / hi_A, hi_B / lo_A] from the two
medians' intervals. With --fail-on-regression this is a CI gate.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgeq.core.errors import EdgeqError
from edgeq.core.stats import paired_test
from edgeq.report.verdicts import ALPHA


@dataclass
class Run:
    path: Path
    report: dict

    @property
    def fingerprint(self) -> str | None:
        return self.report.get("dataset", {}).get("eval_fingerprint")

    def artifact(self, name: str) -> dict | None:
        return next((e for e in self.report["artifacts"] if e["name"] == name), None)

    def correct(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(evaluation image indices, right/wrong on each) of an artifact, from the run's stored predictions and
        labels; an artifact evaluated on a seeded subset (a slow precision) has only its subset's indices."""
        pf, lf = self.path / "eval" / f"{name}.npz", self.path / "eval" / "labels.npz"
        if not (pf.is_file() and lf.is_file()):
            return None
        with np.load(pf, allow_pickle=False) as p, np.load(lf, allow_pickle=False) as lab:
            pred, labels = p["predictions"], lab["labels"]
            idx = p["indices"].astype(np.int64) if "indices" in p.files else np.arange(len(labels))
        if len(pred) != len(idx) or (len(idx) and idx.max() >= len(labels)):
            return None
        return idx, pred == labels[idx]


def paired_on_common(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The right/wrong of two evaluations on the images both were evaluated on (same indices, same order)."""
    _, ia, ib = np.intersect1d(a[0], b[0], assume_unique=True, return_indices=True)
    return a[1][ia], b[1][ib]


@dataclass
class Row:
    artifact: str
    run: str
    baseline: str
    top1: float | None = None
    top1_ci95: list | None = None
    base_top1: float | None = None
    base_top1_ci95: list | None = None
    paired: dict | None = None  # paired test: drop of this run against the baseline (positive = worse)
    accuracy_note: str = ""
    median_ms: float | None = None
    median_ci95: list | None = None
    base_median_ms: float | None = None
    base_median_ci95: list | None = None
    latency_ratio: float | None = None
    latency_ratio_ci95: list | None = None
    regressions: list[str] = field(default_factory=list)


def load_runs(paths: list[Path]) -> list[Run]:
    """Run directories (or one directory holding several) with a report.json each, in the order given."""
    runs = []
    for p in map(Path, paths):
        if (p / "report.json").is_file():
            found = [p]
        elif p.is_dir():
            found = sorted(d for d in p.iterdir() if (d / "report.json").is_file())
            if not found:
                raise EdgeqError(f"{p}: no report.json in it or in its subdirectories; run `edgeq run CONFIG --out {p}`")
        else:
            raise EdgeqError(f"{p}: not a run directory (no such directory)")
        for d in found:
            try:
                runs.append(Run(d, json.loads((d / "report.json").read_text())))
            except ValueError:
                raise EdgeqError(f"{d / 'report.json'}: not valid JSON; rerun `edgeq run` into {d}") from None
    if len(runs) < 2:
        raise EdgeqError("edgeq compare needs at least two runs (run directories, or a directory of runs)")
    return runs


def _latency(e: dict, target: str) -> tuple[float | None, list | None]:
    s = (e.get("latency_ms") or {}).get(target) or {}
    return s.get("median"), s.get("median_ci95")


def compare_pair(base: Run, run: Run, target: str, max_drop_pt: float, max_latency_ratio: float) -> list[Row]:
    """One row per artifact present in both runs: accuracy and latency of `run` against `base`."""
    same_images = base.fingerprint is not None and base.fingerprint == run.fingerprint
    rows = []
    for e in run.report["artifacts"]:
        b = base.artifact(e["name"])
        if b is None:
            continue
        row = Row(e["name"], str(run.path), str(base.path), top1=e["accuracy"].get("top1"),
                  top1_ci95=e["accuracy"].get("ci95"), base_top1=b["accuracy"].get("top1"),
                  base_top1_ci95=b["accuracy"].get("ci95"))
        cb, cr = (base.correct(e["name"]), run.correct(e["name"])) if same_images else (None, None)
        if cb is not None and cr is not None:
            cb, cr = paired_on_common(cb, cr)
        if cb is not None and cr is not None and len(cb):
            row.paired = paired_test(cb, cr).to_dict()
            if len(cb) < (run.report.get("dataset") or {}).get("n_eval", len(cb)):
                row.accuracy_note = f"paired on the {len(cb):,} evaluation images both runs evaluated it on"
            d = row.paired
            if d["p"] < ALPHA and d["drop"] * 100 > max_drop_pt:
                row.regressions.append(f"top-1 lower by {d['drop'] * 100:.2f} pt [{d['ci95'][0] * 100:.2f}, "
                                       f"{d['ci95'][1] * 100:.2f}] (McNemar p = {d['p']:.2g}; limit {max_drop_pt:g} pt)")
        else:
            row.accuracy_note = ("different evaluation sets: no paired test, intervals only" if not same_images
                                 else "predictions not kept: no paired test, intervals only" if cb is None or
                                 cr is None else "no evaluation image in common: no paired test, intervals only")
            lo_base = (row.base_top1_ci95 or [None])[0]
            hi_run = (row.top1_ci95 or [None, None])[1]
            if lo_base is not None and hi_run is not None and (lo_base - hi_run) * 100 > max_drop_pt:
                row.regressions.append(f"top-1 interval [{row.top1_ci95[0] * 100:.2f}, {hi_run * 100:.2f}] lies more "
                                       f"than {max_drop_pt:g} pt below the baseline's")
        row.median_ms, row.median_ci95 = _latency(e, target)
        row.base_median_ms, row.base_median_ci95 = _latency(b, target)
        if row.median_ms and row.base_median_ms:
            row.latency_ratio = round(row.median_ms / row.base_median_ms, 4)
            if row.median_ci95 and row.base_median_ci95 and row.base_median_ci95[0] > 0:
                row.latency_ratio_ci95 = [round(row.median_ci95[0] / row.base_median_ci95[1], 4),
                                          round(row.median_ci95[1] / row.base_median_ci95[0], 4)]
                if row.latency_ratio_ci95[0] > max_latency_ratio:
                    row.regressions.append(f"{target} latency {row.latency_ratio:.2f}x the baseline's "
                                           f"[{row.latency_ratio_ci95[0]:.2f}, {row.latency_ratio_ci95[1]:.2f}] "
                                           f"(limit {max_latency_ratio:g}x)")
        rows.append(row)
    return rows


def compare_runs(runs: list[Run], target: str = "host", max_drop_pt: float = 0.5,
                 max_latency_ratio: float = 1.10) -> list[Row]:
    """Every run after the first against the first."""
    return [r for run in runs[1:] for r in compare_pair(runs[0], run, target, max_drop_pt, max_latency_ratio)]


# ------------------------------------------------------------------ printing
def _pct(v) -> str:
    return "—" if v is None else f"{v * 100:.2f}"


def _ms(v) -> str:
    return "—" if v is None else f"{v:.4g}"


def _signed(v: float) -> str:
    return f"{v:+.2f}" if round(v, 2) != 0 else "0.00"


def print_comparison(runs: list[Run], rows: list[Row], target: str) -> None:
    """One table per compared run against the baseline, then the regressions, within 120 columns."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console(width=120)
    base = runs[0]
    for run in runs[1:]:
        mine = [r for r in rows if r.run == str(run.path)]
        same = base.fingerprint is not None and base.fingerprint == run.fingerprint
        t = Table(title=f"{run.path} vs baseline {base.path}", box=box.SIMPLE_HEAD, pad_edge=False,
                  caption="same evaluation images: paired exact McNemar" if same else
                  "different evaluation sets: no paired tests, intervals only")
        for h in ("artifact", "top-1 % base → run", "Δ top-1 pt [CI]", "p", f"{target} ms base → run",
                  "×base [CI]", ""):
            t.add_column(h, justify="left" if h in ("artifact", "") else "right", overflow="fold")
        for r in mine:
            d = r.paired
            delta = f"{_signed(-d['drop'] * 100)} [{-d['ci95'][1] * 100:.2f},{-d['ci95'][0] * 100:.2f}]" if d else "unpaired"
            ratio = "—" if r.latency_ratio is None else f"{r.latency_ratio:.2f}" + (
                f" [{r.latency_ratio_ci95[0]:.2f},{r.latency_ratio_ci95[1]:.2f}]" if r.latency_ratio_ci95 else "")
            t.add_row(r.artifact, f"{_pct(r.base_top1)} → {_pct(r.top1)}", delta, f"{d['p']:.2g}" if d else "—",
                      f"{_ms(r.base_median_ms)} → {_ms(r.median_ms)}", ratio, "REGRESSION" if r.regressions else "")
        console.print(t)
        for r in mine:
            for why in r.regressions:
                console.print(f"regression: {r.artifact} in {run.path}: {why}", soft_wrap=True, markup=False)
    console.print("Top-1 intervals of each run are in --json and each run's report. Latency ratios between runs "
                  "are not interleaved: their interval is the conservative \\[lo/hi, hi/lo] of the two medians' "
                  "intervals.", style="dim")


def to_json(runs: list[Run], rows: list[Row], target: str) -> dict:
    """The comparison as a JSON-ready dict (for --json)."""
    return {"baseline": str(runs[0].path), "runs": [str(r.path) for r in runs[1:]], "target": target,
            "rows": [asdict(r) for r in rows], "regressions": sum(len(r.regressions) for r in rows)}
