"""report.md's sections on what the run decided beyond what to ship: each toolchain's best route per target (the
referee), classes that lost recall, and whether the calibration images fit the evaluation data — all read from
report.json."""
from __future__ import annotations


def calibration_lines(rep: dict) -> list[str]:
    """Calibration diagnostics: class coverage of the calibration images and clipping of evaluation activations."""
    d = rep.get("calibration")
    if not isinstance(d, dict) or "coverage" not in d:
        return []
    cov, clip = d["coverage"], d.get("clipping") or {}
    out = ["## Calibration images", "",
           "- class coverage: " + (cov["warning"] if cov.get("warning") else
                                    "every class holds at least a quarter of its evaluation share")]
    if "tensors" in clip:
        n = clip["images"]
        out.append(f"- clipping ({n['range']} calibration images set each tensor's range; {n['evaluation']} evaluation "
                   f"and {n['control']} other calibration images measured against it): "
                   + (clip["warning"] if clip.get("warning") else
                      f"evaluation activations exceed the calibrated ranges no more than fresh calibration images do "
                      f"({clip['shifted']} of {clip['tensors']} tensors apart)"))
    elif clip.get("reason"):
        out.append(f"- clipping: not measured: {clip['reason']}")
    prov = d.get("provenance") or {}
    if prov:
        out.append("- provenance: " + (f"**warning**: {prov['warning']}" if prov.get("warning") else
                                       prov.get("note") or "calibration and evaluation images are disjoint draws "
                                                           "from one labelled set, no image in both"))
    return out + [""]


def class_lines(rep: dict) -> list[str]:
    """Per-class paired tests (recall vs FP32, Holm across classes): the classes that lost significantly."""
    tested = [a for a in rep["artifacts"] if (a.get("vs_fp32") or {}).get("per_class")]
    if not tested:
        return []
    m = tested[0]["vs_fp32"]["per_class"]["comparisons"]
    hits = [(a["name"], c) for a in tested for c in a["vs_fp32"]["per_class"]["collapsed"]]
    out = ["## Per class", "", f"Each artifact's recall per class against FP32 on the same images (exact McNemar on "
           f"that class's images, Holm-corrected across {m} classes; {len(tested)} artifacts tested)."]
    out += [""] + ([f"- **{name}**: {line}" for name, line in hits] if hits else
                   ["No artifact lost significant recall in any class."]) + [""]
    return out


def other_runtime_lines(rep: dict) -> list[str]:
    """Artifacts also timed on a runtime other than their format's own, in the same interleaved rounds."""
    rows = [(e["name"], e["format"], t, s) for e in rep["artifacts"]
            for by_target in (e.get("latency_ms_other_runtimes") or {}).values() for t, s in by_target.items()]
    if not rows:
        return []
    out = ["## On other runtimes", "", "Artifacts timed also on a runtime other than their format's own, in the same "
           "interleaved rounds as every artifact; the ratio is to the FP32 artifact that runtime runs as its own.", "",
           "| artifact | format | target | runtime | median ms [95% CI] | ×FP32 [CI] |", "|---|---|---|---|---|---|"]
    for name, fmt, t, s in rows:
        if s.get("median") is None:
            out.append(f"| {name} | {fmt} | {t} | — | {s.get('reason') or 'not measured'} | — |")
            continue
        ci, r = s.get("median_ci95"), s.get("ratio_to_fp32") or {}
        ratio = (f"{r['value']:.2f}x {r['reference']}" + (f" [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]"
                                                        if r.get("ci95") else "")) if r.get("value") else "—"
        out.append(f"| {name} | {fmt} | {t} | {s['runtime']} | {s['median']:.4g}"
                   + (f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "") + f" (n={s['runs']}, {s['rounds']} rounds) | "
                   f"{ratio} |")
    return out + [""]


def referee_lines(rep: dict) -> list[str]:
    """Each toolchain's best route per target, side by side (report.json `referee`)."""
    out = []
    for target, r in (rep.get("referee") or {}).items():
        if not r.get("routes"):
            continue
        out += [f"## Toolchains on {target}", "", r["verdict"] + ".", "",
                "| toolchain | runtime | artifact | format | precision | ms [95% CI] | × fastest | drop pt [CI] |",
                "|---|---|---|---|---|---|---|---|"]
        for x in r["routes"]:
            ci = x.get("median_ci95")
            out.append(f"| {x['toolchain']} | {x['runtime']} | {x['artifact']} | {x.get('format', '')} | "
                       f"{x['precision']} | {x['median']:.4g}"
                       + (f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "") + f" | {x['x_best']:.2f}"
                       + ("" if not x["indistinguishable_from_best"] or x["x_best"] == 1 else " (tie)")
                       + f" | {x['drop_pt']:+.2f} [{x['drop_ci95_pt'][0]:+.2f}, {x['drop_ci95_pt'][1]:+.2f}] |")
        out.append("")
    return out
