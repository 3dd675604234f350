"""Curation on a real Ray cluster (``data.executor: ray``): a head and a worker node started with ``ray start`` on
127.0.0.1 (one CPU each) for this module. Every file curate writes equals the local executor's byte for byte; a
worker SIGKILLed in the middle of a shard has its task retried, with the same output; a driver SIGKILLed in the
middle of the run leaves its finished shards, which the rerun skips; an address where no cluster answers is one
line, quickly, with nothing written.

Ray is an optional extra: without it these tests are skipped, except in CI (CI=true), where they fail.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cli_errors import assert_error_line
from conftest import lmforge_run
from test_data_executor_kill import DRIVER  # curate(DataConfig JSON, seed 7, out dir)

pytestmark = pytest.mark.integration

PAUSE_ENV = "LMFORGE_TEST_SHARD_PAUSE"  # lmforge.data.ray_executor's test hook
# the same for every process whatever ~/.ray holds (a token there turns authentication on for `ray start --head`
# alone), and nothing written to the home folder
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
WORDS = ("river stone cloud lantern meadow copper signal harbor violet engine ember canyon orchard glass thunder "
         "quiet paper silver market winter falcon garden bridge candle the and of to in is that with for on a it was"
         ).split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def live_members(groups: set[int]) -> list[int]:
    """PIDs of the processes, not yet dead, in these process groups."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] not in ("Z", "X") and int(fields[2]) in groups:
            found.append(int(stat.parent.name))
    return found


def stop_groups(groups: set[int]) -> None:
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        for pid in live_members(groups):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while live_members(groups) and time.monotonic() < deadline:
            time.sleep(0.1)


@pytest.fixture(scope="module")
def cluster():
    """(GCS address, pause folder): a head node and one worker node, 1 CPU each, stopped at the end (every
    process of the two ``ray start`` sessions, and nothing else)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail("ray is not installed: in CI the Ray executor must be tested (pip install lmforge[ray])")
        pytest.skip("ray is not installed (pip install lmforge[ray])")
    folder = Path(tempfile.mkdtemp(prefix="lmray.", dir="/tmp"))  # short: Ray's socket paths have a length limit
    pause = folder / "pause"
    pause.mkdir()
    (folder / "tmp").mkdir()  # the workers' scratch folders (TMPDIR), removed with the rest
    address = f"127.0.0.1:{free_port()}"
    env = dict(os.environ, TMPDIR=str(folder / "tmp"), **RAY_ENV, **{PAUSE_ENV: str(pause)})
    env.pop("RAY_ADDRESS", None)
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--object-store-memory=100000000",
              "--disable-usage-stats", f"--temp-dir={folder / 'ray'}"]
    ray_bin = str(Path(sys.executable).with_name("ray"))
    groups: set[int] = set()
    try:
        for args in (["--head", f"--port={address.split(':')[1]}", "--include-dashboard=false"],
                     [f"--address={address}"]):
            # a session of its own: every daemon it leaves behind (and their workers) is in this process group
            proc = subprocess.Popen([ray_bin, "start", *args, *common], env=env, start_new_session=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            groups.add(proc.pid)
            out, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0, out
        yield address, pause
    finally:
        stop_groups(groups)
        left = live_members(groups)
        assert not left, f"Ray processes left running: {left}"
        shutil.rmtree(folder, ignore_errors=True)


def write_corpus(root: Path) -> None:
    """48 small text files: distinct ones, exact copies, near copies (one word changed) and too-short ones."""
    rng = random.Random(3)
    texts = [". ".join(" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(rng.randrange(12, 60))) + ".\n"
             for _ in range(36)]
    texts += texts[:5]  # exact duplicates
    texts += [t.replace(t.split()[3], "zebra", 1) for t in texts[5:10]]  # near duplicates
    texts += ["too short\n", "tiny\n"]
    root.mkdir(parents=True)
    for i, text in enumerate(texts):
        (root / f"doc_{i:03d}.txt").write_text(text)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ray_corpus") / "docs"
    write_corpus(root)
    return root


def config(corpus: Path, executor: str, address: str | None = None, retries: int = 3) -> str:
    from lmforge.data import DataConfig

    cfg = DataConfig(sources=[{"kind": "text", "path": str(corpus), "pattern": "*.txt"}], shard_mb=0.01,
                     workers=2, keep_work=True, write_dropped=True, report=True, executor=executor,
                     ray={"address": address, "max_retries": retries})
    return cfg.model_dump_json()


def curate_process(cfg: str, out: Path, **env) -> subprocess.Popen:
    environment = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | RAY_ENV | env
    return subprocess.Popen([sys.executable, "-c", DRIVER, cfg, str(out)], start_new_session=True, env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 120) -> None:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory) -> dict[str, bytes]:
    """Every file the local executor writes (data/work included) for the recipe and seed."""
    out = tmp_path_factory.mktemp("ray_reference") / "data"
    finish(curate_process(config(corpus, "local"), out))
    files = tree(out)
    assert {"train.jsonl", "val.jsonl", "stats.json", "dropped.jsonl", "summary.md"} <= set(files)
    assert len([name for name in files if name.startswith("work/") and name.endswith(".npz")]) >= 6
    return files


def wait_for(condition, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the driver ended first: {proc.stderr.read()}")
        assert time.monotonic() < deadline, "never reached"
        time.sleep(0.02)


def paused_worker(pause: Path) -> int:
    """The PID the paused shard task wrote, checked to be a Ray worker process."""
    pid = int((pause / "pid").read_text().split()[0])
    assert "ray::" in Path(f"/proc/{pid}/cmdline").read_text() or \
        "default_worker" in Path(f"/proc/{pid}/cmdline").read_text()
    return pid


def disarm(pause: Path) -> None:
    for name in ("arm", "claimed", "pid"):
        (pause / name).unlink(missing_ok=True)


def test_ray_output_is_the_local_executors_byte_for_byte(cluster, corpus, reference, tmp_path):
    address, _ = cluster
    out = tmp_path / "data"
    finish(curate_process(config(corpus, "ray", "auto"), out, RAY_ADDRESS=address))
    assert tree(out) == reference
    steps = {step["name"]: step["dropped"] for step in json.loads(reference["stats.json"])["steps"]}
    # the copies are in other shards than their originals: de-duplication ran across every shard
    assert steps["dedup_exact"] == {"duplicate": 5} and steps["dedup_minhash"] == {"near_duplicate": 5}


def test_no_address_starts_a_ray_instance_for_the_run_and_stops_it(cluster, corpus, reference, tmp_path):
    _, pause = cluster
    out = tmp_path / "data"
    # not the module's cluster (RAY_ADDRESS is unset); its files under the module's folder, removed at the end
    proc = curate_process(config(corpus, "ray", None), out, RAY_TMPDIR=str(pause.parent))
    finish(proc)
    assert tree(out) == reference
    assert live_members({proc.pid}) == []  # the instance it started ended with it


def test_worker_killed_in_a_shard_is_retried_with_the_same_output(cluster, corpus, reference, tmp_path):
    address, pause = cluster
    out = tmp_path / "data"
    (pause / "arm").touch()
    try:
        proc = curate_process(config(corpus, "ray", address), out)
        wait_for(lambda: (pause / "pid").exists(), proc)
        os.kill(paused_worker(pause), signal.SIGKILL)
        finish(proc)
    finally:
        disarm(pause)
    assert tree(out) == reference


def test_a_worker_killed_past_max_retries_fails_the_run_in_one_line(cluster, corpus, tmp_path):
    address, pause = cluster
    out = tmp_path / "data"
    (pause / "arm").touch()
    try:
        proc = curate_process(config(corpus, "ray", address, retries=0), out)
        wait_for(lambda: (pause / "pid").exists(), proc)
        index = int((pause / "pid").read_text().split()[1])
        os.kill(paused_worker(pause), signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        disarm(pause)
    assert proc.returncode == 1
    assert err.strip().splitlines()[-1].startswith(
        f"lmforge.errors.LmforgeError: data.executor: ray: shard {index} failed after data.ray.max_retries=0 "
        "retries: WorkerCrashedError: "), err
    assert not (out / "train.jsonl").exists() and (out / "work" / "plan.json").exists()  # finished shards kept


def test_rerun_after_the_driver_is_killed_skips_finished_shards(cluster, corpus, reference, tmp_path):
    address, pause = cluster
    out, work = tmp_path / "data", tmp_path / "data" / "work"
    (pause / "arm").touch()
    try:
        proc = curate_process(config(corpus, "ray", address), out)
        # one task sleeps in its shard while the other worker finishes shards, which the driver stores
        wait_for(lambda: (pause / "pid").exists() and len(list(work.glob("shard_*.json"))) >= 2, proc)
        worker = paused_worker(pause)  # before the driver dies: Ray then ends its workers (an exiting one has no
        # command line left to check)
        os.killpg(proc.pid, signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
        try:
            os.kill(worker, signal.SIGKILL)  # Ray ends a dead driver's workers too; do not wait for it
        except ProcessLookupError:
            pass
    finally:
        disarm(pause)
    assert not (out / "train.jsonl").exists()
    finished = {p: p.stat().st_mtime_ns for p in work.glob("shard_*.json")}
    total = len([name for name in reference if name.startswith("work/shard_") and name.endswith(".npz")])
    assert 2 <= len(finished) < total

    finish(curate_process(config(corpus, "ray", address), out))
    assert tree(out) == reference
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in finished.items())  # reused, not redone
    assert not list(out.rglob("*.tmp-*"))


def test_an_input_a_node_sees_otherwise_fails_the_run_in_one_line(cluster, tmp_path):
    """Every node reads the inputs at the driver's paths: one of another size there is an error, not a skip."""
    from lmforge.data import DataConfig
    from lmforge.data.shards import plan_shards

    address, pause = cluster
    own = tmp_path / "docs"
    write_corpus(own)
    out = tmp_path / "data"
    (pause / "arm").touch()
    try:
        cfg = config(own, "ray", address)
        proc = curate_process(cfg, out)
        wait_for(lambda: (pause / "pid").exists(), proc)
        index = int((pause / "pid").read_text().split()[1])
        target = Path(plan_shards(DataConfig.model_validate_json(cfg))[index].files[0])
        size = target.stat().st_size
        with open(target, "a") as f:
            f.write("changed after the plan\n")
        os.kill(paused_worker(pause), signal.SIGKILL)  # the retry finds the file changed
        _, err = proc.communicate(timeout=120)
    finally:
        disarm(pause)
    lines = err.strip().splitlines()
    assert proc.returncode == 1 and lines[-1] == (
        f"lmforge.errors.LmforgeError: data.executor: ray: node {socket.gethostname()} sees {target} of "
        f"{size + 23} bytes where the driver sees {size} bytes: the inputs must be readable at the same path on every node"), err
    assert not (out / "train.jsonl").exists()


def test_no_cluster_at_the_address_is_one_line_quickly_with_nothing_written(cluster, tmp_path):
    port = free_port()  # nothing listens there
    run_dir = tmp_path / "run"
    settings = ["--set", "data.executor=ray", "--set", f"data.ray.address=127.0.0.1:{port}"]
    line = f"error: data.ray.address: no Ray cluster answers at 127.0.0.1:{port} (Connection refused within 5 s)"
    started = time.monotonic()
    done = lmforge_run("data", "debug", "--run-dir", str(run_dir), "--quiet", *settings, timeout=60)
    assert time.monotonic() - started < 30  # Ray alone would wait minutes for the head node
    assert_error_line(done.returncode, done.stderr, line)
    # the data stage wrote nothing (recipe.yaml is the pipeline's record of the recipe, written before any stage)
    assert [p.name for p in run_dir.rglob("*")] == ["recipe.yaml"]
