"""``lmforge explain``: attributions with their faithfulness, attention maps, logit lens, anatomy and permutation
importance for a text or a task's examples (recipe section ``explain:``)."""

from __future__ import annotations

import click

from lmforge.command import common_options, device_for, require_run_dir, resolve, with_section


@click.command()
@common_options
@click.option("--text", help="The text to explain (overrides explain.text).")
@click.option("--task", help="Explain examples of this evaluation task instead: a built-in task name or a task YAML "
              "(overrides explain.task).")
@click.option("--examples", type=click.IntRange(min=1), help="How many of the task's examples (explain.examples).")
@click.option("--target", help="With --text: a continuation to explain, or a classifier's label (default: the "
              "model's next token or the classifier's prediction).")
@click.option("--checkpoint", help="The model (overrides explain.checkpoint): selected, latest, best, finetuned, "
              "merged, or a path the loader opens.")
@click.option("--method", "methods", multiple=True, help="An attribution method (repeat; overrides explain.methods): "
              "integrated_gradients, gradient_x_input, occlusion, shapley.")
def explain(recipe, overrides, run_dir, text, task, examples, target, checkpoint, methods):
    """Explain a model's prediction: token attributions (Integrated Gradients, gradient x input, occlusion,
    Shapley sampling) each with deletion / insertion curves and AOPC, attention maps and rollout, the logit lens,
    the weight matrices' spectra and, for a classification task, permutation importance: explain/<example>.html
    (self-contained), explain/index.html, PNG figures, attributions.json and summary.json.
    Also a stage of lmforge run (when the recipe has its section).
    """
    from lmforge.errors import ExplainError
    from lmforge.explain.config import ExplainConfig
    from lmforge.explain.stage import check_explain, run_explain

    cfg, run = resolve(recipe, run_dir, overrides)
    require_run_dir(run)
    given = {"text": text, "task": task, "examples": examples, "target": target, "checkpoint": checkpoint,
             "methods": list(methods) or None}
    raw = (cfg.explain or ExplainConfig()).model_dump()
    if text is not None or task is not None:  # one source on the command line replaces the recipe's
        raw["text"] = raw["task"] = None
    raw |= {k: v for k, v in given.items() if v is not None}
    cfg = with_section(cfg, "explain", ExplainConfig, raw, ExplainError)
    device = device_for(cfg)
    plan = check_explain(run, cfg, device)  # refuses bad input before anything is written
    summary = run_explain(run, cfg, plan, device)
    for name, ex in summary["examples"].items():
        figures = ", ".join(f"{m} AOPC comprehensiveness {h['comprehensiveness']:.3g} (random "
                            f"{h['random_comprehensiveness']:.3g}; log-prob {h['log_prob']['comprehensiveness']:.3g} "
                            f"vs {h['log_prob']['random_comprehensiveness']:.3g})" for m, h in ex.items()
                            if isinstance(h, dict))
        click.echo(f"{name}: target {ex['target']} (log-prob {ex['log_prob']:.3f}); {figures}")
    if "anatomy" in summary:
        click.echo(f"anatomy: {len(summary['anatomy']['alpha'])} matrices, flagged: "
                   f"{', '.join(summary['anatomy']['flagged']) or 'none'}")
    click.echo(f"report: {run.stage_dir('explain') / 'index.html'}")
