"""Sampling a space with conditional parameters, the grid, and applying values like ``--set``."""

import optuna
import pytest
import yaml

from tune_recipes import tune_config as config
from lmforge.errors import RecipeError
from lmforge.tune.space import apply_params, check_space, grid_points, suggest, yaml_text
from lmforge.tune.strategy import queue_grid

SPACE = {
    "train.beta1": {"type": "float", "low": 0.8, "high": 0.9, "step": 0.05, "when": {"model.n_layers": 3}},
    "model.n_layers": {"type": "categorical", "choices": [1, 3]},
    "train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
    "train.warmup_steps": {"type": "int", "low": 0, "high": 12, "step": 4},
    "train.max_steps": {"type": "int", "low": 10, "high": 20, "when": {"model.n_layers": 1}},
}


def test_conditions_come_first_and_inactive_parameters_are_not_sampled():
    cfg = config(SPACE)
    order = check_space(cfg)
    assert order == ["model.n_layers", "train.beta1", "train.lr", "train.warmup_steps", "train.max_steps"]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        params = suggest(trial, cfg.tune.space, order)
        layers = params["model.n_layers"]
        seen.add(layers)
        assert ("train.beta1" in params) == (layers == 3)
        assert ("train.max_steps" in params) == (layers == 1)
        assert 1e-4 <= params["train.lr"] <= 1e-2
        assert params["train.warmup_steps"] in (0, 4, 8, 12)
        if layers == 3:
            assert any(params["train.beta1"] == pytest.approx(b) for b in (0.8, 0.85, 0.9))
        assert set(trial.params) == set(params)
        study.tell(trial, params["train.lr"])
    assert seen == {1, 3}


def test_grid_holds_each_distinct_active_combination_once():
    space = {k: v for k, v in SPACE.items() if k != "train.lr"}
    space["train.max_steps"] = {"type": "categorical", "choices": [10, 20], "when": {"model.n_layers": 1}}
    cfg = config(space, sampler={"kind": "grid"})
    points = grid_points(cfg.tune.space, check_space(cfg))
    # n_layers=1: 2 max_steps x 4 warmups; n_layers=3: 3 beta1 x 4 warmups
    assert len(points) == 8 + 12
    assert len({tuple(sorted(p.items())) for p in points}) == len(points)
    assert all(("train.beta1" in p) == (p["model.n_layers"] == 3) for p in points)

    study = optuna.create_study()
    assert queue_grid(study, points) == 20
    assert queue_grid(study, points) == 0  # a rerun queues nothing twice
    assert len(study.get_trials(states=(optuna.trial.TrialState.WAITING,))) == 20


def test_a_queued_grid_point_is_sampled_as_queued():
    cfg = config({"model.n_layers": {"type": "categorical", "choices": [1, 3]},
                  "train.warmup_steps": {"type": "int", "low": 0, "high": 8, "step": 4}}, sampler={"kind": "grid"})
    order = check_space(cfg)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    queue_grid(study, grid_points(cfg.tune.space, order))
    got = [suggest(study.ask(), cfg.tune.space, order) for _ in range(6)]
    assert got == [{"model.n_layers": n, "train.warmup_steps": w} for n in (1, 3) for w in (0, 4, 8)]


@pytest.mark.parametrize("value", [1e-5, 0.003, 3, "sgd", "yes", None, True, 2.5e20])
def test_values_read_back_as_themselves(value):
    assert yaml.safe_load(yaml_text(value)) == value
    assert type(yaml.safe_load(yaml_text(value))) is type(value)


def test_apply_params_is_validated_like_set():
    cfg = config({"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2}})
    trial_cfg = apply_params(cfg, {"train.lr": 1e-5, "model.n_layers": 3}, "debug-trial3")
    assert trial_cfg.train.lr == 1e-5 and trial_cfg.model.n_layers == 3 and trial_cfg.name == "debug-trial3"
    assert trial_cfg.tune.space == {}  # a trial is a plain recipe
    assert trial_cfg.data == cfg.data and trial_cfg.train.max_steps == cfg.train.max_steps
    with pytest.raises(RecipeError, match=r"^recipe debug-trial4: model: head dimension d_model/n_heads = 5 must be "
                                          r"even \(rotary embeddings\)$"):
        apply_params(cfg, {"model.d_model": 40, "model.n_heads": 8}, "debug-trial4")
