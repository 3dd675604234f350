"""Studies on a PostgreSQL server shared by several ``lmforge tune`` processes (as on several machines, each
with its own run directory): they share one study without running any grid point twice, a process killed with
SIGKILL in the middle of a trial has that trial marked stale and retried once by the other, a grid study gives
the same trials and values as on SQLite, and a bad URL, a refused connection or a wrong database is one line
before any trial.

The server: LMFORGE_TEST_POSTGRES_URL (``.ci/run`` starts one on 127.0.0.1 and sets it); in CI (CI=true)
without it these tests fail. Elsewhere, without it, they start their own with ``.ci/postgres.sh``, or are
skipped where PostgreSQL is not installed. Each test gets a fresh database on that server."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from cli_errors import assert_error_line
from conftest import lmforge_process, run_cli
from test_tune import tune_recipe

pytestmark = pytest.mark.integration

URL_ENV = "LMFORGE_TEST_POSTGRES_URL"
SERVER_SCRIPT = Path(__file__).resolve().parents[2] / ".ci" / "postgres.sh"
LRS = [3.0e-2, 2.0e-2, 1.0e-2, 5.0e-3, 3.0e-3, 1.0e-3]
GRID = {"sampler": {"kind": "grid"}, "space": {"train.lr": {"type": "categorical", "choices": LRS}}}


@pytest.fixture(scope="session")
def postgres_server():
    """The URL of a PostgreSQL server on loopback whose user may create databases."""
    url = os.environ.get(URL_ENV)
    if url:
        yield url
        return
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"{URL_ENV} is not set: in CI, .ci/run starts PostgreSQL for these tests and sets it")
    folder = tempfile.mkdtemp(prefix="lmforge-pg.", dir="/tmp")  # the postgres user (when root) must reach it
    started = subprocess.run(["bash", str(SERVER_SCRIPT), "start", folder], capture_output=True, text=True)
    if started.returncode != 0:
        subprocess.run(["bash", str(SERVER_SCRIPT), "stop", folder], capture_output=True)
        pytest.skip(f"no PostgreSQL server to test on: {(started.stderr.strip().splitlines() or ['?'])[-1]}")
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(["bash", str(SERVER_SCRIPT), "stop", folder], capture_output=True)


def _libpq(url: str) -> str:
    """The SQLAlchemy URL as psycopg's connection string."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def pg_url(postgres_server):
    """A fresh, empty database on the server, dropped afterwards."""
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"lmforge_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_libpq(postgres_server), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield make_url(postgres_server).set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(_libpq(postgres_server), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def trial_states(url: str) -> dict[int, str]:
    import psycopg

    try:
        with psycopg.connect(_libpq(url)) as conn:
            return dict(conn.execute("SELECT number, state FROM trials").fetchall())
    except psycopg.errors.UndefinedTable:
        return {}  # not created yet


def rows(tune_dir: Path) -> list[dict]:
    return list(csv.DictReader((tune_dir / "trials.csv").open()))


def trial_dirs(tune_dir: Path) -> set[int]:
    return {int(p.name.split("_")[1]) for p in tune_dir.glob("trial_*")}


@pytest.fixture
def second_run(debug_data_run, tmp_path) -> Path:
    """Another copy of the prepared debug run: the second machine's run directory."""
    target = tmp_path / "second"
    shutil.copytree(debug_data_run, target)
    return target


def test_two_processes_share_one_study_without_duplicates(data_run, second_run, pg_url, tmp_path):
    # a longer heartbeat than the kill test's: no process dies here, and a loaded machine must not pass a live
    # trial for dead
    recipe = tune_recipe(tmp_path / "tune.yaml", {**GRID, "storage": pg_url, "heartbeat_s": 5}, max_steps=12)
    procs = [lmforge_process("tune", str(recipe), "--run-dir", str(run), "--quiet") for run in (data_run, second_run)]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    first, second = rows(data_run / "tune"), rows(second_run / "tune")
    assert first == second  # each process reports the whole study
    assert [r["state"] for r in first] == ["COMPLETE"] * len(LRS)
    assert sorted(float(r["train.lr"]) for r in first) == sorted(LRS)  # every point once, none twice
    # each process claimed its own worker number and ran trials, each in its own run directory
    by_worker = {w: {int(r["number"]) for r in first if r["worker"] == w} for w in ("0", "1")}
    assert by_worker["0"] and by_worker["1"] and by_worker["0"] | by_worker["1"] == set(range(len(LRS)))
    mine = {w: trial_dirs(run / "tune") for w, run in (("0", data_run), ("1", second_run))}
    assert mine in ({"0": by_worker["0"], "1": by_worker["1"]}, {"0": by_worker["1"], "1": by_worker["0"]})


def test_killed_process_has_its_trial_marked_and_retried_once_by_the_other(data_run, second_run, pg_url, tmp_path):
    recipe = tune_recipe(tmp_path / "tune.yaml", {**GRID, "storage": pg_url, "heartbeat_s": 1}, max_steps=12)
    victim = lmforge_process("tune", str(recipe), "--run-dir", str(data_run), "--quiet")
    other = lmforge_process("tune", str(recipe), "--run-dir", str(second_run), "--quiet")
    victim_dir = data_run / "tune"
    deadline = time.monotonic() + 120
    while True:  # kill the victim while one of its trials trains and grid points are still queued
        assert victim.poll() is None, victim.communicate()[1]
        assert time.monotonic() < deadline, "kill point never reached"
        states = trial_states(pg_url)
        training = [n for n, s in states.items() if s == "RUNNING"
                    and (victim_dir / f"trial_{n:05d}" / "train" / "metrics.jsonl").exists()]
        if training and "WAITING" in states.values():
            victim.send_signal(signal.SIGKILL)
            victim.communicate()
            break
        time.sleep(0.02)
    killed = training[0]
    assert trial_states(pg_url)[killed] == "RUNNING"  # left behind by the dead process

    out, err = other.communicate(timeout=300)
    assert other.returncode == 0, err
    table = rows(second_run / "tune")
    assert len(table) == len(LRS) + 1  # one retry, of the killed trial only
    stale = table[killed]
    assert stale["state"] == "FAIL"
    assert stale["reason"].startswith("stale: its process stopped without finishing (no heartbeat); retried as trial ")
    retry = table[int(stale["reason"].rsplit(" ", 1)[1])]
    assert retry["state"] == "COMPLETE" and retry["train.lr"] == stale["train.lr"]
    assert retry["worker"] != stale["worker"]  # the surviving process took it over
    complete = [r for r in table if r["state"] == "COMPLETE"]
    assert sorted(float(r["train.lr"]) for r in complete) == sorted(LRS)
    assert f"trials: {len(LRS) + 1} ({len(LRS)} complete, 0 pruned, 1 failed)" in out


def test_grid_study_gives_the_same_trials_and_values_as_on_sqlite(data_run, second_run, pg_url, tmp_path):
    # two parameters, a pruned trial and a failed one: lr 1e-6 learns nothing (pruned at step 2), seq_len 256
    # exceeds the debug model's context
    tune = {"sampler": {"kind": "grid"}, "pruner": {"kind": "median", "n_startup_trials": 1},
            "space": {"train.lr": {"type": "categorical", "choices": [1.0e-2, 1.0e-6]},
                      "train.seq_len": {"type": "categorical", "choices": [32, 256]}}}
    on_sqlite = tune_recipe(tmp_path / "sqlite.yaml", tune)
    on_postgres = tune_recipe(tmp_path / "postgres.yaml", {**tune, "storage": pg_url})
    for recipe, run in ((on_sqlite, data_run), (on_postgres, second_run)):
        code, out, err = run_cli("tune", str(recipe), "--run-dir", str(run))
        assert code == 0, err
    keys = ["number", "state", "value", "steps", "tokens", "train.lr", "train.seq_len", "reason"]
    sqlite_rows = [{k: r[k] for k in keys} for r in rows(data_run / "tune")]
    postgres_rows = [{k: r[k] for k in keys} for r in rows(second_run / "tune")]
    assert [r["state"] for r in sqlite_rows] == ["COMPLETE", "FAIL", "PRUNED", "FAIL"]
    assert postgres_rows == sqlite_rows  # the values to the last bit (as written in trials.csv)
    best = [[line for line in (run / "tune" / "best.yaml").read_text().splitlines() if not line.startswith("#")]
            for run in (data_run, second_run)]
    assert best[0] == best[1]  # the same best recipe (its header comment names the storage)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("storage, message", [
    ("postgresql+psycopg://lmforge:secret@127.0.0.1:{port}/optuna",
     'error: tune.storage: cannot connect to postgresql+psycopg://lmforge:***@127.0.0.1:{port}/optuna: connection '
     'failed: connection to server at "127.0.0.1", port {port} failed: Connection refused'),
    ("postgresql://lmforge:secret@127.0.0.1:notaport/optuna",
     "error: tune.storage: 'postgresql+psycopg://lmforge:***@127.0.0.1:notaport/optuna' is not a database URL "
     "(e.g. sqlite:///study.db or postgresql://user@host/db)"),
    ("postgres://lmforge:secret@127.0.0.1:{port}",
     "error: tune.storage: postgresql+psycopg://lmforge:***@127.0.0.1:{port} names no database; add one at the end "
     "(e.g. postgresql://user@host/optuna)"),
])
def test_bad_url_or_refused_connection_is_one_line_before_any_work(tmp_path, storage, message):
    port = _closed_port()
    recipe = tune_recipe(tmp_path / "bad.yaml", {**GRID, "storage": storage.format(port=port)})
    run_dir = tmp_path / "run"
    code, out, err = run_cli("tune", str(recipe), "--run-dir", str(run_dir))
    assert_error_line(code, err, message.format(port=port))
    assert not run_dir.exists()


def test_wrong_database_is_one_line_before_any_work(postgres_server, tmp_path):
    from sqlalchemy.engine import make_url

    url = make_url(postgres_server).set(database="no_such_db")
    recipe = tune_recipe(tmp_path / "bad.yaml", {**GRID, "storage": url.render_as_string(hide_password=False)})
    run_dir = tmp_path / "run"
    code, out, err = run_cli("tune", str(recipe), "--run-dir", str(run_dir))
    shown = url.render_as_string(hide_password=True)
    assert_error_line(code, err, f'error: tune.storage: cannot connect to {shown}: connection failed: connection to '
                                 f'server at "{url.host}", port {url.port} failed: FATAL: database "no_such_db" '
                                 "does not exist")
    assert not run_dir.exists()
