"""The train stage: in this process, or in the processes of a ``Launch`` through torchrun (each of them runs
``lmforge train --worker``, which calls ``train_worker``)."""

from __future__ import annotations

import json

from lmforge.core.atomic import atomic_write_json
from lmforge.core.progress import info, set_enabled, warn
from lmforge.distributed.context import Launch
from lmforge.distributed.layout import Layout, resolve_layout
from lmforge.errors import LmforgeError
from lmforge.recipe import RunConfig
from lmforge.rundir import RunDir
from lmforge.train.budget import (
    check_budget,
    loss_rose,
    packed_by,
    rose_message,
    token_budget,
    validation_trend,
)


def check_train(run: RunDir, cfg: RunConfig, launch: Launch, resume: bool) -> Layout | None:
    """Before anything is written: the parallel degrees fit the processes. With several processes and the
    token shards already there, the whole layout too, and (``resume``) the checkpoint to resume from, whose
    hashing is then not repeated before the launch (returned layout). A device the recipe names must be there
    (``train.device: cuda`` without CUDA is refused here, not after the run directory was written). A packed
    training split that cannot feed the run is refused here too (no sequence at all; with ``train.strict``,
    one smaller than a batch or a few steps' worth), unless the recipe makes it again; its warning is shown when
    the stage runs."""
    if packed_by(run, cfg):
        check_budget(token_budget(run, cfg), cfg.train.strict)
    if cfg.train.device == "cuda":
        from lmforge.core.device import pick_device

        pick_device(cfg.train.device)
    resolve_layout(cfg.parallel, launch.world_size)  # the degrees alone; the model is checked once it is known
    if launch.world_size > 1 and (run.tokens("train") / "index.json").exists():
        from lmforge.train.resume import preflight

        layout = preflight(run, cfg, launch.world_size, resume=resume, checkpoints=resume)
        return layout if resume else None
    return None


def run_train(run: RunDir, cfg: RunConfig, launch: Launch, resume: bool, layout: Layout | None = None,
              eval_extra=None) -> dict:
    """Train in this process, or in ``launch``'s processes through torchrun; returns the summary. ``layout``:
    the check already verified the checkpoint to resume from. ``eval_extra``: the loop's plug point for more
    figures at each validation (in this process; torchrun's workers build their own, ``lmforge train --worker``).
    A split too small for the run is refused or warned about first (``check_budget``: the check before it
    could not see a split that was packed after it ran); a validation loss that ended above the initial
    model's is flagged: the summary's ``warnings`` and ``val_loss_worse_than_initial``."""
    budget = token_budget(run, cfg)
    warning = check_budget(budget, cfg.train.strict)
    warnings = [warn(f"train: {warning}")] if warning else []
    summary = _train_processes(run, cfg, launch, resume, layout, eval_extra)
    if launch.node_rank != 0:
        return summary
    trend = validation_trend(run.metrics)
    rose = trend is not None and loss_rose(*trend)
    if trend is not None:
        summary |= {"val_loss_initial": trend[0], "val_loss_final": trend[1]}
    if rose:
        warnings.append(warn(f"train: {rose_message(*trend, cfg, budget)}"))
    if budget is not None:
        summary |= {"train_tokens": budget.tokens, "epochs": budget.epochs}
    return summary | {"val_loss_worse_than_initial": rose, "warnings": warnings}


def _train_processes(run: RunDir, cfg: RunConfig, launch: Launch, resume: bool, layout: Layout | None,
                     eval_extra) -> dict:
    if launch.world_size == 1 and launch.max_restarts == 0 and launch.rdzv_endpoint is None:  # in this process
        return train_worker(run, cfg, resume, eval_extra)
    from lmforge.distributed.context import launch_torchrun
    from lmforge.train.resume import preflight

    if layout is None:  # bad layout or checkpoint: refused before any process starts
        layout = preflight(run, cfg, launch.world_size, resume=resume)
    info(f"train: {layout.describe()} through torchrun")
    run.stage_summary("train").unlink(missing_ok=True)
    args = ["train", "--run-dir", str(run.root), "--worker"] + (["--resume"] if resume else [])
    code = launch_torchrun(launch, args)
    if code != 0:
        raise LmforgeError(f"training in {launch.world_size} processes failed (exit code {code}); "
                           "see the messages above")
    if launch.node_rank != 0:
        return {}  # node 0's rank 0 wrote the summary into the run directory the nodes share
    return json.loads(run.stage_summary("train").read_text())


def train_worker(run: RunDir, cfg: RunConfig, resume: bool, eval_extra=None) -> dict:
    """One training process (the only one, or one of torchrun's); rank 0 writes ``train/summary.json``."""
    from lmforge.distributed.context import init_distributed, shutdown
    from lmforge.train.loop import train

    ctx = init_distributed(cfg.train.device)
    if not ctx.is_main:
        set_enabled(False)
    try:
        result = train(run, cfg, ctx, resume=resume, eval_extra=eval_extra)
        if ctx.is_main:
            atomic_write_json(run.stage_summary("train"), result)
        return result
    finally:
        shutdown(ctx)
