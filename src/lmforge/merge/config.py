"""``merge:`` in a recipe (``lmforge merge``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lmforge.core.config import StrictModel
from lmforge.evaluate.config import QualityBudget

Method = Literal["linear", "greedy_soup", "task_arithmetic", "ties", "dare_linear", "dare_ties", "slerp"]
TASK_METHODS = ("task_arithmetic", "ties", "dare_linear", "dare_ties")  # deltas from merge.base


class MergeConfig(StrictModel):
    """Which models to merge and how. Inputs and base are anything the loader reads: a checkpoint folder, an
    exported file, a run directory, a Hugging Face folder, or this run's latest / best / selected / finetuned."""

    inputs: list[str] = Field(default_factory=list, description="the models to merge (two or more); "
                             "`checkpoints` stands for every kept checkpoint of the run's training")
    method: Method = "linear"
    weights: list[float] | None = Field(default=None, description="one per input (linear: normalized to sum to "
                                        "1; task methods: each delta's factor); default: uniform")
    base: str | None = Field(default=None, description="task_arithmetic, ties, dare_*: the model the deltas are "
                             "taken from (inputs minus base)")
    scale: float = Field(default=1.0, description="task methods: lambda, the factor of the merged delta")
    density: float = Field(default=0.5, gt=0, le=1, description="ties: the share of each delta's entries kept (largest "
                           "magnitudes); dare_*: the share kept at random (drop probability 1 - density)")
    t: float = Field(default=0.5, ge=0, le=1, description="slerp: 0 gives the first input, 1 the second")
    seed: int = Field(default=0, description="dare_*: the seed of the random drops")
    ensemble: Literal["probabilities", "log_probabilities"] = Field(
        default="probabilities", description="the inputs as one model in the evaluation: the mean of their "
        "next-token probabilities, or of their log-probabilities")
    evaluate: bool = Field(default=True, description="score the merge, each input, the base and their ensemble "
                           "on the validation data and eval.tasks")
    quality: QualityBudget = Field(default_factory=QualityBudget, description="how much of the evaluation each "
                                   "model gets (and the greedy soup's held-out loss: its validation tokens)")

    @model_validator(mode="after")
    def _consistent(self) -> MergeConfig:
        if (self.weights is not None and self.inputs and "checkpoints" not in self.inputs
                and len(self.weights) != len(self.inputs)):
            raise ValueError(f"weights has {len(self.weights)} value(s) for {len(self.inputs)} input(s)")
        if self.method == "slerp" and self.inputs and len(self.inputs) != 2:
            raise ValueError(f"slerp merges exactly two models, got {len(self.inputs)} inputs")
        if self.method == "linear" and self.weights is not None and sum(self.weights) <= 0:
            raise ValueError("linear weights must sum to more than 0")
        return self
