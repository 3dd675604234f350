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
        assert stage.sections and all(s in RunConfig.model_fields for s in stage.sections), stage.name
        assert stage.help.strip(), stage.name
        assert all(n in pipeline.BY_NAME and pipeline.NAMES.index(n) < pipeline.NAMES.index(stage.name)
                   for n in stage.needs), f"{stage.name}: needs a stage that is not before it"


def test_order_fingerprints_and_redo_follow_the_rows():
    assert pipeline.NAMES == ("curate", "tokenizer", "pack", "train", "eval", "sample")
    assert pipeline.closure(["eval"]) == ["curate", "tokenizer", "pack", "train", "eval"]
    assert pipeline.later("tokenizer") == ["tokenizer", "pack", "train", "eval", "sample"]
    assert pipeline.later("eval") == ["eval"]
    assert pipeline.sections("train") == ("seed", "data", "tokenizer", "pack", "model", "train")
    cfg = load_recipe("debug")
    changed = load_recipe("debug", ["eval.batch_size=3"])
    assert pipeline.fingerprint(cfg, "train") == pipeline.fingerprint(changed, "train")
    assert pipeline.fingerprint(cfg, "eval") != pipeline.fingerprint(changed, "eval")
    assert pipeline.fingerprint(cfg, "sample") == pipeline.fingerprint(changed, "sample")
    assert pipeline.check_redo(["pack"]) == ["pack", "train", "eval", "sample"]
    with pytest.raises(LmforgeError, match=r"^--redo everything: unknown stage \(stages: curate, tokenizer, pack, "
                                           r"train, eval, sample\)$"):
        pipeline.check_redo(["everything"])
