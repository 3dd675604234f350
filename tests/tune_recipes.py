"""Helper shared by the tune tests: the debug recipe with a ``tune:`` section."""

from __future__ import annotations

import copy

from lmforge.recipe import BUILTIN_RECIPES, RunConfig, build_config, read_yaml

DEBUG = read_yaml(BUILTIN_RECIPES / "debug.yaml")
# trials of the real training loop in a fraction of a second: 4 steps of 2 x 32 tokens, validation every 2
SHORT = {"max_steps": 4, "batch_size": 2, "seq_len": 32, "warmup_steps": 0, "eval_every": 2, "eval_batches": 1}
SHORT_TOKENS_PER_STEP = 2 * 32


def tune_config(space: dict, train: dict | None = None, **tune) -> RunConfig:
    """The debug recipe with ``tune: {space: ..., **tune}`` and ``train`` settings, validated like a recipe file."""
    raw = copy.deepcopy(DEBUG)
    raw["train"].update(train or {})
    raw["tune"] = {"space": space, **tune}
    return build_config(raw, "r.yaml")
