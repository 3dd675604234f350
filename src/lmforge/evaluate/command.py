"""``lmforge eval`` and ``lmforge generate``."""

from __future__ import annotations

import click

from lmforge.command import common_options, device_for, require_run_dir, resolve

CHECKPOINT_HELP = "Checkpoint: the one eval.select chose, else the latest (default); latest, best (lowest " \
                  "validation loss), selected, finetuned (lmforge finetune's model), or a path (a checkpoint " \
                  "folder, an exported file, a run directory, a Hugging Face folder: scored with its own tokenizer)."


@click.command("eval")
@common_options
@click.option("--checkpoint", type=click.Path(path_type=str), help=CHECKPOINT_HELP)
@click.option("--compare", "other", type=click.Path(path_type=str),
              help="Another model (a checkpoint folder, an exported file, a run directory, or latest / best / "
                   "selected of this run) scored on the same items: paired differences and McNemar's test.")
def eval_(recipe, overrides, run_dir, checkpoint, other):
    """Validation loss and every task of eval.tasks (accuracy, F1, calibration, ...), each with a confidence
    interval; eval.select chooses among the kept checkpoints."""
    from lmforge import pipeline
    from lmforge.checkpoint.load import pick, require_language_model
    from lmforge.data.packing import TokenShards
    from lmforge.evaluate.stage import checkpoint_for

    cfg, run = resolve(recipe, run_dir, overrides)
    require_run_dir(run)
    opts = pipeline.Options(checkpoint=checkpoint, compare=other)
    # before the stage records anything: its inputs, the device, and a checkpoint that holds this run's model
    pipeline.require(run, "eval", opts)
    device_for(cfg)
    if cfg.eval.select is None or checkpoint is not None:
        checkpoint_for(run, cfg, checkpoint or "latest", TokenShards(run.tokens("val")).vocab_size)
    if other is not None:
        require_language_model(pick(run, other), "eval --compare")
    summary = pipeline.run_alone(run, cfg, "eval", opts, again=True)
    after = summary["after"]
    click.echo(f"val loss {after['loss']:.4f}  perplexity {after['perplexity']:.2f}  "
               f"bits/byte {after['bits_per_byte']:.4f}  ({summary['checkpoint']})")
    for name, metrics in summary["tasks"].items():
        click.echo(f"{name}: " + "  ".join(f"{m} {v['estimate']:.4f} [{v['low']:.4f}, {v['high']:.4f}]"
                                           for m, v in list(metrics.items())[:3]))


@click.command()
@common_options
@click.option("--prompt", help="Text to continue (default: generate.prompt of the recipe).")
@click.option("--max-new-tokens", type=click.IntRange(min=1))
@click.option("--temperature", type=click.FloatRange(min=0), help="0 means greedy.")
@click.option("--top-k", type=click.IntRange(min=1))
@click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True))
@click.option("--num-samples", type=click.IntRange(min=1))
@click.option("--seed", type=int)
@click.option("--no-cache", is_flag=True, help="Recompute the whole sequence each step (slow reference path).")
@click.option("--checkpoint", type=click.Path(path_type=str), help=CHECKPOINT_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the samples as JSON (the shape of sample/samples.json).")
@click.option("--ensemble", multiple=True, type=click.Path(path_type=str),
              help="Another model (repeat) generating with --checkpoint's as one: their next-token probabilities "
                   "averaged (same tokenizer; no KV cache).")
@click.option("--ensemble-mode", type=click.Choice(["probabilities", "log_probabilities"]), default="probabilities",
              show_default=True, help="Average the probabilities, or the log-probabilities (renormalized).")
def generate(recipe, overrides, run_dir, prompt, max_new_tokens, temperature, top_k, top_p, num_samples, seed,
             no_cache, checkpoint, as_json, ensemble, ensemble_mode):
    """Continue a prompt with the trained model (KV cache, temperature, top-k, top-p)."""
    import json

    from lmforge.errors import LmforgeError
    from lmforge.evaluate.stage import sample_texts

    cfg, run = resolve(recipe, run_dir, overrides)
    require_run_dir(run)
    for key, value in dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                           num_samples=num_samples, seed=seed).items():
        if value is not None:
            setattr(cfg.generate, key, value)
    text = cfg.generate.prompt if prompt is None else prompt
    if not text:
        raise LmforgeError("--prompt: the prompt is empty")
    samples = sample_texts(run, cfg, device_for(cfg), prompt=text, checkpoint=checkpoint, use_cache=not no_cache,
                           ensemble=list(ensemble), ensemble_mode=ensemble_mode)
    if as_json:  # what the sample stage writes, with this command's settings and prompt
        cfg.generate.prompt = text
        click.echo(json.dumps({"generate": cfg.generate.model_dump(), "samples": samples}, indent=2, sort_keys=True))
        return
    for sample in samples:
        click.echo(sample["prompt"] + sample["completion"])
        if cfg.generate.num_samples > 1:
            click.echo("-" * 40)
