"""``data.tabular``: cleaning a numeric table (CSV or Parquet) beside the documents.

    data:
      tabular:
        path: data/patients.csv
        label: outcome                       # carried through untouched
        missing: {age: median, income: mean, weight: drop, visits: 0}
        clip: {age: {min: 0, max: 120}}
        derive: {bmi: "weight / (height / 100) ** 2", log_income: "log1p(income)"}
        standardize: all                     # or a list of columns, or none

The curate stage writes ``data/tabular/{train,val}.parquet`` and ``data/tabular/scaler.json``: the
imputation values and the means and scales, fit on the training split only, which
``lmforge.data.tabular.transform.apply_scaler`` re-applies unchanged to new data at evaluation time.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from lmforge.core.config import StrictModel
from lmforge.data.tabular.expressions import ExpressionError, parse_expression

Strategy = Literal["drop", "mean", "median", "zero"]


class ClipRule(StrictModel):
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> ClipRule:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is larger than max ({self.max})")
        return self


class TabularConfig(StrictModel):
    path: str
    format: Literal["auto", "csv", "parquet"] = "auto"  # auto: by the file ending
    columns: list[str] | None = None  # numeric columns to clean; default: every numeric column
    label: str | None = None  # a target column kept as it is; rows without a label are dropped
    # Per column: drop the row, impute the training mean / median, zero, or a constant number.
    missing: dict[str, Strategy | float] = Field(default_factory=dict)
    missing_default: Strategy = "drop"
    clip: dict[str, ClipRule] = Field(default_factory=dict)
    derive: dict[str, str] = Field(default_factory=dict)  # new column -> expression, in order
    standardize: list[str] | Literal["all", "none"] = "all"

    @field_validator("derive")
    @classmethod
    def _expressions_parse(cls, derive: dict[str, str]) -> dict[str, str]:
        for name, expression in derive.items():
            if not name.isidentifier():
                raise ValueError(f"derived column name {name!r} must be an identifier")
            try:
                parse_expression(expression)
            except ExpressionError as exc:
                raise ValueError(f"{name}: {exc}") from None
        return derive

    @model_validator(mode="after")
    def _label_not_cleaned(self) -> TabularConfig:
        if self.label is not None:
            for key, names in (("columns", self.columns or []), ("clip", self.clip), ("missing", self.missing),
                               ("standardize", self.standardize if isinstance(self.standardize, list) else [])):
                if self.label in names:
                    raise ValueError(f"the label column {self.label!r} cannot be in {key}")
        return self
