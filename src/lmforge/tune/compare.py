"""``lmforge optimizers compare``: every optimizer on the same token budget, each at a few learning rates.

Every run trains the recipe's model from the same seeded initial weights on the same batches (the batch
order is a function of the seed and step only), for the same number of steps and tokens; only
``train.optimizer`` and ``train.lr`` change. The learning rates are the optimizer's centre
(``train.lr`` times a per-optimizer ratio: Lion's sign updates want a smaller step, SGD a ~30x
larger one; see LR_RATIO) times each ``--lr-factors`` entry. A run that finished with the same settings is reused.

    runs/<name>/optimizers/
      <optimizer>_lr<lr>/   recipe.yaml, metrics.jsonl, result.json (each run; token shards are the run's)
      results.json, results.csv, loss_curves.png, recommendation.txt
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time

from lmforge.core import progress
from lmforge.core.atomic import atomic_write_json, atomic_write_text
from lmforge.core.metrics import read_metrics
from lmforge.errors import LmforgeError, RecipeError
from lmforge.recipe import RunConfig
from lmforge.rundir import RunDir, SharedDataRunDir
from lmforge.train.config import OPTIMIZERS

# centre learning rate = train.lr (tuned for AdamW) x this ratio. From a 5-point sweep (x0.1 .. x10) of the
# debug recipe, 60 steps: the best rates were AdamW 3e-3, Adam 9e-3, RMSprop 2.7e-3, SGD 0.27, Lion 3e-3,
# Adafactor 0.09 and Muon 0.03 (the last two at the sweep's edge); the centres lean to the literature's.
LR_RATIO = {"adamw": 1.0, "adam": 1.0, "rmsprop": 1.0, "sgd": 30.0, "lion": 0.3, "adafactor": 10.0, "muon": 3.0}



def plan_runs(cfg: RunConfig, optimizers: list[str], lr_factors: list[float]) -> list[tuple[str, float]]:
    unknown = [o for o in optimizers if o not in OPTIMIZERS]
    if unknown:
        raise RecipeError(f"--optimizers: unknown {', '.join(unknown)} (choose from {', '.join(OPTIMIZERS)})")
    if not optimizers or not lr_factors or any(not (f > 0 and math.isfinite(f)) for f in lr_factors):
        raise RecipeError("--optimizers and --lr-factors: give at least one optimizer and positive factors")
    return [(o, float(f"{cfg.train.lr * LR_RATIO[o] * f:.3g}")) for o in optimizers for f in sorted(set(lr_factors))]


def check_compare(cfg: RunConfig, optimizers: list[str], lr_factors: list[float], steps: int):
    """The runs to train, or a one-line error for bad names, factors or steps (before any work)."""
    if steps < 2:
        raise RecipeError(f"--steps: {steps} is too few to compare optimizers (at least 2)")
    return plan_runs(cfg, optimizers, lr_factors)


def run_compare(run: RunDir, cfg: RunConfig, *, optimizers: list[str], lr_factors: list[float], steps: int,
                device) -> dict:
    """Train every run (on the token shards the pipeline made), then write the report and ``summary.json``
    in ``<run>/optimizers/``; returns the summary (rows, settings, recommendation)."""
    from lmforge.data.packing import TokenShards
    from lmforge.estimate.memory import default_momentum
    from lmforge.train.config import sequence_length
    from lmforge.tune.compare_report import recommend, summarize, write_report

    results = compare_optimizers(run, cfg, optimizers=optimizers, lr_factors=lr_factors, steps=steps, device=device)
    dims = cfg.model.dims(TokenShards(run.tokens("train")).vocab_size)
    seq_len = sequence_length(cfg.train, dims.context_length)
    per_step = cfg.train.batch_size * seq_len
    momentum = {n: cfg.train.rmsprop.momentum if n == "rmsprop" else
                cfg.train.sgd.momentum if n == "sgd" else default_momentum(n) for n in optimizers}
    rows = summarize(results, dims, per_step, momentum)
    text = recommend(rows)
    settings = {"recipe": cfg.name, "steps": steps, "tokens_per_step": per_step, "tokens": steps * per_step,
                "batch_size": cfg.train.batch_size, "seq_len": seq_len, "lr_factors": lr_factors,
                "lr_centres": {n: cfg.train.lr * LR_RATIO[n] for n in optimizers}, "schedule": cfg.train.schedule,
                "precision": cfg.train.precision, "model": cfg.model.size, "seed": cfg.seed}
    out = run.stage_dir("optimizers")
    write_report(out, results, rows, text, settings)
    summary = {"rows": rows, "settings": settings, "recommendation": text}
    atomic_write_json(run.stage_summary("optimizers"), summary)
    return summary


def run_config(cfg: RunConfig, optimizer: str, lr: float, steps: int) -> RunConfig:
    raw = cfg.model_dump(mode="json")
    raw["train"].update(optimizer=optimizer, lr=lr, max_steps=steps, checkpoint_every=steps, keep_checkpoints=1,
                        warmup_steps=min(cfg.train.warmup_steps, steps - 1))
    raw["name"] = f"{cfg.name}-{optimizer}-lr{lr:g}"
    return RunConfig.model_validate(raw)


def compare_optimizers(run: RunDir, cfg: RunConfig, *, optimizers: list[str], lr_factors: list[float],
                       steps: int, device) -> list[dict]:
    """Train every (optimizer, learning rate) pair; returns one result per run (reused when already done)."""
    from lmforge.distributed.context import DistContext
    from lmforge.train.loop import train

    plan = check_compare(cfg, optimizers, lr_factors, steps)
    out = run.stage_dir("optimizers")
    results = []
    for i, (optimizer, lr) in enumerate(plan):
        run_cfg = run_config(cfg, optimizer, lr, steps)
        sub = SharedDataRunDir(out / f"{optimizer}_lr{lr:g}", run)
        key = hashlib.sha256(run_cfg.to_yaml().encode()).hexdigest()[:16]
        result_file = sub.root / "result.json"
        if result_file.exists() and json.loads(result_file.read_text()).get("config") == key:
            result = json.loads(result_file.read_text())
            progress.info(f"[{i + 1}/{len(plan)}] {optimizer} lr {lr:g}: done before, reused")
        else:
            shutil.rmtree(sub.root, ignore_errors=True)
            sub.root.mkdir(parents=True)
            atomic_write_text(sub.recipe, run_cfg.to_yaml())
            start = time.perf_counter()
            was = progress.is_enabled()
            progress.set_enabled(False)
            try:
                summary = train(sub, run_cfg, DistContext(device=device), resume=False)
                failure = None
            except LmforgeError as exc:  # diverged (too many non-finite losses): a result, not a crash
                summary, failure = {}, str(exc)
            finally:
                progress.set_enabled(was)
            shutil.rmtree(sub.checkpoints, ignore_errors=True)
            result = _result(sub, optimizer, lr, summary, failure, key, time.perf_counter() - start)
            atomic_write_json(result_file, result)
            best = result["best_val_loss"]
            progress.info(f"[{i + 1}/{len(plan)}] {optimizer} lr {lr:g}: "
                          + (f"best val loss {best:.4f}, " if best is not None else "")
                          + f"{result['tokens_per_s'] or 0:,.0f} tokens/s" + (f" ({failure})" if failure else ""))
        results.append(result)
    return results


def _result(sub: RunDir, optimizer: str, lr: float, summary: dict, failure: str | None, key: str,
            seconds: float) -> dict:
    records = read_metrics(sub.metrics)
    evals = [(r["step"], r["val_loss"]) for r in records if r.get("kind") == "eval" and _finite(r.get("val_loss"))]
    train_curve = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train"]
    return {
        "optimizer": optimizer, "lr": lr, "config": key, "failure": failure, "seconds": round(seconds, 2),
        "best_val_loss": min((v for _, v in evals), default=None),
        "final_val_loss": evals[-1][1] if evals else None,
        "tokens_per_s": summary.get("tokens_per_s"), "steps": summary.get("steps"),
        "val_curve": evals, "train_curve": train_curve,
    }


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
