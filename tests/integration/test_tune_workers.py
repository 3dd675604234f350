"""Studies in SQLite shared across processes: ``lmforge tune`` killed with SIGKILL in the middle of a trial
and run again continues the study without repeating finished trials (the killed one is retried), and two
worker processes on one SQLite file share the grid without running any point twice."""

import csv
import signal
import sqlite3
import time

import pytest

from conftest import lmforge_process, run_cli
from test_tune import tune_recipe

pytestmark = pytest.mark.integration

LRS = [3.0e-2, 1.0e-2, 3.0e-3, 1.0e-3]
GRID = {"sampler": {"kind": "grid"}, "heartbeat_s": 1,
        "space": {"train.lr": {"type": "categorical", "choices": LRS}}}


def trials(db) -> dict[int, str]:
    try:
        with sqlite3.connect(db, timeout=30) as conn:
            return dict(conn.execute("SELECT number, state FROM trials"))
    except sqlite3.OperationalError:
        return {}  # not created yet


def rows(tune_dir) -> list[dict]:
    return list(csv.DictReader((tune_dir / "trials.csv").open()))


def test_sigkill_and_rerun_continues_without_repeating(data_run, tmp_path):
    recipe = tune_recipe(tmp_path / "tune.yaml", GRID, max_steps=10)
    tune_dir = data_run / "tune"
    db = tune_dir / "study.db"
    proc = lmforge_process("tune", str(recipe), "--run-dir", str(data_run))
    deadline = time.monotonic() + 120
    while True:  # kill while a trial trains, after at least one finished
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "kill point never reached"
        states = trials(db)
        running = [n for n, s in states.items() if s == "RUNNING"]
        started = running and (tune_dir / f"trial_{running[0]:05d}" / "train" / "metrics.jsonl").exists()
        if "COMPLETE" in states.values() and started:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            break
        time.sleep(0.02)
    before = trials(db)
    killed = [n for n, s in before.items() if s == "RUNNING"]
    finished = {n for n, s in before.items() if s == "COMPLETE"}
    assert len(killed) == 1 and finished

    code, out, err = run_cli("tune", str(recipe), "--run-dir", str(data_run))
    assert code == 0, err
    table = rows(tune_dir)
    complete = [r for r in table if r["state"] == "COMPLETE"]
    assert sorted(float(r["train.lr"]) for r in complete) == sorted(LRS)  # every point once, none twice
    assert finished <= {int(r["number"]) for r in complete}  # finished trials were kept, not rerun
    stale = table[killed[0]]
    assert stale["state"] == "FAIL"
    assert stale["reason"].startswith("stale: its process stopped without finishing (no heartbeat); retried as trial ")
    retry = table[int(stale["reason"].rsplit(" ", 1)[1])]
    assert retry["state"] == "COMPLETE" and retry["train.lr"] == stale["train.lr"]
    assert len(table) == len(LRS) + 1


def test_two_workers_share_one_sqlite_study_without_duplicates(data_run, tmp_path):
    lrs = [3.0e-2, 2.0e-2, 1.0e-2, 5.0e-3, 3.0e-3, 1.0e-3]
    space = {"train.lr": {"type": "categorical", "choices": lrs}}
    # no process dies here: a longer heartbeat keeps a loaded machine from passing a live trial for dead
    recipe = tune_recipe(tmp_path / "tune.yaml", {**GRID, "space": space, "heartbeat_s": 5}, max_steps=8)
    code, out, err = run_cli("tune", str(recipe), "--run-dir", str(data_run), "--workers", "2")
    assert code == 0, err
    tune_dir = data_run / "tune"
    table = rows(tune_dir)
    assert [r["state"] for r in table] == ["COMPLETE"] * len(lrs)
    assert sorted(float(r["train.lr"]) for r in table) == sorted(lrs)
    assert {r["worker"] for r in table} == {"0", "1"}  # both processes took trials
    assert (tune_dir / "worker_0.log").exists() and (tune_dir / "worker_1.log").exists()
    assert "trials: 6 (6 complete, 0 pruned, 0 failed)" in out
