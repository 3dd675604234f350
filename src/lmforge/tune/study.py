"""A hyperparameter study, top to bottom: check the search space, the strategy and the storage (before any
work); on the parent run's token shards (made by the pipeline first), create or continue the study and claim
worker numbers (in turn with processes on other machines that join it); run its trials in this process or in N
worker processes sharing the storage; write the report."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lmforge.core import progress
from lmforge.core.atomic import atomic_write_text
from lmforge.errors import TuneError
from lmforge.recipe import RunConfig
from lmforge.rundir import RunDir
from lmforge.tune.report import reason, write_report
from lmforge.tune.space import check_space, grid_points
from lmforge.tune.storage import (check_storage, claim_workers, open_storage, open_study, setup_lock, shown_url,
                                  storage_url, study_name)
from lmforge.tune.strategy import build_pruner, build_sampler, check_strategy, planned_trials, queue_grid
from lmforge.tune.worker import FINISHED, Budget, run_worker


@dataclasses.dataclass
class Plan:
    order: list[str]
    grid: list[dict] | None
    url: str
    trials: int


def plan_study(cfg: RunConfig, tune_dir: Path) -> Plan:
    """Every check that needs no data: the space, the pruner, the storage. Raises TuneError."""
    order = check_space(cfg)
    check_strategy(cfg)
    grid = grid_points(cfg.tune.space, order) if cfg.tune.sampler.kind == "grid" else None
    url = storage_url(cfg, tune_dir)
    if cfg.tune.storage is None:
        Path(tune_dir).mkdir(parents=True, exist_ok=True)
    check_storage(url)
    return Plan(order, grid, url, planned_trials(cfg, grid))


def run_study(run: RunDir, cfg: RunConfig, *, workers: int = 1, tune_dir: Path | None = None,
              plan: Plan | None = None) -> dict:
    """Run (or continue) the study of ``cfg.tune`` on ``run``'s token shards (the pipeline has made them);
    returns the report's summary. ``plan``: ``plan_study``'s, when it already ran."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tune_dir = Path(tune_dir or run.stage_dir("tune"))
    plan = plan or plan_study(cfg, tune_dir)
    with setup_lock(plan.url):
        storage = open_storage(plan.url, cfg.tune.heartbeat_s)
        study = open_study(cfg, storage, plan.url, None, build_pruner(cfg), create=True)  # sampler: below
        if plan.grid is not None:
            queue_grid(study, plan.grid)
        first = claim_workers(study, workers)
    study.sampler = build_sampler(cfg, first)  # seeded by the worker number, claimed above
    progress.info(f"tune: study {study_name(cfg)!r} in {shown_url(plan.url)}: {plan.trials} trials, "
                  f"{cfg.tune.sampler.kind} sampler, {cfg.tune.pruner.kind} pruner, {workers} worker(s)")
    with study_view(study, plan.trials) as view:
        if workers == 1:
            run_worker(study, cfg, plan.order, run, tune_dir, worker=first,
                       budget=Budget(plan.trials, cfg.tune.max_tokens), queue_only=plan.grid is not None,
                       on_trial_end=view.update)
            failed = []
        else:
            failed = _run_worker_processes(run, cfg, tune_dir, range(first, first + workers), view)
    summary = write_report(study, cfg, tune_dir, plan.url)
    if failed:
        raise TuneError(f"{len(failed)} worker(s) stopped with an error ({'; '.join(failed)}); the report of the "
                        f"finished trials is in {tune_dir}; run lmforge tune again to continue the study")
    return summary


def run_worker_process(run: RunDir, cfg: RunConfig, tune_dir: Path, worker: int) -> int:
    """One of the ``--workers`` processes: join the study the parent created and run trials."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    plan = plan_study(cfg, tune_dir)
    storage = open_storage(plan.url, cfg.tune.heartbeat_s)
    study = open_study(cfg, storage, plan.url, build_sampler(cfg, worker), build_pruner(cfg), create=False)
    budget = Budget(plan.trials, cfg.tune.max_tokens)
    return run_worker(study, cfg, plan.order, run, tune_dir, worker=worker, budget=budget,
                      queue_only=plan.grid is not None)


def _run_worker_processes(run: RunDir, cfg: RunConfig, tune_dir: Path, workers: range, view) -> list[str]:
    """Start a process on this machine for each worker number, show their trials as they finish, wait for them
    all."""
    recipe = tune_dir / "recipe.yaml"
    atomic_write_text(recipe, cfg.to_yaml())
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // len(workers))))
    procs = []
    for k in workers:
        log = tune_dir / f"worker_{k}.log"
        with open(log, "w") as out:
            cmd = [sys.executable, "-m", "lmforge", "tune", str(recipe), "--run-dir", str(run.root),
                   "--tune-dir", str(tune_dir), "--worker-id", str(k), "--quiet"]
            procs.append((k, log, subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)))
    try:
        while any(p.poll() is None for _, _, p in procs):
            view.update()
            time.sleep(1.0)
    except KeyboardInterrupt:
        for _, _, p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)  # each worker records its trial as interrupted and queues it again
        for _, _, p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        raise
    return [f"worker {k}: exit code {p.returncode}, see {log}" for k, log, p in procs if p.returncode != 0]


class _View:
    def __init__(self, study, bar):
        self.study, self.bar = study, bar
        self.seen = {t.number for t in study.get_trials(deepcopy=False) if t.state.name in FINISHED}
        bar.advance(len(Budget.counted(study.get_trials(deepcopy=False))))
        self.best = None

    def update(self) -> None:
        trials = self.study.get_trials(deepcopy=False)
        counted = {t.number for t in Budget.counted(trials)}
        for t in trials:
            if t.state.name not in FINISHED or t.number in self.seen:
                continue
            self.seen.add(t.number)
            progress.info(trial_line(t))
            if t.number in counted:
                self.bar.advance(1)
            if t.state.name == "COMPLETE" and (self.best is None or t.value < self.best):
                self.best = t.value
                self.bar.set(best=f"{t.value:.4f}")


@contextlib.contextmanager
def study_view(study, total: int):
    """One progress bar for the study and one line per finished trial, read from the database."""
    with progress.track("tune", total=total, unit="trial") as bar:
        view = _View(study, bar)
        yield view
        view.update()


def format_params(params: dict) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def trial_line(t) -> str:
    from rich.markup import escape

    value = f"{t.value:.4f}" if t.state.name == "COMPLETE" else "-"
    why = reason(t, {})
    tokens = t.user_attrs.get("tokens") or 0
    return (f"trial {t.number:>3}  {t.state.name:<8} {value:>8}  {escape(format_params(t.params))}  {tokens:,} tokens"
            + (f"  [dim]{escape(why)}[/dim]" if why else ""))
