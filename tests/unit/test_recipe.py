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


def test_missing_recipe_file_names_it():
    with pytest.raises(RecipeError, match=r"recipe nope\.yaml: no such file \(built-in recipes: debug, default"):
        load_recipe("nope.yaml")


def test_unknown_key_reports_full_path(tmp_path):
    path = write(tmp_path, MINIMAL + "train:\n  max_step: 3\n")
    with pytest.raises(RecipeError, match=r"train\.max_step: unknown key"):
        load_recipe(path)


def test_unknown_nested_key_in_list(tmp_path):
    path = write(tmp_path, "data:\n  sources:\n    - kind: python-stdlib\n      colour: red\n")
    with pytest.raises(RecipeError, match=r"data\.sources\.0\.colour: unknown key"):
        load_recipe(path)


def test_wrong_type_and_out_of_range(tmp_path):
    path = write(tmp_path, MINIMAL + "train:\n  lr: fast\n  batch_size: 0\n")
    with pytest.raises(RecipeError) as exc:
        load_recipe(path)
    msg = str(exc.value)
    assert "train.lr: Input should be a valid number" in msg and "'fast'" in msg
    assert "train.batch_size: Input should be greater than or equal to 1 (got 0)" in msg
    assert "\n" not in msg


def test_model_shape_is_checked(tmp_path):
    path = write(tmp_path, MINIMAL + "model:\n  size: debug\n  n_heads: 3\n")
    with pytest.raises(RecipeError, match=r"model: n_heads \(3\) must divide d_model \(64\)"):
        load_recipe(path)


def test_yaml_syntax_error_names_line(tmp_path):
    path = write(tmp_path, MINIMAL + "train:\n  lr: [1, 2\n")
    with pytest.raises(RecipeError, match=r"r\.yaml:\d+:\d+: invalid YAML"):
        load_recipe(path)


def test_top_level_must_be_mapping(tmp_path):
    with pytest.raises(RecipeError, match="top level must be a mapping"):
        load_recipe(write(tmp_path, "- 1\n- 2\n"))


def test_overrides_parse_values_as_yaml(tmp_path):
    cfg = load_recipe(write(tmp_path, MINIMAL), ["train.max_steps=7", "train.lr=3e-4", "model.size=debug",
                                                 "data.sources.0.max_documents=5"])
    assert cfg.train.max_steps == 7
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.model.size == "debug"
    assert cfg.data.sources[0].max_documents == 5


def test_override_errors():
    tree = {"train": {"lr": 1.0}}
    with pytest.raises(RecipeError, match="expected KEY=VALUE"):
        apply_override(tree, "train.lr")
    with pytest.raises(RecipeError, match="train.lr is a value, not a section"):
        apply_override(tree, "train.lr.x=1")
    with pytest.raises(RecipeError, match="train.max_steps: Input should be greater than or equal to 1"):
        load_recipe("debug", ["train.max_steps=-1"])
    with pytest.raises(RecipeError, match="trian: unknown key"):
        load_recipe("debug", ["trian.lr=1"])


def test_resolved_recipe_round_trips(tmp_path):
    cfg = load_recipe("debug", ["train.max_steps=3"])
    again = load_recipe(write(tmp_path, cfg.to_yaml()))
    assert again == cfg
    assert again.section_hash("train") == cfg.section_hash("train")
    assert load_recipe("debug").section_hash("train") != cfg.section_hash("train")
