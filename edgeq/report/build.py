"""report.json (stable keys, diffable), report.md (the summary table) and report.html (tables + plots).

Every figure comes from this run's results.json; one that could not be measured is null with a
`reason` beside it.
"""
from __future__ import annotations

import time
from dataclasses import asdict

import numpy as np

from edgeq.report import sections as report_sections
from edgeq.core.artifacts import fp32_baselines, write_bytes_atomic, write_json_atomic
from edgeq.core.sysinfo import cpu_info
from edgeq.report.html import render_html
from edgeq.report.verdicts import (accuracy_interval, holm_across_artifacts, int8_method_tests, other_precision_lines,
                                   referee, ship, vs_reference)
from edgeq.stages import registry
from edgeq.report.decisions import calibration_lines, class_lines, other_runtime_lines, referee_lines

SCHEMA_VERSION = 2
LATENCY_KEYS = ("median", "median_ci95", "ci_coverage", "p90", "p99", "mean", "min", "max", "runs", "rounds", "warmup",
                "threads", "runtime", "device", "noisy", "noisy_reason", "ci_width", "ratio_to_fp32", "round_medians", "quantiles",
                "emulated")


def _accuracy(ctx, a) -> dict:
    r = ctx.results.evaluation(a.sha256, ctx.splits.eval.fingerprint())
    if r is None:
        why = ("evaluation disabled (evaluate.enabled: false)" if not ctx.cfg.evaluate.enabled
               else "Keras baseline evaluation disabled (evaluate.keras_baseline: false)")
        return {"top1": None, "top5": None, "n": 0, "dataset": ctx.splits.dataset, "ci95": None, "reason": why}
    out = {"top1": r.top1, "top5": r.top5, "n": r.n, "dataset": r.dataset,
           "ci95": accuracy_interval(r.top1, r.n), "top5_ci95": accuracy_interval(r.top5, r.n)}
    if r.subset:  # a slow precision judged on a seeded subset (stages.precision.eval_images)
        out.update(of=r.subset["of"], note=f"evaluated on {r.n:,} of {r.subset['of']:,} images (a seeded subset)")
    return out


def _correct(ctx, arts, subsets: dict | None = None) -> dict:
    """artifact name -> was eval image i classified right; one evaluated on a subset: subsets[name] = (idx, right)."""
    fp = ctx.splits.eval.fingerprint()
    labels = ctx.splits.eval.labels
    out = {}
    for a in arts:
        r = ctx.results.evaluation(a.sha256, fp)
        if r is None or not (ctx.run_dir / r.predictions_file).exists():
            continue
        with np.load(ctx.run_dir / r.predictions_file, allow_pickle=False) as z:
            pred = z["predictions"]
            idx = z["indices"] if "indices" in z.files else None
        if idx is not None and subsets is not None and len(idx) == len(pred) and idx.max(initial=0) < len(labels):
            subsets[a.name] = (idx, pred == labels[idx])
        elif idx is None and len(pred) == len(labels):
            out[a.name] = pred == labels
    return out


def _vs_fp32(ctx, arts, correct: dict, subsets: dict | None = None) -> dict:
    """artifact name -> report.json `vs_fp32` against the FP32 of its format (a subset's: on exactly its images)."""
    ev, subsets = ctx.splits.eval, subsets or {}
    out = {}
    for name, ref in fp32_baselines(arts, {*correct, *subsets}, ctx.fp32).items():
        if ref == name or ref not in correct:
            continue
        idx, right = subsets[name] if name in subsets else (slice(None), correct[name])
        out[name] = vs_reference(ref, correct[ref][idx], right, ctx.cfg.max_accuracy_drop, labels=ev.labels[idx],
                                 class_names=ev.class_names, max_class_drop=ctx.cfg.max_class_drop,
                                 of=len(ev) if name in subsets else None)
    holm_across_artifacts(out)
    return out


def _agreement(ctx, a):
    r = ctx.results.evaluation(a.sha256, ctx.splits.eval.fingerprint())
    return r.agreement if r else None


def _latency(ctx, a, runtime: str | None = None) -> dict:
    """target -> figure of the artifact on its format's own runtime, or on `runtime` (another that reads it)."""
    out = {}
    rows = sorted((v for v in ctx.results.latency_of(a.name, a.sha256) if v.runtime == runtime),
                  key=lambda v: (v.target != "host", v.target))
    if runtime is None and not any(v.target == "host" for v in rows):
        why = "benchmark disabled (benchmark.enabled: false)" if not ctx.cfg.benchmark.enabled else "not measured"
        out["host"] = {"median": None, "p90": None, "p99": None, "runs": 0, "threads": None, "reason": why}
    for v in rows:
        if v.stats:
            out[v.target] = {k: getattr(v.stats, k) for k in LATENCY_KEYS}
        else:
            out[v.target] = {"median": None, "p90": None, "p99": None, "runs": 0, "threads": None,
                             "reason": v.reason or "not measured"}
    # host first, as the contract says
    return dict(sorted(out.items(), key=lambda kv: kv[0] != "host"))


def _latency_other_runtimes(ctx, a) -> dict:
    """report.json `latency_ms_other_runtimes`: runtime -> target -> figure, where the artifact was also timed on a
    runtime other than its format's own (each figure's `runtime` names it and its version); {} where it was not."""
    rts = sorted({v.runtime for v in ctx.results.latency_of(a.name, a.sha256) if v.runtime})
    return {"latency_ms_other_runtimes": {rt: _latency(ctx, a, rt) for rt in rts}} if rts else {}


def build_report(ctx) -> dict:
    """The report.json dict of a run: every artifact with its measured figures, verdicts and conditions."""
    arts = list(ctx.manifest.artifacts.values())
    entries = []
    fp = ctx.splits.eval.fingerprint()
    correct = _correct(ctx, arts, subsets := {})
    vs = _vs_fp32(ctx, arts, correct, subsets)
    budget = ctx.cfg.max_accuracy_drop
    for a in arts:
        e = {"name": a.name, "format": a.format, "precision": a.precision, "method": a.method, "path": a.path,
             "size_bytes": a.size_bytes, "sha256": a.sha256, "parent": a.parent, "stage": a.stage,
             "params": a.params, "accuracy": _accuracy(ctx, a), "agreement_with_fp32": _agreement(ctx, a),
             **({"vs_fp32": vs[a.name]} if a.name in vs else {}),
             "latency_ms": _latency(ctx, a),
             **_latency_other_runtimes(ctx, a),
             "compatibility": dict(ctx.results.compatibility.get(a.name, {}))}
        pl = [v for k, v in ctx.results.per_layer.items() if k.split(":")[1:3] == [a.sha256, fp]]
        if pl:
            e["per_layer_error"] = asdict(pl[-1])
        if a.notes:
            e["notes"] = {k: v for k, v in a.notes.items() if k not in ("ops",)}
        entries.append(e)
    checks = derive_checks(entries)
    cpu = cpu_info()
    # the stages stored data; their sections' markdown is rendered now, after every check that feeds it
    sections = report_sections.render_sections(ctx.results.sections, registry.STAGES, arts, ctx.results.compatibility)
    tests, lines = int8_method_tests(entries, correct, budget)
    lines += other_precision_lines(entries)  # the comparison table's FP16 and mixed rows, paired
    if "comparison" in sections or tests:
        sections["comparison"] = _comparison_with_tests(sections.get("comparison"), tests, lines, budget)
    targets = list(dict.fromkeys(t for e in entries for t, s in e["latency_ms"].items() if s.get("median") is not None))
    return {
        "schema_version": SCHEMA_VERSION,
        "model": ctx.cfg.name,
        "family": ctx.cfg.model.family,
        "description": ctx.cfg.description,
        "config": str(ctx.cfg.source) if ctx.cfg.source else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seed": ctx.cfg.seed,
        "wall_seconds": ctx.results.wall_seconds,  # the last run that made something
        "wall_seconds_last_run": ctx.results.wall_seconds_last_run,  # this run (a rerun may reuse all)
        "stage_seconds": ctx.results.stage_seconds,  # phase -> s, of the run wall_seconds is from
        "stage_seconds_last_run": ctx.results.stage_seconds_last_run,
        "dataset": {"eval": ctx.splits.dataset, "n_eval": len(ctx.splits.eval), "eval_fingerprint": fp,
                    "calibration": ctx.splits.calibration.source, "n_calibration": len(ctx.splits.calibration),
                    "full_test_set": ctx.splits.full_test_set},
        "host": {"cpu": cpu, "benchmark": ctx.cfg.benchmark.model_dump()},
        "conditions": ctx.results.conditions,
        "budget": {"max_accuracy_drop_pt": budget},
        "ship": {t: ship(entries, t, budget) for t in targets},
        "referee": {t: referee(entries, t, budget) for t in targets},
        "artifacts": entries,
        "checks": checks,
        **sections,
        "versions": ctx.manifest.header.get("versions", {}),
    }


def _comparison_with_tests(section: dict | None, tests: list[dict], lines: list[str], budget: float) -> dict:
    """The comparison section with INT8 verdicts derived from paired tests, for every INT8 format of the run."""
    section = dict(section or {"markdown": "## PTQ vs QAT"})
    low = [v for v in section.get("verdict_lines", []) if not v.startswith("INT8")]
    paired = {f"INT{t['bits']}" for t in section.get("low_bit_tests", [])}  # bit widths with paired cells
    low = [v + " (point estimates: simulated cells keep no per-image predictions to pair)" if "simulated" in v
           and v.split(" ", 1)[0].rstrip(",:") not in paired else v for v in low]
    verdict_lines = lines + low
    md = section.get("markdown", "")
    md = md.split("\n\n- ", 1)[0] if "\n\n- " in md else md  # drop the stage's own point-estimate verdicts
    md += (f"\n\nVerdicts (paired exact McNemar tests on the same images, 95 % intervals, budget {budget:g} pt):\n\n"
           + "\n".join(f"- {v}" for v in verdict_lines))
    section.update(verdict=" ".join(verdict_lines), verdict_lines=verdict_lines, tests=tests,
                   budget_pt=budget, markdown=md)
    return section


def _top1(e):
    return (e["accuracy"] or {}).get("top1")


def derive_checks(entries: list[dict]) -> dict:
    """Per quantised artifact: size ratio, accuracy drop and latency ratio against its FP32 sibling."""
    fp32 = {e["format"]: e for e in entries if e["precision"] == "fp32"}
    out = {}
    for e in entries:
        if e["precision"] == "fp32":
            continue
        ref = fp32.get(e["format"]) or next(iter(fp32.values()), None)
        if ref is None:
            continue
        c: dict = {"reference": ref["name"], "size_ratio": round(e["size_bytes"] / ref["size_bytes"], 4)}
        t, r = _top1(e), _top1(ref)
        c["top1_drop_points"] = (round((r - t) * 100, 3) if t is not None and r is not None else None) if not \
            e["accuracy"].get("of") else (e.get("vs_fp32") or {}).get("drop_pt")  # a subset's: its paired drop
        # the per-round ratio of the interleaved benchmark (same load for both), where there is one
        c["latency_ratio"] = {t: s["ratio_to_fp32"]["value"] for t, s in e["latency_ms"].items()
                              if (s.get("ratio_to_fp32") or {}).get("value") is not None}
        notes = e.get("notes") or {}
        if "float_ops" in notes:
            c["fully_integer"] = not notes["float_ops"]
        if notes.get("size_floor"):
            c["size_over_floor"] = round(e["size_bytes"] / notes["size_floor"]["floor_bytes"], 3)
        out[e["name"]] = c
    return out


# ------------------------------------------------------------------ human-readable
def _fmt(v, spec=".4f", none="—"):
    return none if v is None else format(v, spec)


def _ci(v, ci, spec: str, scale: float = 1.0) -> str:
    if v is None:
        return "—"
    text = format(v * scale, spec)
    lo_spec = spec.lstrip("+")
    return text + (f" [{format(ci[0] * scale, lo_spec)},{format(ci[1] * scale, lo_spec)}]" if ci else "")


def _flags(rep: dict, e: dict, target: str = "host") -> str:
    s = e["latency_ms"].get(target) or {}
    flags = []
    if (rep.get("ship", {}).get(target) or {}).get("artifact") == e["name"]:
        flags.append("ship")
    if s.get("noisy"):
        flags.append("noisy")
    if (e.get("notes") or {}).get("slow_kernels"):  # e.g. 16x8 on reference kernels (stages.precision)
        flags.append("slow kernels")
    return ",".join(flags)


def artifact_cells(rep: dict, e: dict, target: str = "host") -> dict:
    """The figures of one artifact as display strings (shared by the terminal, report.md and compare)."""
    acc, v = e["accuracy"], e.get("vs_fp32") or {}
    s = e["latency_ms"].get(target) or {}
    r = s.get("ratio_to_fp32") or {}
    drop = "—"
    p = (v.get("mcnemar_holm") or v.get("mcnemar") or {}).get("p", 1.0)  # the * marker's p: Holm across the run
    if v:
        drop = _ci(v["drop_pt"], v["drop_ci95_pt"], "+.2f") + ("*" if p < 0.05 else "")
    return {"artifact": e["name"], "format": e["format"], "precision": e["precision"], "method": e["method"],
            "MB": f"{e['size_bytes'] / 1e6:.2f}",
            "size ×FP32": _fmt(rep["checks"].get(e["name"], {}).get("size_ratio"), ".3f"),
            "top-1 % [95% CI]": _ci(acc.get("top1"), acc.get("ci95"), ".2f", 100),
            "n": f"{acc['n']:,} of {acc['of']:,}" if acc.get("of") else str(acc.get("n") or "—"),
            "drop pt [CI]": drop, "McNemar p (Holm)": _fmt(p if v else None, ".2g"),
            f"{target} ms [CI]": _ci(s.get("median"), s.get("median_ci95"), ".3g") if s.get("median") is not None
            else "n/a",
            "×FP32 [CI]": _ci(r.get("value"), r.get("ci95"), ".2f") if r else "—",
            "flags": _flags(rep, e, target)}


MARKDOWN = ["artifact", "format", "precision", "method", "MB", "size ×FP32", "top-1 % [95% CI]", "n", "drop pt [CI]",
            "McNemar p (Holm)", "host ms [CI]", "×FP32 [CI]", "flags"]


def significance_legend(rep: dict) -> str:
    """How the * markers were decided: exact McNemar against FP32, Holm-corrected across the run's comparisons."""
    m = next((e["vs_fp32"]["mcnemar_holm"]["comparisons"] for e in rep["artifacts"]
              if (e.get("vs_fp32") or {}).get("mcnemar_holm")), None)
    return "* = significant, exact McNemar p < 0.05" + (
        "" if m is None else f" after Holm's correction across the {m} artifact{'s' * (m != 1)} compared with FP32 in this run "
                             "(the p shown is the adjusted one; unadjusted: report.json mcnemar.p)")


def summary_rows(rep: dict, headers: list[str]) -> list[list[str]]:
    """The artifact table as display strings, one row per artifact, columns `headers`."""
    return [[artifact_cells(rep, e)[h] for h in headers] for e in rep["artifacts"]]


def _conditions_lines(rep: dict) -> list[str]:
    """One line per target: how busy it was around its interleaved rounds."""
    conds = rep.get("conditions") or {}
    if not conds.get("host"):
        conds = {"host": None, **conds}
    lines = []
    for target, c in conds.items():
        if not c:
            lines.append(f"- {target} conditions: not recorded (benchmark not run)")
            continue
        busy = ""
        if "busy_processes" in c:
            busy = "; busy processes at start: " + (", ".join(f"{p['name']} {p['cpu_percent']:.0f} %"
                                                              for p in c.get("busy_processes") or []) or "none seen")
        lines.append(f"- {target} conditions: load average {c.get('loadavg_before')} before, "
                     f"{c.get('loadavg_after')} after{busy}; {c.get('threads')} thread(s); {c.get('rounds')} "
                     f"interleaved rounds of {c.get('warmup_per_round')} warm-up + {c.get('runs_per_round')} timed "
                     "runs per artifact")
    return lines


def _stage_seconds_text(phases: dict | None) -> str:
    """'; of which import 0.4 s, tflite_ptq 31 s (52 %), ...': where a run's time went, largest share marked."""
    if not phases:
        return ""
    total = sum(phases.values()) or 1.0
    return "; of which " + ", ".join(f"{k} {v:.3g} s" + (f" ({100 * v / total:.0f} %)" if v >= 0.1 * total else "")
                                     for k, v in phases.items())


def markdown(rep: dict) -> str:
    """report.md: what to ship, the artifact table with intervals, verdicts, devices, per-layer error, stage sections."""
    cpu = rep["host"]["cpu"]
    budget = rep.get("budget", {}).get("max_accuracy_drop_pt")
    lines = [f"# edgeq report: {rep['model']}", "",
             f"- evaluation set: {rep['dataset']['eval']}; calibration: {rep['dataset']['n_calibration']} images "
             f"from {rep['dataset']['calibration']}",
             f"- host: {cpu['model']} ({cpu['machine']}, {cpu['cores']} cores; SIMD: {', '.join(cpu['simd']) or 'none'}; "
             f"int8 dot-product: {'yes' if cpu['int8_dot_product'] else 'no'})",
             *_conditions_lines(rep),
             f"- accuracy budget: {budget} pt of top-1 (max_accuracy_drop)",
             f"- wall time: {rep.get('wall_seconds')} s{_stage_seconds_text(rep.get('stage_seconds'))}", ""]
    lines += ["## What to ship", ""] + [f"- **{t}**: {v['artifact'] or 'nothing'} — {v['why']}"
                                        for t, v in (rep.get("ship") or {}).items()] + [""]
    lines += referee_lines(rep) + other_runtime_lines(rep) + class_lines(rep) + calibration_lines(rep)
    lines += ["## Artifacts", "",
              "Intervals are 95 %: Wilson for top-1, Newcombe paired for the drop (\\" + significance_legend(rep)
              + "), order statistics over interleaved rounds for latency and its ratio to the FP32 artifact of "
              "the same format.", "",
              "| " + " | ".join(MARKDOWN) + " |", "|" + "---|" * len(MARKDOWN)]
    lines += ["| " + " | ".join(r) + " |" for r in summary_rows(rep, MARKDOWN)]
    verdicts = [(e["name"], e["vs_fp32"]["verdict"]) for e in rep["artifacts"] if e.get("vs_fp32")]
    if verdicts:
        lines += ["", "## Against FP32", ""] + [f"- {n}: {v}" for n, v in verdicts]
    notes = [(e["name"], t, s["reason"]) for e in rep["artifacts"] for t, s in e["latency_ms"].items() if s.get("reason")]
    notes += [(e["name"], t, s["noisy_reason"]) for e in rep["artifacts"] for t, s in e["latency_ms"].items()
              if s.get("noisy")]
    if notes:
        lines += ["", "## Not measured or noisy", ""] + [f"- {n} on {t}: {r}" for n, t, r in notes]
    lines += _device_lines(rep)
    on_device = report_sections.device_accuracy_markdown(rep.get("accuracy_on_device"))
    lines += ["", on_device] if on_device else []
    lines += _per_layer_lines(rep)
    for name, section in rep.items():
        if isinstance(section, dict) and section.get("markdown"):
            lines += ["", section["markdown"]]
    lines += ["", "Full figures: report.json. Artifacts and hashes: manifest.json."]
    return "\n".join(lines) + "\n"


def _device_lines(rep: dict) -> list[str]:
    devices = sorted({t for e in rep["artifacts"] for t in e["latency_ms"] if t != "host"})
    if not devices:
        return []
    lines = ["", "## Devices", "", "| artifact | device | median ms [CI] | ×FP32 [CI] | p90 ms | runtime / reason |",
             "|---|---|---|---|---|---|"]
    for e in rep["artifacts"]:
        for t in devices:
            s = e["latency_ms"].get(t)
            if s:
                c = artifact_cells(rep, e, t)
                lines.append(f"| {e['name']} | {t} | {c[t + ' ms [CI]']} | {c['×FP32 [CI]']} | "
                             f"{_fmt(s.get('p90'), '.3f')} | {_runtime_cell(s)} |")
    emulated = {t: s["emulated"] for e in rep["artifacts"] for t, s in e["latency_ms"].items() if s.get("emulated")}
    lines += [f"\n**{t}: emulated CPU, its timings are meaningless as speed figures** ({why}); its outputs and "
              "accuracy are the real ones of its runtime build." for t, why in sorted(emulated.items())]
    return lines


def _runtime_cell(s: dict) -> str:
    return (s.get("runtime") or s.get("reason", "")) + (" (EMULATED CPU)" if s.get("emulated") else "")


def _per_layer_lines(rep: dict) -> list[str]:
    lines = []
    for e in rep["artifacts"]:
        pl = e.get("per_layer_error") or {}
        if pl.get("layers"):
            worst = sorted(pl["layers"], key=lambda r: r["sqnr_db"])[:8]
            lines += ["", f"## Per-layer error: {e['name']} vs {pl['reference']} ({pl['images']} eval images; worst 8 of "
                      f"{len(pl['layers'])} ops by SQNR, higher is better)", "",
                      "| op | layers | SQNR dB | max abs err |", "|---|---|---|---|"]
            lines += [f"| {r['op']} | {r['layers']} | {r['sqnr_db']:.1f} | {r['max_abs_err']:.4g} |" for r in worst]
        elif pl.get("reason"):
            lines += ["", f"Per-layer error of {e['name']}: {pl['reason']}"]
    return lines


def write_report(ctx) -> dict:
    """Write report.json, report.md and report.html of a run (atomically); returns the report dict."""
    rep = build_report(ctx)
    write_json_atomic(ctx.run_dir / "report.json", rep)
    md = markdown(rep)
    write_bytes_atomic(ctx.run_dir / "report.md", md.encode())
    write_bytes_atomic(ctx.run_dir / "report.html", render_html(rep).encode())
    return rep
