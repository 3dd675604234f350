"""Knowledge distillation (Hinton et al. 2015) through the training loop's ``loss_fn`` plug point: the student
trains on the run's token shards with ``(1 - alpha) * CE + alpha * T^2 * KL(p_teacher^T || p_student^T)`` (or
the reverse KL), the teacher's logits computed on the fly for each batch; and its control, the same student from
the same seeded weights on the same batches with cross-entropy alone. Both are written under
``compress/<name>/`` and ``compress/<name>-ce/`` (their training runs: recipe, metrics, checkpoints)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.core.atomic import atomic_write_text
from lmforge.errors import CompressError
from lmforge.model.config import ModelConfig, ModelDims
from lmforge.model.decoder import Decoder, count_parameters
from lmforge.model.fused_ops import IGNORE_INDEX
from lmforge.recipe import RunConfig
from lmforge.rundir import RunDir, SharedDataRunDir


def student_dims(teacher: ModelDims, variant) -> ModelDims:
    """The teacher's dimensions with the variant's overrides (default: half its blocks, at least one)."""
    overrides = {k: v for k, v in variant.student.model_dump().items() if v is not None}
    if not overrides:
        overrides = {"n_layers": max(1, teacher.n_layers // 2)}
    if "n_heads" in overrides and "n_kv_heads" not in overrides:
        overrides["n_kv_heads"] = min(teacher.n_kv_heads, overrides["n_heads"])
    dims = dataclasses.replace(teacher, **overrides)
    try:  # the same shape rules as a recipe's model: section
        ModelConfig.describing(dims)
    except ValueError as exc:
        raise CompressError(f"compress.variants ({variant.name}).student: {str(exc).splitlines()[-1].strip()}") from None
    return dims


def check_student(teacher: ModelDims, variant, where: str) -> ModelDims:
    dims = student_dims(teacher, variant)
    with torch.device("meta"):
        ours, theirs = count_parameters(Decoder(dims)), count_parameters(Decoder(teacher))
    if ours >= theirs:
        raise CompressError(f"{where} ({variant.name}): the student ({ours:,} parameters) is not smaller than the "
                            f"teacher ({theirs:,})")
    return dims


def distillation_loss(teacher: nn.Module, alpha: float, temperature: float, reverse: bool):
    """The loop's ``loss_fn``: a batch (B, T+1) of token windows -> the distillation loss of the student."""
    def loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        inputs, targets = batch[:, :-1], batch[:, 1:]
        logits = model(inputs).float()  # (B, T, V)
        with torch.no_grad():
            teacher_logits = teacher(inputs).float()
        ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
        if alpha == 0:
            return ce
        student_t = F.log_softmax(logits / temperature, dim=-1)
        teacher_t = F.log_softmax(teacher_logits / temperature, dim=-1)
        if reverse:  # KL(student || teacher)
            kl = (student_t.exp() * (student_t - teacher_t)).sum(-1).mean()
        else:  # KL(teacher || student)
            kl = (teacher_t.exp() * (teacher_t - student_t)).sum(-1).mean()
        return (1 - alpha) * ce + alpha * temperature ** 2 * kl
    return loss


def student_config(cfg: RunConfig, dims: ModelDims, steps: int, lr: float | None) -> RunConfig:
    model = ModelConfig.describing(dims, init_std=cfg.model.init_std)
    train = cfg.train.model_copy(update={"max_steps": steps, "lr": lr or cfg.train.lr,
                                         "eval_tasks": [], "keep_checkpoints": 1})
    return cfg.model_copy(update={"model": model, "train": train})


def train_student(run: RunDir, cfg: RunConfig, folder: Path, dims: ModelDims, steps: int, lr: float | None, loss_fn,
                  device, init_from: Path | None = None, adapt=None) -> Path:
    """Train a model of ``dims`` (seeded, or from ``init_from``) in ``folder``, a run directory over the run's
    token shards; returns its latest checkpoint (a distilled student, its control, a pruned model's recovery)."""
    from lmforge.distributed.context import DistContext
    from lmforge.train.loop import lm_loss, train

    shutil.rmtree(folder, ignore_errors=True)  # compress is not resumable: every variant is made again
    sub = SharedDataRunDir(folder, run)
    scfg = student_config(cfg, dims, steps, lr)
    atomic_write_text(sub.recipe, scfg.to_yaml())
    train(sub, scfg, DistContext(device=device), resume=False, loss_fn=loss_fn or lm_loss, init_from=init_from,
          adapt=adapt)
    return sub.latest_checkpoint()[1]
