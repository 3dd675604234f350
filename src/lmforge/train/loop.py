"""The training loop, top to bottom: forward, loss, backward, clip, step, log, eval, checkpoint.

Variants plug in from outside instead of adding branches here: ``loss_fn`` (default: the language-model
loss), ``init_from`` (a checkpoint or exported model whose weights replace the seeded initial ones) and
``trainable`` (which parameters train; the others are frozen) and ``adapt`` (changes the model from outside
after its initial weights, before ``trainable``: adapters such as LoRA) and ``batches`` (training samples and
validation from elsewhere than the token shards: fine-tuning's prompt/completion records). Parallelism wraps
the model from outside (``distributed.parallelize``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from lmforge.checkpoint.formats import prune_checkpoints, read_state
from lmforge.checkpoint.load import selected_checkpoint
from lmforge.checkpoint.training import load_training_checkpoint, save_training_checkpoint
from lmforge.core.atomic import remove_stale_temporaries
from lmforge.core.device import peak_flops
from lmforge.core.metrics import MetricsLog
from lmforge.core.progress import info, track
from lmforge.data.packing import TokenShards
from lmforge.distributed.context import DistContext
from lmforge.distributed.gradients import clip_grad_norm_, scalar
from lmforge.distributed.parallelize import gradient_sync, loss_context, parallelize, reshard
from lmforge.errors import CheckpointError, RecipeError, TrainingError
from lmforge.model.decoder import Decoder, count_parameters, training_flops_per_token
from lmforge.recipe import RunConfig
from lmforge.rundir import RunDir
from lmforge.train.batches import BatchPlan
from lmforge.train.config import sequence_length
from lmforge.train.memory import (
    is_out_of_memory,
    out_of_memory_error,
    plan_micro_batch,
    probe_micro_batch,
    release_memory,
)
from lmforge.train.optim import build_optimizer
from lmforge.train.precision import PrecisionPolicy, precision_policy
from lmforge.train.resume import check_layout, check_resumable, resume_key, resume_point, shards_digest
from lmforge.train.schedule import learning_rate
from lmforge.train.validation import evaluate_loss

# loss_fn(model, batch) -> the mean loss of a (B, T+1) batch of token windows; ``model`` is the wrapped
# (parallel) model, so gradient synchronisation happens inside its forward as usual
LossFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]
Trainable = Callable[[str, nn.Parameter], bool]
Adapt = Callable[[Decoder], None]  # changes the model in place (adapter layers around its projections)


class BatchSource(Protocol):
    """The ``batches`` plug point: samples that replace the token shards' windows. ``BatchPlan`` still picks
    the samples of step N from (seed, N), so resuming reads the same batches; ``loss_fn`` must take what
    ``windows`` returns (as a tensor)."""

    digest: str  # what the resume key records as the training data

    def num_windows(self, seq_len: int) -> int:
        """Training samples in one epoch."""

    def windows(self, indices, seq_len: int) -> np.ndarray:
        """The batch of samples ``indices``."""

    def evaluate(self, model: nn.Module, seq_len: int, *, batch_size: int, max_windows: int | None,
                 device: torch.device, ctx: DistContext) -> dict:
        """Validation figures, as ``evaluate_loss``'s (loss, perplexity, bits_per_byte, tokens)."""


def lm_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: the default loss."""
    return model(batch[:, :-1], batch[:, 1:])


def build_model(cfg: RunConfig, vocab_size: int, device: torch.device) -> Decoder:
    """The seeded initial model: the same recipe always gives the same initial weights."""
    torch.manual_seed(cfg.seed)
    return Decoder(cfg.model.dims(vocab_size)).to(device)


@dataclasses.dataclass
class Counters:
    """Where a run stands; saved in every checkpoint and restored on resume."""
    step: int = 0
    nonfinite_in_row: int = 0
    skipped_total: int = 0


@dataclasses.dataclass
class Trainer:
    """Everything one run trains with, built once by ``setup``."""
    cfg: RunConfig
    ctx: DistContext
    train_data: TokenShards | BatchSource  # where training batches come from
    val_data: TokenShards
    seq_len: int
    policy: PrecisionPolicy
    model: Decoder  # the single-device model (its parameters may be DTensors)
    wrapped: nn.Module  # what the forward runs through: DDP / FSDP2 / compiled parts
    plan: BatchPlan
    optimizer: torch.optim.Optimizer
    key: dict  # the resume key every checkpoint records
    loss_fn: LossFn
    batches: BatchSource | None = None
    parameters: int = 0  # of the whole model (a pipeline stage's process holds part of it)

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.train.batch_size * self.seq_len


def train(run: RunDir, cfg: RunConfig, ctx: DistContext, *, resume: bool,
          on_eval: Callable[[int, dict], None] | None = None, loss_fn: LossFn = lm_loss,
          eval_extra: Callable[[int, nn.Module], dict] | None = None,
          init_from: str | Path | None = None, trainable: Trainable | None = None, adapt: Adapt | None = None,
          batches: BatchSource | None = None, variant: dict | None = None) -> dict:
    """Train to ``train.max_steps``; returns a summary. ``variant`` describes what the plug points change
    (fine-tuning's mode and adapters): it joins the resume key, so a checkpoint resumes only under the same. ``on_eval(step, result)`` is called after every
    validation (hyperparameter search uses it to prune a trial by raising); ``eval_extra(step, model)`` runs
    before it in the main process and its figures join the validation record (``train.eval_tasks``). Memory
    is released after. ``train.adversarial`` wraps ``loss_fn`` (``train.adversarial``); its settings join the resume key."""
    if cfg.train.adversarial is not None:
        from lmforge.train.adversarial import adversarial_loss

        loss_fn = adversarial_loss(loss_fn, cfg.train.adversarial)
        variant = (variant or {}) | {"adversarial": cfg.train.adversarial.model_dump(mode="json")}
    try:
        return _train(run, cfg, ctx, resume=resume, on_eval=on_eval, eval_extra=eval_extra, loss_fn=loss_fn,
                      init_from=init_from, trainable=trainable, adapt=adapt, batches=batches, variant=variant)
    finally:
        release_memory()


def _train(run: RunDir, cfg: RunConfig, ctx: DistContext, *, resume: bool, on_eval, eval_extra, loss_fn: LossFn,
           init_from, trainable: Trainable | None, adapt: Adapt | None = None,
           batches: BatchSource | None = None, variant: dict | None = None) -> dict:
    tc = cfg.train
    t = setup(run, cfg, ctx, loss_fn=loss_fn, init_from=init_from, trainable=trainable, adapt=adapt, batches=batches,
              variant=variant)
    counters = restore(run, t, resume)
    start = counters.step
    if start >= tc.max_steps:
        return {"steps": start, "resumed_from": start, "parameters": t.parameters}
    metrics = MetricsLog(run.metrics, enabled=t.ctx.is_main, keep_through_step=start)
    meter = ThroughputMeter(t, tc.peak_tflops)

    def validate(step: int) -> dict:
        budget = dict(batch_size=cfg.eval.batch_size, max_windows=tc.eval_batches * cfg.eval.batch_size,
                      device=t.ctx.device, ctx=t.ctx)
        if t.batches is None:  # a pipeline's stages run the forward through its schedule
            result = evaluate_loss(t.wrapped if is_pipeline(t.wrapped) else t.model, t.val_data, t.seq_len, **budget)
        else:
            result = t.batches.evaluate(t.model, t.seq_len, **budget)
        reshard(t.model)  # FSDP2: a forward without backward leaves the root's parameters gathered
        extra = eval_extra(step, t.model) if eval_extra is not None and t.ctx.is_main else {}
        metrics.log(kind="eval", step=step, val_loss=result["loss"], val_perplexity=result["perplexity"],
                    val_bits_per_byte=result["bits_per_byte"], **extra)
        if on_eval is not None:
            on_eval(step, result)
        return result

    info(f"training {t.parameters:,} parameters for {tc.max_steps} steps with {tc.optimizer} "
         f"({tc.precision}): {tc.batch_size} x {t.seq_len} tokens per step, {t.plan.accumulation} micro-batch(es) "
         f"of {t.plan.micro_batch_size} per data-parallel rank, {t.ctx.layout.describe()} on {t.ctx.device}")
    last_loss = float("nan")
    try:
        with loss_context(t.ctx):  # tensor parallel: the loss on vocabulary shards
            if start == 0:
                validate(0)
            t.model.train()
            with track("train", total=tc.max_steps, unit="step") as bar:
                bar.advance(start)
                for step in range(start, tc.max_steps):
                    t0 = time.perf_counter()
                    lr = learning_rate(step, tc)
                    loss, grad_norm, finite = train_step(t.wrapped, t.model, t.optimizer, t.plan, t.train_data, step,
                                                         t.seq_len, lr, tc.grad_clip, t.ctx, t.policy, t.loss_fn)
                    dt = time.perf_counter() - t0
                    bar.advance(1)
                    counters.step = step + 1
                    if finite:
                        last_loss = loss
                        record = log_update(metrics, t, counters, meter, loss=loss, lr=lr, grad_norm=grad_norm, dt=dt)
                        if counters.step % tc.log_every == 0 or step == start:
                            bar.set(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{record['tokens_per_s']:,.0f}")
                    else:
                        log_skip(metrics, t, counters, loss=loss, grad_norm=grad_norm)
                    done = counters.step == tc.max_steps
                    if (tc.eval_every and counters.step % tc.eval_every == 0) or done:
                        bar.set(loss=f"{last_loss:.4f}", val=f"{validate(counters.step)['loss']:.4f}")
                    if counters.step % tc.checkpoint_every == 0 or done:
                        save(run, t, counters, loss)
    except (RuntimeError, MemoryError) as exc:
        if not is_out_of_memory(exc):
            raise
        raise out_of_memory_error(tc, t.model.dims, t.seq_len, t.plan.micro_batch_size, t.ctx.layout,
                                  t.ctx.device) from None
    finally:
        metrics.close()
    return {
        "steps": tc.max_steps,
        "resumed_from": start,
        "final_loss": last_loss,
        "skipped_steps": counters.skipped_total,
        "tokens_per_s": meter.tokens_per_s(),
        "parameters": t.parameters,
    }


def setup(run: RunDir, cfg: RunConfig, ctx: DistContext, *, loss_fn: LossFn = lm_loss, init_from=None,
          trainable: Trainable | None = None, adapt: Adapt | None = None,
          batches: BatchSource | None = None, variant: dict | None = None) -> Trainer:
    """Data, layout, memory plan, model (seeded, or ``init_from``; then ``adapt``), parallel wrapping, batches
    (the token shards' windows, or ``batches``), optimizer."""
    tc = cfg.train
    train_data, val_data = TokenShards(run.tokens("train")), TokenShards(run.tokens("val"))
    device = ctx.device
    dims = cfg.model.dims(train_data.vocab_size)
    seq_len = sequence_length(tc, dims.context_length)
    policy = precision_policy(tc.precision, device)
    ctx = ctx.with_layout(check_layout(cfg, ctx.world_size, dims, seq_len))  # device mesh of the checked degrees
    layout = ctx.layout
    if layout.pp > 1 and (loss_fn is not lm_loss or adapt is not None or trainable is not None or batches is not None):
        raise RecipeError(f"parallel.pp={layout.pp}: pipeline parallelism trains the language-model objective of "
                          "`lmforge train` only (no fine-tuning objectives, adapters, frozen parts or adversarial "
                          "training); use parallel.dp_shard or parallel.tp")
    # refuses what cannot fit, before any work; a pipeline splits each batch into parallel.pp_microbatches
    micro = plan_micro_batch(tc, dims, seq_len, layout, device) if layout.pp == 1 else None
    model = build_model(cfg, train_data.vocab_size, device)
    if init_from is not None:
        load_initial_weights(model, init_from)
    if adapt is not None:
        adapt(model)
    if trainable is not None:
        for name, p in model.named_parameters():
            p.requires_grad_(trainable(name, p))
    parameters = count_parameters(model)
    wrapped = parallelize(model, ctx, tc, cfg.parallel)  # pipeline, tensor parallel, checkpointing/compile, FSDP2 or DDP
    if is_pipeline(wrapped):
        model = wrapped.parts  # this process's stages: what the optimizer steps and checkpoints hold
    if micro is not None and device.type == "cuda" and tc.micro_batch_size == "auto" and not layout.sharded:
        micro = probe_micro_batch(lambda m: _probe(model, policy, m, seq_len, device), micro,
                                  [m for m in range(1, micro + 1) if tc.batch_size // layout.dp % m == 0])
    source = train_data if batches is None else batches
    plan = BatchPlan(source.num_windows(seq_len), tc.batch_size, cfg.seed, ctx.dp_rank, ctx.dp_size, micro)
    optimizer = build_optimizer(model, tc)
    digest = shards_digest(train_data) if batches is None else batches.digest
    key = resume_key(cfg, dims, seq_len, digest, None if init_from is None else str(init_from)) | (variant or {})
    return Trainer(cfg, ctx, source, val_data, seq_len, policy, model, wrapped, plan, optimizer, key, loss_fn, batches,
                   parameters)


def is_pipeline(wrapped: nn.Module) -> bool:
    from lmforge.distributed.pipeline import Pipeline

    return isinstance(wrapped, Pipeline)


def load_initial_weights(model: Decoder, source: str | Path) -> None:
    """Start from another model's weights (a checkpoint folder or an exported file) of the same dimensions
    (training-only settings such as dropout may differ); refused from its state alone, before tensors are read."""
    from lmforge.checkpoint.load import check_fits, checkpoint_dims, load_model

    check_fits(source, checkpoint_dims(source), model.dims, "the recipe's model")
    loaded = load_model(source)
    with torch.no_grad():
        for mine, theirs in zip(model.state_dict().values(), loaded.model.state_dict().values()):
            mine.copy_(theirs)


def restore(run: RunDir, t: Trainer, resume: bool) -> Counters:
    """Counters at the start: zero, or the checkpoint's after loading it (weights, optimizer, scaler, RNG)."""
    path = resume_point(run, resume)
    if path is None:
        if resume:  # --resume on a run that has no checkpoint yet: say that it starts over
            info(f"nothing to resume in {run.root}: no checkpoint; training from step 0")
        return Counters()
    check_resumable(path, read_state(path, verify=False).get("resume_key", {}), t.key)
    if t.ctx.is_main:  # leftovers of a checkpoint write that was killed (an elastic restart)
        remove_stale_temporaries(run.checkpoints)
    state = load_training_checkpoint(path, t.model, t.optimizer, t.ctx)
    t.policy.load_state_dict(state.get("grad_scaler"))
    info(f"resuming from {path} (step {state['step']})")
    return Counters(state["step"], state.get("nonfinite_in_row", 0), state.get("skipped_total", 0))


class ThroughputMeter:
    """Tokens/s and MFU of the updates applied in this invocation (skipped ones and earlier runs excluded)."""

    def __init__(self, t: Trainer, peak_tflops: float | None):
        self.per_step = t.tokens_per_step
        self.flops_per_token = training_flops_per_token(t.model.dims, t.seq_len)
        self.peak = peak_tflops * 1e12 if peak_tflops else peak_flops(t.ctx.device, t.policy.dtype)
        self.world_size = t.ctx.world_size
        self.steps, self.seconds = 0, 0.0

    def add(self, dt: float) -> dict:
        self.steps, self.seconds = self.steps + 1, self.seconds + dt
        figures = {"tokens_per_s": self.per_step / dt}
        if self.peak:
            figures["mfu"] = self.flops_per_token * figures["tokens_per_s"] / (self.peak * self.world_size)
        return figures

    def tokens_per_s(self) -> float | None:
        return self.steps * self.per_step / self.seconds if self.seconds else None


def log_update(metrics: MetricsLog, t: Trainer, counters: Counters, meter: ThroughputMeter, *, loss: float,
               lr: float, grad_norm: float, dt: float) -> dict:
    counters.nonfinite_in_row = 0
    step = counters.step
    figures = meter.add(dt)
    record = dict(kind="train", step=step, loss=loss, lr=lr, grad_norm=grad_norm, tokens=step * t.tokens_per_step,
                  tokens_per_s=figures["tokens_per_s"], epoch=t.plan.epoch_of(step), skipped_total=counters.skipped_total)
    if "mfu" in figures:
        record["mfu"] = figures["mfu"]
    if t.ctx.device.type == "cuda":
        record["memory_gb"] = torch.cuda.max_memory_allocated(t.ctx.device) / 2**30
    metrics.log(**record)
    return record


def log_skip(metrics: MetricsLog, t: Trainer, counters: Counters, *, loss: float, grad_norm: float) -> None:
    """An update not applied: an fp16 overflow (the scaler backs off), or a non-finite loss (too many in a
    row stop the run)."""
    counters.skipped_total += 1
    if t.policy.scaler is not None and math.isfinite(loss):
        metrics.log(kind="skip", step=counters.step, loss=loss, grad_norm=grad_norm,
                    skipped_total=counters.skipped_total, reason="fp16 gradient overflow")
        return
    counters.nonfinite_in_row += 1
    metrics.log(kind="skip", step=counters.step, loss=loss, grad_norm=grad_norm, skipped_total=counters.skipped_total)
    limit = t.cfg.train.max_nonfinite_in_row
    if counters.nonfinite_in_row >= limit:
        raise TrainingError(f"training stopped at step {counters.step}: {counters.nonfinite_in_row} non-finite losses "
                            f"in a row (train.max_nonfinite_in_row={limit}); try a lower train.lr")


def kept_selection(run: RunDir) -> Path | None:
    """The checkpoint eval.select chose, which pruning keeps (None: none chosen, or it is already gone)."""
    try:
        return selected_checkpoint(run)
    except CheckpointError:
        return None


def save(run: RunDir, t: Trainer, counters: Counters, loss: float) -> None:
    state = {"step": counters.step, "resume_key": t.key, "loss": loss, "nonfinite_in_row": counters.nonfinite_in_row,
             "skipped_total": counters.skipped_total, "tokens": counters.step * t.tokens_per_step,
             "grad_scaler": t.policy.state_dict()}
    save_training_checkpoint(run.checkpoint(counters.step), t.model, t.optimizer, state, t.ctx)
    if t.ctx.is_main:
        prune_checkpoints(run.list_checkpoints(), t.cfg.train.keep_checkpoints, protect=kept_selection(run))
    t.ctx.barrier()


def train_step(wrapped: torch.nn.Module, model: torch.nn.Module, optimizer, plan: BatchPlan,
               data: TokenShards | BatchSource,
               step: int, seq_len: int, lr: float, grad_clip: float | None, ctx: DistContext,
               policy: PrecisionPolicy | None = None, loss_fn: LossFn = lm_loss) -> tuple[float, float, bool]:
    """One optimizer update: forward + backward over the micro-batches, clip, step.

    Returns (mean loss over the global batch, gradient norm, whether the update was applied). A
    non-finite loss or gradient on any rank skips the update on every rank: weights and optimizer
    state stay exactly as they were.
    """
    policy = policy or precision_policy("fp32", ctx.device)
    for group in optimizer.param_groups:
        group["lr"] = lr
    micro_batches = plan.micro_batches(step)
    if is_pipeline(wrapped):  # the schedule splits the batch into parallel.pp_microbatches itself
        return _pipeline_step(wrapped, optimizer, data.windows(micro_batches[0], seq_len), grad_clip, ctx, policy)
    loss_sum = 0.0
    for i, indices in enumerate(micro_batches):
        batch = torch.from_numpy(data.windows(indices, seq_len)).to(ctx.device)  # (B, T+1) windows
        last = i == len(micro_batches) - 1
        with gradient_sync(wrapped, last):  # DDP / FSDP2 reduce gradients on the last micro-batch only
            with policy.autocast():
                loss = loss_fn(wrapped, batch) / plan.accumulation
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


def _pipeline_step(pipe, optimizer, windows: np.ndarray, grad_clip: float | None, ctx: DistContext,
                   policy: PrecisionPolicy) -> tuple[float, float, bool]:
    """``train_step`` through a pipeline: the schedule's forward and backward over the micro-batches; only the
    last stage's processes hold the loss, and the gradient norm is summed over the stages."""
    with policy.autocast():
        loss_sum = pipe.forward_backward(torch.from_numpy(windows).to(ctx.device))
    loss = ctx.all_reduce_sum([loss_sum])[0] / ctx.layout.stage_size  # the last stage's tp ranks hold the same loss
    grad_norm = pipe.clip_grad_norm_(grad_clip or float("inf"))
    finite = not ctx.any(not (math.isfinite(loss) and math.isfinite(grad_norm)))
    policy.step(optimizer, apply=finite)
    optimizer.zero_grad(set_to_none=True)
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
