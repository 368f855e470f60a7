"""A self-contained HTML page of a monitoring report: tables and inline SVG histograms."""

from __future__ import annotations

from html import escape
from typing import Any

_COLORS = {"ok": "#2e7d32", "warn": "#ef6c00", "alert": "#c62828"}
_RANK = {"alert": 0, "warn": 1, "ok": 2}
_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{padding:.3em .8em;border-bottom:1px solid #ddd;
text-align:left}.chart{display:inline-block;margin:1em 2em 1em 0;vertical-align:top}
.legend span{display:inline-block;width:.8em;height:.8em;margin:0 .3em 0 1em}
"""


def render_html(body: dict[str, Any]) -> str:
    """The report as one HTML document (no scripts, no external resources)."""
    title = f"{body['model']} v{body['version']}: drift over {body['window']}"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f"<p>{escape(body['since'])} .. {escape(body['until'])}: {body['rows']} rows, "
        f"status {_badge(body['status'])}; PSI thresholds warn {body['thresholds']['warn']}, "
        f"alert {body['thresholds']['alert']}</p>",
    ]
    if not body["reference"]:
        parts.append(f"<p>{escape(body['note'])}</p>")
    else:
        parts.append(
            "<table><tr><th>feature</th><th>kind</th><th>rows</th><th>PSI</th><th>p-value</th>"
            "<th>status</th><th>outside range</th><th>missing</th></tr>"
        )
        for f in body["features"]:
            parts.append(
                f"<tr><td>{escape(f['name'])}</td><td>{f['kind']}</td><td>{int(f['rows'])}</td>"
                f"<td>{_num(f['psi'])}</td><td>{_num(f['p_value'], 'g')}</td>"
                f"<td>{_badge(f['status'])}</td><td>{_pct(f.get('outside_range'))}</td>"
                f"<td>{_pct(f['missing_rate'])}</td></tr>"
            )
        parts.append("</table>")
        parts.append(
            "<div class='legend'><span style='background:#90a4ae'></span>reference"
            "<span style='background:#1e88e5'></span>live</div>"
        )
        ranked = sorted(
            body["features"], key=lambda f: (_RANK.get(f["status"], 3), -(f["psi"] or 0))
        )
        for f in ranked:
            parts.append(_chart(f["name"], f))
        for key, label in (("output", "predictions"), ("confidence", "confidence")):
            if body.get(key) and body[key]["rows"]:
                parts.append(_chart(label, body[key]))
    if body.get("predictions"):
        shown = ", ".join(f"{escape(k)}: {v}" for k, v in sorted(body["predictions"].items()))
        parts.append(f"<p>predictions per class: {shown}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _chart(name: str, signal: dict[str, Any], width: int = 420, height: int = 180) -> str:
    hist = signal["histogram"]
    bins, ref, live = hist["bins"], hist["reference"], hist["live"]
    top = max([*ref, *live, 1e-9])
    plot_h, n = height - 40, max(len(bins), 1)
    slot = (width - 20) / n
    bar = max(slot / 2 - 1, 1)
    shapes = []
    for i, (label, r, x_live) in enumerate(zip(bins, ref, live)):
        x = 10 + i * slot
        for k, (value, color) in enumerate(((r, "#90a4ae"), (x_live, "#1e88e5"))):
            h = plot_h * value / top
            shapes.append(
                f"<rect x='{x + k * bar:.1f}' y='{10 + plot_h - h:.1f}' width='{bar:.1f}' "
                f"height='{h:.1f}' fill='{color}'><title>{escape(label)}: "
                f"{'reference' if k == 0 else 'live'} {100 * value:.1f}%</title></rect>"
            )
        if n <= 12:
            shapes.append(
                f"<text x='{x + slot / 2:.1f}' y='{height - 14}' font-size='8' "
                f"text-anchor='middle'>{escape(label[:14])}</text>"
            )
    color = _COLORS.get(signal["status"], "#555")
    caption = f"{escape(name)}: PSI {_num(signal['psi'])} ({signal['status']})"
    return (
        f"<div class='chart'><div style='color:{color}'>{caption}</div>"
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
        f"role='img' aria-label='{caption}'>{''.join(shapes)}"
        f"<line x1='10' y1='{10 + plot_h}' x2='{width - 10}' y2='{10 + plot_h}' stroke='#999'/>"
        "</svg></div>"
    )


def _badge(status: str) -> str:
    return f"<b style='color:{_COLORS.get(status, '#555')}'>{escape(status)}</b>"


def _num(value: Any, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt if fmt != "g" else ".2g")


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"
