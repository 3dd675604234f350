"""The local executor: shards run in worker processes, results handed back in shard order, resumable.
``data.executor: ray`` runs the same shards as Ray tasks instead (``ray_executor``, imported only then).

The work directory (``data/work``) holds each finished shard's files (``shard_work``) and ``plan.json``
with the plan's fingerprint. A rerun with the same recipe and inputs reuses every finished shard and
runs the rest; a different plan starts afresh. Shard files are written atomically and a shard counts as
finished only once its ``.json`` marker exists, so a kill at any moment loses at most the shards in
flight. Results come back in shard order whatever the number of workers, so the output is identical.
"""

from __future__ import annotations

import json
import multiprocessing
import queue as queue_module
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from lmforge.core.atomic import atomic_write_json, remove_stale_temporaries
from lmforge.data.config import DataConfig
from lmforge.data.shard_work import ShardResult, is_done, load_shard, process_shard
from lmforge.data.shards import Shard, worker_count
from lmforge.errors import LmforgeError

Progress = Callable[[str, int], None]
_POLL_SECONDS = 0.2
_worker_queue = None  # set in each worker process by _init_worker


def prepare_work(work: Path, fingerprint: str) -> None:
    """Keep ``work`` if it belongs to the same plan, else empty it; remove half-written files."""
    plan = work / "plan.json"
    try:
        same = json.loads(plan.read_text())["fingerprint"] == fingerprint
    except (OSError, ValueError, KeyError, TypeError):
        same = False
    if not same and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(work)
    if not same:
        atomic_write_json(plan, {"fingerprint": fingerprint})


@contextmanager
def executor_session(cfg: DataConfig) -> Iterator[None]:
    """Around the whole run: with ``data.executor: ray``, Ray is installed and connected to the cluster (checked
    before anything is written), and disconnected at the end."""
    if cfg.executor != "ray":
        yield
        return
    try:
        import ray  # noqa: F401
    except ImportError:
        raise LmforgeError("data.executor: ray needs Ray, which is not installed: pip install lmforge[ray]") from None
    from lmforge.data.ray_executor import ray_session

    with ray_session(cfg.ray.address):
        yield


def make_runner(shards: list[Shard], cfg: DataConfig, work: Path):
    """The runner of ``data.executor``: a ``ShardRunner`` or a ``RayShardRunner`` (the same interface)."""
    if cfg.executor == "ray":
        from lmforge.data.ray_executor import RayShardRunner

        return RayShardRunner(shards, cfg, work)
    return ShardRunner(shards, cfg, work)


class ShardRunner:
    """``with ShardRunner(shards, cfg, work) as runner: for result in runner.results(progress): ...``

    Every shard's result in shard order, the unfinished ones run by the worker pool; stop iterating to
    cancel the rest. Enter it before starting any thread (progress bars): the workers are forked there.
    """

    def __init__(self, shards: list[Shard], cfg: DataConfig, work: Path) -> None:
        self.shards, self.cfg, self.work = shards, cfg, work
        self.pending = [s for s in shards if not is_done(work, s.index)]
        self.workers = worker_count(cfg, len(self.pending))
        self._pool = self._queue = None

    def __enter__(self) -> ShardRunner:
        if self.workers > 1:
            # fork: no re-import of the caller's main module (spawn needs an `if __name__ == "__main__"` guard)
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            context = multiprocessing.get_context(method)
            self._queue = context.Queue()
            self._pool = context.Pool(self.workers, initializer=_init_worker, initargs=(self._queue,))
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._queue.close()

    def results(self, progress: Progress) -> Iterator[ShardResult]:
        if self._pool is None:
            for shard in self.shards:
                if not is_done(self.work, shard.index):
                    process_shard(shard, self.cfg, self.work, progress)
                yield load_shard(self.work, shard.index)
            return
        config = self.cfg.model_dump(mode="json")
        jobs = {s.index: self._pool.apply_async(_run_job, (s.to_json(), config, str(self.work))) for s in self.pending}
        for shard in self.shards:
            job = jobs.get(shard.index)
            while job is not None and not job.ready():
                job.wait(_POLL_SECONDS)
                _relay(self._queue, progress)
            if job is not None:
                job.get()  # re-raises a worker's exception here
            _relay(self._queue, progress)
            yield load_shard(self.work, shard.index)


def _relay(queue, progress: Progress) -> None:
    while True:
        try:
            name, n = queue.get_nowait()
        except (queue_module.Empty, OSError, ValueError):  # nothing waiting, or the queue is closed
            return
        progress(name, n)


def _init_worker(queue) -> None:
    global _worker_queue
    _worker_queue = queue


def _run_job(shard: dict, config: dict, work: str) -> None:
    cfg = DataConfig.model_validate(config)
    shard_obj = Shard(shard["index"], shard["source_index"], shard["root"], tuple(shard["files"]))
    process_shard(shard_obj, cfg, Path(work), lambda name, n: _worker_queue.put((name, n)) if n else None)
