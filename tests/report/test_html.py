"""report.html: rendered from a synthetic report.json carrying every contract key, parsed, and shown in Chromium."""
from __future__ import annotations

import base64
import copy
import json
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

from edgeq.report.html import pareto_front, render_html

from conftest import run_edgeq

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _lat(median, lo, hi, *, noisy=False, why=None, ratio=None, rounds=(1.0,)):
    q = {"p5": median * 0.93, "p25": median * 0.97, "p50": median, "p75": median * 1.04, "p95": median * 1.15}
    out = {"median": median, "median_ci95": [lo, hi], "p90": median * 1.1, "p99": median * 1.3, "mean": median * 1.02,
           "min": median * 0.9, "max": median * 1.6, "runs": 250, "rounds": 5, "warmup": 10, "threads": 1,
           "runtime": "tflite 2.16", "device": "cpu", "ci_coverage": 0.94, "noisy": noisy, "noisy_reason": why,
           "round_medians": [median * f for f in rounds], "quantiles": q}
    if ratio:
        out["ratio_to_fp32"] = {"value": ratio[0], "ci95": list(ratio[1:]), "reference": "fp32_tflite"}
    return out


def _art(name, fmt, prec, method, size, top1, ci, lat, vs=None, per_layer=None, acc_reason=None):
    acc = ({"top1": None, "top5": None, "n": 0, "dataset": "fashion-mnist test", "reason": acc_reason} if acc_reason
           else {"top1": top1, "top5": 0.995, "n": 10000, "dataset": "fashion-mnist test", "ci95": ci})
    e = {"name": name, "format": fmt, "precision": prec, "method": method, "path": f"artifacts/{name}",
         "size_bytes": size, "sha256": "ab" * 32, "stage": method, "params": {}, "accuracy": acc,
         "agreement_with_fp32": {"reference": "fp32_tflite", "top1_agreement": 0.991}, "latency_ms": lat,
         "compatibility": {"rpi4": {"ok": True, "problems": []}}, "notes": {}}
    if vs:
        e["vs_fp32"] = vs
    if per_layer:
        e["per_layer_error"] = per_layer
    return e


def _layers(n=32):
    return [{"op": f"CONV_2D_{i}", "layers": f"block_{i}_expand/Conv2D,block_{i}_expand_BN/FusedBatchNorm",
             "sqnr_db": 12.0 + (i * 7) % 29, "max_abs_err": 0.01 * (1 + i % 5)} for i in range(n)]


NOT_MEASURED = {  # every reason the synthetic report gives for a missing figure
    "acc": "Keras baseline evaluation disabled (evaluate.keras_baseline: false)",
    "dev": "not measured: not compatible with rpi4: op SELECT_V2 has no INT8 kernel (and 2 more: see compatibility)",
    "host": "benchmark disabled (benchmark.enabled: false)",
    "layers": "per-layer comparison needs a TFLite artifact",
}


CLASSES = ["t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot"]


def per_class_rows(shirt_lost: bool) -> dict:
    """vs_fp32.per_class of a 10-class comparison on 1,000 images per class ('shirt' -6 pt when lost)."""
    rows = []
    for i, name in enumerate(CLASSES):
        drop = 6.0 if shirt_lost and name == "shirt" else 0.1 * (i % 3 - 1)
        rows.append({"class": name, "n": 1000, "recall_fp32": 0.9 - 0.02 * i, "recall": 0.9 - 0.02 * i - drop / 100,
                     "drop_pt": drop, "drop_ci95_pt": [drop - 1.5, drop + 1.5], "p": 1e-6 if drop > 1 else 0.8,
                     "p_holm": 1e-5 if drop > 1 else 1.0})
    lost = ["class 'shirt' -6.0 pt [-7.50, -4.50], p = 1e-05 (Holm, 10 classes)"] if shirt_lost else []
    return {"classes": rows, "comparisons": 10, "collapsed": lost, "over_class_budget": False}


def synthetic_report() -> dict:
    vs = lambda d, lo, hi, p, v, ok=True: {"reference": "fp32_tflite", "n": 10000, "drop_pt": d, "drop_ci95_pt": [lo, hi],
                                  "mcnemar": {"b": 61, "c": 19, "p": p}, "verdict": v, "within_budget": ok,
                                "images_to_decide": None if ok is not None else 42000}
    arts = [
        _art("fp32_keras", "keras", "fp32", "baseline", 9_100_000, None, None,
             {"host": _lat(14.2, 13.9, 14.6)}, acc_reason=NOT_MEASURED["acc"]),
        _art("fp32_tflite", "tflite", "fp32", "baseline", 8_900_000, 0.9102, [0.9045, 0.9157],
             {"host": _lat(9.81, 9.70, 9.95, rounds=(0.99, 1.0, 1.01, 1.02, 0.98)),
              "rpi4": _lat(41.5, 40.9, 42.2, rounds=(0.98, 1.0, 1.03))}),
        _art("int8_tflite_ptq", "tflite", "int8", "ptq", 2_400_000, 0.9061, [0.9003, 0.9117],
             {"host": _lat(4.12, 4.05, 4.20, ratio=(0.42, 0.41, 0.43), rounds=(0.97, 1.0, 1.02, 1.03, 0.99)),
              "rpi4": _lat(15.2, 14.8, 15.9, ratio=(0.366, 0.35, 0.38))},
             vs(0.41, 0.18, 0.64, 0.00021, "worse than FP32, but within the 1.0 pt budget"),
             {"artifact": "int8_tflite_ptq", "reference": "fp32_tflite", "images": 64, "layers": _layers()}),
        _art("int8_tflite_qat", "tflite", "int8", "qat", 2_400_000, 0.9129, [0.9073, 0.9183],
             {"host": _lat(4.55, 3.9, 5.6, noisy=True, ratio=(0.46, 0.40, 0.57), rounds=(0.8, 1.0, 1.3, 0.95, 1.1),
                           why="round medians spread 31 % (> 10 %); load average 2.4 on 2 cores"),
              "rpi4": {"median": None, "reason": NOT_MEASURED["dev"]}},
             vs(-0.27, -0.49, -0.05, 0.013, "better than FP32 (significant)"),
             {"artifact": "int8_tflite_qat", "reference": "fp32_tflite", "images": 64, "layers": _layers(12)}),
        _art("int8_onnx_ptq", "onnx", "int8", "ptq", 2_300_000, 0.9050, [0.8992, 0.9106],
             {"host": {"median": None, "p90": None, "runs": 0, "reason": NOT_MEASURED["host"]}},
             vs(0.52, 0.27, 1.31, 0.00004, "significant loss of 0.52 pt [0.27, 1.31] (p < 0.001); 10,000 images are "
                "too few to tell whether it is within the 1 pt budget; about 42,000 images would decide", ok=None),
             {"artifact": "int8_onnx_ptq", "reference": "fp32_onnx", "layers": None, "reason": NOT_MEASURED["layers"]}),
    ]
    for a, p in zip(arts[2:], (0.00063, 0.026, 0.00016)):  # Holm across the three artifacts compared with FP32
        a["vs_fp32"]["mcnemar_holm"] = {"p": p, "comparisons": 3}
    arts[2]["vs_fp32"]["per_class"] = per_class_rows(shirt_lost=True)  # int8_tflite_ptq loses 'shirt'
    arts[3]["vs_fp32"]["per_class"] = per_class_rows(shirt_lost=False)
    checks = {a["name"]: {"reference": "fp32_tflite", "size_ratio": round(a["size_bytes"] / 8_900_000, 4),
                          "top1_drop_points": (a.get("vs_fp32") or {}).get("drop_pt"), "latency_ratio": {"host": 0.42}}
              for a in arts if a["precision"] == "int8"}
    md_table = "| bits | FP32 | PTQ | QAT |\n|---|---|---|---|\n| INT8 | 91.02 % | 90.61 % (−0.41) | 91.29 % (+0.27) |\n"
    return {
        "schema_version": 2, "model": "mobilenet_v2", "family": "mobilenet", "description": "MobileNetV2 α=0.35, 32×32",
        "config": "models/mobilenet_v2.yaml", "created": "2025-11-26T16:00:00+0000", "seed": 0, "wall_seconds": 241.3,
        "dataset": {"eval": "fashion-mnist test (10000 images)", "n_eval": 10000, "calibration": "fashion-mnist train",
                    "n_calibration": 500, "full_test_set": True, "eval_fingerprint": "9f3c01d2"},
        "host": {"cpu": {"model": "AMD EPYC 7B13", "machine": "x86_64", "cores": 2, "simd": ["sse4_2", "avx2", "fma"],
                         "int8_dot_product": False},
                 "benchmark": {"runs": 50, "warmup": 10, "threads": 1, "rounds": 5}},
        "conditions": {"host": {"loadavg_before": [0.41, 0.63, 0.7], "loadavg_after": [2.4, 1.2, 0.9],
                                "cpu": "AMD EPYC 7B13", "simd": ["avx2", "fma"], "threads": 1, "rounds": 5,
                                "runs_per_round": 50, "warmup_per_round": 10, "cores": 2, "set_key": "c0ffee",
                                "started": "2025-11-26T15:58:00+0000",
                                "busy_processes": [{"pid": 4242, "name": "python3", "cpu_percent": 97.0}]},
                       "rpi4": {"threads": 4, "rounds": 3, "runs_per_round": 30}},
        "budget": {"max_accuracy_drop_pt": 1.0},
        "ship": {"host": {"artifact": "int8_tflite_ptq", "why": "fastest within the 1.0 pt budget: 0.42× FP32 latency"},
                 "rpi4": {"artifact": None, "why": "no INT8 artifact measured on rpi4 is within budget and stable"}},
        "artifacts": arts, "checks": checks,
        "comparison": {"rows": [], "verdict": "QAT wins", "verdict_lines": ["INT8: QAT best"],
                       "markdown": "## PTQ vs QAT\n\nTop-1 on 10000 images.\n\n" + md_table + "\n- INT8: QAT best\n"},
        "onnx_ptq": {"markdown": "# ONNX Runtime PTQ\n\n" + md_table + "\nRaw <script>alert(1)</script> is text."},
        "qat": {"markdown": "QAT fine-tuned for **2 epochs**; see the table:\n\n" + md_table},
        "devices": {"rpi4": {"kind": "rpi", "address": "pi@10.0.0.7", "status": "ok", "runtime": "tflite 2.16"},
                    "jetson": {"kind": "jetson", "address": "nv@10.0.0.9", "status": "unreachable",
                               "error": "ssh: connect to host 10.0.0.9 port 22: No route to host"}},
        "skipped": {"something": "input model is ONNX"},
        "versions": {"tensorflow": "2.16.2"},
    }


class Page(HTMLParser):
    """Visible text nodes (outside <head>, <style>, <script>), headings, table count and image sources."""

    def __init__(self, text: str):
        super().__init__()
        self.texts: list[str] = []
        self.headings: list[tuple[str, str]] = []
        self.tables = 0
        self.imgs: list[str] = []
        self._stack: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.imgs.append(dict(attrs).get("src") or "")
        elif tag not in ("meta", "br", "link", "input", "hr"):
            self._stack.append(tag)
        self.tables += tag == "table"
        if tag in ("h1", "h2", "h3"):
            self.headings.append((tag, ""))

    def handle_endtag(self, tag):
        while self._stack and self._stack.pop() != tag:
            pass

    def handle_data(self, data):
        if any(t in ("head", "style", "script", "title") for t in self._stack) or not data.strip():
            return
        self.texts.append(data.strip())
        if self.headings and any(t in ("h1", "h2", "h3") for t in self._stack):
            tag, text = self.headings[-1]
            self.headings[-1] = (tag, text + data.strip())

    @property
    def visible(self) -> str:
        return re.sub(r"\s+", " ", " ".join(self.texts))


def reasons(rep: dict) -> list[str]:
    """Every `reason` the report gives for a missing accuracy, latency or per-layer figure."""
    out = []
    for e in rep["artifacts"]:
        parts = [e.get("accuracy") or {}, e.get("per_layer_error") or {}, *(e.get("latency_ms") or {}).values()]
        out += [d["reason"] for d in parts if isinstance(d, dict) and d.get("reason")]
    return out


def check_page(text: str) -> Page:
    """What every rendered report must satisfy, whatever the input."""
    p = Page(text)
    assert p.headings[0][0] == "h1" and p.headings[0][1].startswith("edgeq report")
    h2 = [t for tag, t in p.headings if tag == "h2"]
    assert "What to ship" in h2 and "Artifacts" in h2
    assert p.tables >= 1
    for t in p.texts:
        assert not t.startswith("#") and "|---" not in t, f"raw markdown shown: {t!r}"
    for src in p.imgs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1], validate=True).startswith(PNG_MAGIC)
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", text), "page must not load anything remote"
    assert "Machine-readable: report.json, manifest.json" in p.visible
    return p


def test_synthetic_report_renders_every_section():
    rep = synthetic_report()
    page = render_html(copy.deepcopy(rep))
    p = check_page(page)
    h2 = [t for tag, t in p.headings if tag == "h2"]
    for want in ("Accuracy vs latency", "Latency distribution", "Per-layer quantisation error", "PTQ vs QAT",
                 "ONNX Runtime PTQ", "QAT", "Devices"):
        assert want in h2, (want, h2)
    # main + device latency + per-layer worst-8 x2 + per class + three markdown tables + devices
    assert p.tables == 9
    # 2 accuracy-latency (host, rpi4) + 2 latency distributions + 2 per-layer plots + per-class small multiples
    assert len(p.imgs) == 7
    assert sorted(set(reasons(rep))) == sorted(NOT_MEASURED.values())
    for why in NOT_MEASURED.values():
        assert why in p.visible, why
    v = p.visible
    assert "91.29 % [90.73, 91.83]" in v and "n = 10000" in v
    assert "+0.41 pt [0.18, 0.64]" in v and "McNemar p < 0.001" in v and "within the 1.0 pt budget" in v
    assert "McNemar p < 0.001; Holm (3 artifacts) p = 0.00063" in v and "Holm (3 artifacts) p = 0.026" in v
    assert "4.120 ms [4.050, 4.200]" in v and "0.420× [0.410, 0.430]" in v
    assert "⚠ noisy" in v and "int8_tflite_qat on host is noisy: round medians spread 31 % (> 10 %)" in v
    assert 'title="int8_tflite_qat on host is noisy: round medians spread 31 %' in page
    assert "int8_tflite_ptq" in v and "nothing to ship" in v and "fastest within the 1.0 pt budget" in v
    assert "sse4_2, avx2, fma" in v and "2.40/1.20/0.90 after" in v and "python3 (pid 4242, 97.0 % CPU)" in v
    assert "5 interleaved rounds × (10 warm-up + 50 timed runs)" in v and "c0ffee" not in v
    assert "✓ within budget" in v and "? undecided" in v and "about 42,000 images would decide" in v
    worst8 = {r["op"] for n in (32, 12) for r in sorted(_layers(n), key=lambda r: r["sqnr_db"])[:8]}
    assert set(re.findall(r"CONV_2D_\d+", v)) == worst8  # the worst-8 tables name exactly the worst ops
    assert "<script>alert(1)</script>" not in page and "Raw &lt;script&gt;" in page
    assert "No route to host" in v and "unreachable" in v
    assert rep == synthetic_report(), "render_html must not modify its input"


def test_per_class_section_draws_a_panel_per_class_and_marks_the_significant_loss():
    from edgeq.report.per_class import per_class_html

    rep = synthetic_report()
    page = per_class_html(rep)
    p = Page(page)
    assert len(p.imgs) == 1 and p.tables == 1
    v = p.visible
    assert "Holm-adjusted across the 10 classes. 1 class loss significant." in v
    assert "int8_tflite_ptq (vs fp32_tflite)" in v and "int8_tflite_qat (vs fp32_tflite)" in v
    assert page.count("▼") == 1 and "▼ 72.0 %" in v and "-6.0 pt [-7.5, -4.5]" in v  # shirt: FP32 78 %, -6 pt
    assert "1 = int8_tflite_ptq (vs fp32_tflite); 2 = int8_tflite_qat (vs fp32_tflite)" in page
    assert per_class_html({"artifacts": [a for a in rep["artifacts"] if "vs_fp32" not in a]}) == ""


def test_missing_keys_do_not_break_the_page():
    rep = synthetic_report()
    for k in ("ship", "conditions", "budget", "checks", "dataset", "host", "devices"):
        rep.pop(k)
    for e in rep["artifacts"]:
        for k in ("vs_fp32", "per_layer_error", "size_bytes"):
            e.pop(k, None)
        e["accuracy"] = None
        e["latency_ms"] = {"host": {"median": None}}
    p = check_page(render_html(rep))
    assert "not measured" in p.visible and not p.imgs
    check_page(render_html({"model": "empty"}))


def test_pareto_front_keeps_only_non_dominated_points():
    pts = [("a", 1.0, 80.0), ("b", 2.0, 90.0), ("c", 3.0, 85.0), ("d", 2.0, 88.0), ("e", 4.0, 91.0)]
    assert [p[0] for p in pareto_front(pts)] == ["a", "b", "e"]


# ------------------------------------------------------------------ Chromium
# Console errors: the page has no JavaScript, so the test appends a probe script to a copy of it (the copy
# renders identically; the screenshot is of it). After `load` the probe reports through console.error any image
# that did not decode, any table/img/pre/figure whose right edge sticks out of the 1240 px <main>, and a page
# wider than the 1280 px window, then logs "EDGEQ-PROBE done". With --enable-logging=stderr --v=0, headless
# Chromium prints every console message and every uncaught exception to stderr as
# `...:CONSOLE:<line>] "<text>", source: <url>` (older builds: `CONSOLE(<line>)`), whatever its level (a
# console.error shows as INFO, so grepping "ERROR:CONSOLE" would miss it). So the "done" line must be there
# (the load handler ran and the capture works), and no other console line may be. A control page with a
# script error, a broken image and a too-wide table proves the capture does see failures.
PROBE = """<script>window.addEventListener("load", () => {
  const bad = (what) => console.error("EDGEQ-PROBE " + what);
  const right = document.querySelector("main").getBoundingClientRect().right;
  for (const i of document.images) if (!i.complete || i.naturalWidth === 0) bad("broken image " + i.alt);
  for (const t of document.querySelectorAll("table, img, pre, figure")) {
    const r = t.getBoundingClientRect().right;
    if (r > right + 1) bad("overflow " + t.tagName + " right edge " + r + " > " + right);
  }
  if (document.documentElement.scrollWidth > window.innerWidth) bad("page wider than the window");
  console.log("EDGEQ-PROBE done " + document.images.length + " images");
});</script>"""
CONSOLE = re.compile(r":CONSOLE[:(].*")


def chromium_console(page: str, out: Path) -> tuple[list[str], Path]:
    """Console lines Chromium printed while loading `page` (with the probe), and the 1280 px screenshot."""
    html_file, shot = out / "report_probe.html", out / "report.png"
    html_file.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="edgeq-chromium-") as profile:
        r = subprocess.run([shutil.which("chromium"), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                            "--no-first-run", "--disable-background-networking", "--disable-component-update",
                            "--disable-sync", f"--user-data-dir={profile}", "--window-size=1280,2000",
                            "--hide-scrollbars", "--enable-logging=stderr", "--v=0", f"--screenshot={shot}",
                            html_file.as_uri()], capture_output=True, text=True, timeout=60)
    return [m.group(0) for m in CONSOLE.finditer(r.stderr + r.stdout)], shot


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Chromium not installed (Debian package `chromium`)")
def test_page_in_headless_chromium(tmp_path):
    page = render_html(synthetic_report())
    (tmp_path / "report.html").write_text(page, encoding="utf-8")
    lines, shot = chromium_console(page, tmp_path)
    assert any("EDGEQ-PROBE done 7 images" in ln for ln in lines), lines
    errors = [ln for ln in lines if "EDGEQ-PROBE done" not in ln]
    assert not errors, errors
    png = shot.read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 50_000, len(png)
    # control: the same capture does see an error, a broken image and an overflowing table
    bad = ("<!doctype html><html><body><main style='max-width:600px'><img alt=x src='data:image/png;base64,AAAA'>"
           "<table style='width:2000px'><tr><td>x</td></tr></table><script>undefinedFn()</script></main></body></html>")
    (tmp_path / "bad").mkdir()
    lines, _ = chromium_console(bad, tmp_path / "bad")
    text = "\n".join(lines)
    assert "Uncaught ReferenceError" in text and "broken image" in text and "overflow TABLE" in text, text


def test_tiny_real_run_renders(tiny_project, tmp_path):
    """A real report.json from the tiny project (one PTQ stage; about 15 s), and the report.html the run wrote."""
    r = run_edgeq("run", tiny_project / "tiny.yaml", "--out", tmp_path / "run", cwd=tiny_project, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    for page in (render_html(rep), (tmp_path / "run" / "report.html").read_text(encoding="utf-8")):
        p = check_page(page)
        assert p.imgs and p.tables >= 1
        for e in rep["artifacts"]:
            assert e["name"] in p.visible
        for why in reasons(rep):
            assert why in p.visible, why


def test_per_class_section_of_a_1000_class_model_shows_the_classes_that_lost_first():
    from edgeq.report.per_class import MAX_PANELS, per_class_html

    rows = [{"class": f"k{i}", "n": 50, "recall_fp32": 0.8, "recall": 0.8, "drop_pt": 0.0, "drop_ci95_pt": [-3, 3],
             "p": 1.0, "p_holm": 1.0} for i in range(1000)]
    rows[517].update(recall=0.5, drop_pt=30.0, drop_ci95_pt=[20, 40], p=1e-8, p_holm=1e-5)
    art = {"name": "int8", "vs_fp32": {"reference": "fp32", "per_class": {"classes": rows}}}
    p = Page(per_class_html({"artifacts": [art]}))
    assert len(p.imgs) == 1 and p.visible.count("FP32 80.0 %") == MAX_PANELS
    assert "Shown: the 20 classes with a significant loss or the largest drops" in p.visible
    assert "k517" in p.visible and "▼ 50.0 %" in p.visible


def test_per_class_section_escapes_class_and_artifact_names_and_does_not_parse_them_as_math():
    from edgeq.report.per_class import per_class_html

    rows = [{"class": n, "n": 10, "recall_fp32": 0.5, "recall": 0.4, "drop_pt": 10.0, "drop_ci95_pt": [1, 20],
             "p": 0.01, "p_holm": 0.02} for n in ("$x^{", "<script>alert(1)</script>", "a$b$c")]
    page = per_class_html({"artifacts": [{"name": "i<b>", "vs_fp32": {"reference": "f", "per_class": {"classes": rows}}}]})
    assert "<script>" not in page and "i<b>" not in page and "&lt;script&gt;" in page
    assert len(Page(page).imgs) == 1
