"""One trial with the training loop replaced by a stand-in: every outcome is recorded with its reason and
nothing a trial raises escapes (the study goes on)."""

import copy
import json
import math

import optuna
import pytest
from optuna.trial import TrialState

import lmforge.train.loop as loop
from lmforge.recipe import BUILTIN_RECIPES, build_config, read_yaml
from lmforge.rundir import RunDir, SharedDataRunDir
from lmforge.tune.space import check_space
from lmforge.tune.storage import open_storage
from lmforge.tune.trial import run_trial
from lmforge.tune.worker import Budget, run_worker

DEBUG = read_yaml(BUILTIN_RECIPES / "debug.yaml")  # batch 8 x seq_len 64: 512 tokens per step
SPACE = {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
         "model.d_model": {"type": "categorical", "choices": [40, 64]},
         "model.n_heads": {"type": "categorical", "choices": [4, 8]}}


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial):
        return True


def fake_train(evals, steps=2, error=None):
    """A stand-in for train(): logs ``steps`` train records, calls on_eval with each (step, loss), may raise."""
    def train(run, cfg, ctx, *, resume, on_eval=None):
        run.metrics.parent.mkdir(parents=True, exist_ok=True)
        run.metrics.write_text("".join(json.dumps({"kind": "train", "step": s + 1}) + "\n" for s in range(steps)))
        (run.checkpoint(steps)).mkdir(parents=True)
        for step, loss in evals:
            on_eval(step, {"loss": loss})
        if error is not None:
            raise error
        return {}
    return train


def tune_config():
    raw = copy.deepcopy(DEBUG)
    raw["tune"] = {"space": SPACE}
    return build_config(raw, "r.yaml")


def one_trial(monkeypatch, tmp_path, train, pruner=None, params=None):
    monkeypatch.setattr(loop, "train", train)
    cfg = tune_config()
    study = optuna.create_study(pruner=pruner or optuna.pruners.NopPruner())
    study.enqueue_trial(params or {"train.lr": 1e-3, "model.d_model": 64, "model.n_heads": 4})
    trial = study.ask()
    state, value = run_trial(trial, cfg, check_space(cfg), RunDir(tmp_path / "run"), tmp_path / "tune")
    return state, value, trial.user_attrs, tmp_path / "tune" / "trial_00000"


def test_complete_trial_records_tokens_and_drops_its_checkpoint(monkeypatch, tmp_path):
    state, value, attrs, folder = one_trial(monkeypatch, tmp_path, fake_train([(0, 6.2), (2, 5.5), (4, 4.25)], 4))
    assert (state, value) == (TrialState.COMPLETE, 4.25)
    assert attrs["steps"] == 4 and attrs["tokens"] == 4 * 8 * 64
    assert "fail_reason" not in attrs and "prune_reason" not in attrs
    assert (folder / "recipe.yaml").exists() and not (folder / "train" / "checkpoints").exists()
    assert "lr: 0.001" in (folder / "recipe.yaml").read_text()


def test_pruned_trial_records_where_and_why(monkeypatch, tmp_path):
    state, value, attrs, _ = one_trial(monkeypatch, tmp_path, fake_train([(0, 6.2), (2, 5.5), (4, 5.0)]), AlwaysPrune())
    assert (state, value) == (TrialState.PRUNED, None)
    assert attrs["prune_reason"] == "pruned at step 2 by none (val_loss 5.5000)"


@pytest.mark.parametrize("train, reason", [
    (fake_train([(0, 6.2), (2, math.nan)]), "non-finite validation loss at step 2"),
    (fake_train([(0, 6.2)], error=RuntimeError("boom\n  at line 3")), "RuntimeError: boom at line 3"),
    (fake_train([], error=loop.TrainingError("training stopped at step 2: 5 non-finite losses in a row")),
     "training stopped at step 2: 5 non-finite losses in a row"),
])
def test_failed_trial_records_the_reason(monkeypatch, tmp_path, train, reason):
    state, value, attrs, _ = one_trial(monkeypatch, tmp_path, train)
    assert (state, value) == (TrialState.FAIL, None)
    assert attrs["fail_reason"] == reason
    assert attrs["steps"] == 2 and attrs["tokens"] == 2 * 8 * 64


def test_a_bad_combination_fails_as_a_trial(monkeypatch, tmp_path):
    state, _, attrs, _ = one_trial(monkeypatch, tmp_path, fake_train([]),
                                   params={"train.lr": 1e-3, "model.d_model": 40, "model.n_heads": 8})
    assert state == TrialState.FAIL
    assert attrs["fail_reason"] == ("recipe debug-trial0: model: head dimension d_model/n_heads = 5 must be even "
                                    "(rotary embeddings)")
    assert attrs["tokens"] == 0


def test_trial_run_dir_reads_the_parent_data(tmp_path):
    parent = RunDir(tmp_path / "run")
    trial = SharedDataRunDir(tmp_path / "run" / "tune" / "trial_00003", parent)
    assert trial.tokens("train") == parent.tokens("train") and trial.tokenizer == parent.tokenizer
    assert trial.metrics == tmp_path / "run" / "tune" / "trial_00003" / "train" / "metrics.jsonl"
    assert trial.checkpoint(4).parent == trial.root / "train" / "checkpoints"


def test_a_trial_taken_for_dead_by_another_worker_does_not_stop_this_one(monkeypatch, tmp_path):
    """A stalled worker whose trial another worker marked FAIL (no heartbeat in time) and queued again
    leaves the result to the retry and goes on with the study."""
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat_s=60)
    study = optuna.create_study(storage=storage)
    for _ in range(3):
        study.enqueue_trial({"train.lr": 1e-3, "model.d_model": 64, "model.n_heads": 4})
    first = fake_train([(0, 6.2), (2, 5.5)])

    calls = []

    def train(run, cfg, ctx, *, resume, on_eval=None):
        if not calls:  # the first trial: another worker declares it dead while it trains
            running = study.get_trials(states=(TrialState.RUNNING,))[0]
            storage.set_trial_state_values(running._trial_id, state=TrialState.FAIL)
        calls.append(run.root.name)
        return first(run, cfg, ctx, resume=resume, on_eval=on_eval)

    monkeypatch.setattr(loop, "train", train)
    cfg = tune_config()
    ran = run_worker(study, cfg, check_space(cfg), RunDir(tmp_path / "run"), tmp_path / "tune", worker=0,
                     budget=Budget(n_trials=2, max_tokens=None), queue_only=False)
    assert ran == 2  # the two it finished; the stale one is neither counted nor fatal
    assert calls == ["trial_00000", "trial_00001", "trial_00002"]
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
