"""The base of every stage's typed config: unknown keys are rejected, values are validated (no float
may be inf or nan: a recipe never means either, and both would fail far from the recipe)."""

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False)
