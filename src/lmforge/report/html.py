"""The pieces of the self-contained report pages: the page shell with its screen and print CSS, tables, figures
inlined as data URIs, warning boxes. Nothing here reaches the network: no scripts, no external fonts or images."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

CSS = """
:root { --fg: #1d232a; --muted: #5b6570; --line: #d8dde3; --bad: #b3261e; --bad-bg: #fdecea; --good: #1e7a3c;
        --warn-bg: #fff4e0; --warn: #8a5300; --head: #f3f5f7; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--fg); margin: 0 auto; max-width: 1180px; padding: 1.2rem 1.6rem 3rem; }
h1 { font-size: 1.6rem; margin: 0 0 .2rem; } h2 { font-size: 1.25rem; margin: 0 0 .6rem; }
h3 { font-size: 1.02rem; margin: 1rem 0 .4rem; }
.muted, .sub { color: var(--muted); } .sub { margin: 0 0 1rem; }
nav { margin: .6rem 0 1.2rem; font-size: .9rem; } nav a { margin-right: .7rem; white-space: nowrap; }
a { color: #1f5fa8; }
section { border-top: 1px solid var(--line); padding: 1rem 0 .4rem; }
table { border-collapse: collapse; margin: .3rem 0 .8rem; font-size: .9rem; }
th, td { border: 1px solid var(--line); padding: .22rem .5rem; text-align: left; vertical-align: top; }
th { background: var(--head); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.glance { display: grid; grid-template-columns: repeat(auto-fit, minmax(180px, 1fr)); gap: .6rem; margin: .6rem 0; }
.tile { border: 1px solid var(--line); border-radius: 6px; padding: .5rem .7rem; }
.tile .label { color: var(--muted); font-size: .8rem; text-transform: uppercase; letter-spacing: .03em; }
.tile .value { font-size: 1.15rem; font-weight: 600; }
.tile.bad { border-color: var(--bad); background: var(--bad-bg); } .tile.bad .value { color: var(--bad); }
.tile.good .value { color: var(--good); }
.warnings { background: var(--warn-bg); border-left: 4px solid var(--warn); padding: .5rem .8rem; margin: .6rem 0; }
.warnings ul { margin: .2rem 0; padding-left: 1.2rem; } .warnings strong { color: var(--warn); }
.bad-box { background: var(--bad-bg); border-left: 4px solid var(--bad); padding: .5rem .8rem; margin: .6rem 0; }
.badge { display: inline-block; font-size: .75rem; font-weight: 600; padding: .05rem .45rem; border-radius: 4px;
         vertical-align: middle; margin-left: .4rem; background: var(--head); color: var(--muted); }
.badge.notrun { background: #eceff2; } .badge.bad { background: var(--bad-bg); color: var(--bad); }
figure { margin: .4rem 0 .8rem; } figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: .85rem; }
.figures { display: flex; flex-wrap: wrap; gap: .8rem; } .figures figure { flex: 1 1 420px; max-width: 560px; }
pre { background: var(--head); padding: .6rem .8rem; overflow-x: auto; font-size: .82rem; }
.tokens span { padding: 0 1px; border-radius: 2px; white-space: pre-wrap; font-family: ui-monospace, monospace; }
.wide { overflow-x: auto; }
@media print {
  body { max-width: none; padding: 0; font-size: 10.5pt; }
  nav { display: none; }
  section { break-inside: auto; } h2, h3 { break-after: avoid; }
  table, figure, .tile, .warnings, .bad-box { break-inside: avoid; }
  .figures figure { max-width: 48%; }
  a { color: inherit; text-decoration: none; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  @page { margin: 14mm; }
}
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def fmt(value, digits: int = 4) -> str:
    """A number for a table: integers with thousands separators, floats to ``digits`` significant digits."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if abs(value) >= 1e12 or (value != 0 and abs(value) < 1e-3):
            return f"{value:.{digits - 1}e}"
        return f"{value:,.0f}" if abs(value) >= 10 ** digits else f"{value:.{digits}g}"
    return str(value)


def num(value, digits: int = 4) -> str:
    """A table cell for a number (right-aligned)."""
    return f'<td class="num">{esc(fmt(value, digits))}</td>'


def interval(metric) -> str:
    """``estimate [low, high]`` for a metric given as {estimate, low, high} (or a plain number)."""
    if isinstance(metric, dict) and "estimate" in metric:
        low, high = metric.get("low"), metric.get("high")
        return f"{fmt(metric['estimate'])} [{fmt(low)}, {fmt(high)}]"
    return fmt(metric)


def table(header: list[str], rows: list[list[str]]) -> str:
    """An HTML table; ``rows`` hold ready cells (``<td>...</td>``) or plain text, escaped here."""
    def cell(c: str) -> str:
        return c if c.startswith("<td") else f"<td>{esc(c)}</td>"

    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(c) for c in row) + "</tr>" for row in rows)
    return f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _compact(value) -> str:
    if isinstance(value, dict):
        if set(value) >= {"estimate", "low", "high"}:
            return interval(value)
        return "; ".join(f"{k}: {_compact(v)}" for k, v in value.items()) or "{}"
    if isinstance(value, list):
        return ", ".join(_compact(v) for v in value) if value else "[]"
    return fmt(value)


def kv_table(values: dict, skip=()) -> str:
    """The generic key/value table: every key of a summary not rendered otherwise, nothing lost."""
    rows = [[str(k), _compact(v)] for k, v in values.items() if k not in skip]
    return table(["key", "value"], rows) if rows else ""


def warnings_box(messages: list[str], title: str = "Warnings") -> str:
    if not messages:
        return ""
    items = "".join(f"<li>{esc(m)}</li>" for m in messages)
    return f'<div class="warnings" role="alert"><strong>{esc(title)}</strong><ul>{items}</ul></div>'


def data_uri(path: Path) -> str | None:
    """A PNG or SVG file as a data URI (None if it is not there)."""
    kinds = {".png": "image/png", ".svg": "image/svg+xml"}
    if path.suffix.lower() not in kinds or not path.is_file():
        return None
    return f"data:{kinds[path.suffix.lower()]};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def figure(uri: str | None, caption: str) -> str:
    if uri is None:
        return ""
    return f'<figure><img src="{uri}" alt="{esc(caption)}"><figcaption>{esc(caption)}</figcaption></figure>'


def figures(items: list[str]) -> str:
    shown = [i for i in items if i]
    return f'<div class="figures">{"".join(shown)}</div>' if shown else ""


def page(title: str, subtitle: str, nav: list[tuple[str, str]], body: str) -> str:
    links = "".join(f'<a href="#{esc(anchor)}">{esc(label)}</a>' for anchor, label in nav)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{esc(title)}</h1><p class=\"sub\">{esc(subtitle)}</p>"
            f"{'<nav>' + links + '</nav>' if links else ''}{body}</body></html>\n")


def section(anchor: str, title: str, body: str, badge: str = "", badge_class: str = "") -> str:
    mark = f'<span class="badge {badge_class}">{esc(badge)}</span>' if badge else ""
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}{mark}</h2>{body}</section>'
