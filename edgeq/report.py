"""report.json (stable keys, diffable), report.md (the summary table) and report.html (tables + plots).

Every figure comes from this run's results.json; one that could not be measured is null with a
`reason` beside it.
"""
from __future__ import annotations

import base64
import html
import io
import time

from .artifacts import write_bytes_atomic, write_json_atomic
from .sysinfo import cpu_info

SCHEMA_VERSION = 1


def _accuracy(ctx, a) -> dict:
    fp = ctx.splits.eval.fingerprint()
    r = ctx.results["evaluations"].get(f"{a.sha256}:{fp}")
    if r is None:
        why = ("evaluation disabled (evaluate.enabled: false)" if not ctx.cfg.evaluate.enabled
               else "Keras baseline evaluation disabled (evaluate.keras_baseline: false)")
        return {"top1": None, "top5": None, "n": 0, "dataset": ctx.splits.dataset, "reason": why}
    return {"top1": r["top1"], "top5": r["top5"], "n": r["n"], "dataset": r["dataset"]}


def _agreement(ctx, a):
    r = ctx.results["evaluations"].get(f"{a.sha256}:{ctx.splits.eval.fingerprint()}") or {}
    return r.get("agreement")


def _latency(ctx, a) -> dict:
    out = {}
    rows = [v for v in ctx.results["latency"].values() if v["artifact"] == a.name and v.get("sha256") == a.sha256]
    rows.sort(key=lambda v: (v["target"] != "host", v["target"]))
    if not any(v["target"] == "host" for v in rows):
        why = "benchmark disabled (benchmark.enabled: false)" if not ctx.cfg.benchmark.enabled else "not measured"
        out["host"] = {"median": None, "p90": None, "p99": None, "runs": 0, "threads": None, "reason": why}
    for v in rows:
        s = v.get("stats")
        if s:
            out[v["target"]] = {k: s[k] for k in ("median", "p90", "p99", "mean", "min", "max", "runs", "warmup",
                                                  "threads", "runtime", "device")}
        else:
            out[v["target"]] = {"median": None, "p90": None, "p99": None, "runs": 0, "threads": None,
                                "reason": v.get("reason", "not measured")}
    # host first, as the contract says
    return dict(sorted(out.items(), key=lambda kv: kv[0] != "host"))


def build_report(ctx) -> dict:
    arts = list(ctx.manifest.artifacts.values())
    entries = []
    fp = ctx.splits.eval.fingerprint()
    for a in arts:
        e = {"name": a.name, "format": a.format, "precision": a.precision, "method": a.method, "path": a.path,
             "size_bytes": a.size_bytes, "sha256": a.sha256, "parent": a.parent, "stage": a.stage,
             "params": a.params, "accuracy": _accuracy(ctx, a), "agreement_with_fp32": _agreement(ctx, a),
             "latency_ms": _latency(ctx, a),
             "compatibility": {t: c for t, c in ctx.results["compatibility"].get(a.name, {}).items()}}
        pl = [v for k, v in ctx.results.get("per_layer", {}).items() if k.split(":")[1:3] == [a.sha256, fp]]
        if pl:
            e["per_layer_error"] = pl[-1]
        if a.notes:
            e["notes"] = {k: v for k, v in a.notes.items() if k not in ("ops",)}
        entries.append(e)
    checks = derive_checks(entries)
    cpu = cpu_info()
    return {
        "schema_version": SCHEMA_VERSION,
        "model": ctx.cfg.name,
        "family": ctx.cfg.model.family,
        "description": ctx.cfg.description,
        "config": str(ctx.cfg.source) if ctx.cfg.source else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seed": ctx.cfg.seed,
        "wall_seconds": ctx.results.get("wall_seconds"),  # the last run that made something
        "wall_seconds_last_run": ctx.results.get("wall_seconds_last_run"),  # this run (a rerun may reuse all)
        "dataset": {"eval": ctx.splits.dataset, "n_eval": len(ctx.splits.eval),
                    "calibration": ctx.splits.calibration.source, "n_calibration": len(ctx.splits.calibration),
                    "full_test_set": ctx.splits.full_test_set},
        "host": {"cpu": cpu, "benchmark": ctx.cfg.benchmark.model_dump()},
        "artifacts": entries,
        "checks": checks,
        **{k: v for k, v in ctx.results["sections"].items()},
        "versions": ctx.manifest.header.get("versions", {}),
    }


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
        c["top1_drop_points"] = round((r - t) * 100, 3) if t is not None and r is not None else None
        lat = {}
        for target, s in e["latency_ms"].items():
            rs = ref["latency_ms"].get(target) or {}
            if s.get("median") and rs.get("median"):
                lat[target] = round(s["median"] / rs["median"], 4)
        c["latency_ratio"] = lat
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


def summary_rows(rep: dict) -> list[list[str]]:
    rows = []
    checks = rep["checks"]
    for e in rep["artifacts"]:
        h = e["latency_ms"].get("host", {})
        c = checks.get(e["name"], {})
        acc = e["accuracy"]
        rows.append([
            e["name"], e["format"], e["precision"], e["method"], f"{e['size_bytes'] / 1e6:.2f}",
            _fmt(c.get("size_ratio"), ".3f"), _fmt(acc.get("top1")), _fmt(acc.get("top5")),
            _fmt(c.get("top1_drop_points"), "+.2f"),
            _fmt((e.get("agreement_with_fp32") or {}).get("top1_agreement"), ".4f"),
            _fmt(h.get("median"), ".3f", none="n/a"), _fmt(h.get("p90"), ".3f"),
            _fmt(c.get("latency_ratio", {}).get("host"), ".3f"),
        ])
    return rows


HEADERS = ["artifact", "format", "precision", "method", "size MB", "size ×FP32", "top-1", "top-5",
           "drop pt", "agree FP32", "host median ms", "host p90 ms", "latency ×FP32"]


def markdown(rep: dict) -> str:
    cpu = rep["host"]["cpu"]
    b = rep["host"]["benchmark"]
    lines = [f"# edgeq report: {rep['model']}", "",
             f"- evaluation set: {rep['dataset']['eval']}; calibration: {rep['dataset']['n_calibration']} images "
             f"from {rep['dataset']['calibration']}",
             f"- host: {cpu['model']} ({cpu['machine']}, {cpu['cores']} cores; SIMD: {', '.join(cpu['simd']) or 'none'}; "
             f"int8 dot-product: {'yes' if cpu['int8_dot_product'] else 'no'})",
             f"- benchmark: {b['runs']} runs after {b['warmup']} warm-up, {b['threads']} thread(s), batch 1",
             f"- wall time: {rep.get('wall_seconds')} s", "",
             "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(r) + " |" for r in summary_rows(rep)]
    devices = sorted({t for e in rep["artifacts"] for t in e["latency_ms"] if t != "host"})
    if devices:
        lines += ["", "## Devices", "", "| artifact | device | median ms | p90 ms | runtime / reason |", "|---|---|---|---|---|"]
        for e in rep["artifacts"]:
            for t in devices:
                s = e["latency_ms"].get(t)
                if s:
                    lines.append(f"| {e['name']} | {t} | {_fmt(s.get('median'), '.3f')} | {_fmt(s.get('p90'), '.3f')} | "
                                 f"{s.get('runtime') or s.get('reason', '')} |")
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
    for name, section in rep.items():
        if isinstance(section, dict) and section.get("markdown"):
            lines += ["", section["markdown"]]
    lines += ["", "Full figures: report.json. Artifacts and hashes: manifest.json."]
    return "\n".join(lines) + "\n"


def _plot_png(rep: dict) -> str | None:
    pts = [(e["name"], e["latency_ms"].get("host", {}).get("median"), (e["accuracy"] or {}).get("top1"),
            e["size_bytes"]) for e in rep["artifacts"]]
    pts = [p for p in pts if p[1] is not None and p[2] is not None]
    if not pts:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    smax = max(p[3] for p in pts)
    for name, lat, acc, size in pts:
        ax.scatter(lat, acc * 100, s=40 + 400 * size / smax, alpha=0.6)
        ax.annotate(name, (lat, acc * 100), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("host median latency (ms, batch 1)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(f"{rep['model']}: accuracy vs latency (marker area ∝ size)")
    return _png_base64(fig, ax)


def _per_layer_png(rep: dict) -> str | None:
    series = [(e["name"], e["per_layer_error"]["layers"]) for e in rep["artifacts"]
              if (e.get("per_layer_error") or {}).get("layers")]
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 3.5))
    for name, layers in series:
        ax.plot([min(r["sqnr_db"], 60) for r in layers], marker=".", label=name)
    ax.set_xlabel("op index (graph order)")
    ax.set_ylabel("SQNR vs FP32 (dB)")
    ax.set_title("per-layer quantisation error")
    ax.legend(fontsize=8)
    return _png_base64(fig, ax)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png_base64(fig, ax) -> str:
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=105)
    _pyplot().close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def html_report(rep: dict, md: str) -> str:
    esc = html.escape
    rows = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in summary_rows(rep))
    png = _plot_png(rep)
    img = f'<img alt="accuracy vs latency" src="data:image/png;base64,{png}">' if png else "<p>No plot: no artifact has both accuracy and host latency.</p>"
    pl_png = _per_layer_png(rep)
    if pl_png:
        img += f'<img alt="per-layer SQNR" src="data:image/png;base64,{pl_png}">'
    cpu = rep["host"]["cpu"]
    extra = "".join(f"<h2>{esc(k)}</h2><pre>{esc(v['markdown'])}</pre>" for k, v in rep.items()
                    if isinstance(v, dict) and v.get("markdown"))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>edgeq: {esc(rep['model'])}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td:first-child{{text-align:left}}</style>
</head><body><h1>edgeq report: {esc(rep['model'])}</h1>
<p>Evaluation: {esc(rep['dataset']['eval'])}. Host: {esc(cpu['model'])}, SIMD {esc(', '.join(cpu['simd']))}.</p>
<table><tr>{''.join(f'<th>{esc(h)}</th>' for h in HEADERS)}</tr>{rows}</table>
{img}{extra}<p>Machine-readable: report.json, manifest.json.</p></body></html>"""


def write_report(ctx) -> dict:
    rep = build_report(ctx)
    write_json_atomic(ctx.run_dir / "report.json", rep)
    md = markdown(rep)
    write_bytes_atomic(ctx.run_dir / "report.md", md.encode())
    write_bytes_atomic(ctx.run_dir / "report.html", html_report(rep, md).encode())
    return rep


def print_summary(rep: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"edgeq: {rep['model']} — {rep['dataset']['eval']}")
    for h in HEADERS:
        t.add_column(h, justify="left" if h == "artifact" else "right")
    for r in summary_rows(rep):
        t.add_row(*r)
    Console(width=200).print(t)
