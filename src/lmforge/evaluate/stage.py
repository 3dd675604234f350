"""The eval and sample stages: score the trained model (and its seeded initial self) on the validation
split, and draw samples from it. Both load the model through ``checkpoint.load``."""

from __future__ import annotations

import torch

from lmforge.checkpoint.load import check_fits, checkpoint_dims, load_model, pick
from lmforge.core.atomic import atomic_write_json
from lmforge.core.progress import info
from lmforge.data.packing import TokenShards
from lmforge.data.tokenizer import EOS_TOKEN, load_tokenizer
from lmforge.model.decoder import Decoder
from lmforge.model.generate import generate
from lmforge.recipe import RunConfig
from lmforge.rundir import RunDir
from lmforge.train.validation import evaluate_loss


def checkpoint_for(run: RunDir, cfg: RunConfig, checkpoint: str | None, vocab_size: int):
    """The checkpoint ``checkpoint`` names (``pick``), refused unless it holds this run's model: the recipe's
    dimensions over the run's vocabulary (a checkpoint of another model, e.g. from another run directory,
    does not fit). Reads only its state, so commands check it before anything is written."""
    path = pick(run, checkpoint)
    check_fits(path, checkpoint_dims(path), cfg.model.dims(vocab_size), run.root)
    return path


def stage_eval(run: RunDir, cfg: RunConfig, device: torch.device, checkpoint: str | None = None) -> dict:
    val = TokenShards(run.tokens("val"))
    loaded = load_model(checkpoint_for(run, cfg, checkpoint, val.vocab_size), device)
    seq_len = loaded.seq_len
    windows = None if cfg.eval.max_tokens is None else max(1, cfg.eval.max_tokens // seq_len)
    score = dict(batch_size=cfg.eval.batch_size, max_windows=windows, device=device)
    torch.manual_seed(cfg.seed)  # the same seeded initial weights the training run started from
    initial = Decoder(loaded.model.dims).to(device)
    results = {
        "checkpoint": str(loaded.path),
        "step": loaded.step,
        "seq_len": seq_len,
        "before": evaluate_loss(initial, val, seq_len, **score),
        "after": evaluate_loss(loaded.model, val, seq_len, **score),
    }
    atomic_write_json(run.eval_results, results)
    b, a = results["before"], results["after"]
    info(f"eval: val loss {b['loss']:.4f} -> {a['loss']:.4f}, perplexity {b['perplexity']:.1f} -> "
         f"{a['perplexity']:.1f}, bits/byte {a['bits_per_byte']:.3f} on {a['tokens']:,} tokens")
    return results


def sample_texts(run: RunDir, cfg: RunConfig, device: torch.device, *, prompt: str, checkpoint: str | None = None,
                 use_cache: bool = True) -> list[dict]:
    tokenizer = load_tokenizer(run.tokenizer)
    loaded = load_model(checkpoint_for(run, cfg, checkpoint, tokenizer.get_vocab_size()), device)
    g = cfg.generate
    prompt_ids = tokenizer.encode(prompt).ids
    samples = []
    for i in range(g.num_samples):
        new_ids = generate(loaded.model, prompt_ids, g.max_new_tokens, temperature=g.temperature, top_k=g.top_k,
                           top_p=g.top_p, eos_id=tokenizer.token_to_id(EOS_TOKEN), seed=g.seed + i,
                           use_cache=use_cache)
        samples.append({"prompt": prompt, "completion": tokenizer.decode(new_ids), "tokens": len(new_ids)})
    return samples


def stage_sample(run: RunDir, cfg: RunConfig, device: torch.device, checkpoint: str | None = None) -> dict:
    samples = sample_texts(run, cfg, device, prompt=cfg.generate.prompt, checkpoint=checkpoint)
    atomic_write_json(run.samples, {"generate": cfg.generate.model_dump(), "samples": samples})
    return {"samples": len(samples), "tokens": sum(s["tokens"] for s in samples)}
