"""The eval and sample stages: score the trained model (and its seeded initial self) on the validation
split, and draw samples from it."""

from __future__ import annotations

from pathlib import Path

import torch

from lmforge.core.atomic import atomic_write_json
from lmforge.core.progress import info
from lmforge.data.packing import TokenShards
from lmforge.data.tokenizer import EOS_TOKEN, load_tokenizer
from lmforge.errors import CheckpointError
from lmforge.evaluate.perplexity import evaluate_loss
from lmforge.model.config import ModelDims
from lmforge.model.decoder import Decoder
from lmforge.model.generate import generate
from lmforge.recipe import RunConfig
from lmforge.rundir import RunDir
from lmforge.train.checkpoint import load_checkpoint, read_state


def pick_checkpoint(run: RunDir, checkpoint: str | None) -> Path:
    if checkpoint is not None:
        return Path(checkpoint)
    latest = run.latest_checkpoint()
    if latest is None:
        raise CheckpointError(f"{run.checkpoints}: no checkpoint; train first (lmforge train)")
    return latest[1]


def load_trained_model(path: Path, device: torch.device) -> tuple[Decoder, dict]:
    """Build the model a checkpoint describes and load its weights (verified first, never pickle)."""
    state = read_state(path)
    try:
        dims = ModelDims(**state["resume_key"]["model"])
    except (KeyError, TypeError):
        raise CheckpointError(f"checkpoint {path}: state.json does not describe a model") from None
    model = Decoder(dims)
    load_checkpoint(path, model, optimizer=None, restore_rng_state=False)
    return model.to(device).eval(), state


def stage_eval(run: RunDir, cfg: RunConfig, device: torch.device, checkpoint: str | None = None) -> dict:
    path = pick_checkpoint(run, checkpoint)
    model, state = load_trained_model(path, device)
    val = TokenShards(run.tokens("val"))
    seq_len = state["resume_key"]["seq_len"]
    windows = None if cfg.eval.max_tokens is None else max(1, cfg.eval.max_tokens // seq_len)
    score = dict(batch_size=cfg.eval.batch_size, max_windows=windows, device=device)
    torch.manual_seed(cfg.seed)  # the same seeded initial weights the training run started from
    initial = Decoder(model.dims).to(device)
    results = {
        "checkpoint": str(path),
        "step": state["step"],
        "seq_len": seq_len,
        "before": evaluate_loss(initial, val, seq_len, **score),
        "after": evaluate_loss(model, val, seq_len, **score),
    }
    atomic_write_json(run.eval_results, results)
    b, a = results["before"], results["after"]
    info(f"eval: val loss {b['loss']:.4f} -> {a['loss']:.4f}, perplexity {b['perplexity']:.1f} -> "
         f"{a['perplexity']:.1f}, bits/byte {a['bits_per_byte']:.3f} on {a['tokens']:,} tokens")
    return results


def sample_texts(run: RunDir, cfg: RunConfig, device: torch.device, *, prompt: str, checkpoint: str | None = None,
                 use_cache: bool = True) -> list[dict]:
    path = pick_checkpoint(run, checkpoint)
    model, _ = load_trained_model(path, device)
    tokenizer = load_tokenizer(run.tokenizer)
    g = cfg.generate
    prompt_ids = tokenizer.encode(prompt).ids
    samples = []
    for i in range(g.num_samples):
        new_ids = generate(model, prompt_ids, g.max_new_tokens, temperature=g.temperature, top_k=g.top_k,
                           top_p=g.top_p, eos_id=tokenizer.token_to_id(EOS_TOKEN), seed=g.seed + i,
                           use_cache=use_cache)
        samples.append({"prompt": prompt, "completion": tokenizer.decode(new_ids), "tokens": len(new_ids)})
    return samples


def stage_sample(run: RunDir, cfg: RunConfig, device: torch.device) -> list[dict]:
    samples = sample_texts(run, cfg, device, prompt=cfg.generate.prompt)
    atomic_write_json(run.samples, {"generate": cfg.generate.model_dump(), "samples": samples})
    return samples
