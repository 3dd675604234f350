"""Self-contained HTML pages (no script, no network: styles inline, figures embedded as data URIs): one per
explained example, and an index with the anatomy and the permutation importance."""

from __future__ import annotations

import base64
import html
from pathlib import Path

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}table{border-collapse:collapse;font-size:.85em}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}th{background:#f3f3f3}
.tokens{line-height:2.1em;font-family:monospace;white-space:pre-wrap}.tok{padding:2px 1px;border-radius:3px}
.fixed{outline:1px dashed #888}.note{color:#555;font-size:.9em}img{max-width:100%}"""


def page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>")


def image(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


def color(value: float, scale: float) -> str:
    """Red for positive, blue for negative attributions, the opacity their share of the largest magnitude."""
    a = 0.0 if scale == 0 else min(abs(value) / scale, 1.0)
    return f"rgba(220,38,38,{a:.3f})" if value >= 0 else f"rgba(37,99,235,{a:.3f})"


def tokens_html(pieces: list[str], scores: list[float], suffix: list[str]) -> str:
    """The context's tokens coloured by ``scores`` (value on hover), then the fixed suffix outlined."""
    scale = max((abs(s) for s in scores), default=0.0)
    spans = [f"<span class='tok' style='background:{color(s, scale)}' title='{i}: {s:+.4g}'>{html.escape(p)}</span>"
             for i, (p, s) in enumerate(zip(pieces, scores))]
    spans += [f"<span class='tok fixed' title='fixed (target side)'>{html.escape(p)}</span>" for p in suffix]
    return f"<div class='tokens'>{''.join(spans)}</div>"


def table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def example_page(ex: dict, pieces: list[str], suffix: list[str], figures: dict[str, Path]) -> str:
    """``ex``: the example's entry of attributions.json."""
    t = ex["target"]
    parts = [f"<p>Model <code>{html.escape(ex['model'])}</code>; target ({t['kind'].replace('_', ' ')}): "
             f"<b>{html.escape(t['description'])}</b>, log-probability {ex['log_prob']:.4f}. "
             f"{t['context_tokens']} context tokens.</p>",
             "<h2>Token attributions</h2><p class='note'>Red raises the target's log-probability, blue lowers it; "
             "hover for the value. Outlined: the fixed target side.</p>"]
    for method, a in ex["attributions"].items():
        extra = ""
        if a["delta"] is not None:
            gap = a["f_input"] - a["f_baseline"]
            extra = (f" convergence delta {a['delta']:+.3g} ({abs(a['delta']) / abs(gap) if gap else 0:.2%} of "
                     f"F(x) - F(baseline) = {gap:.4g}), baseline token {a['settings']['baseline_token']}")
        parts.append(f"<h3>{method.replace('_', ' ')}</h3><p class='note'>{a['seconds']:.2f} s{extra}</p>")
        parts.append(tokens_html(pieces, a["scores"], suffix))
    parts.append("<h2>Faithfulness</h2><p class='note'>Deletion removes the k highest-ranked context tokens, "
                 "insertion keeps them alone; AOPC as ferret defines it (comprehensiveness: higher is better; "
                 "sufficiency: lower is better), beside seeded random orders.</p>")
    rows = [[m, f["comprehensiveness"], f["random_comprehensiveness"], f["sufficiency"], f["random_sufficiency"],
             f["log_prob"]["comprehensiveness"], f["log_prob"]["random_comprehensiveness"],
             f["log_prob"]["sufficiency"], f["log_prob"]["random_sufficiency"]] for m, f in ex["faithfulness"].items()]
    parts.append(table(["method", "comprehensiveness", "random", "sufficiency", "random", "comprehensiveness "
                        "(log-prob)", "random", "sufficiency (log-prob)", "random"], rows))
    parts.append(image(figures["faithfulness"], "faithfulness curves"))
    parts.append("<h2>Attention</h2>" + image(figures["attention"], "attention heatmaps"))
    lens = ex["logit_lens"]
    parts.append(f"<h2>Logit lens</h2><p class='note'>Top-{lens['top_k']} next tokens read from each layer's "
                 "residual stream through the final norm and head (the last row is the model's own), at the last "
                 "positions.</p>")
    header = ["layer"] + [f"{p}: {pieces_at(pieces, suffix, p)!r}" for p in lens["positions"]]
    rows = [[name] + [" | ".join(f"{tok} {prob:.2f}" for tok, prob in cell) for cell in cells]
            for name, cells in zip(lens["layers"], lens["top"])]
    parts.append(table(header, rows))
    return page(f"explain: {ex['name']}", "".join(parts))


def pieces_at(pieces: list[str], suffix: list[str], position: int) -> str:
    all_pieces = pieces + suffix
    return all_pieces[position] if position < len(all_pieces) else ""


def index_page(summary: dict, anatomy: dict | None, permutation: dict | None, figures: dict[str, Path]) -> str:
    parts = ["<h2>Examples</h2><ul>"]
    for name, ex in summary["examples"].items():
        parts.append(f"<li><a href='{html.escape(name)}.html'>{html.escape(name)}</a>: "
                     f"{html.escape(ex['target'])}</li>")
    parts.append("</ul>")
    if permutation is not None:
        parts.append("<h2>Permutation importance</h2>" + image(figures["permutation"], "permutation importance"))
        parts.append(table(["feature", "mean", "std"], [[f, m, s] for f, m, s in
                                                        zip(permutation["features"], permutation["mean"],
                                                            permutation["std"])]))
    if anatomy is not None:
        parts.append("<h2>Anatomy</h2>" + table(["module", "parameters"], list(anatomy["parameters"].items())))
        parts.append(image(figures["anatomy"], "alpha per weight matrix"))
        parts.append(table(["matrix", "shape", "frobenius", "spectral", "stable rank", "alpha", "verdict"],
                           [[m["name"], "x".join(map(str, m["shape"])), m["frobenius_norm"], m["spectral_norm"],
                             m["stable_rank"], m["alpha"], m["verdict"]] for m in anatomy["matrices"]]))
    return page("explain", "".join(parts))
