"""One trial: the recipe with the sampled values, trained in this process on the parent run's token shards.

A trial's directory ``<tune>/trial_00007/`` holds its recipe, metrics.jsonl and (only with
``tune.keep_trial_checkpoints``) its checkpoint. It is a ``SharedDataRunDir``: a RunDir whose token shards
and tokenizer are the parent run's, so trials never curate, tokenize or copy data.

The outcome is recorded on the Optuna trial as user attributes: ``tokens`` and ``steps`` trained,
``duration_s``, ``worker``, and ``fail_reason`` or ``prune_reason``. Nothing a trial raises (a bad
combination of values, non-finite losses, any exception) escapes to stop the study.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from pathlib import Path

from lmforge.core import progress
from lmforge.core.atomic import atomic_write_text
from lmforge.core.metrics import read_metrics
from lmforge.errors import LmforgeError
from lmforge.recipe import RunConfig
from lmforge.rundir import RunDir, SharedDataRunDir
from lmforge.tune.space import apply_params, suggest



class TrialFailed(Exception):
    """A trial cannot give a validation loss (raised inside the trial, recorded as its fail reason)."""


def trial_dir(tune_dir: Path, number: int) -> Path:
    return Path(tune_dir) / f"trial_{number:05d}"


@contextlib.contextmanager
def _quiet():
    """Trials train without their own bars and messages; the study shows one line per trial."""
    was = progress.is_enabled()
    progress.set_enabled(False)
    try:
        yield
    finally:
        progress.set_enabled(was)


def tokens_per_step(cfg: RunConfig) -> int:
    return cfg.train.batch_size * (cfg.train.seq_len or cfg.model.dims(vocab_size=1).context_length)


def run_trial(trial, cfg: RunConfig, order: list[str], parent: RunDir, tune_dir: Path):
    """Train one trial; returns (state, value) for ``study.tell``. Only KeyboardInterrupt escapes."""
    import optuna
    from optuna.trial import TrialState

    from lmforge.core.device import pick_device
    from lmforge.distributed.context import DistContext
    from lmforge.train.loop import train

    start = time.perf_counter()
    run = SharedDataRunDir(trial_dir(tune_dir, trial.number), parent)
    shutil.rmtree(run.root, ignore_errors=True)  # a number is never reused; this is only a leftover
    state, value, per_step, last = TrialState.FAIL, None, 0, {}
    try:
        params = suggest(trial, cfg.tune.space, order)
        trial_cfg = apply_params(cfg, params, f"{cfg.name}-trial{trial.number}")
        # one checkpoint at the end: a killed trial is rerun from its start, never resumed
        trial_cfg.train.checkpoint_every = trial_cfg.train.max_steps
        trial_cfg.train.keep_checkpoints = 1
        per_step = tokens_per_step(trial_cfg)
        atomic_write_text(run.recipe, trial_cfg.to_yaml())

        def on_eval(step: int, result: dict) -> None:
            loss = result["loss"]
            if not math.isfinite(loss):
                raise TrialFailed(f"non-finite validation loss at step {step}")
            last["loss"] = loss
            if step == 0:
                return  # the seeded initial model: nothing learned yet
            trial.report(loss, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step} by {cfg.tune.pruner.kind} (val_loss {loss:.4f})")

        with _quiet():
            train(run, trial_cfg, DistContext(device=pick_device(trial_cfg.train.device)), resume=False,
                  on_eval=on_eval)
        state, value = TrialState.COMPLETE, last["loss"]
    except optuna.TrialPruned as exc:
        state = TrialState.PRUNED
        trial.set_user_attr("prune_reason", str(exc))
    except (LmforgeError, TrialFailed) as exc:
        trial.set_user_attr("fail_reason", str(exc))
    except Exception as exc:  # noqa: BLE001 - any bug in a trial is recorded, the study goes on
        trial.set_user_attr("fail_reason", " ".join(f"{type(exc).__name__}: {exc}".split()))
    finally:
        steps = max((r.get("step", 0) for r in read_metrics(run.metrics) if r.get("kind") in ("train", "skip")),
                    default=0)
        trial.set_user_attr("steps", steps)
        trial.set_user_attr("tokens", steps * per_step)
        trial.set_user_attr("duration_s", round(time.perf_counter() - start, 2))
        if not cfg.tune.keep_trial_checkpoints:
            shutil.rmtree(run.checkpoints, ignore_errors=True)
    return state, value
