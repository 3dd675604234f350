"""A whole study of the real training loop on the prepared debug data: TPE after 2 random trials, successive
halving and a budget of training tokens; the same seed samples the same values in the same order."""

import json

import optuna
import pytest

from lmforge.core import progress
from lmforge.rundir import RunDir
from lmforge.tune import report
from lmforge.tune.space import check_space, suggest
from lmforge.tune.strategy import build_sampler
from lmforge.tune.study import run_study
from tune_recipes import SHORT, SHORT_TOKENS_PER_STEP, tune_config

SPACE = {"train.lr": {"type": "float", "low": 1e-5, "high": 3e-2, "log": True},
         "train.warmup_steps": {"type": "int", "low": 0, "high": 4, "step": 2},
         "model.n_layers": {"type": "categorical", "choices": [1, 2]}}
STEPS = 6  # successive halving's rungs at 2 steps (train.eval_every) and 6 (reduction factor 3)
MAX_TOKENS = 1700  # 4.4 complete trials; 13 pruned at their first rung: a budget, not n_trials, ends the study


def study_config(seed: int):
    return tune_config(SPACE, train={**SHORT, "max_steps": STEPS}, n_trials=20, max_tokens=MAX_TOKENS,
                       sampler={"kind": "tpe", "n_startup_trials": 2, "seed": seed},
                       pruner={"kind": "successive_halving", "reduction_factor": 3})


@pytest.fixture(autouse=True)
def no_plots(monkeypatch):
    """The plots take a second a study; tests/integration/test_tune.py checks them."""
    monkeypatch.setattr(report, "_plots", lambda study, tune_dir: {})


def sampled(summary) -> list[tuple]:
    return [(r["state"], r["value"], *(r[k] for k in SPACE)) for r in summary["rows"]]


def test_tpe_and_successive_halving_within_a_token_budget(debug_data_run, tmp_path):
    cfg = study_config(seed=0)
    summary = run_study(RunDir(debug_data_run), cfg, tune_dir=tmp_path / "first")
    rows = summary["rows"]
    # the budget stops new trials once it is spent; the last one started within it and may end past it
    tokens = [r["tokens"] for r in rows]
    assert len(rows) < cfg.tune.n_trials
    assert sum(tokens[:-1]) < MAX_TOKENS <= sum(tokens) == summary["tokens"]
    assert all(r["tokens"] == r["steps"] * SHORT_TOKENS_PER_STEP for r in rows)
    # successive halving stopped some trials at a rung, each recorded with where and why
    counts = summary["counts"]
    assert counts["PRUNED"] >= 1 and counts["COMPLETE"] >= 3 and counts["FAIL"] == 0
    for r in rows:
        if r["state"] == "PRUNED":
            assert r["steps"] in (2, 6) and r["reason"].startswith(
                f"pruned at step {r['steps']} by successive_halving (val_loss ")
        else:
            assert r["steps"] == STEPS and r["value"] is not None
    assert summary["best"]["value"] == min(r["value"] for r in rows if r["state"] == "COMPLETE")
    # importances of every searched parameter (PED-ANOVA; test_tune_report runs it without scikit-learn): the
    # learning rate, over three decades, matters most
    importances = json.loads((tmp_path / "first" / "importances.json").read_text())["importances"]
    assert set(importances) == set(SPACE) and sum(importances.values()) == pytest.approx(1.0)
    assert all(v >= 0 for v in importances.values()) and max(importances, key=importances.get) == "train.lr"

    # the same seed: the same values in the same order, the same outcomes
    again = run_study(RunDir(debug_data_run), study_config(seed=0), tune_dir=tmp_path / "again")
    assert sampled(again) == sampled(summary)
    assert len({row[2:] for row in sampled(summary)}) == len(rows)  # and not one point over and over
    # another seed draws other values from the first trial on
    other = study_config(seed=1)
    study = optuna.create_study(sampler=build_sampler(other, worker=0))
    first = suggest(study.ask(), other.tune.space, check_space(other))
    assert tuple(first[k] for k in SPACE) != sampled(summary)[0][2:]


def test_random_search_with_hyperband(debug_data_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(progress, "_enabled", True)
    cfg = tune_config(SPACE, train={**SHORT, "max_steps": STEPS}, n_trials=4, sampler={"kind": "random", "seed": 0},
                      pruner={"kind": "hyperband", "reduction_factor": 3})
    summary = run_study(RunDir(debug_data_run), cfg, tune_dir=tmp_path / "tune")
    rows = summary["rows"]
    # random draws do not depend on the losses: the seeded sampler alone gives the same values in the same order
    study = optuna.create_study(sampler=build_sampler(cfg, worker=0))
    drawn = [suggest(study.ask(), cfg.tune.space, check_space(cfg)) for _ in rows]
    assert [{k: r[k] for k in SPACE} for r in rows] == drawn
    assert summary["counts"] == {"COMPLETE": 2, "PRUNED": 2, "FAIL": 0, "RUNNING": 0, "WAITING": 0}
    for r in rows:
        if r["state"] == "PRUNED":
            assert r["steps"] == 2 and r["reason"].startswith("pruned at step 2 by hyperband (val_loss ")
    # two complete trials are too few for importances: the report says so instead of making them up
    reason = "2 complete trial(s) with a finite loss; importances need at least 3"
    assert json.loads((tmp_path / "tune" / "importances.json").read_text()) == {"importances": {},
                                                                                "not_computed": reason}
    assert f"tune: parameter importances not computed: {reason}" in " ".join(capsys.readouterr().err.split())
