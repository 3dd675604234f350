"""The training loop, top to bottom: forward, loss, backward, clip, step, log, eval, checkpoint."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable

import torch

from lmforge.core.atomic import remove_stale_temporaries
from lmforge.core.device import peak_flops
from lmforge.core.metrics import MetricsLog
from lmforge.core.progress import info, track
from lmforge.data.packing import TokenShards
from lmforge.distributed.checkpoint import load_training_checkpoint, save_training_checkpoint
from lmforge.distributed.context import DistContext
from lmforge.distributed.layout import Layout, resolve_layout
from lmforge.distributed.parallelize import clip_grad_norm_, gradient_sync, loss_context, parallelize, reshard, scalar
from lmforge.errors import CheckpointError, RecipeError, TrainingError
from lmforge.evaluate.perplexity import evaluate_loss
from lmforge.model.config import ModelDims
from lmforge.model.decoder import Decoder, count_parameters, training_flops_per_token
from lmforge.recipe import RunConfig
from lmforge.rundir import RunDir
from lmforge.train.batches import BatchPlan
from lmforge.train.checkpoint import prune_checkpoints, read_state
from lmforge.train.memory import (
    is_out_of_memory,
    out_of_memory_error,
    plan_micro_batch,
    probe_micro_batch,
    release_memory,
)
from lmforge.train.optim import build_optimizer
from lmforge.train.precision import PrecisionPolicy, precision_policy
from lmforge.train.schedule import learning_rate


def build_model(cfg: RunConfig, vocab_size: int, device: torch.device) -> Decoder:
    """The seeded initial model: the same recipe always gives the same initial weights."""
    torch.manual_seed(cfg.seed)
    return Decoder(cfg.model.dims(vocab_size)).to(device)


def sequence_length(cfg: RunConfig, context_length: int) -> int:
    seq_len = cfg.train.seq_len or context_length
    if seq_len > context_length:
        raise RecipeError(f"train.seq_len: {seq_len} exceeds the model context length {context_length}")
    return seq_len


def resume_key(cfg: RunConfig, dims: ModelDims, seq_len: int, data_digest: str) -> dict:
    """What must not change between a checkpoint and the run that resumes from it (the parallel layout may)."""
    return {"model": dims.to_dict(), "seq_len": seq_len, "batch_size": cfg.train.batch_size,
            "seed": cfg.seed, "data": data_digest, "optimizer": cfg.train.optimizer}


def check_layout(cfg: RunConfig, world_size: int, dims: ModelDims, seq_len: int) -> Layout:
    """The recipe's ``parallel:`` degrees for ``world_size`` processes, checked against model and batch."""
    tc = cfg.train
    return resolve_layout(cfg.parallel, world_size, dims=dims, batch_size=tc.batch_size, seq_len=seq_len,
                          optimizer=tc.optimizer, precision=tc.precision)


def preflight(run: RunDir, cfg: RunConfig, world_size: int, *, resume: bool = False,
              checkpoints: bool = True) -> Layout:
    """What a launcher checks before it starts any process: the layout, and (``checkpoints``) the checkpoint
    to resume from: its integrity manifest, and that it fits the recipe."""
    train_data = TokenShards(run.tokens("train"))
    dims = cfg.model.dims(train_data.vocab_size)
    seq_len = sequence_length(cfg, dims.context_length)
    layout = check_layout(cfg, world_size, dims, seq_len)
    path = resume_point(run, resume) if checkpoints else None
    if path is not None:
        state = read_state(path, verify=True)
        _check_resumable(path, state.get("resume_key", {}), resume_key(cfg, dims, seq_len, shards_digest(train_data)))
    return layout


def resume_point(run: RunDir, resume: bool):
    """The latest checkpoint to resume from, or None; existing checkpoints without ``resume`` are an error."""
    latest = run.latest_checkpoint()
    if latest is None:
        return None
    step, path = latest
    if not resume:
        raise TrainingError(f"{run.root} already holds training checkpoints (latest: step {step}); "
                            "pass --resume to continue it, or --redo train to start training over")
    return path


def shards_digest(shards: TokenShards) -> str:
    return hashlib.sha256(json.dumps([s["sha256"] for s in shards.index["shards"]]).encode()).hexdigest()[:16]


def _check_resumable(path, saved: dict, expected: dict) -> None:
    for key, want in expected.items():
        got = saved.get(key)
        if key == "model" and isinstance(got, dict):
            diff = [f"model.{k}={got.get(k)} (recipe: {v})" for k, v in want.items() if got.get(k) != v]
            if diff:
                raise CheckpointError(f"cannot resume from {path}: it was trained with {', '.join(diff)}")
        elif got != want:
            raise CheckpointError(f"cannot resume from {path}: it was trained with {key}={got} (recipe: {want})")


def train(run: RunDir, cfg: RunConfig, ctx: DistContext, *, resume: bool,
          on_eval: Callable[[int, dict], None] | None = None) -> dict:
    """Train to ``train.max_steps``; returns a summary. ``on_eval(step, result)`` is called after every
    validation (hyperparameter search uses it to prune a trial by raising). Memory is released after."""
    try:
        return _train(run, cfg, ctx, resume=resume, on_eval=on_eval)
    finally:
        release_memory()


def _train(run: RunDir, cfg: RunConfig, ctx: DistContext, *, resume: bool,
           on_eval: Callable[[int, dict], None] | None) -> dict:
    tc = cfg.train
    train_data, val_data = TokenShards(run.tokens("train")), TokenShards(run.tokens("val"))
    device = ctx.device
    dims = cfg.model.dims(train_data.vocab_size)
    seq_len = sequence_length(cfg, dims.context_length)
    policy = precision_policy(tc.precision, device)
    ctx = ctx.with_layout(check_layout(cfg, ctx.world_size, dims, seq_len))  # device mesh of the checked degrees
    layout = ctx.layout
    micro = plan_micro_batch(tc, dims, seq_len, layout.as_parallel(), device)  # refuses what cannot fit, before any work
    model = build_model(cfg, train_data.vocab_size, device)
    wrapped = parallelize(model, ctx, tc)  # tensor parallel, checkpointing/compile, FSDP2 or DDP: from outside
    if micro is not None and device.type == "cuda" and tc.micro_batch_size == "auto" and not layout.sharded:
        micro = probe_micro_batch(lambda m: _probe(model, policy, m, seq_len, device), micro,
                                  [m for m in range(1, micro + 1) if tc.batch_size // layout.dp % m == 0])
    plan = BatchPlan(train_data.num_windows(seq_len), tc.batch_size, cfg.seed, ctx.dp_rank, ctx.dp_size, micro)
    optimizer = build_optimizer(model, tc)
    key = resume_key(cfg, dims, seq_len, shards_digest(train_data))

    start_step, nonfinite_in_row, skipped_total = 0, 0, 0
    path = resume_point(run, resume)
    if path is not None:
        _check_resumable(path, read_state(path, verify=False).get("resume_key", {}), key)
        if ctx.is_main:  # leftovers of a checkpoint write that was killed (an elastic restart)
            remove_stale_temporaries(run.checkpoints)
        state = load_training_checkpoint(path, model, optimizer, ctx)
        policy.load_state_dict(state.get("grad_scaler"))
        start_step = state["step"]
        nonfinite_in_row, skipped_total = state.get("nonfinite_in_row", 0), state.get("skipped_total", 0)
        info(f"resuming from {path} (step {start_step})")
    if start_step >= tc.max_steps:
        return {"steps": start_step, "resumed_from": start_step, "parameters": count_parameters(model)}

    metrics = MetricsLog(run.metrics, enabled=ctx.is_main, keep_through_step=start_step)
    flops_per_token = training_flops_per_token(model.dims, seq_len)
    peak = tc.peak_tflops * 1e12 if tc.peak_tflops else peak_flops(device, policy.dtype)
    tokens_per_step = tc.batch_size * seq_len
    eval_windows = tc.eval_batches * cfg.eval.batch_size

    def run_eval(step: int) -> dict:
        result = evaluate_loss(model, val_data, seq_len, batch_size=cfg.eval.batch_size,
                               max_windows=eval_windows, device=device, ctx=ctx)
        reshard(model)  # FSDP2: a forward without backward leaves the root's parameters gathered
        metrics.log(kind="eval", step=step, val_loss=result["loss"], val_perplexity=result["perplexity"],
                    val_bits_per_byte=result["bits_per_byte"])
        if on_eval is not None:
            on_eval(step, result)
        return result

    info(f"training {count_parameters(model):,} parameters for {tc.max_steps} steps with {tc.optimizer} "
         f"({tc.precision}): {tc.batch_size} x {seq_len} tokens per step, {plan.accumulation} micro-batch(es) of "
         f"{plan.micro_batch_size} per data-parallel rank, {layout.describe()} on {device}")
    last_loss, train_seconds = float("nan"), 0.0
    try:
        with loss_context(ctx):  # tensor parallel: the loss on vocabulary shards
            if start_step == 0:
                run_eval(0)
            model.train()
            with track("train", total=tc.max_steps, unit="step") as bar:
                bar.advance(start_step)
                for step in range(start_step, tc.max_steps):
                    t0 = time.perf_counter()
                    lr = learning_rate(step, tc)
                    loss, grad_norm, finite = train_step(wrapped, model, optimizer, plan, train_data, step, seq_len,
                                                         lr, tc.grad_clip, ctx, policy)
                    dt = time.perf_counter() - t0
                    bar.advance(1)
                    if finite:
                        nonfinite_in_row, last_loss, train_seconds = 0, loss, train_seconds + dt
                        record = dict(kind="train", step=step + 1, loss=loss, lr=lr, grad_norm=grad_norm,
                                      tokens=(step + 1) * tokens_per_step, tokens_per_s=tokens_per_step / dt,
                                      epoch=plan.epoch_of(step + 1), skipped_total=skipped_total)
                        if peak:
                            record["mfu"] = flops_per_token * record["tokens_per_s"] / (peak * ctx.world_size)
                        if device.type == "cuda":
                            record["memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
                        metrics.log(**record)
                        if (step + 1) % tc.log_every == 0 or step == start_step:
                            bar.set(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{record['tokens_per_s']:,.0f}")
                    elif policy.scaler is not None and math.isfinite(loss):  # fp16 overflow: the scaler backs off
                        skipped_total += 1
                        metrics.log(kind="skip", step=step + 1, loss=loss, grad_norm=grad_norm,
                                    skipped_total=skipped_total, reason="fp16 gradient overflow")
                    else:
                        nonfinite_in_row, skipped_total = nonfinite_in_row + 1, skipped_total + 1
                        metrics.log(kind="skip", step=step + 1, loss=loss, grad_norm=grad_norm,
                                    skipped_total=skipped_total)
                        if nonfinite_in_row >= tc.max_nonfinite_in_row:
                            raise TrainingError(
                                f"training stopped at step {step + 1}: {nonfinite_in_row} non-finite losses in a row "
                                f"(train.max_nonfinite_in_row={tc.max_nonfinite_in_row}); try a lower train.lr")

                    done = step + 1 == tc.max_steps
                    if (tc.eval_every and (step + 1) % tc.eval_every == 0) or done:
                        result = run_eval(step + 1)
                        bar.set(loss=f"{last_loss:.4f}", val=f"{result['loss']:.4f}")
                    if (step + 1) % tc.checkpoint_every == 0 or done:
                        save_training_checkpoint(run.checkpoint(step + 1), model, optimizer,
                                                 {"step": step + 1, "resume_key": key, "loss": loss,
                                                  "nonfinite_in_row": nonfinite_in_row,
                                                  "skipped_total": skipped_total,
                                                  "tokens": (step + 1) * tokens_per_step,
                                                  "grad_scaler": policy.state_dict()}, ctx)
                        if ctx.is_main:
                            prune_checkpoints(run.list_checkpoints(), tc.keep_checkpoints)
                        ctx.barrier()
    except (RuntimeError, MemoryError) as exc:
        if not is_out_of_memory(exc):
            raise
        raise out_of_memory_error(tc, dims, seq_len, plan.micro_batch_size, layout.as_parallel(), device) from None
    finally:
        metrics.close()
    steps_run = tc.max_steps - start_step - skipped_total
    return {
        "steps": tc.max_steps,
        "resumed_from": start_step,
        "final_loss": last_loss,
        "skipped_steps": skipped_total,
        "tokens_per_s": steps_run * tokens_per_step / train_seconds if train_seconds else None,
        "parameters": count_parameters(model),
    }


def train_step(wrapped: torch.nn.Module, model: torch.nn.Module, optimizer, plan: BatchPlan, data: TokenShards,
               step: int, seq_len: int, lr: float, grad_clip: float | None, ctx: DistContext,
               policy: PrecisionPolicy | None = None) -> tuple[float, float, bool]:
    """One optimizer update: forward + backward over the micro-batches, clip, step.

    Returns (mean loss over the global batch, gradient norm, whether the update was applied). A
    non-finite loss or gradient on any rank skips the update on every rank: weights and optimizer
    state stay exactly as they were.
    """
    policy = policy or precision_policy("fp32", ctx.device)
    for group in optimizer.param_groups:
        group["lr"] = lr
    micro_batches = plan.micro_batches(step)
    loss_sum = 0.0
    for i, indices in enumerate(micro_batches):
        batch = torch.from_numpy(data.windows(indices, seq_len)).to(ctx.device)  # (B, T+1)
        last = i == len(micro_batches) - 1
        with gradient_sync(wrapped, last):  # DDP / FSDP2 reduce gradients on the last micro-batch only
            with policy.autocast():
                loss = wrapped(batch[:, :-1], batch[:, 1:]) / plan.accumulation
            policy.backward(loss)
        loss_sum += scalar(loss)
    loss = ctx.all_reduce_sum([loss_sum])[0] / ctx.world_size  # tensor-parallel ranks hold the same loss
    policy.unscale(optimizer)
    grad_norm = clip_grad_norm_(model.parameters(), grad_clip or float("inf"))  # the norm over all shards
    finite = not ctx.any(not (math.isfinite(loss) and math.isfinite(grad_norm)))
    policy.step(optimizer, apply=finite)
    optimizer.zero_grad(set_to_none=True)
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    return loss, grad_norm, finite


def _probe(model: torch.nn.Module, policy: PrecisionPolicy, micro: int, seq_len: int, device: torch.device) -> None:
    """A forward and backward at ``micro`` x ``seq_len`` that leaves weights, gradients and RNG as they were."""
    rng = torch.cuda.get_rng_state(device)
    try:
        tokens = torch.zeros(micro, seq_len + 1, dtype=torch.long, device=device)
        with policy.autocast():
            loss = model(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
    finally:
        model.zero_grad(set_to_none=True)
        torch.cuda.set_rng_state(rng, device)
