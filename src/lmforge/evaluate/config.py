"""``eval:`` and ``generate:`` in a recipe."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from lmforge.core.config import StrictModel

BUILTIN = "builtin"  # in eval.tasks: the built-in tasks made from the curated corpus (docstring_to_name, ...)
VAL_LOSS = "val_loss"


def first_repeat(values) -> object | None:
    """The smallest value that occurs more than once in ``values``, None if all differ."""
    repeated = sorted({v for v in values if values.count(v) > 1})
    return repeated[0] if repeated else None


class QualityBudget(StrictModel):
    """How much of the evaluation a later stage (merge, compress) runs on each of its models: fewer validation
    tokens, or no tasks, keep a whole-life run short."""

    max_tokens: int | None = Field(default=None, ge=1, description="validation tokens scored per model; default: "
                                   "eval.max_tokens")
    tasks: bool = Field(default=True, description="also score eval.tasks; false: validation loss only")

    def max_windows(self, eval_cfg: EvalConfig, seq_len: int) -> int | None:
        tokens = self.max_tokens if self.max_tokens is not None else eval_cfg.max_tokens
        return None if tokens is None else max(1, tokens // seq_len)

    def task_names(self, eval_cfg: EvalConfig) -> list[str]:
        return list(eval_cfg.tasks) if self.tasks else []


class SelectConfig(StrictModel):
    """``eval.select``: which kept checkpoint the later stages take."""

    metric: str = Field(min_length=1, description="val_loss, or <task>/<metric> (e.g. which_package/f1_macro)")
    mode: Literal["min", "max"] | None = Field(
        default=None, description="default: min for val_loss, nll, brier, ece, mce, loss, perplexity, "
                                  "bits_per_byte; max otherwise")

    @field_validator("metric")
    @classmethod
    def _form(cls, metric: str) -> str:
        if metric != VAL_LOSS and (metric.count("/") < 1 or not all(metric.split("/", 1))):
            raise ValueError(f"{metric!r} is neither val_loss nor <task>/<metric>")
        return metric


class EvalConfig(StrictModel):
    max_tokens: int | None = Field(default=262_144, ge=1, description="validation tokens to score; None: all")
    batch_size: int = Field(default=8, ge=1)
    tasks: list[str] = Field(default_factory=lambda: [BUILTIN],
                             description="task YAML files, or builtin (the tasks made from the curated corpus)")
    builtin_examples: int = Field(default=200, ge=1, description="at most this many examples per built-in task")
    resamples: int = Field(default=1000, ge=1000, description="bootstrap resamples per interval")
    confidence: float = Field(default=0.95, gt=0, lt=1)
    calibration_fraction: float = Field(default=0.5, gt=0, lt=1,
                                        description="share of examples that fits the temperature (the rest "
                                                    "measures ECE before and after)")
    rolling_stride: int | None = Field(default=None, ge=1, description="perplexity tasks: tokens predicted per "
                                                                       "window; None: the context length (lm-eval)")
    seed: int = 0
    select: SelectConfig | None = None

    @field_validator("tasks")
    @classmethod
    def _distinct(cls, tasks: list[str]) -> list[str]:
        repeated = first_repeat(tasks)
        if repeated is not None:
            raise ValueError(f"{repeated!r} is listed twice")
        return tasks


class GenerateConfig(StrictModel):
    prompt: str = "def "
    max_new_tokens: int = Field(default=64, ge=1)
    temperature: float = Field(default=0.8, ge=0)
    top_k: int | None = Field(default=50, ge=1)
    top_p: float | None = Field(default=0.95, gt=0, le=1)
    num_samples: int = Field(default=2, ge=1)
    seed: int = 0
