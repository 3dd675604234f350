"""The search space, sampler, pruner and storage are checked before any trial runs: exact one-line errors."""

import copy
import threading

import pytest

from tune_recipes import DEBUG, tune_config as config
from lmforge.errors import RecipeError, TuneError
from lmforge.recipe import build_config, load_recipe
from lmforge.tune import storage as tune_storage
from lmforge.tune.space import check_space, grid_points
from lmforge.tune.strategy import check_strategy

LR = {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True}


@pytest.mark.parametrize("param, message", [
    ({"type": "float", "low": 0.1, "high": 0.01}, "tune.space.train.lr: low (0.1) is greater than high (0.01)"),
    ({"type": "float", "low": 0, "high": 0.01, "log": True},
     "tune.space.train.lr: log scale needs low > 0 (got low=0)"),
    ({"type": "float", "low": 1e-4, "high": 1e-2, "log": True, "step": 1e-4},
     "tune.space.train.lr: log and step cannot be combined (a log range is continuous)"),
    ({"type": "float", "low": 0.1, "high": 0.2, "step": 0}, "tune.space.train.lr: step must be positive (got 0)"),
    ({"type": "float", "low": 0.1}, "tune.space.train.lr: type float needs low and high"),
    ({"type": "categorical", "choices": []}, "tune.space.train.lr: categorical needs a non-empty list of choices"),
    ({"type": "categorical", "choices": [0.1, 0.1]}, "tune.space.train.lr: choice 0.1 is listed twice"),
    ({"type": "categorical", "choices": [0.1], "low": 0.1},
     "tune.space.train.lr: low: not used by type categorical (give choices)"),
    ({"type": "float", "low": 0.1, "high": 0.2, "choices": [1]},
     "tune.space.train.lr: choices: not used by type float (use type: categorical)"),
    ({"type": "int", "low": 1, "high": 2.5},
     "tune.space.train.lr: int range needs whole numbers, got high=2.5 (use type: float)"),
    ({"type": "float", "low": 0.1, "high": 0.2, "when": {}},
     "tune.space.train.lr: when: is empty; name the parameter(s) it depends on, e.g. when: {model.n_layers: 4}"),
    ({"type": "flot", "low": 0.1, "high": 0.2},
     "tune.space.train.lr.type: Input should be 'float', 'int' or 'categorical' (got 'flot')"),
    ({"type": "float", "low": 0.1, "high": 0.2, "lo": 1}, "tune.space.train.lr.lo: unknown key"),
])
def test_schema_errors_at_recipe_load(param, message):
    with pytest.raises(RecipeError) as exc:
        config({"train.lr": param})
    assert str(exc.value) == f"recipe r.yaml: {message}"


BAD_VALUES = [  # keys and values the recipe cannot take
    ({}, "tune.space: the search space is empty; add a parameter, e.g. "
         "train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}"),
    ({"train.lrr": LR}, "tune.space.train.lrr: not a recipe key (did you mean train.lr?)"),
    ({"train.lr.x": LR}, "tune.space.train.lr.x: not a recipe key (train.lr is a value, not a section)"),
    ({"data.min_chars": {"type": "int", "low": 10, "high": 20}},
     "tune.space.data.min_chars: only train.* and model.* keys can be searched (data, tokenizer and pack are "
     "prepared once, before the study)"),
    ({"seed": {"type": "int", "low": 1, "high": 2}},
     "tune.space.seed: only train.* and model.* keys can be searched (data, tokenizer and pack are prepared once, "
     "before the study)"),
    ({"train.eval_every": {"type": "int", "low": 1, "high": 2}},
     "tune.space.train.eval_every: sets when trials are measured and pruned, not a hyperparameter"),
    ({"train.lr": {"type": "float", "low": 1e-3, "high": 20}},
     "tune.space.train.lr: 20 is not a valid value: Input should be less than or equal to 10"),
    ({"train.lr": {"type": "categorical", "choices": [1e-3, "fast"]}},
     "tune.space.train.lr: 'fast' is not a valid value: Input should be a valid number, unable to parse string as a "
     "number"),
    ({"model.n_layers": {"type": "float", "low": 1, "high": 4}},
     "tune.space.model.n_layers: model.n_layers takes whole numbers; use type: int (this float range gives values "
     "like 2.11)"),
    ({"model.n_heads": {"type": "categorical", "choices": [3, 4]}},
     "tune.space.model.n_heads: 3 is not a valid value: model: n_heads (3) must divide d_model (64)"),
]


def test_cross_key_check_waits_for_the_trial_when_the_other_key_is_searched():
    # n_heads=3 is wrong for d_model=64 but right for d_model=48: only the trial can tell
    cfg = config({"model.n_heads": {"type": "categorical", "choices": [3, 4]},
                  "model.d_model": {"type": "categorical", "choices": [48, 64]}})
    assert check_space(cfg) == ["model.n_heads", "model.d_model"]


OPT = {"type": "categorical", "choices": ["adamw", "sgd"]}
MOMENTUM = {"type": "float", "low": 0.8, "high": 0.99}


BAD_CONDITIONS = [  # conditional parameters (when:) that cannot work
    ({"train.lr": {**LR, "when": {"train.lr": 1}}}, "tune.space.train.lr.when: train.lr cannot depend on itself"),
    ({"train.beta1": {**MOMENTUM, "when": {"model.n_layers": 2}}},
     "tune.space.train.beta1.when: model.n_layers is not a parameter of tune.space (a condition names another "
     "searched categorical parameter)"),
    ({"train.lr": LR, "train.beta1": {**MOMENTUM, "when": {"train.lr": 0.1}}},
     "tune.space.train.beta1.when: train.lr is a float range; a condition needs a categorical parameter"),
    ({"model.n_layers": {"type": "categorical", "choices": [1, 2]},
      "train.beta1": {**MOMENTUM, "when": {"model.n_layers": [2, 3]}}},
     "tune.space.train.beta1.when.model.n_layers: 3 is not one of its choices [1, 2]"),
    ({"model.n_layers": {"type": "categorical", "choices": [1, 2], "when": {"model.n_heads": 4}},
      "model.n_heads": {"type": "categorical", "choices": [2, 4], "when": {"model.n_layers": 1}}},
     "tune.space.model.n_layers.when: the conditions form a cycle (model.n_layers -> model.n_heads -> model.n_layers)"),
    ({"model.n_layers": {"type": "categorical", "choices": [1, 2]},
      "model.n_heads": {"type": "categorical", "choices": [2, 4], "when": {"model.n_layers": 1}},
      "train.beta1": {**MOMENTUM, "when": {"model.n_layers": 2, "model.n_heads": 4}}},
     "tune.space.train.beta1.when: contradictory conditions: train.beta1 can never be active (no choice of the "
     "parameters it depends on satisfies its conditions and theirs)"),
]


@pytest.mark.parametrize("space, message", BAD_VALUES + BAD_CONDITIONS)
def test_bad_spaces_are_refused_with_their_reason(space, message):
    with pytest.raises(TuneError) as exc:
        check_space(config(space))
    assert str(exc.value) == message


def test_grid_needs_steps_for_float_ranges():
    cfg = config({"train.lr": LR}, sampler={"kind": "grid"})
    order = check_space(cfg)
    with pytest.raises(TuneError, match=r"^tune\.space\.train\.lr: the grid sampler needs a step for a float range "
                                        r"\(or type: categorical\)$"):
        grid_points(cfg.tune.space, order)
    keys = ("max_steps", "batch_size", "log_every")
    big = config({f"train.{k}": {"type": "int", "low": 1, "high": 30} for k in keys})
    with pytest.raises(TuneError) as exc:
        grid_points(big.tune.space, check_space(big))
    assert str(exc.value) == ("tune.sampler.kind: grid: the space has more than 10,000 points; use larger steps, "
                              "fewer choices, or the tpe or random sampler")


@pytest.mark.parametrize("train, pruner, message", [
    ({"eval_every": 0}, {"kind": "median"},
     "tune.pruner.kind: median needs validation during training; set train.eval_every > 0"),
    ({"eval_every": 20, "max_steps": 20}, {"kind": "median"},
     "tune.pruner.kind: median never sees an intermediate loss: train.eval_every (20) must be smaller than "
     "train.max_steps (20)"),
    ({"eval_every": 5, "max_steps": 20}, {"kind": "successive_halving", "min_resource": 20},
     "tune.pruner.min_resource: the first rung (20 steps) must be below train.max_steps (20)"),
])
def test_pruner_that_could_never_prune(train, pruner, message):
    raw = copy.deepcopy(DEBUG)
    raw["train"].update(train)
    raw["tune"] = {"space": {"train.lr": LR}, "pruner": pruner}
    with pytest.raises(TuneError) as exc:
        check_strategy(build_config(raw, "r.yaml"))
    assert str(exc.value) == message


@pytest.mark.parametrize("url, message", [
    ("not a url", "tune.storage: 'not a url' is not a database URL (e.g. sqlite:///study.db or "
                  "postgresql://user@host/db)"),
    ("sqlite:////nonexistent/dir/study.db",
     "tune.storage: cannot connect to sqlite:////nonexistent/dir/study.db: unable to open database file"),
])
def test_bad_storage_url(url, message):
    with pytest.raises(TuneError) as exc:
        tune_storage.check_storage(url)
    assert str(exc.value) == message


def test_missing_driver_hides_the_password():
    try:
        import MySQLdb  # noqa: F401
        pytest.skip("a MySQL driver is installed here")
    except ImportError:
        pass
    with pytest.raises(TuneError) as exc:
        tune_storage.check_storage("mysql://me:secret@db.example/optuna")
    assert str(exc.value) == ("tune.storage: mysql://me:***@db.example/optuna: the database driver is not installed "
                              "(No module named 'MySQLdb')")


def test_unreachable_storage_times_out(monkeypatch):
    import sqlalchemy

    release = threading.Event()

    class Hanging:
        def connect(self):
            release.wait(5)
            raise OSError("gave up")

        def dispose(self):
            pass

    monkeypatch.setattr(sqlalchemy, "create_engine", lambda *a, **k: Hanging())
    with pytest.raises(TuneError) as exc:
        tune_storage.check_storage("postgresql://me@10.255.255.1/optuna", timeout_s=0.2)
    release.set()
    assert str(exc.value) == ("tune.storage: postgresql://me@10.255.255.1/optuna: no answer within 0.2 s "
                              "(is the database server up?)")


def test_shipped_tune_recipe_has_a_valid_space():
    cfg = load_recipe("tune")
    order = check_space(cfg)
    check_strategy(cfg)
    assert order.index("model.n_layers") < order.index("model.dropout")
