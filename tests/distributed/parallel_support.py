"""Helpers of the multi-process tests: the settings every layout trains with, the comparison with the
single-process reference run (fixture ``parallel_reference`` in tests/conftest.py), and a launcher for
several trainings in one torchrun process group (``train_jobs.py``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import PARALLEL_BASE
from lmforge.core.metrics import read_metrics


def settings(*extra: str) -> list[str]:
    """``--set`` arguments for the CLI: the reference run's settings plus ``extra``."""
    return [arg for assignment in (*PARALLEL_BASE, *extra) for arg in ("--set", assignment)]


def job(run_dir: Path, *extra: str, **options) -> dict:
    return dict(run_dir=str(run_dir), set=[*PARALLEL_BASE, *extra], **options)


def train_records(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir / "train" / "metrics.jsonl") if r["kind"] == "train"]


def assert_losses_match(run_dir: Path, reference: Path, *, tol: float = 1e-5, grad_norm_tol: float | None = None,
                        steps=range(1, 11)) -> None:
    """Per-step loss within ``tol`` and gradient norm (taken over all shards) within ``grad_norm_tol`` (default:
    ``tol``) of the reference run's; every step logged once (rank 0 alone writes)."""
    got = train_records(run_dir)
    assert [r["step"] for r in got] == list(range(1, max(steps) + 1)), f"{run_dir.name}: {[r['step'] for r in got]}"
    want = {r["step"]: r for r in train_records(reference)}
    for r in got:
        if r["step"] in steps:
            for key, bound in (("loss", tol), ("grad_norm", tol if grad_norm_tol is None else grad_norm_tol)):
                assert abs(r[key] - want[r["step"]][key]) <= bound, (run_dir.name, r["step"], key, r[key],
                                                                      want[r["step"]][key])


def max_loss_difference(run_dir: Path, reference: Path) -> float:
    """The largest per-step difference between two runs' training losses (the same steps in both)."""
    got, want = ({r["step"]: r["loss"] for r in train_records(d)} for d in (run_dir, reference))
    assert got.keys() == want.keys(), (run_dir.name, sorted(got), sorted(want))
    return max(abs(got[s] - want[s]) for s in got)


def run_jobs(nproc: int, jobs: list[dict], workdir: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``jobs`` (see train_jobs.py) one after another in one torchrun group of ``nproc`` processes."""
    spec = workdir / f"jobs_{nproc}.json"
    spec.write_text(json.dumps(jobs))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           str(Path(__file__).with_name("train_jobs.py")), str(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    return done
