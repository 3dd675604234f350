"""The report's sections for the data, training, evaluation and sampling stages, each built from that stage's
summary.json and the files it writes. A renderer returns its HTML and the summary keys it showed (the rest go
to the generic key/value table)."""

from __future__ import annotations

from lmforge.data.stage import drop_reasons
from lmforge.report.figures import training_curves
from lmforge.report.html import data_uri, esc, figure, figures, fmt, interval, num, table
from lmforge.report.runread import RunData, read_json


def _rows(summary: dict, keys: list[tuple[str, str]]) -> tuple[list[list[str]], set[str]]:
    rows = [[label, num(summary[key])] for key, label in keys if key in summary]
    return rows, {key for key, _ in keys if key in summary}


def curate_stats(data: RunData) -> dict:
    path = data.run.data_stats
    return read_json(path) if path.exists() else {}


def curate(data: RunData, s: dict) -> tuple[str, set[str]]:
    rows, shown = _rows(s, [("documents_read", "documents read"), ("documents_kept", "documents kept"),
                            ("documents_dropped", "documents dropped"), ("train_documents", "train documents"),
                            ("val_documents", "validation documents")])
    out = table(["", "count"], rows)
    stats = curate_stats(data)
    reasons = dict(drop_reasons(stats).most_common()) if stats.get("steps") else {}
    if reasons:
        out += "<h3>Dropped, by reason</h3>" + table(["reason", "documents"], [[r, num(c)] for r, c in reasons.items()])
    out += figures([figure(data_uri(data.run.curated / "length_histogram.png"), "document lengths, read and kept")])
    return out, shown


def tokenizer(data: RunData, s: dict) -> tuple[str, set[str]]:
    rows, shown = _rows(s, [("vocab_size", "vocabulary size")])
    return table(["", "value"], rows), shown


def pack(data: RunData, s: dict) -> tuple[str, set[str]]:
    rows, shown = _rows(s, [("train_tokens", "train tokens"), ("val_tokens", "validation tokens")])
    return table(["", "tokens"], rows), shown


def worse_box(summary: dict, before, after) -> str:
    if not summary.get("val_loss_worse_than_initial"):
        return ""
    return (f'<div class="bad-box"><strong>The validation loss got worse</strong>: {esc(fmt(before))} before '
            f'training, {esc(fmt(after))} after. This run did not learn.</div>')


def train(data: RunData, s: dict) -> tuple[str, set[str]]:
    rows, shown = _rows(s, [("steps", "steps"), ("parameters", "parameters"), ("train_tokens", "train tokens"),
                            ("epochs", "epochs"), ("tokens_per_s", "tokens/s"), ("final_loss", "final train loss"),
                            ("val_loss_initial", "validation loss, initial model"),
                            ("val_loss_final", "validation loss, final"), ("resumed_from", "resumed from step"),
                            ("skipped_steps", "skipped steps (non-finite)")])
    shown.add("val_loss_worse_than_initial")
    out = worse_box(s, s.get("val_loss_initial"), s.get("val_loss_final")) + table(["", "value"], rows)
    out += figure(training_curves(data.metrics), "training loss, validation loss, learning rate and tokens/s by step "
                                                "(train/metrics.jsonl)")
    return out, shown


def validation_intervals(data: RunData) -> dict:
    """eval/results.json's intervals of the validation figures (before, after), where the file is there."""
    path = data.run.eval_results
    if not path.exists():
        return {}
    results = read_json(path)
    return {when: (results.get(when) or {}).get("intervals") or {} for when in ("before", "after")}


def _with_interval(value, bounds) -> str:
    if isinstance(bounds, list) and len(bounds) == 2:
        return f"{fmt(value)} [{fmt(bounds[0])}, {fmt(bounds[1])}]"
    return fmt(value)


def eval_(data: RunData, s: dict) -> tuple[str, set[str]]:
    before, after = s.get("before") or {}, s.get("after") or {}
    bounds = validation_intervals(data)
    out = worse_box(s, before.get("loss"), after.get("loss"))
    out += f"<p>Scored: {esc(s.get('checkpoint', '-'))} (step {esc(fmt(s.get('step')))}).</p>"
    rows = [[label, _with_interval(before.get(k), bounds.get("before", {}).get(k)),
             _with_interval(after.get(k), bounds.get("after", {}).get(k))]
            for k, label in (("loss", "loss"), ("perplexity", "perplexity"), ("bits_per_byte", "bits per byte"),
                             ("tokens", "tokens"))]
    out += "<h3>Validation, before and after training</h3>" + table(["", "initial model", "trained"], rows)
    tasks = s.get("tasks") or {}
    if tasks:
        rows = [[name, metric, interval(value)] for name, metrics in tasks.items() for metric, value in metrics.items()]
        out += "<h3>Tasks (estimate and confidence interval)</h3>" + table(["task", "metric", "value"], rows)
    plots = []
    for name in tasks:
        for what, caption in (("reliability", "reliability diagram"), ("confusion", "confusion matrix")):
            plots.append(figure(data_uri(data.run.stage_dir("eval") / name / f"{what}.png"), f"{name}: {caption}"))
    out += figures(plots)
    if s.get("selected"):
        sel = s["selected"]
        out += "<h3>Checkpoint selection</h3>" + table(["key", "value"], [[k, fmt(v) if not isinstance(v, dict)
                                                                            else interval(v)] for k, v in sel.items()])
    if s.get("compared_with"):
        out += f"<p>Compared with: {esc(s['compared_with'])} (eval/compare.json).</p>"
    return out, {"before", "after", "tasks", "checkpoint", "step", "selected", "compared_with",
                 "val_loss_worse_than_initial"}


def sample(data: RunData, s: dict) -> tuple[str, set[str]]:
    rows, shown = _rows(s, [("samples", "samples"), ("tokens", "tokens generated")])
    out = table(["", "value"], rows)
    if data.run.samples.exists():
        for item in (read_json(data.run.samples).get("samples") or [])[:4]:
            out += (f"<pre>{esc(item.get('prompt', ''))}<strong>{esc(item.get('completion', ''))}</strong></pre>")
    return out, shown


def recipe(data: RunData) -> str:
    if not data.recipe_text:
        return '<p class="muted">No recipe.yaml in this run.</p>'
    return f"<p>recipe.yaml, as resolved by the latest command:</p><pre>{esc(data.recipe_text)}</pre>"

