"""report.html's per-class section: each artifact's recall per class against its FP32 reference on the same images, as
small multiples (one panel per class, 95 % Wilson intervals) and a table of the paired drops (Newcombe intervals,
exact McNemar Holm-adjusted across the classes); classes with a significant loss are drawn and marked in red."""
from __future__ import annotations

import math

from edgeq.core.stats import wilson_interval
from edgeq.report.htmlkit import embed, esc, figure, table

ALPHA = 0.05
MAX_PANELS = 20  # more classes (ImageNet): the panels show those with a significant loss first, then the largest drops


def _lost(c: dict) -> bool:
    return isinstance(c.get("p_holm"), (int, float)) and c["p_holm"] < ALPHA and (c.get("drop_pt") or 0) > 0


def _tested(arts: list[dict]) -> list[tuple[str, str, list[dict]]]:
    """(artifact, its reference, its per-class rows) for every artifact with per-class tests."""
    out = []
    for e in arts:
        v = e.get("vs_fp32") if isinstance(e.get("vs_fp32"), dict) else {}
        rows = (v.get("per_class") or {}).get("classes") if isinstance(v.get("per_class"), dict) else None
        if rows and all(isinstance(r, dict) and "class" in r for r in rows):
            out.append((str(e.get("name")), str(v.get("reference")), rows))
    return out


def _interval_pt(recall: float, n: int) -> tuple[float, float]:
    lo, hi = wilson_interval(int(round(recall * n)), n)
    return (recall - lo) * 100, (hi - recall) * 100


def _panels(tested, classes: list[str]) -> str:
    cols = min(5, len(classes))
    rows = math.ceil(len(classes) / cols)
    fig, axes = figure(11, 0.6 + 2.0 * rows, rows, cols, squeeze=False, sharey=True)
    xs = range(1, len(tested) + 1)
    for k, ax in enumerate(axes.flat):
        if k >= len(classes):
            ax.set_visible(False)
            continue
        name, hit = classes[k], False
        for x, (_, _, rows_) in zip(xs, tested):
            c = next((r for r in rows_ if r["class"] == name), None)
            if c is None or not c.get("n"):
                continue
            lost = _lost(c)
            hit = hit or lost
            ax.plot(x - 0.18, c["recall_fp32"] * 100, "o", mfc="none", color="#7a8596", ms=5)
            lo, hi = _interval_pt(c["recall"], c["n"])
            ax.errorbar(x + 0.18, c["recall"] * 100, yerr=[[lo], [hi]], fmt="o", ms=5, capsize=2, elinewidth=1,
                        color="#c0392b" if lost else "#1f6fb2")
        ax.set_title(name + (" (significant loss)" if hit else ""), fontsize=9, color="#c0392b" if hit else "#1d2330",
                     fontweight="bold" if hit else "normal", parse_math=False)  # class names are user text
        ax.set_xticks(list(xs))
        ax.set_xlim(0.4, len(tested) + 0.6)
        ax.tick_params(labelsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel("recall (%)", fontsize=8)
    key = "; ".join(f"{i} = {name} (vs {ref})" for i, (name, ref, _) in enumerate(tested, 1))
    return embed(fig, axes, "per-class recall against FP32",
                 f"per class: hollow grey = the FP32 reference's recall, filled = the artifact's with its 95 % Wilson "
                 f"interval; red = a loss significant after Holm's correction across the classes. Artifacts: {key}")


def _cell(c: dict | None) -> str:
    if c is None:
        return "—"
    lo, hi = c["drop_ci95_pt"]  # drop = recall lost; shown as the change, as the verdicts name it
    text = (f'<span class="v">{c["recall"] * 100:.1f} %</span><br><small>{-c["drop_pt"]:+.1f} pt [{-hi:+.1f}, {-lo:+.1f}], '
            f'p<sub>Holm</sub> = {c["p_holm"]:.2g}</small>')
    return f'<b class="nm">▼ {text}</b>' if _lost(c) else text


def per_class_html(rep: dict) -> str:
    """The per-class section of report.html ('' when no artifact carries per-class tests)."""
    arts = [e for e in rep.get("artifacts") or [] if isinstance(e, dict)]
    tested = _tested(arts)
    if not tested:
        return ""
    classes = list(dict.fromkeys(r["class"] for _, _, rows in tested for r in rows))
    worst = {name: max(((r.get("drop_pt") or 0) + 1000 * _lost(r)) for _, _, rows in tested for r in rows
                       if r["class"] == name) for name in classes}
    shown = classes if len(classes) <= MAX_PANELS else sorted(classes, key=lambda n: -worst[n])[:MAX_PANELS]
    n_lost = sum(_lost(r) for _, _, rows in tested for r in rows)
    intro = (f"<p>Recall per class of each artifact against its FP32 reference on the same images: the change in points "
             f"(negative = recall lost) with a Newcombe paired 95 % interval, exact McNemar on that class's images, Holm-adjusted across the "
             f"{len(classes)} classes. {n_lost} class loss{'es' if n_lost != 1 else ''} significant."
             + (f" Shown: the {MAX_PANELS} classes with a significant loss or the largest drops (all of them in "
               "report.json)." if shown != classes else "") + "</p>")
    head = ["class", "n"] + [f"{name} (vs {ref})" for name, ref, _ in tested]
    rows = []
    for name in shown:
        cells = [next((r for r in rows_ if r["class"] == name), None) for _, _, rows_ in tested]
        n = next((c["n"] for c in cells if c), None)
        fp32 = next((c["recall_fp32"] for c in cells if c), None)
        rows.append([f"<b>{esc(name)}</b>" + (f'<br><small>FP32 {fp32 * 100:.1f} %</small>' if fp32 is not None else ""),
                     esc(n)] + [_cell(c) for c in cells])
    return (f'<section id="per-class"><h2>Per class</h2>{intro}{_panels(tested, shown)}'
            + table(head, rows, "per-class") + "</section>")
