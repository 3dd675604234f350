"""``explain:`` in a recipe (``lmforge explain``): what to explain, toward what, and how."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from lmforge.core.config import StrictModel

Method = Literal["integrated_gradients", "gradient_x_input", "occlusion", "shapley"]


class IntegratedGradients(StrictModel):
    steps: int = Field(default=50, ge=2, description="points on the path (Captum's n_steps) to start with")
    tolerance: float | None = Field(default=0.01, gt=0, description="steps doubled until the convergence delta is "
                                    "within this share of |F(x) - F(baseline)|; null: the steps as given")
    max_steps: int = Field(default=512, ge=2, description="the most steps doubling goes to")
    method: Literal["gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle"] = \
        "gausslegendre"
    internal_batch_size: int = Field(default=8, ge=1, description="path points per forward + backward: bounds "
                                     "memory whatever the number of steps")


class FaithfulnessSettings(StrictModel):
    points: int | None = Field(default=20, ge=1, description="thresholds k of the curves and AOPC; every k = 1..n "
                               "(ferret's) up to this many context tokens, evenly spaced ones beyond; null: every k")
    random_orders: int = Field(default=3, ge=0, description="seeded random rankings whose mean curve is shown beside")
    batch_size: int = Field(default=8, ge=1)


class TableSource(StrictModel):
    """A table whose columns are the features: each row read as one line per column, ``name: value``."""
    path: str = Field(default="run", description="a CSV or Parquet file, or run: the run's cleaned validation table "
                      "(curate/tabular/val.parquet, from data.tabular)")
    label: str | None = Field(default=None, description="the label column; default: data.tabular.label")
    columns: list[str] | None = Field(default=None, min_length=1, description="the feature columns, in the order "
                                      "the rows are written; default: every column but the label")


class PermutationSettings(StrictModel):
    segments: Literal["lines", "sentences"] = "lines"
    table: TableSource | None = Field(default=None, description="permute a table's columns instead of a task's "
                                      "segments")
    repeats: int = Field(default=5, ge=1)
    examples: int = Field(default=64, ge=2, description="the task's first examples that are shuffled among")
    max_segments: int = Field(default=12, ge=1, description="features: the first segments, the rest of a longer "
                              "text as the last")


class ExplainConfig(StrictModel):
    checkpoint: str | None = Field(default=None, description="the model (any the loader opens: selected, latest, "
                                   "best, finetuned, merged, a path); default: the selected, else the latest")
    text: str | None = Field(default=None, description="one text to explain (lmforge explain --text)")
    target: str | None = Field(default=None, description="a continuation of the text, or a classifier's label; "
                               "default: the model's next token, or the classifier's prediction")
    task: str | None = Field(default=None, description="explain examples of an evaluation task instead: a built-in "
                             "task name or a task YAML (its classification, multiple-choice or generation examples, "
                             "each toward its gold answer)")
    examples: int = Field(default=2, ge=1, description="how many of the task's examples (the first ones)")
    methods: list[Method] = Field(default=["integrated_gradients", "gradient_x_input", "occlusion"], min_length=1)
    layer: str = Field(default="embeddings", description="what the gradient methods attribute to: embeddings, or layers.<i> (a block's "
                       "output)")
    baseline: int | str = Field(default="eos", description="the token that replaces context tokens in baselines and "
                          "occlusion: eos (the tokenizer's end-of-text) or a token id")
    integrated_gradients: IntegratedGradients = IntegratedGradients()
    shapley_samples: int = Field(default=25, ge=1)
    perturbations_per_eval: int = Field(default=8, ge=1, description="occlusion and Shapley: inputs per forward")
    faithfulness: FaithfulnessSettings = FaithfulnessSettings()
    lens_top_k: int = Field(default=3, ge=1, le=20, description="the logit lens's tokens per layer and position")
    shown_positions: int = Field(default=24, ge=1, description="the logit lens table's last positions; the "
                                 "attention maps' last query and key positions (heatmaps and attributions.json)")
    permutation: PermutationSettings | None = Field(default=PermutationSettings(), description="with a "
                                                    "classification task: the importance of its segments; null: none")
    anatomy: bool = Field(default=True, description="weight spectra and power-law alpha of every matrix")
    seed: int = 0

    @field_validator("text")
    @classmethod
    def _not_empty(cls, text: str | None) -> str | None:
        if text is not None and not text.strip():
            raise ValueError("the text is empty: nothing to explain")
        return text

    @field_validator("baseline")
    @classmethod
    def _token(cls, baseline: int | str) -> int | str:
        if isinstance(baseline, str) and baseline.isdigit():
            baseline = int(baseline)
        if baseline != "eos" and not (isinstance(baseline, int) and baseline >= 0):
            raise ValueError(f"{baseline!r} is neither eos nor a token id")
        return baseline

    @field_validator("methods")
    @classmethod
    def _once_each(cls, methods: list[str]) -> list[str]:
        if len(set(methods)) != len(methods):
            raise ValueError("a method is listed twice")
        return methods

    @model_validator(mode="after")
    def _one_source(self):
        if self.text is not None and self.task is not None:
            raise ValueError("give text or task, not both")
        return self
