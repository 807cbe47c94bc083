"""report.html from a report.json dict: one self-contained page (inline CSS, plots as base64 PNG, no JS).

Any key may be missing or None: a missing figure reads "not measured" (with its reason, listed under the
table) and a plot without data is left out. All report text is escaped; only markdown-it output is not.
"""
from __future__ import annotations

import math

from edgeq.report.htmlkit import embed as _img, esc as _e, figure as _fig, table as _table
from edgeq.report.per_class import per_class_html
from edgeq.report.sections import device_accuracy_markdown

CSS = """*{box-sizing:border-box}body{margin:0;background:#eef1f5;color:#1d2330;font:14px/1.45 system-ui,sans-serif}
main{max-width:1240px;margin:0 auto;padding:14px 22px 36px;background:#fff}h1{font-size:25px;margin:6px 0 2px}
h2{font-size:19px;margin:26px 0 8px;padding-bottom:3px;border-bottom:1px solid #d8dee6}h3{font-size:15px;margin:16px 0 6px}
p{margin:6px 0}small,.sub,figcaption,footer{color:#5b6577;font-size:12px}figure{margin:6px 0}footer{margin-top:30px}
table{border-collapse:collapse;max-width:100%;margin:8px 0;font-size:13px}table.main{width:100%}.v{white-space:nowrap}
th,td{border:1px solid #d3d9e1;padding:4px 7px;vertical-align:top;text-align:left;overflow-wrap:break-word}
.md td,.devs td,pre,code{overflow-wrap:anywhere}pre,code{white-space:pre-wrap}th{background:#eef2f7}
tr:nth-child(even) td{background:#fafbfc}img{max-width:100%;height:auto;display:block}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(580px,1fr));gap:10px 18px}
dl.meta{display:grid;grid-template-columns:150px 1fr;gap:3px 14px;margin:10px 0}dt{font-weight:600}dd{margin:0}
.ship{background:#edf8f0;border:1px solid #9fd3ab;border-radius:6px;padding:4px 18px 10px}.ship h2{border:0}
.ship li{font-size:15px;margin:4px 0}.ship .art{font-size:16px}.none{color:#8a5a00}.ok{color:#1e7b34}
.noisy{color:#9a5300;font-weight:600}.nm{color:#b3261e}ul.notes{list-style:none;padding-left:0;font-size:12px}"""


def _d(v) -> dict:
    return v if isinstance(v, dict) else {}


def _num(v) -> float | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return float(v) if ok else None


def _pair(ci) -> tuple[float, float] | None:
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in map(_num, ci):
        return float(ci[0]), float(ci[1])
    return None


def _ci(ci, scale: float = 1.0, spec: str = ".2f") -> str:
    p = _pair(ci)
    return f' <span class="v sub">[{p[0] * scale:{spec}}, {p[1] * scale:{spec}}]</span>' if p else ""


def _nm(reason) -> str:
    text = str(reason or "not measured")
    return text if "not measured" in text.lower() else f"not measured: {text}"


class _Notes:
    """Long texts (why not measured, why noisy): each numbered once, cited in the cell, listed under the table."""

    def __init__(self):
        self.items: list[str] = []

    def ref(self, text: str, label: str = "not measured", cls: str = "nm") -> str:
        if text not in self.items:
            self.items.append(text)
        n = self.items.index(text) + 1
        return f'<span class="{cls} v" title="{_e(text)}">{label} <a href="#nm{n}">[{n}]</a></span>'

    def html(self) -> str:
        li = "".join(f'<li id="nm{i}">[{i}] {_e(t)}</li>' for i, t in enumerate(self.items, 1))
        return f'<ul class="notes">{li}</ul>' if li else ""


# ------------------------------------------------------------------ header, ship
def _words(v) -> str:
    return ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def _conditions(c: dict, cpu: dict) -> str:
    """One target's run conditions: load, rounds, threads, busy processes, CPU and SIMD if not the host's, others."""
    la = lambda v: "/".join(f"{x:.2f}" for x in v) if isinstance(v, list) and None not in map(_num, v) else "?"
    parts = [f"load avg (1/5/15 min) {la(c.get('loadavg_before'))} before → {la(c.get('loadavg_after'))} after"]
    parts = parts if c.get("loadavg_before") or c.get("loadavg_after") else []
    if c.get("rounds") is not None:
        warm = f"{c['warmup_per_round']} warm-up + " if c.get("warmup_per_round") is not None else ""
        parts.append(f"{c['rounds']} interleaved rounds × ({warm}{c.get('runs_per_round', '?')} timed runs)")
    parts += [f"{k}: {_words(c[k])}" for k, same in (("threads", None), ("cpu", cpu.get("model")),
                                                     ("simd", cpu.get("simd"))) if c.get(k) not in (None, "", [], same)]
    if "busy_processes" in c:
        busy = [b for b in c["busy_processes"] or [] if isinstance(b, dict)]
        parts.append("busy processes: " + (", ".join(f"{b.get('name')} (pid {b.get('pid')}, {b.get('cpu_percent')} % "
                                                      "CPU)" for b in busy) or "none"))
    known = {"loadavg_before", "loadavg_after", "rounds", "runs_per_round", "warmup_per_round", "threads", "cpu",
             "simd", "busy_processes", "set_key"}
    parts += [f"{k}: {v}" for k, v in c.items() if k not in known and isinstance(v, (str, int, float))]
    return " · ".join(parts) or "nothing recorded"


def _header(rep: dict) -> str:
    ds, host = _d(rep.get("dataset")), _d(rep.get("host"))
    cpu, b = _d(host.get("cpu")), _d(host.get("benchmark"))
    full = {True: " · full test set", False: " · subset, not the full test set"}.get(ds.get("full_test_set"), "")
    fp = f" · fingerprint {ds['eval_fingerprint']}" if ds.get("eval_fingerprint") else ""
    dot = {True: "yes", False: "no"}.get(cpu.get("int8_dot_product"), "unknown")
    budget = _num(_d(rep.get("budget")).get("max_accuracy_drop_pt"))
    bt = None if budget is None else f"{budget:.1f}" if round(budget, 1) == budget else f"{budget:g}"
    run = {"created": "{}", "seed": "seed {}", "wall_seconds": "wall {} s", "config": "config {}"}
    rows = [("Evaluation set", f"{ds.get('eval') or 'unknown'} · n = {ds.get('n_eval', '?')}{full}{fp}"),
            ("Calibration", f"{ds.get('n_calibration', '?')} images from {ds.get('calibration') or 'unknown'}"),
            ("Host CPU", f"{cpu.get('model') or 'unknown'} ({cpu.get('machine', '?')}, {cpu.get('cores', '?')} cores)"
             f" · SIMD: {_words(cpu.get('simd') or []) or 'none reported'} · int8 dot product: {dot}"),
            ("Benchmark", ", ".join([f"{k} {b[k]}" for k in ("runs", "warmup", "threads", "rounds")
                                    if b.get(k) is not None] + ["batch 1"]))]
    conds = {t: c for t, c in _d(rep.get("conditions")).items() if isinstance(c, dict)}
    rows += [(f"Conditions: {t}", _conditions(c, cpu)) for t, c in conds.items()] or [("Conditions", "not recorded")]
    rows += [("Accuracy budget", f"at most {bt} pt top-1 drop vs FP32" if bt else "not set"),
             ("Run", " · ".join(f.format(rep[k]) for k, f in run.items() if rep.get(k) is not None))]
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows)
    desc = f'<p class="sub">{_e(rep.get("description"))}</p>' if rep.get("description") else ""
    return f'<header><h1>edgeq report: {_e(rep.get("model"))}</h1>{desc}<dl class="meta">{dl}</dl></header>'


def _ship(rep: dict) -> str:
    items = []
    for target, s in _d(rep.get("ship")).items():
        s = _d(s)
        art = (f'<b class="art">{_e(s["artifact"])}</b>' if s.get("artifact")
               else '<b class="art none">nothing to ship</b>')
        items.append(f"<li><b>{_e(target)}</b>: {art} — {_e(s.get('why') or 'no reason given')}</li>")
    body = f"<ul>{''.join(items)}</ul>" if items else "<p>No recommendation: report.json has no ship section.</p>"
    return f'<section class="ship" id="ship"><h2>What to ship</h2>{body}</section>'


# ------------------------------------------------------------------ tables
def _baseline(e: dict, check: dict) -> str:
    return "FP32 baseline" if not check and str(e.get("precision")).lower() == "fp32" else "—"


def _acc_cell(acc: dict, notes: _Notes) -> str:
    t = _num(acc.get("top1"))
    if t is None:
        return notes.ref(_nm(acc.get("reason")))
    of = f" of {_e(acc['of'])} (a seeded subset)" if acc.get("of") else ""  # a slow precision (stages.precision)
    return (f'<span class="v">{t * 100:.2f} %</span>{_ci(acc.get("ci95"), 100)}'
            f'<br><small>n = {_e(acc.get("n"))}{of}</small>')


def _drop_cell(e: dict, check: dict) -> str:
    v = _d(e.get("vs_fp32"))
    d = _num(v.get("drop_pt"))
    if d is None:
        d = _num(check.get("top1_drop_points"))
        return _baseline(e, check) if d is None else f'<span class="v">{d:+.2f} pt</span>'
    badge = {True: '<b class="ok">✓ within budget</b>', False: '<b class="nm">✗ over budget</b>',
             None: '<b class="none">? undecided</b>'}.get(v.get("within_budget"), "") if "within_budget" in v else ""
    p, holm = _num(_d(v.get("mcnemar")).get("p")), _d(v.get("mcnemar_holm"))
    p = "p —" if p is None else ("p &lt; 0.001" if p < 0.001 else f"p = {p:.3g}")
    if _num(holm.get("p")) is not None:  # adjusted across the run's comparisons with FP32
        p += f"; Holm ({_e(holm.get('comparisons'))} artifacts) p = {holm['p']:.3g}"
    return (f'<span class="v">{d:+.2f} pt</span>{_ci(v.get("drop_ci95_pt"))}<br><small>McNemar {p}</small> {badge}'
            f'<br><small>{_e(v.get("verdict") or "")}</small>')


def _lat_cells(e: dict, target: str, check: dict, notes: _Notes) -> list[str]:
    """[median with interval, ratio to FP32 with interval, noisy marker] for one target."""
    s = _d(_d(e.get("latency_ms")).get(target))
    med = _num(s.get("median"))
    if med is None:  # no entry at all: not tried on that target (e.g. Keras on a device), so "—"
        return [notes.ref(_nm(s.get("reason"))) if s else "—", "—", "—"]
    r = _d(s.get("ratio_to_fp32"))
    rv = _num(r.get("value"))
    rv = _num(_d(check.get("latency_ratio")).get(target)) if rv is None else rv
    ratio = _baseline(e, check) if rv is None else f'<span class="v">{rv:.3f}×</span>'
    ratio += _ci(r.get("ci95"), 1, ".3f") if rv is not None else ""
    why = f"{e.get('name')} on {target} is noisy: {s.get('noisy_reason') or 'no reason given'}"
    noisy = notes.ref(why, "⚠ noisy", "noisy") if s.get("noisy") is True else {False: "no"}.get(s.get("noisy"), "—")
    return [f'<span class="v">{med:.3f} ms</span>{_ci(s.get("median_ci95"), 1, ".3f")}', ratio, noisy]


def _main_table(rep: dict, arts: list[dict], targets: list[str]) -> str:
    checks, notes, rows, dev_rows = _d(rep.get("checks")), _Notes(), [], []
    for e in arts:
        c, size = _d(checks.get(e.get("name"))), _num(e.get("size_bytes"))
        sr = _num(c.get("size_ratio"))
        rows.append([f"<b>{_e(e.get('name'))}</b>", _e(e.get("format")), _e(e.get("precision")), _e(e.get("method")),
                     f"{size / 1e6:.2f}" if size is not None else notes.ref(_nm("size unknown")),
                     f'<span class="v">{sr:.3f}×</span>' if sr is not None else _baseline(e, c),
                     _acc_cell(_d(e.get("accuracy")), notes), _drop_cell(e, c), *_lat_cells(e, "host", c, notes)])
        for t in targets[1:] if targets[:1] == ["host"] else targets:
            med, ratio, noisy = _lat_cells(e, t, c, notes)
            dev_rows.append([_e(e.get("name")), _e(t), med, ratio, noisy])
    head = ["artifact", "format", "precision", "method", "size MB", "size ×FP32", "top-1 [95 % CI]",
            "drop vs FP32 [95 % CI], McNemar, verdict", "host median [95 % CI]", "host ×FP32 [95 % CI]", "noisy?"]
    out = "<h2>Artifacts</h2>" + _table(head, rows, "main")
    if dev_rows:
        out += "<h3>Latency on devices</h3>" + _table(["artifact", "device", "median [95 % CI]", "×FP32 [95 % CI]",
                                                        "noisy?"], dev_rows)
    return out + notes.html()


def _devices(rep: dict) -> str:
    devs = {k: v for k, v in _d(rep.get("devices")).items() if isinstance(v, dict)}
    if not devs:
        return ""
    head = ["device", "kind", "address", "status", "error", "runtime", "seconds"]
    rows = [[_e(n)] + [_e(d.get(k) if d.get(k) is not None else "") for k in head[1:]] for n, d in devs.items()]
    for row, d in zip(rows, devs.values()):  # an emulated CPU's timings are no speed figures: said where they show
        why = _d(d.get("identity")).get("emulated")
        row.append(f"<strong>emulated: timings meaningless as speed</strong> ({_e(why)})" if why else "no")
    head.append("emulated CPU")
    return "<h2>Devices</h2>" + _table(head, rows, "devs")


# ------------------------------------------------------------------ plots
def pareto_front(pts: list[tuple]) -> list[tuple]:
    """(name, latency, accuracy, ...) points no other point beats on both axes, fastest first."""
    def beaten(p):
        return any(q[1] <= p[1] and q[2] >= p[2] and (q[1] < p[1] or q[2] > p[2]) for q in pts)
    return sorted((p for p in pts if not beaten(p)), key=lambda p: p[1])


def _errs(v: float, ci, scale: float = 1.0) -> list[list[float]]:
    lo, hi = _pair(ci) or (v, v)
    return [[max(v - lo, 0) * scale], [max(hi - v, 0) * scale]]


def _label(fig, ax, pts: list[tuple]) -> None:
    """Name each point at the first offset around it where the label overlaps no earlier label."""
    offsets = [(6, 4), (6, -11), (-6, 4), (-6, -11), (6, 15), (6, -22), (-6, 15), (-6, -22), (6, 26), (-6, -33)]
    fig.tight_layout()
    renderer, placed, box_style = fig.canvas.get_renderer(), [], {"boxstyle": "round,pad=0.1", "fc": "w", "ec": "none"}
    for p in pts:
        for dx, dy in offsets:
            t = ax.annotate(p[0], (p[1], p[2]), xytext=(dx, dy), textcoords="offset points", fontsize=7.5, zorder=5,
                            ha="left" if dx > 0 else "right", bbox=box_style)
            box = t.get_window_extent(renderer)
            if not any(box.overlaps(b) for b in placed) or (dx, dy) == offsets[-1]:
                placed.append(box)
                break
            t.remove()


def _acc_lat_plot(arts: list[dict], target: str, w: float = 6.2) -> str:
    pts = []  # (name, median ms, top-1 %, x error bars, y error bars, noisy)
    for e in arts:
        s, a = _d(_d(e.get("latency_ms")).get(target)), _d(e.get("accuracy"))
        x, y = _num(s.get("median")), _num(a.get("top1"))
        if x is not None and y is not None:
            pts.append((str(e.get("name")), x, y * 100, _errs(x, s.get("median_ci95")), _errs(y, a.get("ci95"), 100),
                        s.get("noisy") is True))
    if not pts:
        return ""
    fig, ax = _fig(w, 4.4 + (w - 6.2) / 4)
    for i, p in enumerate(pts):
        ax.errorbar(p[1], p[2], xerr=p[3], yerr=p[4], fmt="o", ms=6, capsize=3, color=f"C{i % 10}", elinewidth=1,
                    alpha=0.7, mfc="white" if p[5] else f"C{i % 10}")
    front = pareto_front(pts)
    ax.step([p[1] for p in front], [p[2] for p in front], where="post", color="#c0392b", lw=1.8, ls="--", zorder=4,
            marker="o", mfc="none", ms=12, label="Pareto front")
    ax.legend(fontsize=8, loc="lower right")
    ax.margins(x=0.2, y=0.12)
    ax.set(xlabel=f"{target} median latency (ms, batch 1)", ylabel="top-1 (%)", title=f"accuracy vs latency: {target}")
    _label(fig, ax, sorted(pts, key=lambda p: (p not in front, p[1])))
    return _img(fig, ax, f"accuracy vs latency on {target}",
                "error bars: 95 % intervals (latency median, top-1); hollow marker: noisy latency")


def _latency_dist_plot(arts: list[dict], target: str, w: float = 6.2) -> str:
    stats, dots = [], []
    for e in arts:
        s = _d(_d(e.get("latency_ms")).get(target))
        q = [_num(_d(s.get("quantiles")).get(k)) for k in ("p5", "p25", "p50", "p75", "p95")]
        if None not in q:
            stats.append(dict(zip(("whislo", "q1", "med", "q3", "whishi"), q), label=str(e.get("name")), fliers=[]))
            dots.append([m for m in map(_num, s.get("round_medians") or []) if m is not None])
    if not stats:
        return ""
    fig, ax = _fig(w, 1.2 + 0.42 * len(stats))
    try:
        ax.bxp(stats, orientation="horizontal", showfliers=False, patch_artist=True)
    except TypeError:  # matplotlib < 3.10
        ax.bxp(stats, vert=False, showfliers=False, patch_artist=True)
    for i, ms in enumerate(dots, 1):
        ax.plot(ms, [i + 0.14 * ((j % 3) - 1) for j in range(len(ms))], "o", color="#c0392b", ms=3.5, alpha=0.8)
    if max(st["whishi"] for st in stats) > 8 * max(min(st["whislo"] for st in stats), 1e-9):
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.invert_yaxis()  # same order as the table
    ax.tick_params(axis="y", labelsize=8)
    ax.set(xlabel=f"{target} latency (ms)", title=f"latency distribution: {target}")
    return _img(fig, ax, f"latency distribution on {target}",
                "box p25–p75, line median, whiskers p5–p95; red dots: per-round medians")


def _sqnr(r: dict) -> float:  # Infinity (identical outputs), None or junk sort last
    v = _num(r.get("sqnr_db"))
    return math.inf if v is None else v


def _per_layer(e: dict, pl: dict) -> str:
    rows = [r for r in pl.get("layers") or [] if isinstance(r, dict)]
    if not rows:
        why = str(pl.get("reason") or "no per-layer figures")
        return f'<h3>{_e(e.get("name"))}</h3><p class="nm">{_e(_nm(why))}</p>'
    worst = sorted(rows, key=_sqnr)[:25]
    fig, ax = _fig(11, 1.0 + 0.27 * len(worst))
    vals = [max(min(_sqnr(r), 80), -20) for r in worst]
    ax.barh(range(len(worst)), vals, color="#4a7fb5")
    for i, v in enumerate(vals):
        ax.text(v, i, f" {v:.1f}", va="center", fontsize=7)
    names = [f"{r.get('op')} · {r.get('layers') or ''}" for r in worst]
    ax.set_yticks(range(len(worst)), [n if len(n) <= 72 else n[:71] + "…" for n in names], fontsize=7.5)
    ax.invert_yaxis()
    ax.set(xlabel="SQNR vs FP32 (dB, higher is better; shown between -20 and 80)",
           title=f"{e.get('name')}: worst {len(worst)} of {len(rows)} ops by SQNR")
    img = _img(fig, ax, f"per-layer SQNR of {e.get('name')}")
    err = lambda r: "—" if _num(r.get("max_abs_err")) is None else f"{r['max_abs_err']:.4g}"
    t8 = [[_e(r.get("op")), _e(r.get("layers")), f"{_sqnr(r):.1f}", err(r)] for r in worst[:8]]
    return (f"<h3>{_e(e.get('name'))} vs {_e(pl.get('reference'))} ({_e(pl.get('images', '?'))} eval images)</h3>"
            + img + _table(["op (worst 8)", "layers", "SQNR dB", "max abs err"], t8))


# ------------------------------------------------------------------ markdown sections, page
def markdown_html(text: str) -> str:
    """CommonMark + tables to HTML; raw HTML in the text is escaped and `#` headings become <h2>."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = md.parse(text)
    for t in tokens:
        if t.type in ("heading_open", "heading_close") and t.tag == "h1":
            t.tag = "h2"
    return md.renderer.render(tokens, md.options, {})


def _sections(rep: dict) -> str:
    """Every top-level section with a `markdown` text, rendered; a heading added when the text has none."""
    titles, out = {"qat": "QAT", "onnx_ptq": "ONNX Runtime PTQ", "comparison": "PTQ vs QAT"}, []
    for key, v in rep.items():
        if isinstance(v, dict) and isinstance(v.get("markdown"), str) and v["markdown"].strip():
            name = titles.get(key) or key.replace("_", " ").capitalize()
            title = "" if v["markdown"].lstrip().startswith("#") else f"<h2>{_e(name)}</h2>"
            out.append(f'<section class="md" id="sec-{_e(key)}">{title}{markdown_html(v["markdown"])}</section>')
    return "".join(out)


def render_html(rep: dict) -> str:
    """The whole report page for one report.json dict."""
    rep = _d(rep)
    arts = [e for e in rep.get("artifacts") or [] if isinstance(e, dict)]
    targets = sorted({t for e in arts for t in _d(e.get("latency_ms"))}, key=lambda t: (t != "host", t))
    w = 6.2 if len(targets) > 1 else 9.5  # two plots side by side, or one wider
    acc_lat = "".join(_acc_lat_plot(arts, t, w) for t in targets)
    dist = "".join(_latency_dist_plot(arts, t, w) for t in targets)
    versions = " · ".join(f"{k} {x}" for k, x in _d(rep.get("versions")).items() if isinstance(x, (str, int, float)))
    plots = (f'<h2>Accuracy vs latency</h2><div class="grid">{acc_lat}</div>' if acc_lat else
             "<h2>Accuracy vs latency</h2><p>No plot: no artifact has both top-1 and a latency median.</p>")
    plots += f'<h2>Latency distribution</h2><div class="grid">{dist}</div>' if dist else ""
    pl = "".join(_per_layer(e, e["per_layer_error"]) for e in arts if isinstance(e.get("per_layer_error"), dict))
    plots += f"<h2>Per-layer quantisation error</h2>{pl}" if pl else ""
    footer = f"<footer><p>Machine-readable: report.json, manifest.json.</p><p>{_e(versions)}</p></footer>"
    on_device = device_accuracy_markdown(_d(rep.get("accuracy_on_device")))
    on_device = f'<section class="md" id="sec-accuracy-on-device">{markdown_html(on_device)}</section>' if on_device else ""
    body = (_header(rep) + _ship(rep) + _main_table(rep, arts, targets) + plots + per_class_html(rep) + _sections(rep)
            + _devices(rep) + on_device + footer)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>edgeq: {_e(rep.get("model"))}</title>'
            f"<style>{CSS}</style></head><body><main>{body}</main></body></html>\n")
