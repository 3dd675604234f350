from pathlib import Path

import pytest

from lmforge.errors import RecipeError
from lmforge.recipe import BUILTIN_RECIPES, RunConfig, apply_override, load_recipe

SHIPPED = sorted(BUILTIN_RECIPES.glob("*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


MINIMAL = "data:\n  sources:\n    - kind: python-stdlib\n"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path):
    cfg = load_recipe(path)
    assert isinstance(cfg, RunConfig)
    assert cfg.name == path.stem
    # the model config resolves and the training sequence fits its context
    dims = cfg.model.dims(cfg.tokenizer.vocab_size)
    assert (cfg.train.seq_len or dims.context_length) <= dims.context_length


def test_default_and_builtin_names_resolve():
    assert load_recipe(None).name == "default"
    assert load_recipe("debug").name == "debug"


def message(call, *args) -> str:
    """The whole message of the RecipeError that ``call(*args)`` raises."""
    with pytest.raises(RecipeError) as exc:
        call(*args)
    return str(exc.value)


def test_missing_recipe_file_names_it():
    assert message(load_recipe, "nope.yaml") == ("recipe nope.yaml: no such file (built-in recipes: debug, default, "
                                                 "tune)")


@pytest.mark.parametrize("body, error", [
    (MINIMAL + "train:\n  max_step: 3\n", "train.max_step: unknown key"),
    ("data:\n  sources:\n    - kind: python-stdlib\n      colour: red\n", "data.sources.0.colour: unknown key"),
    (MINIMAL + "model:\n  size: debug\n  n_heads: 3\n", "model: n_heads (3) must divide d_model (64)"),
    (MINIMAL + "model:\n  size: debug\n  head_dim: 15\n", "model: head_dim (15) must be even (rotary embeddings)"),
    (MINIMAL + "model:\n  size: debug\n  head_dim: 1\n",
     "model.head_dim: Input should be greater than or equal to 2 (got 1)"),
    (MINIMAL + "train:\n  lr: fast\n  batch_size: 0\n",  # every error, on one line
     "train.batch_size: Input should be greater than or equal to 1 (got 0); train.lr: Input should be a valid "
     "number, unable to parse string as a number (got 'fast')"),
    ("- 1\n- 2\n", "the top level must be a mapping of sections, got list"),
])
def test_bad_recipe_file_names_the_key_path(tmp_path, body, error):
    path = write(tmp_path, body)
    assert message(load_recipe, path) == f"recipe {path}: {error}"


def test_yaml_syntax_error_names_line(tmp_path):
    path = write(tmp_path, MINIMAL + "train:\n  lr: [1, 2\n")
    assert message(load_recipe, path) == f"recipe {path}:6:1: invalid YAML: expected ',' or ']', but got '<stream end>'"


def test_overrides_parse_values_as_yaml(tmp_path):
    cfg = load_recipe(write(tmp_path, MINIMAL), ["train.max_steps=7", "train.lr=3e-4", "model.size=debug",
                                                 "data.sources.0.max_documents=5"])
    assert cfg.train.max_steps == 7
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.model.size == "debug"
    assert cfg.data.sources[0].max_documents == 5


def test_override_errors():
    tree = {"train": {"lr": 1.0}}
    assert message(apply_override, tree, "train.lr") == ("--set train.lr: expected KEY=VALUE with a dotted key, e.g. "
                                                         "train.lr=3e-4")
    assert message(apply_override, tree, "train.lr.x=1") == "--set train.lr.x=1: train.lr is a value, not a section"
    debug = BUILTIN_RECIPES / "debug.yaml"
    assert message(load_recipe, "debug", ["train.max_steps=-1"]) == (
        f"recipe {debug}: train.max_steps: Input should be greater than or equal to 1 (got -1)")
    assert message(load_recipe, "debug", ["trian.lr=1"]) == f"recipe {debug}: trian: unknown key"


def test_resolved_recipe_round_trips(tmp_path):
    cfg = load_recipe("debug", ["train.max_steps=3"])
    again = load_recipe(write(tmp_path, cfg.to_yaml()))
    assert again == cfg
    assert again.section_hash("train") == cfg.section_hash("train")
    assert load_recipe("debug").section_hash("train") != cfg.section_hash("train")


def test_head_dim_sets_the_attention_width_apart_from_d_model(tmp_path):
    cfg = load_recipe(write(tmp_path, MINIMAL), ["model.size=debug", "model.n_heads=3", "model.n_kv_heads=1", "model.head_dim=16"])
    dims = cfg.model.dims(100)
    assert (dims.n_heads, dims.head_dim, dims.d_model, dims.explicit_head_dim) == (3, 16, 64, 16)
    assert cfg.model.dims(100) == type(cfg.model).describing(dims).dims(100)  # the section that describes it
    same = load_recipe(write(tmp_path, MINIMAL), ["model.size=debug", "model.head_dim=16"]).model.dims(100)
    assert same.explicit_head_dim is None and "explicit_head_dim" not in same.to_dict()  # 4 x 16 = 64: the default


@pytest.mark.parametrize("override, key", [
    ("merge.quality.max_tokens=0", "merge.quality.max_tokens"),
    ("compress.quality.tasks=maybe", "compress.quality.tasks"),
    ("attack.harden.epsilon=-1", "attack.harden.epsilon"),
    ("secure.segment_size=0", "secure.segment_size"),
    ("secure.sign=false", "secure"),  # with encrypt: false below: nothing to do
    ("stages=train", "stages"),
])
def test_the_whole_life_keys_refuse_bad_values_in_one_line(override, key):
    from lmforge.errors import RecipeError

    extra = ["secure.encrypt=false"] if override == "secure.sign=false" else []
    with pytest.raises(RecipeError) as err:
        load_recipe("default", [override, *extra])
    message = str(err.value)
    assert "\n" not in message and f": {key}: " in message, message
