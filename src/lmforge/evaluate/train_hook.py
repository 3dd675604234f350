"""``train.eval_tasks``: the tasks scored at every validation step of training, their headline metrics
(point estimates; intervals are the eval stage's) logged in the same ``metrics.jsonl`` record as the
validation loss, under ``<task>/<metric>``."""

from __future__ import annotations

from collections.abc import Callable

import torch

from lmforge.data.tokenizer import load_tokenizer
from lmforge.errors import LmforgeError
from lmforge.evaluate import task_metrics as tm
from lmforge.evaluate.config import BUILTIN
from lmforge.evaluate.report import HEADLINE
from lmforge.evaluate.task_eval import EvalSettings, check_task, score_task
from lmforge.evaluate.task_sources import builtin_tasks, load_user_tasks
from lmforge.recipe import RunConfig
from lmforge.rundir import RunDir


def check_eval_tasks(cfg: RunConfig, sharded: bool) -> list:
    """Before anything is written: the task files read and checked; a sharded model (FSDP2, tensor parallel)
    is refused, since the scorer runs the whole model in the main process."""
    if not cfg.train.eval_tasks:
        return []
    if sharded:
        raise LmforgeError("train.eval_tasks: tasks are scored in one process on the whole model; a sharded "
                           "layout (FSDP2 or tensor parallel) cannot; evaluate checkpoints with lmforge eval instead")
    return load_user_tasks(cfg.train.eval_tasks, "train.eval_tasks")


def eval_tasks_hook(run: RunDir, cfg: RunConfig) -> Callable[[int, torch.nn.Module], dict] | None:
    """``(step, model) -> {"<task>/<metric>": value}``, or None without ``train.eval_tasks``. Tasks and the
    tokenizer are read on first use (the built-in tasks are made into ``train/tasks/`` then)."""
    if not cfg.train.eval_tasks:
        return None
    settings = EvalSettings.of(cfg.eval)
    state: dict = {}

    def hook(step: int, model: torch.nn.Module) -> dict:
        if not state:
            tasks = load_user_tasks(cfg.train.eval_tasks, "train.eval_tasks")
            state["tokenizer"] = load_tokenizer(run.tokenizer)
            if BUILTIN in cfg.train.eval_tasks:
                tasks += builtin_tasks(run, run.stage_dir("train") / "tasks", cfg.seed, cfg.eval.builtin_examples,
                                       state["tokenizer"], model.dims.context_length)[0]
            for task in tasks:
                check_task(task, state["tokenizer"], model.dims.context_length)
            state["tasks"] = tasks
        device = next(model.parameters()).device
        out = {}
        for task in state["tasks"]:
            scored = score_task(model, state["tokenizer"], task, settings, device)
            point = tm.point_estimates(scored.outcome, scored.groups)
            out.update({f"{task.name}/{m}": point[m] for m in HEADLINE[task.kind] if m in point})
        return out

    return hook
