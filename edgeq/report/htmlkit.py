"""The building blocks of report.html: escaped text, tables and matplotlib figures embedded as base64 PNG (no
pyplot, so no global state and no backend choice)."""
from __future__ import annotations

import base64
import html
import io


def esc(v) -> str:
    """Text (any value, None as '') escaped for HTML."""
    return html.escape("" if v is None else str(v))


def table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    """A <table>: headers escaped here, cells already HTML."""
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def figure(w: float, h: float, rows: int = 1, cols: int = 1, **kw):
    """A w x h inch figure and its axes (one Axes, or a rows x cols array of them; kw goes to subplots)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: no global state, no backend choice
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, **kw)


def embed(fig, ax, alt: str, caption: str = "") -> str:
    """The figure as an <img> (base64 PNG) in a <figure>, grid on every axes of `ax` (one Axes or an array)."""
    for a in getattr(ax, "flat", [ax]):
        a.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    src = base64.b64encode(buf.getvalue()).decode()
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img alt="{esc(alt)}" src="data:image/png;base64,{src}">{cap}</figure>'
