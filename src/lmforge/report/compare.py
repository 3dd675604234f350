"""``lmforge report RUN_A RUN_B ...``: runs side by side in one self-contained page, the recipe keys that differ
(dotted) and each headline metric with its interval, built from the runs' recipe.yaml and summary files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lmforge.core.atomic import atomic_write_text
from lmforge.report.html import esc, fmt, page, section, table, warnings_box
from lmforge.report.runread import STAGE_ORDER, RunData, flat, load_run, read_json

MISSING = object()


def recipe_differences(runs: list[RunData]) -> dict[str, list]:
    """Dotted recipe keys whose values are not the same in every run (a key a run lacks counts as differing)."""
    flats = [flat(r.recipe) for r in runs]
    keys = sorted(set().union(*flats))
    return {k: [f.get(k, MISSING) for f in flats] for k in keys
            if len({repr(f.get(k, MISSING)) for f in flats}) > 1}


def headline_metrics(data: RunData) -> dict[str, tuple]:
    """label -> (estimate, low, high) of a run's headline figures (low, high None where there is no interval)."""
    out: dict[str, tuple] = {}
    evaluation = data.summary("eval")
    results = read_json(data.run.eval_results) if data.run.eval_results.exists() else {}
    for key in ("loss", "perplexity", "bits_per_byte"):
        value = (evaluation.get("after") or {}).get(key)
        if value is not None:
            bounds = ((results.get("after") or {}).get("intervals") or {}).get(key) or [None, None]
            out[f"validation {key}"] = (value, *bounds[:2])
    for task, metrics in (evaluation.get("tasks") or {}).items():
        for metric, value in metrics.items():
            if isinstance(value, dict) and "estimate" in value:
                out[f"{task} {metric}"] = (value["estimate"], value.get("low"), value.get("high"))
    train = data.summary("train")
    for key, label in (("final_loss", "final train loss"), ("tokens_per_s", "train tokens/s"),
                       ("parameters", "parameters")):
        if key in train:
            out[label] = (train[key], None, None)
    for key, label in (("final_val_loss", "fine-tuned validation loss"),):
        if key in data.summary("finetune"):
            out[label] = (data.summary("finetune")[key], None, None)
    for name, a in (data.summary("attack").get("attacks") or {}).items():
        if "accuracy_under_attack" in a:
            out[f"{name} accuracy under attack"] = (a["accuracy_under_attack"], None, None)
    return out


def _shown(value) -> str:
    return "(absent)" if value is MISSING else fmt(value)


def _cell(triple) -> str:
    if triple is None:
        return '<td class="num">-</td>'
    estimate, low, high = triple
    bounds = f" [{fmt(low)}, {fmt(high)}]" if low is not None and high is not None else ""
    return f'<td class="num">{esc(fmt(estimate))}{esc(bounds)}</td>'


def render_compare(runs: list[RunData]) -> str:
    names = [str(r.run.root) for r in runs]
    diffs = recipe_differences(runs)
    body = table(["", *names], [["recipe name", *[str(r.recipe.get("name", "-")) for r in runs]],
                                ["stages run", *[", ".join(s for s in r.stages if s in r.summaries) or "none"
                                                 for r in runs]]])
    body += warnings_box([f"{r.run.root}: {stage}: {m}" for r in runs for stage, m in r.warnings()])
    rows = [[key, *[_shown(v) for v in values]] for key, values in diffs.items()]
    out = section("runs", "Runs", body)
    out += section("recipe", "Recipe differences",
                   table(["key", *names], rows) if rows else "<p>The recipes are the same.</p>")
    metrics = [headline_metrics(r) for r in runs]
    labels = list(dict.fromkeys(k for m in metrics for k in m))
    rows = [[label, *[_cell(m.get(label)) for m in metrics]] for label in labels]
    out += section("metrics", "Headline metrics (estimate [interval])",
                   table(["metric", *names], rows) if rows else "<p>No metrics in these runs.</p>")
    nav = [("runs", "runs"), ("recipe", "recipe differences"), ("metrics", "metrics")]
    return page(f"lmforge: {len(runs)} runs compared", " | ".join(names), nav, out)


def write_compare(roots: Sequence[Path], output: Path, stages: Sequence[str] = STAGE_ORDER) -> Path:
    """Compare the runs at ``roots`` into the page ``output`` (written atomically); returns its path."""
    runs = [load_run(Path(root), tuple(stages)) for root in roots]
    atomic_write_text(output, render_compare(runs))
    return output
