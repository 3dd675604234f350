"""One trial, trained by the real training loop on the prepared debug data (4 steps of 2 x 32 tokens): every
outcome is recorded with its reason and the tokens it trained, and nothing a trial raises escapes (the study
goes on). Only the failures that a few steps of real training cannot be made to produce use a stand-in loop."""

import json
import math

import optuna
import pytest
from optuna.trial import TrialState

import lmforge.train.loop as loop
from lmforge.core import progress
from lmforge.core.metrics import read_metrics
from lmforge.rundir import RunDir, SharedDataRunDir
from lmforge.tune.space import check_space
from lmforge.tune.storage import open_storage
from lmforge.tune.trial import run_trial
from lmforge.tune.worker import Budget, run_worker
from tune_recipes import SHORT, SHORT_TOKENS_PER_STEP, tune_config

SPACE = {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
         "model.d_model": {"type": "categorical", "choices": [40, 64]},
         "model.n_heads": {"type": "categorical", "choices": [4, 8]}}
PARAMS = {"train.lr": 1e-3, "model.d_model": 64, "model.n_heads": 4}


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial):
        return True


def fake_train(evals, steps=2, error=None):
    """A stand-in for train(): logs ``steps`` train records, calls on_eval with each (step, loss), may raise."""
    def train(run, cfg, ctx, *, resume, on_eval=None):
        run.metrics.parent.mkdir(parents=True, exist_ok=True)
        run.metrics.write_text("".join(json.dumps({"kind": "train", "step": s + 1}) + "\n" for s in range(steps)))
        for step, loss in evals:
            on_eval(step, {"loss": loss})
        if error is not None:
            raise error
        return {}
    return train


def config(**tune):
    return tune_config(SPACE, train=SHORT, **tune)


def one_trial(data_dir, tmp_path, pruner=None, params=None, **tune):
    """Run trial 0 of a fresh study on ``data_dir``'s shards; returns (state, value, frozen trial, its folder)."""
    cfg = config(**tune)
    study = optuna.create_study(pruner=pruner or optuna.pruners.NopPruner())
    study.enqueue_trial(params or PARAMS)
    trial = study.ask()
    state, value = run_trial(trial, cfg, check_space(cfg), RunDir(data_dir), tmp_path / "tune")
    return state, value, study.trials[0], tmp_path / "tune" / "trial_00000"


def logged(folder, kind: str) -> dict[int, dict]:
    """The trial's metrics.jsonl records of one kind, by step."""
    return {r["step"]: r for r in read_metrics(RunDir(folder).metrics) if r.get("kind") == kind}


@pytest.mark.parametrize("keep", [False, True])
def test_complete_trial_records_its_last_validation_loss_and_tokens(debug_data_run, tmp_path, keep):
    state, value, frozen, folder = one_trial(debug_data_run, tmp_path, keep_trial_checkpoints=keep)
    evals = logged(folder, "eval")
    assert sorted(evals) == [0, 2, 4] and sorted(logged(folder, "train")) == [1, 2, 3, 4]
    assert (state, value) == (TrialState.COMPLETE, evals[4]["val_loss"])
    # every validation but the untrained model's is reported to the pruner
    assert frozen.intermediate_values == {2: evals[2]["val_loss"], 4: evals[4]["val_loss"]}
    attrs = frozen.user_attrs
    assert attrs["steps"] == 4 and attrs["tokens"] == 4 * SHORT_TOKENS_PER_STEP
    assert "fail_reason" not in attrs and "prune_reason" not in attrs
    assert "lr: 0.001" in (folder / "recipe.yaml").read_text()
    assert logged(folder, "train")[1]["lr"] == pytest.approx(1e-3)  # trained with the sampled value (no warm-up)
    # the trial's one checkpoint (at its end) is dropped unless tune.keep_trial_checkpoints
    own = RunDir(folder)
    assert own.list_checkpoints() == ([(4, own.checkpoint(4))] if keep else [])
    assert own.checkpoints.exists() == keep


def test_pruned_trial_stops_training_and_records_where_and_why(debug_data_run, tmp_path):
    state, value, frozen, folder = one_trial(debug_data_run, tmp_path, AlwaysPrune())
    assert (state, value) == (TrialState.PRUNED, None)
    assert sorted(logged(folder, "train")) == [1, 2]  # training stopped at the first reported validation
    loss = logged(folder, "eval")[2]["val_loss"]
    assert frozen.user_attrs["prune_reason"] == f"pruned at step 2 by none (val_loss {loss:.4f})"
    assert frozen.user_attrs["steps"] == 2 and frozen.user_attrs["tokens"] == 2 * SHORT_TOKENS_PER_STEP
    assert not RunDir(folder).checkpoints.exists()


@pytest.mark.parametrize("train, reason", [
    (fake_train([(0, 6.2), (2, math.nan)]), "non-finite validation loss at step 2"),
    (fake_train([(0, 6.2)], error=RuntimeError("boom\n  at line 3")), "RuntimeError: boom at line 3"),
    (fake_train([], error=loop.TrainingError("training stopped at step 2: 5 non-finite losses in a row")),
     "training stopped at step 2: 5 non-finite losses in a row"),
])
def test_failed_trial_records_the_reason(monkeypatch, tmp_path, train, reason):
    monkeypatch.setattr(loop, "train", train)
    state, value, frozen, _ = one_trial(tmp_path / "run", tmp_path)
    assert (state, value) == (TrialState.FAIL, None)
    assert frozen.user_attrs["fail_reason"] == reason
    assert frozen.user_attrs["steps"] == 2 and frozen.user_attrs["tokens"] == 2 * SHORT_TOKENS_PER_STEP


def test_a_bad_combination_fails_as_a_trial(tmp_path):
    state, _, frozen, _ = one_trial(tmp_path / "run", tmp_path,
                                    params={"train.lr": 1e-3, "model.d_model": 40, "model.n_heads": 8})
    assert state == TrialState.FAIL
    assert frozen.user_attrs["fail_reason"] == ("recipe debug-trial0: model: head dimension d_model/n_heads = 5 must "
                                                "be even (rotary embeddings)")
    assert frozen.user_attrs["tokens"] == 0


def test_trial_run_dir_reads_the_parent_data(tmp_path):
    parent = RunDir(tmp_path / "run")
    trial = SharedDataRunDir(tmp_path / "run" / "tune" / "trial_00003", parent)
    assert trial.tokens("train") == parent.tokens("train") and trial.tokenizer == parent.tokenizer
    # its own files are where a run of its own keeps them, under its folder
    own = RunDir(tmp_path / "run" / "tune" / "trial_00003")
    assert trial.metrics == own.metrics and trial.checkpoint(4) == own.checkpoint(4)
    assert trial.metrics.is_relative_to(own.root) and trial.checkpoints.is_relative_to(own.root)
    assert trial.metrics != parent.metrics and trial.checkpoints != parent.checkpoints


class DeclaredDeadWhileTraining(optuna.pruners.BasePruner):
    """What another worker does to a stalled one: at trial 0's first validation it found no heartbeat within the
    grace period, so it marked the trial FAIL (and would queue its values again)."""

    def prune(self, study, trial):
        if trial.number == 0:
            study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        return False


def test_a_trial_taken_for_dead_by_another_worker_does_not_stop_this_one(debug_data_run, tmp_path, monkeypatch,
                                                                         capsys):
    """The stalled worker's trial goes on training, its next report is refused, and the worker leaves the
    result to the retry and goes on with the study."""
    monkeypatch.setattr(progress, "_enabled", True)
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat_s=60)
    study = optuna.create_study(storage=storage, pruner=DeclaredDeadWhileTraining())
    for _ in range(3):
        study.enqueue_trial(PARAMS)
    cfg = config()
    tune_dir = tmp_path / "tune"
    ran = run_worker(study, cfg, check_space(cfg), RunDir(debug_data_run), tune_dir, worker=0,
                     budget=Budget(n_trials=2, max_tokens=None), queue_only=False)
    assert ran == 2  # the two it finished; the one taken for dead is neither counted nor fatal
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    dead = study.trials[0]
    assert dead.intermediate_values.keys() == {2}  # its report at step 4 was refused: the retry owns the result
    assert sorted(logged(tune_dir / "trial_00000", "train")) == [1, 2, 3, 4]
    for done in study.trials[1:]:
        assert done.value == logged(tune_dir / f"trial_{done.number:05d}", "eval")[4]["val_loss"]
    assert "trial 0: marked stale by another worker while it ran; its retry takes over" in capsys.readouterr().err
