"""The loop every worker runs on a shared study: take a trial, train it with a heartbeat, record it.

Written with Optuna's ask/tell instead of ``study.optimize`` because the study has a shared budget
(trials and training tokens, counted in the database across workers), grid points are taken from the
study's queue without ever creating a new trial, and each outcome is recorded with its reason.

Trials left RUNNING by a killed process: a trial whose heartbeat is older than twice ``tune.heartbeat_s``
is marked FAIL (reason: stale) and its parameters are queued once more, so the next worker to look
finishes it. A worker with nothing left to start waits while other trials run (one of them might go
stale and come back to the queue), for at most four heartbeat periods without any change.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from lmforge.core.progress import console, info
from lmforge.recipe import RunConfig
from lmforge.rundir import RunDir
from lmforge.tune.trial import run_trial

FINISHED = ("COMPLETE", "PRUNED", "FAIL")


class Budget:
    """How much of the study is used up, read from the trials in the database (all workers)."""

    def __init__(self, n_trials: int, max_tokens: int | None):
        self.n_trials, self.max_tokens = n_trials, max_tokens

    @staticmethod
    def counted(trials) -> list:
        """Finished trials that use budget: a stale trial (its process was killed) is retried, not counted."""
        return [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")
                or (t.state.name == "FAIL" and t.user_attrs.get("fail_reason"))]

    @staticmethod
    def tokens(trials) -> int:
        return sum(int(t.user_attrs.get("tokens", 0)) for t in trials if t.state.name in FINISHED)

    def trials_left(self, trials) -> int:
        running = sum(t.state.name == "RUNNING" for t in trials)
        return self.n_trials - len(self.counted(trials)) - running

    def tokens_spent(self, trials) -> bool:
        return self.max_tokens is not None and self.tokens(trials) >= self.max_tokens


HEARTBEAT_WARN_AFTER = 2  # missed beats in a row: with one more, other workers may take the trial for dead


def _storage_unavailable(exc: BaseException) -> bool:
    """The database did not answer or was locked (Optuna wraps SQLAlchemy's OperationalError): worth a retry."""
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import OperationalError

    return isinstance(exc, OperationalError) or (
        isinstance(exc, StorageInternalError) and isinstance(exc.__cause__, OperationalError))


class _Heartbeat:
    """Records the trial's heartbeat every interval while it runs.

    A beat the database refuses for now (locked, connection lost) is retried at the next one, and a warning
    says so after HEARTBEAT_WARN_AFTER in a row, since the trial then soon looks dead to other workers. Any
    other error stops the heartbeat and is raised when the trial ends: it is a bug, not a busy database.
    """

    def __init__(self, storage, trial_id: int, number: int | None = None):
        self.storage, self.trial_id = storage, trial_id
        self.name = f"trial {trial_id if number is None else number}"
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)
        self.failures, self.error = 0, None

    def _beat(self) -> None:
        interval = self.storage.get_heartbeat_interval()
        while True:
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as exc:  # noqa: BLE001 - sorted below; a bug is kept for __exit__
                if not _storage_unavailable(exc):
                    self.error = exc
                    return
                self._missed(exc)
            else:
                if self.failures >= HEARTBEAT_WARN_AFTER:
                    _warn(f"{self.name}: heartbeat recorded again after {self.failures} failed attempts")
                self.failures = 0
            if self.stop.wait(interval):
                return

    def _missed(self, exc: BaseException) -> None:
        self.failures += 1
        if self.failures == HEARTBEAT_WARN_AFTER:
            cause = exc.__cause__ if exc.__cause__ is not None else exc
            detail = str(getattr(cause, "orig", None) or cause).splitlines()[0]
            grace = getattr(self.storage, "grace_period", None) or 2 * self.storage.get_heartbeat_interval()
            _warn(f"{self.name}: the heartbeat could not be recorded {self.failures} times in a row ({detail}); "
                  f"other workers take the trial for dead after {grace:g} s without one")

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.stop.set()
        self.thread.join()
        if self.error is not None and exc_type is None:
            raise self.error


def _warn(message: str) -> None:
    """A warning line on stderr, shown even while a trial trains without its own messages."""
    from rich.markup import escape

    console.print(f"[yellow]warning:[/yellow] {escape(message)}", soft_wrap=True)


def _fail_stale_trials(study) -> None:
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _pop_queued(study):
    """A queued (WAITING) trial, claimed atomically, or None: never creates a new trial."""
    import optuna
    from optuna.trial import TrialState

    storage = study._storage
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING):
                return optuna.Trial(study, frozen._trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def run_worker(study, cfg: RunConfig, order: list[str], parent: RunDir, tune_dir: Path, *, worker: int,
               budget: Budget, queue_only: bool, on_trial_end: Callable[[], None] | None = None) -> int:
    """Run trials until the study's budget is used up; returns how many trials this worker ran."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = study._storage
    patience = 4 * cfg.tune.heartbeat_s
    ran, idle_since = 0, None
    while True:
        _fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        if budget.tokens_spent(trials):
            break
        trial = None
        if budget.trials_left(trials) > 0:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Heartbeat of storage")  # we run heartbeats ourselves
                trial = _pop_queued(study) if queue_only else study.ask()
        if trial is None:
            others_running = any(t.state == TrialState.RUNNING for t in trials)
            idle_since = idle_since or time.monotonic()
            if not others_running or time.monotonic() - idle_since > patience:
                break
            time.sleep(min(1.0, cfg.tune.heartbeat_s))
            continue
        idle_since = None
        for inherited in ("fail_reason", "prune_reason", "interrupted"):  # a retry copies its original's
            if trial.user_attrs.get(inherited) is not None:
                trial.set_user_attr(inherited, None)
        trial.set_user_attr("worker", worker)
        try:
            with _Heartbeat(storage, trial._trial_id, trial.number):
                state, value = run_trial(trial, cfg, order, parent, tune_dir)
        except KeyboardInterrupt:
            _interrupted(study, trial)
            raise
        except UpdateFinishedTrialError:
            # another worker saw no heartbeat within the grace period (a stalled machine), marked this trial
            # FAIL and queued its values again: the retry owns the result now
            info(f"trial {trial.number}: marked stale by another worker while it ran; its retry takes over")
            continue
        study.tell(trial, value if state == TrialState.COMPLETE else None, state=state, skip_if_finished=True)
        ran += 1
        if on_trial_end is not None:
            on_trial_end()
    return ran


def _interrupted(study, trial) -> None:
    """Ctrl-C: record the trial as failed and queue its parameters again, like a stale one."""
    from optuna.trial import TrialState

    trial.set_user_attr("interrupted", True)
    frozen = study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
    retry = study._storage.get_heartbeat_stale_trial_callback()
    if retry is not None:
        retry(study, frozen)
