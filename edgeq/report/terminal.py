"""The run's tables on the terminal (rich): the artifact summary and the device latencies, within 120 columns;
the wide figures are in report.md/html (report.build)."""
from __future__ import annotations

from edgeq.report.build import _fmt, _runtime_cell, artifact_cells, significance_legend, summary_rows

TERMINAL = ["artifact", "MB", "top-1 % [95% CI]", "drop pt [CI]", "host ms [CI]", "×FP32 [CI]", "flags"]


def print_summary(rep: dict) -> None:
    """The artifact table on the terminal, within 120 columns (the wide figures are in report.md/html)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"edgeq: {rep['model']} — {rep['dataset']['eval']}", box=box.SIMPLE_HEAD, padding=(0, 1), collapse_padding=True,
              pad_edge=False)
    for h in TERMINAL:
        t.add_column(h, justify="left" if h in ("artifact", "flags") else "right", overflow="fold")
    for r in summary_rows(rep, TERMINAL):
        t.add_row(*r)
    console = Console(width=120)
    console.print(t)
    console.print(f"drop {significance_legend(rep)}; intervals 95 %", style="dim")
    for target, v in (rep.get("ship") or {}).items():
        console.print(f"ship on {target}: [bold]{v['artifact'] or 'nothing'}[/bold] — {v['why']}", soft_wrap=False)


def print_device_table(rep: dict) -> None:
    """Device latencies on the terminal: median and ratio to FP32 with intervals, each from the device's own
    interleaved rounds (never a device figure divided by a host one)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    t = Table(title="devices (batch 1)", box=box.SIMPLE_HEAD, pad_edge=False)
    for h in ("artifact", "device", "median ms [CI]", "×FP32 [CI]", "p90 ms", "runtime / reason"):
        t.add_column(h, justify="left" if h in ("artifact", "device", "runtime / reason") else "right",
                     overflow="fold")
    for e in rep["artifacts"]:
        for target, s in e["latency_ms"].items():
            if target != "host":
                c = artifact_cells(rep, e, target)
                t.add_row(e["name"], target, c[f"{target} ms [CI]"], c["×FP32 [CI]"], _fmt(s.get("p90"), ".4g"),
                          _runtime_cell(s) + (" (noisy)" if s.get("noisy") else ""))
    console = Console(width=120)
    console.print(t)
    for target in sorted({t for e in rep["artifacts"] for t, s in e["latency_ms"].items() if s.get("emulated")}):
        console.print(f"{target}: EMULATED CPU, timings meaningless as speed figures (outputs and accuracy are real)",
                      style="bold")
