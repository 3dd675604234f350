"""The Ray executor (``data.executor: ray``): the same shards as the local executor, run as Ray tasks.

Each unfinished shard is one task of one CPU on any worker of the cluster. A task runs ``process_shard`` into a
scratch folder of its node and returns the shard's files as bytes; the driver writes them into its own
``data/work`` (atomically, the done marker last), so finished shards survive a driver crash and are skipped by a
rerun even when the workers are other machines. The inputs are not shipped: every node reads the shard's files
at the paths the driver resolved (a shared file system, or the same copy on every node); a task that finds a
file missing or of another size fails the run instead of counting it as unreadable. A task whose worker process
or node dies is run again, up to ``data.ray.max_retries`` times. Progress counts come back with each shard and
go to the same callback as the local executor's; results are handed back in shard order, so the output is the
local executor's byte for byte.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import ray

from lmforge.data.config import DataConfig
from lmforge.data.shard_work import ShardResult, is_done, load_shard, process_shard, read_shard_files, \
    store_shard_files
from lmforge.data.shards import Shard, worker_count
from lmforge.errors import LmforgeError

Progress = Callable[[str, int], None]
CONNECT_TIMEOUT_S = 5.0  # Ray itself waits minutes for a head node that does not answer
# Test hook: a folder; when it holds a file "arm", the first task to claim it writes its PID and shard index to
# "pid" and sleeps (a test SIGKILLs that worker in the middle of a shard; the retry finds the claim taken).
PAUSE_ENV = "LMFORGE_TEST_SHARD_PAUSE"


@contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Connected to the cluster of ``data.ray.address`` (None: a Ray instance on this machine started for the
    run) for the duration; a connection the caller made before is used and left open."""
    if ray.is_initialized():
        yield
        return
    target = _reachable(address)
    kwargs = {}
    given = os.environ.get("RAY_ADDRESS", "") if address == "auto" else address or ""
    client = "://" in given  # Ray Client: the cluster's own node addresses apply
    if not client and target is not None and target.rsplit(":", 1)[0] in ("127.0.0.1", "localhost"):
        kwargs["_node_ip_address"] = "127.0.0.1"  # a cluster started on loopback: Ray would use the LAN address
    if address is None:
        kwargs["include_dashboard"] = False
    try:
        ray.init(address="local" if address is None else address, logging_level="WARNING", log_to_driver=False,
                 **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise LmforgeError(f"data.ray.address: cannot connect to the Ray cluster at {address}: "
                           f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    try:
        yield
    finally:
        ray.shutdown()


def _reachable(address: str | None) -> str | None:
    """The cluster's host:port, checked to answer: one line in seconds where Ray would wait minutes."""
    if address is None:
        return None
    target = address.split("://", 1)[-1]
    if address == "auto":
        target = os.environ.get("RAY_ADDRESS", "").split("://", 1)[-1] or _found_cluster()
    host, _, port = target.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except (OSError, ValueError) as exc:
        raise LmforgeError(f"data.ray.address: no Ray cluster answers at {target} "
                           f"({getattr(exc, 'strerror', None) or exc} within {CONNECT_TIMEOUT_S:g} s)") from None
    return target


def _found_cluster() -> str:
    """``auto``: the cluster this machine last joined with ``ray start``, as Ray finds it."""
    from ray._private.services import canonicalize_bootstrap_address

    try:
        found = canonicalize_bootstrap_address("auto")
    except (ConnectionError, ValueError) as exc:
        found, why = None, f" ({str(exc).splitlines()[0]})"
    else:
        why = ""
    if found is None:
        raise LmforgeError(f"data.ray.address: auto found no Ray cluster on this machine{why}; start one with "
                           "`ray start --head`, or set RAY_ADDRESS")
    return found


class RayShardRunner:
    """``with RayShardRunner(shards, cfg, work) as runner: for result in runner.results(progress): ...``

    The interface of ``executor.ShardRunner``; needs a connection (``ray_session``). At most ``workers`` tasks
    are in flight at once (``data.workers``, "auto": the CPUs of the cluster); leaving the loop cancels the rest.
    """

    def __init__(self, shards: list[Shard], cfg: DataConfig, work: Path) -> None:

        self.shards, self.cfg, self.work = shards, cfg, work
        self.pending = [s for s in shards if not is_done(work, s.index)]
        self.workers = worker_count(cfg, len(self.pending), int(ray.cluster_resources().get("CPU", 1)))
        self._in_flight: dict = {}  # ObjectRef -> shard index

    def __enter__(self) -> RayShardRunner:
        return self

    def __exit__(self, *exc) -> None:
        for ref in self._in_flight:
            ray.cancel(ref, force=True)
        self._in_flight.clear()

    def results(self, progress: Progress) -> Iterator[ShardResult]:
        task = _run_shard.options(max_retries=self.cfg.ray.max_retries, num_cpus=1)
        config = self.cfg.model_dump(mode="json")
        queue = list(self.pending)
        for shard in self.shards:
            while not is_done(self.work, shard.index):
                while queue and len(self._in_flight) < self.workers:
                    nxt = queue.pop(0)
                    self._in_flight[task.remote(nxt.to_json(), _input_sizes(nxt), config)] = nxt.index
                ready, _ = ray.wait(list(self._in_flight), num_returns=1)
                index = self._in_flight.pop(ready[0])
                files, counts = self._get(ready[0], index)
                store_shard_files(self.work, index, files)
                for name, n in counts.items():
                    if n:
                        progress(name, n)
            yield load_shard(self.work, shard.index)

    def _get(self, ref, index: int) -> tuple[dict[str, bytes], dict[str, int]]:
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, LmforgeError):  # bad input found on the worker: the same one line as locally
                raise exc.cause from None
            raise
        except ray.exceptions.RayError as exc:  # workers or nodes that died, every attempt (or out of memory)
            raise LmforgeError(f"data.executor: ray: shard {index} failed after data.ray.max_retries="
                               f"{self.cfg.ray.max_retries} retries: {type(exc).__name__}: "
                               f"{(str(exc).strip().splitlines() or [''])[0]}") from None


def _input_sizes(shard: Shard) -> list[int]:
    """Each input file's size as the driver sees it (-1: missing), for the task to check its node sees the same."""
    sizes = []
    for name in shard.files:
        try:
            sizes.append(os.stat(name).st_size)
        except OSError:
            sizes.append(-1)
    return sizes


@ray.remote
def _run_shard(shard: dict, sizes: list[int], config: dict) -> tuple[dict[str, bytes], dict[str, int]]:
    """One shard on a worker: its files as bytes by suffix, and the progress counts by step."""
    _test_pause(shard["index"])
    node = socket.gethostname()
    for name, size in zip(shard["files"], sizes):
        try:
            here = os.stat(name).st_size
        except OSError:
            here = -1
        if here != size:
            seen = "missing" if here < 0 else f"of {here} bytes"
            expected = "it missing" if size < 0 else f"{size} bytes"
            raise LmforgeError(f"data.executor: ray: node {node} sees {name} {seen} where the driver sees {expected}: "
                            "the inputs must be readable at the same path on every node")
    cfg = DataConfig.model_validate(config)
    shard_obj = Shard(shard["index"], shard["source_index"], shard["root"], tuple(shard["files"]))
    counts: Counter = Counter()
    scratch = Path(tempfile.gettempdir()) / "lmforge-ray" / f"{ray.get_runtime_context().get_job_id()}-{shard['index']}"
    shutil.rmtree(scratch, ignore_errors=True)  # an earlier attempt of this task, killed on this node
    scratch.mkdir(parents=True)
    try:
        process_shard(shard_obj, cfg, scratch, lambda name, n: counts.update({name: n}))
        return read_shard_files(scratch, shard_obj.index), dict(counts)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _test_pause(index: int) -> None:
    folder = os.environ.get(PAUSE_ENV)
    if not folder or not os.path.exists(os.path.join(folder, "arm")):
        return
    try:
        fd = os.open(os.path.join(folder, "claimed"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return  # another task, or an earlier attempt of this one, took it
    os.close(fd)
    with open(os.path.join(folder, "pid.tmp"), "w") as f:
        f.write(f"{os.getpid()} {index}")
    os.replace(os.path.join(folder, "pid.tmp"), os.path.join(folder, "pid"))
    time.sleep(120)
