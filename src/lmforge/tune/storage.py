"""Where a study lives: Optuna's RDB storage on SQLite in the run directory by default, or any SQLAlchemy
URL (PostgreSQL, MySQL) that several machines share.

SQLite is put in WAL mode with a long lock timeout so that several worker processes on one machine can
write to it. Every running trial records a heartbeat; a RUNNING trial whose heartbeat is older than
twice ``tune.heartbeat_s`` (its process was killed) is marked FAIL and its parameters are queued again,
once, so a rerun finishes it instead of losing it.

On PostgreSQL, processes that start together (on several machines) take turns, through an advisory lock,
at creating the tables, the study and the grid queue, and at claiming their worker numbers.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import re
import sqlite3
import threading
import warnings
from pathlib import Path

from lmforge.errors import TuneError
from lmforge.recipe import RunConfig

CONNECT_TIMEOUT_S = 5
SQLITE_LOCK_TIMEOUT_S = 120
FINGERPRINT_ATTR = "lmforge_fingerprint"
WORKERS_ATTR = "lmforge_workers"  # worker numbers handed out so far, over every process that joined the study
SERVERS = ("postgresql", "mysql", "mariadb")
SETUP_LOCK_KEY = 0x6C6D666F7267  # "lmforge": the PostgreSQL advisory lock taken while a process joins a study


def storage_url(cfg: RunConfig, tune_dir: Path) -> str:
    """tune.storage, or SQLite in the tune directory. ``postgresql://`` (and Heroku's ``postgres://``) get the
    psycopg 3 driver that ``lmforge[postgresql]`` installs, since SQLAlchemy would otherwise look for psycopg2."""
    url = cfg.tune.storage
    if url is None:
        return f"sqlite:///{(Path(tune_dir) / 'study.db').resolve()}"
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgresql", "postgres") and importlib.util.find_spec("psycopg") is not None:
        return f"postgresql+psycopg://{rest}"
    return url


def shown_url(url: str) -> str:
    """The URL with any password hidden, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy can read: hide what looks like a password
        return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


def _connect_args(url) -> dict:
    if url.get_backend_name() == "sqlite":
        return {"timeout": SQLITE_LOCK_TIMEOUT_S}
    if url.get_backend_name() in SERVERS:
        return {"connect_timeout": CONNECT_TIMEOUT_S}
    return {}


def check_storage(url: str, timeout_s: float = 2 * CONNECT_TIMEOUT_S) -> None:
    """Connect once, within ``timeout_s``, so that a wrong or unreachable URL fails before any trial."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    shown = shown_url(url)
    try:
        parsed = make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise TuneError(f"tune.storage: {shown!r} is not a database URL (e.g. sqlite:///study.db or "
                        "postgresql://user@host/db)") from None
    if parsed.get_backend_name() in SERVERS and not parsed.database:
        raise TuneError(f"tune.storage: {shown} names no database; add one at the end (e.g. "
                        "postgresql://user@host/optuna)")
    try:
        engine = sqlalchemy.create_engine(parsed, connect_args=_connect_args(parsed))
    except (ImportError, sqlalchemy.exc.NoSuchModuleError) as exc:
        hint = "; pip install 'lmforge[postgresql]'" if parsed.get_backend_name() == "postgresql" else ""
        raise TuneError(f"tune.storage: {shown}: the database driver is not installed ({exc}{hint})") from None
    outcome: list = []

    def connect() -> None:
        try:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT 1"))
            outcome.append(None)
        except Exception as exc:  # noqa: BLE001 - reported below as one line
            outcome.append(exc)
        finally:
            engine.dispose()  # in this thread: sqlite connections belong to the thread that opened them

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not outcome:
        raise TuneError(f"tune.storage: {shown}: no answer within {timeout_s:g} s (is the database server up?)")
    if outcome[0] is not None:
        exc = outcome[0]
        detail = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise TuneError(f"tune.storage: cannot connect to {shown}: {detail}")


def open_storage(url: str, heartbeat_s: int):
    """Optuna's RDB storage with heartbeats and one retry of trials whose process died."""
    import optuna
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        with sqlite3.connect(parsed.database, timeout=SQLITE_LOCK_TIMEOUT_S) as conn:
            conn.execute("PRAGMA journal_mode=WAL")  # persistent: readers no longer block the writer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
        return optuna.storages.RDBStorage(
            url, engine_kwargs={"connect_args": _connect_args(parsed), "pool_pre_ping": True},
            heartbeat_interval=heartbeat_s, grace_period=2 * heartbeat_s, heartbeat_stale_trial_callback=retry)


@contextlib.contextmanager
def setup_lock(url: str):
    """Held while a process creates or joins a study: on PostgreSQL, a session advisory lock, so that processes
    starting together neither race at creating the tables (CREATE TABLE is not safe to run concurrently there)
    nor queue the grid twice nor claim the same worker numbers. SQLite's processes share one machine, where
    ``--workers`` sets the study up once before they start, so it has no lock."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        yield
        return
    engine = sqlalchemy.create_engine(parsed, connect_args=_connect_args(parsed), poolclass=sqlalchemy.pool.NullPool,
                                      isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:  # the lock goes with this connection, even if the process dies
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": SETUP_LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": SETUP_LOCK_KEY})
    finally:
        engine.dispose()


def claim_workers(study, count: int) -> int:
    """The first of ``count`` worker numbers that no earlier process of this study had (call it inside
    ``setup_lock``): each worker seeds its sampler with its number, so processes on several machines draw
    different points, and the report tells their trials apart."""
    first = int(study.user_attrs.get(WORKERS_ATTR, 0))
    study.set_user_attr(WORKERS_ATTR, first + count)
    return first


def study_fingerprint(cfg: RunConfig) -> str:
    """What must not change while a study goes on: the data, the base recipe and the search space."""
    dump = cfg.model_dump(mode="json")
    payload = {k: dump[k] for k in ("seed", "data", "tokenizer", "pack", "model", "train")}
    payload["space"] = dump["tune"]["space"]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def study_name(cfg: RunConfig) -> str:
    return cfg.tune.study_name or cfg.name


def open_study(cfg: RunConfig, storage, url: str, sampler, pruner, *, create: bool):
    """Create the study or continue it; refuse one that was started with another recipe or space."""
    import optuna

    name = study_name(cfg)
    if create:
        study = optuna.create_study(storage=storage, study_name=name, direction="minimize", sampler=sampler,
                                    pruner=pruner, load_if_exists=True)
    else:
        study = optuna.load_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner)
    mine = study_fingerprint(cfg)
    found = study.user_attrs.get(FINGERPRINT_ATTR)
    if found is None and create:
        study.set_user_attr(FINGERPRINT_ATTR, mine)
    elif found != mine:
        raise TuneError(f"tune.study_name: study {name!r} in {shown_url(url)} was started with a different recipe "
                        "or search space; set tune.study_name to start a new study, or delete the old one "
                        f"(optuna delete-study --study-name {name} --storage URL)")
    return study
