"""``lmforge attack``: a classifier (a classification head, or a language model's label verbalizers), or the
language-model loss, under embedding-space FGSM / PGD, HotFlip token substitution and a GCG suffix search, with a
robustness report (recipe section ``attack:``), other models (``attack.compare``) attacked beside it."""

from __future__ import annotations

import click

from lmforge.command import common_options, device_for, require_run_dir, resolve, with_section


@click.command()
@common_options
@click.option("--checkpoint", help="The model (overrides attack.checkpoint): selected, latest, best, finetuned, "
              "merged, or a path the loader opens.")
@click.option("--task", help="A classifier's (or attack.target=verbalizer's) examples: a built-in classification task "
              "or a task YAML (overrides attack.task; default: finetune.task).")
@click.option("--text", "texts", multiple=True, help="A language model's text, ending in its scored continuation "
              "(repeat; overrides attack.texts; default: windows of the run's validation tokens).")
@click.option("--examples", type=click.IntRange(min=1), help="How many examples (attack.examples).")
def attack(recipe, overrides, run_dir, checkpoint, task, texts, examples):
    """Attack a model: a classifier's labels (its head's, or with attack.target=verbalizer a language model's label
    verbalizers scored as the evaluation stage scores a classification task), or the language-model loss of
    validation continuations, under
    embedding-space FGSM and PGD (L-infinity and L2 balls relative to the embedding norms) and HotFlip token
    substitution (a share of the tokens at most, protected tokens kept, candidates among each token's nearest
    embedding neighbours) and, for the language model, a GCG suffix search toward a target continuation:
    attack/report.json, report.md and summary.json in TextAttack's summary shape (accuracy and loss under each
    attack, success rate, tokens changed, queries, examples), with a row per model for attack.compare's models (the
    same examples and seeds: before and after adversarial training; attack.harden makes the hardened model first, in
    <run>/harden/). Also a stage of lmforge run (when the recipe has its section).
    """
    from lmforge.attack.config import AttackConfig
    from lmforge.attack.harden import attack_with_hardening
    from lmforge.errors import AttackError

    cfg, run = resolve(recipe, run_dir, overrides)
    require_run_dir(run)
    given = {"checkpoint": checkpoint, "task": task, "texts": list(texts) or None, "examples": examples}
    raw = (cfg.attack or AttackConfig()).model_dump()
    if task is not None or texts:  # one source on the command line replaces the recipe's
        raw["task"] = raw["texts"] = None
    raw |= {k: v for k, v in given.items() if v is not None}
    cfg = with_section(cfg, "attack", AttackConfig, raw, AttackError)
    summary = attack_with_hardening(run, cfg, device_for(cfg))  # bad input is refused before anything is written
    click.echo(f"{summary['target'].replace('_', ' ')}: {summary['examples']} examples, clean accuracy "
               f"{summary['clean_accuracy']:.3g}, clean loss {summary['clean_loss']:.4g}")
    for key, s in summary["attacks"].items():
        rate = "-" if s["attack_success_rate"] is None else f"{s['attack_success_rate']:.3g}"
        click.echo(f"{key}: accuracy under attack {s['accuracy_under_attack']:.3g}, loss {s['attacked_loss']:.4g}, "
                   f"success rate {rate}, {s['average_queries'] or 0:.3g} queries on average")
    for m in summary["models"][1:]:
        click.echo(f"compared {m['model']}: clean accuracy {m['clean_accuracy']:.3g}, under attack " +
                   ", ".join(f"{key} {s['accuracy_under_attack']:.3g}" for key, s in m["attacks"].items()))
    click.echo(f"report: {run.stage_dir('attack') / 'report.md'}")
