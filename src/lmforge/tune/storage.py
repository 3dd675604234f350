"""Where a study lives: Optuna's RDB storage on SQLite in the run directory by default, or any SQLAlchemy
URL (PostgreSQL, MySQL) that several machines share.

SQLite is put in WAL mode with a long lock timeout so that several worker processes on one machine can
write to it. Every running trial records a heartbeat; a RUNNING trial whose heartbeat is older than
twice ``tune.heartbeat_s`` (its process was killed) is marked FAIL and its parameters are queued again,
once, so a rerun finishes it instead of losing it.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import warnings
from pathlib import Path

from lmforge.errors import TuneError
from lmforge.recipe import RunConfig

CONNECT_TIMEOUT_S = 5
SQLITE_LOCK_TIMEOUT_S = 120
FINGERPRINT_ATTR = "lmforge_fingerprint"


def storage_url(cfg: RunConfig, tune_dir: Path) -> str:
    return cfg.tune.storage or f"sqlite:///{(Path(tune_dir) / 'study.db').resolve()}"


def shown_url(url: str) -> str:
    """The URL with any password hidden, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL at all: show it as given
        return url


def _connect_args(url) -> dict:
    if url.get_backend_name() == "sqlite":
        return {"timeout": SQLITE_LOCK_TIMEOUT_S}
    if url.get_backend_name() in ("postgresql", "mysql", "mariadb"):
        return {"connect_timeout": CONNECT_TIMEOUT_S}
    return {}


def check_storage(url: str, timeout_s: float = 2 * CONNECT_TIMEOUT_S) -> None:
    """Connect once, within ``timeout_s``, so that a wrong or unreachable URL fails before any trial."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    shown = shown_url(url)
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise TuneError(f"tune.storage: {url!r} is not a database URL (e.g. sqlite:///study.db or "
                        "postgresql://user@host/db)") from None
    try:
        engine = sqlalchemy.create_engine(parsed, connect_args=_connect_args(parsed))
    except (ImportError, sqlalchemy.exc.NoSuchModuleError) as exc:
        raise TuneError(f"tune.storage: {shown}: the database driver is not installed ({exc})") from None
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
