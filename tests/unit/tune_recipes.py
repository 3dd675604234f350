"""Helper shared by the tune tests: the debug recipe with a ``tune:`` section."""

from __future__ import annotations

import copy

from lmforge.recipe import BUILTIN_RECIPES, RunConfig, build_config, read_yaml

DEBUG = read_yaml(BUILTIN_RECIPES / "debug.yaml")


def tune_config(space: dict, **tune) -> RunConfig:
    """The debug recipe with ``tune: {space: ..., **tune}``, validated like a recipe file."""
    raw = copy.deepcopy(DEBUG)
    raw["tune"] = {"space": space, **tune}
    return build_config(raw, "r.yaml")
