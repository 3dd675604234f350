"""How the pipeline runs the stages after sampling (its table's rows call these): each one the same work as its
command, checked when its turn comes (what it reads is made by the stages before it, so it cannot be checked
before the run starts), before the pipeline forgets its earlier result. A later stage runs only when it is not
done with this recipe, and then starts over (fine-tuning, with --resume, continues instead)."""

from __future__ import annotations

import shutil

from lmforge.core.device import pick_device
from lmforge.recipe import RunConfig
from lmforge.rundir import RunDir


def _device(cfg: RunConfig):
    return pick_device(cfg.train.device)


def check_finetune(run: RunDir, cfg: RunConfig, opts):
    from lmforge.transfer.stage import check_finetune as check

    return check(run, cfg, opts.resume, redo=not opts.resume)  # without --resume, earlier checkpoints go


def finetune(run: RunDir, cfg: RunConfig, opts, plan) -> dict:
    from lmforge.distributed.context import init_distributed, shutdown
    from lmforge.transfer.stage import STAGE, run_finetune

    if not opts.resume:
        shutil.rmtree(run.stage_dir(STAGE), ignore_errors=True)
    ctx = init_distributed(cfg.train.device)
    try:
        return run_finetune(run, cfg, ctx, plan, opts.resume)
    finally:
        shutdown(ctx)


def check_merge(run: RunDir, cfg: RunConfig, opts):
    from lmforge.merge.stage import check_merge as check

    return check(run, cfg)


def merge(run: RunDir, cfg: RunConfig, opts, plan) -> dict:
    from lmforge.merge.stage import run_merge

    return run_merge(run, cfg, plan, _device(cfg))


def check_compress(run: RunDir, cfg: RunConfig, opts):
    from lmforge.compress.stage import check_compress as check

    return check(run, cfg)


def compress(run: RunDir, cfg: RunConfig, opts, plan) -> dict:
    from lmforge.compress.stage import run_compress

    return run_compress(run, cfg, plan, _device(cfg))


def check_explain(run: RunDir, cfg: RunConfig, opts):
    from lmforge.explain.stage import check_explain as check

    return check(run, cfg, _device(cfg))


def explain(run: RunDir, cfg: RunConfig, opts, plan) -> dict:
    from lmforge.explain.stage import run_explain

    return run_explain(run, cfg, plan, _device(cfg))


def check_attack(run: RunDir, cfg: RunConfig, opts):
    from lmforge.attack.stage import check_attack as check

    return check(run, cfg, _device(cfg))


def attack(run: RunDir, cfg: RunConfig, opts, plan) -> dict:
    from lmforge.attack.harden import attack_with_hardening

    return attack_with_hardening(run, cfg, _device(cfg), opts.resume, plan)


def check_secure(run: RunDir, cfg: RunConfig, opts):
    from lmforge.secure.stage import check_secure as check

    return check(run, cfg)


def secure(run: RunDir, cfg: RunConfig, opts, plan) -> dict:
    from lmforge.secure.stage import run_secure

    return run_secure(run, cfg, plan)


def report(run: RunDir, cfg: RunConfig, opts, checked) -> dict:
    """The run report of what is there now (it runs last, and every time)."""
    from lmforge.report.page import write_report
    from lmforge.report.runread import STAGE_ORDER

    path = write_report(run, STAGE_ORDER)
    return {"report": str(path.relative_to(run.root)), "bytes": path.stat().st_size}
