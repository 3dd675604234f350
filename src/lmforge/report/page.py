"""``<run>/report.html``: the run at a glance, then one section per stage (built only from its summary.json and
the files it writes; a stage that did not run says "not run"), then the resolved recipe. One self-contained
file, written atomically; TensorBoard event files beside it where tensorboard is installed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lmforge.core.atomic import atomic_write_text
from lmforge.report import sections_base as base
from lmforge.report import sections_later as later
from lmforge.report.figures import training_curves
from lmforge.report.html import esc, figure, fmt, kv_table, page, section, warnings_box
from lmforge.report.runread import STAGE_ORDER, RunData, load_run
from lmforge.report.tensorboard import write_events
from lmforge.rundir import RunDir

REPORT_FILE = "report.html"

TITLES = {"curate": "Data curation", "tokenizer": "Tokenizer", "pack": "Packing", "train": "Pretraining",
          "eval": "Evaluation and selection", "sample": "Samples", "finetune": "Fine-tuning", "merge": "Merging",
          "compress": "Compression", "explain": "Attributions and anatomy", "attack": "Robustness",
          "secure": "Signature and encryption"}
RENDER = {"curate": base.curate, "tokenizer": base.tokenizer, "pack": base.pack, "train": base.train,
          "eval": base.eval_, "sample": base.sample, "finetune": later.finetune, "merge": later.merge,
          "compress": later.compress, "explain": later.explain, "attack": later.attack, "secure": later.secure}
SHOWN_STAGES_SKIP = {"report"}  # the report stage's own section would be this page


def _tile(label: str, value: str, kind: str = "") -> str:
    return (f'<div class="tile {kind}"><div class="label">{esc(label)}</div>'
            f'<div class="value">{esc(value)}</div></div>')


def learned(data: RunData) -> bool | None:
    """False when the run's validation loss got worse than the initial model's (train or eval says so)."""
    flags = [data.summary(s).get("val_loss_worse_than_initial") for s in ("train", "eval")]
    if any(f is True for f in flags):
        return False
    return True if any(f is False for f in flags) else None


def glance(data: RunData) -> str:
    curate, pack, train = data.summary("curate"), data.summary("pack"), data.summary("train")
    evaluation = data.summary("eval")
    before, after = evaluation.get("before") or {}, evaluation.get("after") or {}
    if not before and "val_loss_initial" in train:
        before, after = {"loss": train["val_loss_initial"]}, {"loss": train.get("val_loss_final")}
    ok = learned(data)
    tiles = [
        _tile("documents", f"{fmt(curate.get('documents_read'))} read, {fmt(curate.get('documents_kept'))} kept"),
        _tile("dropped", fmt(curate.get("documents_dropped"))),
        _tile("tokens", f"{fmt(pack.get('train_tokens'))} train, {fmt(pack.get('val_tokens'))} val"),
        _tile("parameters", fmt(train.get("parameters"))),
        _tile("training", f"{fmt(train.get('steps'))} steps, {fmt(train.get('tokens_per_s'), 3)} tokens/s"),
        _tile("validation loss", f"{fmt(before.get('loss'))} → {fmt(after.get('loss'))}",
              "bad" if ok is False else ("good" if ok else "")),
    ]
    if "perplexity" in after:
        tiles.append(_tile("perplexity", f"{fmt(before.get('perplexity'))} → {fmt(after.get('perplexity'))}"))
    if "bits_per_byte" in after:
        tiles.append(_tile("bits per byte", f"{fmt(before.get('bits_per_byte'))} → {fmt(after.get('bits_per_byte'))}"))
    out = ""
    if ok is False:
        out += ('<div class="bad-box"><strong>This run did not learn</strong>: its validation loss got worse than '
                'the initial model\'s.</div>')
    out += warnings_box([f"{stage}: {message}" for stage, message in data.warnings()], "Warnings from the stages")
    out += f'<div class="glance">{"".join(tiles)}</div>'
    ran = [s for s in data.stages if s in data.summaries and s not in SHOWN_STAGES_SKIP]
    missing = [s for s in data.stages if s not in data.summaries and s not in SHOWN_STAGES_SKIP]
    out += f"<p>Stages run: {esc(', '.join(ran) or 'none')}."
    out += f" Not run: {esc(', '.join(missing))}.</p>" if missing else "</p>"
    stats = base.curate_stats(data)
    reasons = dict(base.drop_reasons(stats).most_common()) if stats.get("steps") else {}
    if reasons:
        out += "<p>Dropped by reason: " + esc(", ".join(f"{r} {fmt(c)}" for r, c in reasons.items())) + ".</p>"
    out += figure(training_curves(data.metrics), "loss, learning rate and tokens/s by step")
    return section("glance", "At a glance", out)


def stage_section(data: RunData, stage: str) -> str:
    title = f"{TITLES.get(stage, stage.capitalize())} ({stage})"
    if stage not in data.summaries:
        return section(stage, title, f'<p class="muted">Not run: no {esc(stage)}/summary.json in this run.</p>',
                       "not run", "notrun")
    summary = data.summaries[stage]
    body, shown = RENDER[stage](data, summary) if stage in RENDER else ("", set())
    rest = kv_table(summary, skip=shown | {"warnings"})
    if rest:
        body += ("<h3>Other figures</h3>" if stage in RENDER else "") + rest
    warn = warnings_box([str(w) for w in summary.get("warnings") or []])
    worse = summary.get("val_loss_worse_than_initial") is True
    return section(stage, title, warn + body, "got worse" if worse else ("warnings" if warn else ""),
                   "bad" if worse or warn else "")


def render(data: RunData) -> str:
    stages = [s for s in data.stages if s not in SHOWN_STAGES_SKIP]
    body = glance(data) + "".join(stage_section(data, s) for s in stages)
    body += section("recipe", "Recipe", base.recipe(data))
    nav = [("glance", "at a glance"), *[(s, s) for s in stages], ("recipe", "recipe")]
    name = data.recipe.get("name") or data.run.root.name
    return page(f"lmforge run report: {name}", str(data.run.root.resolve()), nav, body)


def write_report(run: RunDir, stages: Sequence[str] = STAGE_ORDER) -> Path:
    """Write ``<run>/report.html`` (and ``<run>/tensorboard/`` where tensorboard is installed); returns the page's
    path. ``stages``: every stage in pipeline order (the pipeline passes its NAMES)."""
    data = load_run(run.root, tuple(stages))
    text = render(data)
    path = run.root / REPORT_FILE
    atomic_write_text(path, text)
    write_events(data)
    return path
