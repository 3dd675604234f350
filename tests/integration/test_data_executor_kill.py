"""The data executor killed with SIGKILL at a random moment and rerun gives byte-identical output."""

import os
import signal
import subprocess
import sys
import sysconfig
import time

import pytest

pytestmark = pytest.mark.integration

DRIVER = (
    "import sys\n"
    "from lmforge.core import progress\n"
    "from lmforge.data import DataConfig, curate\n"
    "progress.set_enabled(False)\n"
    "curate(DataConfig.model_validate_json(sys.argv[1]), 7, sys.argv[2])\n"
)


def config(workers: int) -> str:
    from lmforge.data import DataConfig

    stdlib = sysconfig.get_paths()["stdlib"]
    cfg = DataConfig(sources=[{"kind": "files", "path": stdlib, "pattern": "test/test_[a-k]*.py"}],
                     shard_mb=0.4, workers=workers, keep_work=True, report=False)
    return cfg.model_dump_json()


def curate_process(cfg: str, out) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", DRIVER, cfg, str(out)], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_killed_and_rerun_is_byte_identical(tmp_path):
    reference = curate_process(config(workers=1), tmp_path / "reference")
    out, work = tmp_path / "killed", tmp_path / "killed" / "work"
    proc = curate_process(config(workers=2), out)
    deadline = time.monotonic() + 60
    while proc.poll() is None and len(list(work.glob("shard_*.json"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the process and its workers, wherever they are
    assert proc.wait() == -signal.SIGKILL
    assert not (out / "train.jsonl").exists()
    finished = {p: p.stat().st_mtime_ns for p in work.glob("shard_*.json")}
    assert finished

    rerun = curate_process(config(workers=2), out)
    assert rerun.wait(timeout=120) == 0, rerun.stderr.read()
    assert reference.wait(timeout=120) == 0, reference.stderr.read()
    for name in ("train.jsonl", "val.jsonl"):
        assert (out / name).read_bytes() == (tmp_path / "reference" / name).read_bytes()
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in finished.items())  # reused, not redone
    assert len(list(work.glob("shard_*.json"))) > len(finished)
    assert not list(out.rglob("*.tmp-*"))
