"""``attack.harden``: robustness before and after adversarial fine-tuning. The recipe's ``finetune:`` is run again
with ``finetune.adversarial`` set to ``attack.harden`` into ``<run>/harden/`` (checkpoints, metrics, summary.json,
model.safetensors), and that model joins ``attack.compare``: both are attacked on the same examples and seeds."""

from __future__ import annotations

import shutil
from pathlib import Path

from lmforge.attack.config import AttackConfig
from lmforge.attack.stage import check_attack, run_attack
from lmforge.core.atomic import atomic_write_json
from lmforge.core.progress import info
from lmforge.distributed.context import init_distributed, shutdown
from lmforge.recipe import RunConfig
from lmforge.rundir import RunDir
from lmforge.transfer.config import FinetuneConfig
from lmforge.transfer.stage import FinetuneRunDir, check_finetune, run_finetune

FOLDER = "harden"


def hardened_model(run: RunDir) -> Path:
    return FinetuneRunDir(run, folder=FOLDER).model_file


def harden(run: RunDir, cfg: RunConfig, resume: bool = False) -> tuple[RunConfig, dict | None]:
    """With ``attack.harden``: fine-tune adversarially (over an earlier hardening unless ``resume``) and return the
    recipe with the hardened model in ``attack.compare`` and the fine-tuning's summary; without: ``cfg``, None."""
    ac = cfg.attack or AttackConfig()
    if ac.harden is None:
        return cfg, None
    fc = (cfg.finetune or FinetuneConfig()).model_copy(update={"adversarial": ac.harden})
    hcfg = cfg.model_copy(update={"finetune": fc})
    plan = check_finetune(run, hcfg, resume, redo=not resume, folder=FOLDER)
    if not resume:
        shutil.rmtree(run.root / FOLDER, ignore_errors=True)
    info(f"hardening: fine-tuning again with {ac.harden.method} adversarial training (epsilon {ac.harden.epsilon}) "
         f"into {run.root / FOLDER}")
    ctx = init_distributed(cfg.train.device)
    try:
        summary = run_finetune(run, hcfg, ctx, plan, resume)
    finally:
        shutdown(ctx)
    compare = [*ac.compare, str(hardened_model(run))]
    return cfg.model_copy(update={"attack": ac.model_copy(update={"compare": compare})}), summary


def attack_with_hardening(run: RunDir, cfg: RunConfig, device, resume: bool = False, plan=None) -> dict:
    """The attack stage: the attack checked first (``plan``, or checked here: bad settings are refused before
    minutes of hardening), the hardened model made when ``attack.harden`` asks for it, then every model attacked;
    returns the summary (with the hardening's fine-tuning summary under ``harden``)."""
    plan = plan or check_attack(run, cfg, device)
    cfg, hardening = harden(run, cfg, resume)
    if hardening is not None:
        plan = check_attack(run, cfg, device)
    summary = run_attack(run, cfg, plan)
    if hardening is not None:
        summary["harden"] = {k: hardening.get(k) for k in ("adversarial", "steps", "base_val_loss", "final_val_loss",
                                                           "model", "test")}
        atomic_write_json(run.stage_summary("attack"), summary)
    return summary
