"""`lmforge train --nproc 2` (torchrun, gloo, DDP) matches one process on the same global batch."""

import shutil

import pytest

from conftest import lmforge_run
from lmforge.core.metrics import read_metrics

pytestmark = pytest.mark.distributed

SETTINGS = ["--set", "train.max_steps=6", "--set", "train.batch_size=8", "--set", "train.eval_every=3",
            "--set", "train.checkpoint_every=3"]


def curve(run_dir, kind, key):
    return [(r["step"], r[key]) for r in read_metrics(run_dir / "train" / "metrics.jsonl") if r["kind"] == kind]


def test_two_processes_match_one(data_run, tmp_path):
    single = tmp_path / "single"
    shutil.copytree(data_run, single)
    one = lmforge_run("train", "--run-dir", str(single), *SETTINGS)
    assert one.returncode == 0, one.stderr
    two = lmforge_run("train", "--run-dir", str(data_run), "--nproc", "2", *SETTINGS,
                      "--set", "train.micro_batch_size=2")
    assert two.returncode == 0, two.stderr

    for kind, key in (("train", "loss"), ("eval", "val_loss")):
        a, b = curve(single, kind, key), curve(data_run, kind, key)
        assert [s for s, _ in a] == [s for s, _ in b] and len(a) >= 3
        for (_, x), (_, y) in zip(a, b):
            assert y == pytest.approx(x, abs=1e-5)
    # rank 0 alone writes: one metrics line per step, one set of checkpoints
    assert len(curve(data_run, "train", "loss")) == 6
    assert sorted(p.name for p in (data_run / "train" / "checkpoints").iterdir()) == ["step_00000003", "step_00000006"]
