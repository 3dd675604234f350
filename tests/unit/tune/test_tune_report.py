"""best.yaml round-trips through the recipe loader; the trials table names every outcome's reason; the
budget counts what the study has used up; parameter importances, or why there are none."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from lmforge.recipe import BUILTIN_RECIPES, build_config, load_recipe, read_yaml
from lmforge.tune.report import _importances, best_recipe_yaml, best_trial, trial_rows
from lmforge.tune.worker import Budget

DEBUG = read_yaml(BUILTIN_RECIPES / "debug.yaml")
DIST = {"train.lr": FloatDistribution(1e-4, 1e-2, log=True), "model.n_layers": CategoricalDistribution([1, 3])}


def config():
    raw = copy.deepcopy(DEBUG)
    raw["tune"] = {"space": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                             "model.n_layers": {"type": "categorical", "choices": [1, 3]}}}
    return build_config(raw, "r.yaml")


def trial(state, params, value=None, **kw):
    dist = {k: DIST[k] for k in params}
    if state == TrialState.PRUNED:
        kw.setdefault("intermediate_values", {2: 6.0})
    return create_trial(state=state, params=params, distributions=dist, value=value, **kw)


def study_with_every_outcome():
    study = optuna.create_study()
    study.add_trial(trial(TrialState.FAIL, {"train.lr": 3e-3}, user_attrs={"worker": 0}))  # killed: stale
    study.add_trial(trial(TrialState.COMPLETE, {"train.lr": 3e-3, "model.n_layers": 3}, 4.5,
                          user_attrs={"tokens": 1024, "steps": 4},
                          system_attrs={"failed_trial": 0, "retry_history": [0]}))
    study.add_trial(trial(TrialState.FAIL, {"train.lr": 1e-4, "model.n_layers": 1},
                          user_attrs={"fail_reason": "non-finite validation loss at step 2", "tokens": 512}))
    study.add_trial(trial(TrialState.PRUNED, {"train.lr": 1e-2, "model.n_layers": 1},
                          user_attrs={"prune_reason": "pruned at step 2 by median (val_loss 6.0000)", "tokens": 512}))
    study.add_trial(trial(TrialState.COMPLETE, {"train.lr": 5e-3, "model.n_layers": 1}, 4.25,
                          user_attrs={"tokens": 1024}))
    study.add_trial(trial(TrialState.FAIL, {"train.lr": 2e-3, "model.n_layers": 1}, user_attrs={"interrupted": True}))
    return study


def test_rows_name_every_reason():
    rows = trial_rows(study_with_every_outcome().get_trials(), ["train.lr", "model.n_layers"])
    assert [(r["number"], r["state"], r["reason"]) for r in rows] == [
        (0, "FAIL", "stale: its process stopped without finishing (no heartbeat); retried as trial 1"),
        (1, "COMPLETE", ""),
        (2, "FAIL", "non-finite validation loss at step 2"),
        (3, "PRUNED", "pruned at step 2 by median (val_loss 6.0000)"),
        (4, "COMPLETE", ""),
        (5, "FAIL", "interrupted (Ctrl-C)"),
    ]
    assert rows[1]["model.n_layers"] == 3 and rows[0]["model.n_layers"] is None
    assert rows[4]["value"] == 4.25 and rows[3]["value"] is None


def test_budget_counts_finished_trials_but_not_killed_ones():
    trials = study_with_every_outcome().get_trials()
    assert [t.number for t in Budget.counted(trials)] == [1, 2, 3, 4]
    assert Budget.tokens(trials) == 1024 + 512 + 512 + 1024
    assert Budget(5, None).trials_left(trials) == 1
    assert Budget(5, 3072).tokens_spent(trials) and not Budget(5, 3073).tokens_spent(trials)


def test_best_yaml_round_trips_to_the_best_trials_recipe(tmp_path):
    cfg = config()
    best = best_trial(study_with_every_outcome().get_trials())
    assert best.number == 4
    path = tmp_path / "best.yaml"
    path.write_text(best_recipe_yaml(cfg, best, "sqlite:///x.db"))
    again = load_recipe(path)
    assert again.name == "debug-best"
    assert again.train.lr == 5e-3 and again.model.n_layers == 1
    assert again.tune.space == {}  # a plain recipe: `lmforge run best.yaml` trains it
    assert again.model_dump(exclude={"name", "train", "model", "tune"}) == cfg.model_dump(
        exclude={"name", "train", "model", "tune"})
    assert again.train.model_dump(exclude={"lr"}) == cfg.train.model_dump(exclude={"lr"})
    assert path.read_text().startswith("# The best trial (4, val_loss 4.2500) of study 'debug' in sqlite:///x.db\n")


def complete_study(rows, dist=DIST):
    """A study of complete trials, one per (params, value)."""
    study = optuna.create_study()
    for params, value in rows:
        study.add_trial(create_trial(state=TrialState.COMPLETE, params=params, value=value,
                                     distributions={k: dist[k] for k in params}))
    return study


# the loss falls with the learning rate; the layer counts alternate, so they tell nothing
LEARNS = [({"train.lr": lr, "model.n_layers": layers}, loss) for lr, layers, loss in
          [(1e-4, 1, 6.0), (3e-4, 3, 5.5), (1e-3, 1, 5.0), (3e-3, 3, 4.6), (6e-3, 1, 4.5), (1e-2, 3, 4.4)]]


def test_importances_name_the_parameter_that_sets_the_best_trials_apart():
    found = _importances(complete_study(LEARNS))
    assert list(found) == ["importances"]
    assert found["importances"] == {"train.lr": pytest.approx(1.0), "model.n_layers": pytest.approx(0.0)}


@pytest.mark.parametrize("study, reason", [
    (study_with_every_outcome(), "2 complete trial(s) with a finite loss; importances need at least 3"),
    (complete_study([(params, 5.0) for params, _ in LEARNS]),  # ties: importances would come out equal
     "the losses do not set the best trials apart (Target and region quantiles select the same set of trials. "
     "Parameter importances will be equal.)"),
    (complete_study([({"model.n_layers": 2}, loss) for loss in (5.0, 4.0, 3.0)],
                    {"model.n_layers": CategoricalDistribution([2])}),
     "no parameter takes other values in the best trials than in the rest"),
], ids=["too-few", "ties", "one-value"])
def test_importances_that_cannot_be_computed_say_why(study, reason):
    assert _importances(study) == {"importances": {}, "not_computed": reason}


BLOCK_SKLEARN = """
import importlib.abc, json, sys
class NoSklearn(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "sklearn":
            raise ImportError("scikit-learn is not installed")
sys.meta_path.insert(0, NoSklearn())
import test_tune_report as t
print(json.dumps(t._importances(t.complete_study(t.LEARNS))))
"""


def test_importances_need_no_scikit_learn():
    """A plain install has no scikit-learn (a test-only dependency), which fANOVA and MDI need."""
    done = subprocess.run([sys.executable, "-c", BLOCK_SKLEARN], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parent, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["importances"] == {"train.lr": pytest.approx(1.0),
                                                      "model.n_layers": pytest.approx(0.0)}
