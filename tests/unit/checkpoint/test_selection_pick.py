"""The checkpoint eval.select chose is the loader's default and pruning never deletes it."""

import json

import pytest

from lmforge.checkpoint.formats import prune_checkpoints
from lmforge.checkpoint.load import pick, selected_checkpoint
from lmforge.errors import CheckpointError
from lmforge.rundir import RunDir


def fake_run(tmp_path, steps=(10, 20, 30)) -> RunDir:
    run = RunDir(tmp_path / "run")
    for step in steps:
        run.checkpoint(step).mkdir(parents=True)
        (run.checkpoint(step) / "state.json").write_text("{}")
    return run


def select(run: RunDir, step: int) -> None:
    run.selection.parent.mkdir(parents=True, exist_ok=True)
    path = run.checkpoint(step).relative_to(run.root)
    run.selection.write_text(json.dumps({"chosen": {"step": step, "path": str(path)}}))


def test_pick_defaults_to_the_selected_checkpoint(tmp_path):
    run = fake_run(tmp_path)
    assert pick(run) == run.checkpoint(30)
    with pytest.raises(CheckpointError, match="no checkpoint was selected"):
        pick(run, "selected")
    select(run, 10)
    assert pick(run) == pick(run, "selected") == run.checkpoint(10)
    assert pick(run, "latest") == run.checkpoint(30)


def test_a_selected_checkpoint_that_is_gone_is_an_error(tmp_path):
    run = fake_run(tmp_path)
    select(run, 20)
    (run.checkpoint(20) / "state.json").unlink()
    run.checkpoint(20).rmdir()
    with pytest.raises(CheckpointError, match="the selected checkpoint .* is gone"):
        pick(run)
    run.selection.write_text("not json")
    with pytest.raises(CheckpointError, match="unreadable selection"):
        selected_checkpoint(run)


def test_pruning_keeps_the_selected_checkpoint(tmp_path):
    run = fake_run(tmp_path, steps=(10, 20, 30, 40))
    prune_checkpoints(run.list_checkpoints(), 1, protect=run.checkpoint(20))
    assert [step for step, _ in run.list_checkpoints()] == [20, 40]
    prune_checkpoints(run.list_checkpoints(), 1)
    assert [step for step, _ in run.list_checkpoints()] == [40]
