"""``tune:`` in a recipe: the search space, the sampler, the pruner, the study's storage and budget.

Each entry of ``space`` is keyed by the dotted recipe key it sets (``train.lr``) and says how to
sample it::

    tune:
      n_trials: 20
      sampler: {kind: tpe}
      pruner: {kind: successive_halving}
      space:
        train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
        train.warmup_steps: {type: int, low: 0, high: 40, step: 10}
        model.n_layers: {type: categorical, choices: [2, 4]}
        train.beta1: {type: float, low: 0.8, high: 0.95, when: {model.n_layers: 4}}

``when`` makes a parameter conditional: it is sampled (and set) only when every named categorical
parameter takes one of the given values. Checks that need only this section run when the recipe is
loaded; checks against the rest of the recipe run in ``lmforge.tune.space.check_space``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lmforge.core.config import StrictModel

Scalar = str | bool | int | float | None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class SearchParam(StrictModel):
    """One searched recipe key: a float or integer range (linear or log) or a list of choices."""

    type: Literal["float", "int", "categorical"]
    low: int | float | None = None
    high: int | float | None = None
    step: int | float | None = None
    log: bool = False
    choices: list[Scalar] | None = None
    when: dict[str, Scalar | list[Scalar]] | None = None

    @model_validator(mode="after")
    def _check(self):
        if self.type == "categorical":
            self._check_choices()
        else:
            self._check_range()
        if self.when is not None:
            if not self.when:
                raise ValueError("when: is empty; name the parameter(s) it depends on, e.g. when: {model.n_layers: 4}")
            for key, values in self.when.items():
                if isinstance(values, list) and not values:
                    raise ValueError(f"when.{key}: the list of values is empty, so the parameter is never active")
        return self

    def _check_choices(self) -> None:
        extra = [k for k in ("low", "high", "step") if getattr(self, k) is not None] + (["log"] if self.log else [])
        if extra:
            raise ValueError(f"{', '.join(extra)}: not used by type categorical (give choices)")
        if not self.choices:
            raise ValueError("categorical needs a non-empty list of choices")
        seen = []
        for c in self.choices:
            if any(c == s and type(c) is type(s) for s in seen):
                raise ValueError(f"choice {c!r} is listed twice")
            seen.append(c)

    def _check_range(self) -> None:
        if self.choices is not None:
            raise ValueError(f"choices: not used by type {self.type} (use type: categorical)")
        if self.low is None or self.high is None:
            raise ValueError(f"type {self.type} needs low and high")
        if self.type == "int":
            for name in ("low", "high", "step"):
                value = getattr(self, name)
                if value is not None and not _is_int(value):
                    raise ValueError(f"int range needs whole numbers, got {name}={value!r} (use type: float)")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is greater than high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log scale needs low > 0 (got low={self.low})")
        if self.step is not None:
            if self.step <= 0:
                raise ValueError(f"step must be positive (got {self.step})")
            if self.log and not (self.type == "int" and self.step == 1):
                raise ValueError("log and step cannot be combined (a log range is continuous)")

    def values(self) -> list:
        """Every value this parameter can take, or None for a continuous range."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "int":
            step = self.step or 1
            return list(range(self.low, self.high + 1, step))
        if self.step is None:
            return None
        count = int((self.high - self.low) / self.step + 1e-9) + 1
        return [round(self.low + i * self.step, 12) for i in range(count)]


class SamplerConfig(StrictModel):
    kind: Literal["tpe", "random", "grid"] = "tpe"
    seed: int | None = Field(default=None, description="default: the recipe's seed")
    n_startup_trials: int = Field(default=10, ge=0, description="tpe: random trials before the model")


class PrunerConfig(StrictModel):
    """Stops bad trials early from the validation loss reported every ``train.eval_every`` steps."""

    kind: Literal["none", "median", "successive_halving", "hyperband"] = "none"
    n_startup_trials: int = Field(default=2, ge=0, description="median: finished trials before pruning starts")
    n_warmup_steps: int = Field(default=0, ge=0, description="median: steps before a trial can be pruned")
    min_resource: int | None = Field(default=None, ge=1,
                                     description="halving/hyperband: steps of the first rung (default: eval_every)")
    max_resource: int | None = Field(default=None, ge=1, description="hyperband: default train.max_steps")
    reduction_factor: int = Field(default=3, ge=2)


class TuneConfig(StrictModel):
    space: dict[str, SearchParam] = Field(default_factory=dict)
    sampler: SamplerConfig = SamplerConfig()
    pruner: PrunerConfig = PrunerConfig()
    n_trials: int | None = Field(default=None, ge=1,
                                 description="trials in the whole study (all workers); default 20, grid: every point")
    max_tokens: int | None = Field(default=None, ge=1,
                                   description="stop starting trials once this many training tokens are spent")
    storage: str | None = Field(default=None, description="SQLAlchemy URL shared by every worker (e.g. "
                                "postgresql://user@host/optuna); default sqlite in <run>/tune/study.db")
    study_name: str | None = Field(default=None, description="default: the recipe's name")
    heartbeat_s: int = Field(default=10, ge=1,
                             description="a RUNNING trial without a heartbeat for 2x this long is failed and retried")
    keep_trial_checkpoints: bool = False
