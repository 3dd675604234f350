"""The search strategy from the recipe: Optuna's sampler and pruner, and how many trials the study runs.

Grid search does not use Optuna's GridSampler: its points are queued in the study once (each a WAITING
trial with fixed parameters) and workers take them from the queue, an atomic state change in the
database, so no point runs twice however many workers share the study.
"""

from __future__ import annotations

from lmforge.errors import TuneError
from lmforge.recipe import RunConfig

DEFAULT_TRIALS = 20


def check_strategy(cfg: RunConfig) -> None:
    """Reject a pruner that could never prune, before any trial runs."""
    pruner, train = cfg.tune.pruner, cfg.train
    if pruner.kind == "none":
        return
    if train.eval_every == 0:
        raise TuneError(f"tune.pruner.kind: {pruner.kind} needs validation during training; set train.eval_every > 0")
    if "train.max_steps" not in cfg.tune.space and train.eval_every >= train.max_steps:
        raise TuneError(f"tune.pruner.kind: {pruner.kind} never sees an intermediate loss: train.eval_every "
                        f"({train.eval_every}) must be smaller than train.max_steps ({train.max_steps})")
    if pruner.kind in ("successive_halving", "hyperband"):
        low = pruner.min_resource or train.eval_every
        high = pruner.max_resource or train.max_steps
        if low >= high:
            raise TuneError(f"tune.pruner.min_resource: the first rung ({low} steps) must be below "
                            f"{'tune.pruner.max_resource' if pruner.max_resource else 'train.max_steps'} ({high})")


def build_sampler(cfg: RunConfig, worker: int):
    """Seeded from the recipe; each worker gets its own seed so that workers do not draw the same points."""
    import optuna

    sc = cfg.tune.sampler
    seed = (cfg.seed if sc.seed is None else sc.seed) + worker
    if sc.kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=sc.n_startup_trials)
    return optuna.samplers.RandomSampler(seed=seed)  # grid: trials come from the queue with fixed values


def build_pruner(cfg: RunConfig):
    import optuna

    pc, train = cfg.tune.pruner, cfg.train
    if pc.kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=pc.n_startup_trials, n_warmup_steps=pc.n_warmup_steps)
    if pc.kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=pc.min_resource or train.eval_every,
                                                      reduction_factor=pc.reduction_factor)
    if pc.kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=pc.min_resource or train.eval_every,
                                              max_resource=pc.max_resource or train.max_steps,
                                              reduction_factor=pc.reduction_factor)
    return optuna.pruners.NopPruner()


def planned_trials(cfg: RunConfig, grid: list[dict] | None) -> int:
    """Trials the whole study runs (all workers together), not counting retries of killed trials."""
    if grid is not None:
        return min(len(grid), cfg.tune.n_trials or len(grid))
    return cfg.tune.n_trials or DEFAULT_TRIALS


def queue_grid(study, grid: list[dict]) -> int:
    """Queue every grid point not already in the study (a rerun queues nothing); returns how many."""
    have = {_key(t.system_attrs.get("fixed_params", t.params)) for t in study.get_trials(deepcopy=False)}
    added = 0
    for point in grid:
        if _key(point) not in have:
            study.enqueue_trial(point)
            added += 1
    return added


def _key(params: dict) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in params.items()))
