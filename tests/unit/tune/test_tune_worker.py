"""The trial heartbeat: a locked database is retried and, after missed beats in a row, warned about (the trial
soon looks dead to other workers); any other storage error is not swallowed."""

import sqlite3
import time

import optuna
import pytest
from optuna.exceptions import StorageInternalError

from lmforge.tune.worker import _Heartbeat


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def heartbeats(db) -> list:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT trial_id FROM trial_heartbeats").fetchall()


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning",
                            "ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_locked_database_is_retried_and_warned_about(tmp_path, capsys):
    db = tmp_path / "study.db"
    # a beat every 20 ms that waits at most 20 ms for a lock
    storage = optuna.storages.RDBStorage(f"sqlite:///{db}", engine_kwargs={"connect_args": {"timeout": 0.02}},
                                         heartbeat_interval=0.02)
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    lock = sqlite3.connect(db, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # another process holds the database
    try:
        with _Heartbeat(storage, trial._trial_id, trial.number) as beat:
            wait_for(lambda: beat.failures >= 3)
            assert beat.thread.is_alive() and beat.error is None
            lock.execute("COMMIT")
            wait_for(lambda: beat.failures == 0)  # the next beat gets through
    finally:
        lock.close()
    assert heartbeats(db) == [(trial._trial_id,)]
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == ("warning: trial 0: the heartbeat could not be recorded 2 times in a row (database is locked); "
                        "other workers take the trial for dead after 0.04 s without one")
    assert len(lines) == 2 and lines[1].startswith("warning: trial 0: heartbeat recorded again after ")


class BrokenStorage:
    """A storage whose heartbeat write fails for a reason that retrying does not cure."""

    def __init__(self, error):
        self.error, self.calls = error, 0

    def get_heartbeat_interval(self):
        return 0.01

    def record_heartbeat(self, trial_id):
        self.calls += 1
        raise self.error


@pytest.mark.parametrize("error", [
    StorageInternalError("An exception is raised during the commit."),  # e.g. invalid data, not a busy database
    RuntimeError("a bug"),
])
def test_any_other_heartbeat_error_is_raised_when_the_trial_ends(error, capsys):
    storage = BrokenStorage(error)
    with pytest.raises(type(error)) as raised:
        with _Heartbeat(storage, 7) as beat:
            wait_for(lambda: not beat.thread.is_alive())  # the heartbeat stopped at the first such error
    assert raised.value is error and storage.calls == 1
    assert capsys.readouterr().err == ""
