"""How the pipeline runs the stages after sampling (its table's rows call these): each one the same work as its
command, checked and run when its turn comes (what it reads is made by the stages before it, so it cannot be
checked before the run starts). Each starts over when it runs: a later stage runs only when it is not done with
this recipe, and then what it wrote before is out of date (fine-tuning, with --resume, continues instead)."""

from __future__ import annotations

import shutil

from lmforge.core.device import pick_device
from lmforge.recipe import RunConfig
from lmforge.rundir import RunDir


def _device(cfg: RunConfig):
    return pick_device(cfg.train.device)


def finetune(run: RunDir, cfg: RunConfig, opts, checked) -> dict:
    from lmforge.distributed.context import init_distributed, shutdown
    from lmforge.transfer.stage import STAGE, check_finetune, run_finetune

    plan = check_finetune(run, cfg, opts.resume, redo=not opts.resume)
    if not opts.resume:
        shutil.rmtree(run.stage_dir(STAGE), ignore_errors=True)
    ctx = init_distributed(cfg.train.device)
    try:
        return run_finetune(run, cfg, ctx, plan, opts.resume)
    finally:
        shutdown(ctx)


def merge(run: RunDir, cfg: RunConfig, opts, checked) -> dict:
    from lmforge.merge.stage import check_merge, run_merge

    return run_merge(run, cfg, check_merge(run, cfg), _device(cfg))


def compress(run: RunDir, cfg: RunConfig, opts, checked) -> dict:
    from lmforge.compress.stage import check_compress, run_compress

    return run_compress(run, cfg, check_compress(run, cfg), _device(cfg))


def explain(run: RunDir, cfg: RunConfig, opts, checked) -> dict:
    from lmforge.explain.stage import check_explain, run_explain

    device = _device(cfg)
    return run_explain(run, cfg, check_explain(run, cfg, device), device)


def attack(run: RunDir, cfg: RunConfig, opts, checked) -> dict:
    from lmforge.attack.harden import attack_with_hardening

    return attack_with_hardening(run, cfg, _device(cfg), opts.resume)


def secure(run: RunDir, cfg: RunConfig, opts, checked) -> dict:
    from lmforge.secure.stage import check_secure, run_secure

    return run_secure(run, cfg, check_secure(run, cfg))


def report(run: RunDir, cfg: RunConfig, opts, checked) -> dict:
    """The run report of what is there now (it runs last, and every time)."""
    from lmforge.report.page import write_report
    from lmforge.report.runread import STAGE_ORDER

    path = write_report(run, STAGE_ORDER)
    return {"report": str(path.relative_to(run.root)), "bytes": path.stat().st_size}
