"""The stage table: every row is reachable from the command line and the recipe, and the pipeline's order,
fingerprints and redo follow the rows."""

from __future__ import annotations

import pytest

from lmforge import pipeline
from lmforge.cli import cli
from lmforge.errors import LmforgeError
from lmforge.recipe import RunConfig, load_recipe


def test_every_row_has_a_command_a_recipe_section_and_help():
    for stage in pipeline.STAGES:
        assert stage.command in cli.commands, f"{stage.name}: no command {stage.command!r}"
        assert cli.commands[stage.command].help, f"{stage.name}: command {stage.command!r} has no help"
        assert (stage.sections or stage.always) and all(s in RunConfig.model_fields for s in stage.sections), stage.name
        assert stage.help.strip(), stage.name
        assert all(n in pipeline.BY_NAME and pipeline.NAMES.index(n) < pipeline.NAMES.index(stage.name)
                   for n in stage.needs), f"{stage.name}: needs a stage that is not before it"


LATER = ("finetune", "merge", "compress", "explain", "attack", "secure", "report")
ALL = ("curate", "tokenizer", "pack", "train", "eval", "sample", *LATER)


def test_order_fingerprints_and_redo_follow_the_rows():
    from lmforge.report.runread import STAGE_ORDER

    assert pipeline.NAMES == ALL == STAGE_ORDER  # the report lists the stages in the table's order
    assert pipeline.closure(["eval"]) == ["curate", "tokenizer", "pack", "train", "eval"]
    assert pipeline.closure(["attack"]) == ["curate", "tokenizer", "pack", "train", "eval", "finetune", "attack"]
    assert pipeline.later("tokenizer") == [n for n in ALL if n != "curate"]
    assert pipeline.later("eval") == ["eval", "finetune", "merge", "compress", "explain", "attack", "secure", "report"]
    assert pipeline.later("finetune") == ["finetune", "attack", "report"]  # the report reads every stage
    assert pipeline.sections("train") == ("seed", "data", "tokenizer", "pack", "model", "train")
    assert pipeline.sections("attack")[-2:] == ("finetune", "attack")
    cfg = load_recipe("debug")
    changed = load_recipe("debug", ["eval.batch_size=3"])
    assert pipeline.fingerprint(cfg, "train") == pipeline.fingerprint(changed, "train")
    assert pipeline.fingerprint(cfg, "eval") != pipeline.fingerprint(changed, "eval")
    assert pipeline.fingerprint(cfg, "sample") == pipeline.fingerprint(changed, "sample")
    assert pipeline.check_redo(["pack"]) == [n for n in ALL if n not in ("curate", "tokenizer")]
    with pytest.raises(LmforgeError, match=r"^--redo everything: unknown stage \(stages: curate, tokenizer, pack, "
                                           r"train, eval, sample, finetune, merge, compress, explain, attack, "
                                           r"secure, report\)$"):
        pipeline.check_redo(["everything"])


def test_the_default_recipe_runs_every_stage_and_debug_the_core_ones():
    assert pipeline.chosen_stages(load_recipe("default")) == list(ALL)
    assert pipeline.chosen_stages(load_recipe("debug")) == [*pipeline.CORE, "report"]
    # a later stage runs when its section is there
    assert pipeline.chosen_stages(load_recipe("debug", ["merge.method=greedy_soup"])) == [*pipeline.CORE, "merge",
                                                                                           "report"]


def test_only_skip_and_stages_choose_and_bring_what_is_needed():
    cfg = load_recipe("default")
    assert pipeline.chosen_stages(cfg, only=["attack"]) == ["curate", "tokenizer", "pack", "train", "eval",
                                                            "finetune", "attack"]
    assert pipeline.chosen_stages(cfg, only=["report"]) == ["report"]
    # a skipped stage takes the stages that need it along
    assert pipeline.chosen_stages(cfg, skip=["finetune"]) == [n for n in ALL if n not in ("finetune", "attack")]
    assert pipeline.chosen_stages(cfg, skip=["compress", "report"]) == [n for n in ALL if n not in
                                                                        ("compress", "report")]
    assert pipeline.chosen_stages(load_recipe("default", ["stages=[sample, secure]"])) == [
        "curate", "tokenizer", "pack", "train", "eval", "sample", "secure"]
    assert pipeline.chosen_stages(load_recipe("default", ["stages=[merge]"]), only=["sample"])[-1] == "sample"


@pytest.mark.parametrize("kwargs, overrides, message", [
    ({"only": ["nope"]}, [], "--only: unknown stage 'nope' (stages: curate, "),
    ({"skip": ["Train"]}, [], "--skip: unknown stage 'Train' (stages: curate, "),
    ({}, ["stages=[train, harden]"], "stages: unknown stage 'harden' (stages: curate, "),
])
def test_an_unknown_stage_is_one_line_naming_where(kwargs, overrides, message):
    with pytest.raises(LmforgeError) as err:
        pipeline.chosen_stages(load_recipe("default", overrides), **kwargs)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
