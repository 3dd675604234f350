"""The eval stage's files beside ``results.json``: each task's ``predictions.jsonl`` and PNGs, and
``summary.md``, the readable form of the results, the selection and the comparison."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lmforge.core.atomic import atomic_write_text
from lmforge.evaluate.plots import write_confusion_png, write_reliability_png
from lmforge.evaluate.task_eval import ScoredTask

HEADLINE = {"multiple_choice": ("acc", "acc_norm", "ece", "brier", "nll"),
            "classification": ("acc", "f1_macro", "f1_micro", "f1_weighted", "ece", "brier", "nll"),
            "generation": ("exact_match", "prefix_match"),
            "perplexity": ("loss", "perplexity", "bits_per_byte")}


def write_task_files(scored: ScoredTask, entry: dict, folder: Path) -> dict[str, str]:
    """``<folder>/predictions.jsonl`` (one line per example: id, gold, prediction, probabilities, ...) and
    the task's plots; returns {what: file name}."""
    atomic_write_text(folder / "predictions.jsonl",
                      "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in scored.predictions))
    files = {"predictions": "predictions.jsonl"}
    if "confusion" in entry:
        write_confusion_png(np.array(entry["confusion"]["matrix"]), entry["confusion"]["labels"],
                            folder / "confusion.png", f"{scored.task.name}: confusion matrix")
        files["confusion"] = "confusion.png"
    calibration = entry.get("calibration") or {}
    if calibration.get("temperature") is not None:
        bins = {k: np.array(v) for k, v in calibration["bins_before"].items()}
        after = {k: np.array(v) for k, v in calibration["bins_after"].items()}
        write_reliability_png(bins, folder / "reliability.png",
                              f"{scored.task.name}: reliability ({calibration['heldout_examples']} held-out examples)",
                              calibration["ece_before"], after, calibration["ece_after"], calibration["temperature"])
        files["reliability"] = "reliability.png"
    return files


def _ci(m: dict) -> str:
    return f"{m['estimate']:.4f} [{m['low']:.4f}, {m['high']:.4f}]"


def summary_markdown(results: dict, selection: dict | None, comparison: dict | None) -> str:
    pct = round(results["confidence"] * 100)
    lines = ["# Evaluation", "", f"Checkpoint `{results['checkpoint']}` (step {results['step']}). Intervals: "
             f"{pct}% bootstrap percentile, {results['resamples']:,} resamples (validation loss: over windows; "
             "tasks: over examples; perplexity tasks: over documents).", "",
             "## Validation", "", "| model | loss | perplexity | bits/byte | tokens |", "|---|---|---|---|---:|"]
    for name in ("before", "after"):
        v = results[name]
        iv = v["intervals"]
        lines.append(f"| {'initial' if name == 'before' else 'trained'} | {v['loss']:.4f} [{iv['loss'][0]:.4f}, "
                     f"{iv['loss'][1]:.4f}] | {v['perplexity']:.2f} | {v['bits_per_byte']:.4f} | {v['tokens']:,} |")
    for name, task in results["tasks"].items():
        lines += ["", f"## {name} ({task['kind'].replace('_', ' ')}, {task['examples']:,} examples)", "",
                  "| metric | estimate [interval] |", "|---|---|"]
        lines += [f"| {m} | {_ci(task['metrics'][m])} |" for m in HEADLINE[task["kind"]] if m in task["metrics"]]
        cal = task.get("calibration") or {}
        if cal.get("temperature") is not None:
            lines += ["", f"Temperature scaling: T = {cal['temperature']:.3f} fitted on {cal['fit_examples']} "
                      f"examples; ECE on the other {cal['heldout_examples']}: {cal['ece_before']:.4f} -> "
                      f"{cal['ece_after']:.4f} (accuracy {cal['accuracy_before']:.4f} both)."]
        files = task.get("files", {})
        lines += [""] + [f"![{what}]({name}/{file})" for what, file in files.items() if file.endswith(".png")]
        lines.append(f"Per-example predictions: `{name}/{files.get('predictions', 'predictions.jsonl')}`.")
    if results.get("skipped"):
        lines += ["", "Not evaluated: " + "; ".join(results["skipped"])]
    if selection is not None:
        lines += ["", f"## Checkpoint selection ({selection['metric']}, {selection['mode']})", "",
                  "| step | estimate [interval] |", "|---:|---|"]
        lines += [f"| {c['step']}{' (chosen)' if c['step'] == selection['chosen']['step'] else ''} | {_ci(c)} |"
                  for c in selection["checkpoints"]]
        lead = selection["lead"]
        if lead is not None:
            lines += ["", f"Lead over step {lead['runner_up']['step']}: {lead['difference']:+.4f} "
                      f"[{lead['low']:+.4f}, {lead['high']:+.4f}], "
                      f"{'significant' if lead['significant'] else 'not significant'}."]
    if comparison is not None:
        lines += ["", f"## Paired comparison: A = this checkpoint, B = `{comparison['other']}`", "",
                  "| task | metric | A | B | A - B [interval] | significant | McNemar p |", "|---|---|---|---|---|---|---|"]
        for name, task in comparison["tasks"].items():
            for m, d in task["metrics"].items():
                if m in HEADLINE.get(task["kind"], ()) or m == "val_loss":
                    p = task.get("mcnemar", {}).get(m, {}).get("p_value")
                    lines.append(f"| {name} | {m} | {d['a']:.4f} | {d['b']:.4f} | {d['difference']:+.4f} "
                                 f"[{d['low']:+.4f}, {d['high']:+.4f}] | {'yes' if d['significant'] else 'no'} | "
                                 f"{'' if p is None else f'{p:.4g}'} |")
    return "\n".join(lines) + "\n"
