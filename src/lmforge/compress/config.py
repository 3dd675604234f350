"""``compress:`` in a recipe (``lmforge compress``): a list of variants, each made from one checkpoint."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from lmforge.core.config import StrictModel
from lmforge.evaluate.config import QualityBudget

NAME = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="the variant's folder under compress/")


class Recovery(StrictModel):
    """Optional recovery training of a pruned model on the run's data (a ``<name>-recovered`` variant beside it;
    unstructured and 2:4 pruning keep their zeros through it)."""
    recovery_steps: int = Field(default=0, ge=0, description="train the pruned model this many steps; 0: none")
    recovery_lr: float | None = Field(default=None, gt=0, description="default: train.lr / 10 (a trained model: "
                                      "at the full rate its fresh optimizer state undoes training)")


class MagnitudeVariant(Recovery):
    """Unstructured: the smallest-magnitude share of each block linear layer's weights set to zero."""
    name: str = NAME
    method: Literal["magnitude"]
    sparsity: float = Field(gt=0, lt=1)


class WandaVariant(Recovery):
    """Unstructured (Sun et al. 2024): score |W_ij| * ||X_j||_2 over the calibration tokens; the lowest-scoring
    share of each output row set to zero."""
    name: str = NAME
    method: Literal["wanda"]
    sparsity: float = Field(gt=0, lt=1)


class TwoFourVariant(Recovery):
    """2:4 semi-structured: in every group of four consecutive input weights of a row, the two lowest-scoring
    set to zero (score: Wanda's, or the magnitude)."""
    name: str = NAME
    method: Literal["two_four"]
    score: Literal["wanda", "magnitude"] = "wanda"


class StructuredVariant(Recovery):
    """Structured: the least important share of every block's MLP channels and / or attention heads removed
    (importance: the part's activation norm over the calibration tokens times its columns' norm in the projection
    it feeds): a smaller dense model (``compress.structured``)."""
    name: str = NAME
    method: Literal["structured"]
    mlp_fraction: float = Field(default=0.0, ge=0, lt=1, description="share of the MLP channels removed in every block")
    head_fraction: float = Field(default=0.0, ge=0, lt=1, description="share of the attention heads removed in every "
                                 "block: query heads within each grouped-query group, or whole groups of one")

    @model_validator(mode="after")
    def _removes_something(self):
        if not self.mlp_fraction and not self.head_fraction:
            raise ValueError("set mlp_fraction and / or head_fraction: the share of MLP channels / attention heads "
                             "to remove")
        return self


class Int8Variant(StrictModel):
    """int8 weights (symmetric per output channel) with activations quantized at run time (``model.quantized``)."""
    name: str = NAME
    method: Literal["int8"]


class Int4Variant(StrictModel):
    """int4 weights, asymmetric per group of ``group_size`` inputs, bf16 activations (``model.quantized``)."""
    name: str = NAME
    method: Literal["int4"]
    group_size: Literal[32, 64, 128, 256] = 128


class StudentDims(StrictModel):
    """The student's shape: any of these set overrides the teacher's (vocabulary and context stay the teacher's)."""
    d_model: int | None = Field(default=None, ge=8)
    n_layers: int | None = Field(default=None, ge=1)
    n_heads: int | None = Field(default=None, ge=1)
    n_kv_heads: int | None = Field(default=None, ge=1)
    ffn_hidden: int | None = Field(default=None, ge=1)


class DistillVariant(StrictModel):
    """Knowledge distillation into a smaller student, L = (1 - alpha) * CE + alpha * T^2 * KL(teacher_T || student_T)
    (``reverse``: KL(student_T || teacher_T)), the teacher's logits computed on the fly, beside its control: the
    same student trained on the same batches with cross-entropy alone (``<name>-ce``)."""
    name: str = NAME
    method: Literal["distill"]
    student: StudentDims = Field(default_factory=StudentDims, description="default: the teacher with half its blocks")
    alpha: float = Field(default=0.5, ge=0, le=1)
    temperature: float = Field(default=2.0, gt=0)
    reverse: bool = False
    max_steps: int = Field(default=200, ge=1)
    lr: float | None = Field(default=None, gt=0, description="default: train.lr")


Variant = Annotated[MagnitudeVariant | WandaVariant | TwoFourVariant | StructuredVariant | Int8Variant | Int4Variant
                    | DistillVariant, Field(discriminator="method")]


class CalibrationConfig(StrictModel):
    """Windows of ``train.seq_len`` tokens from the training shards (Wanda's and the structured importance)."""
    batches: int = Field(default=8, ge=1)
    batch_size: int = Field(default=8, ge=1)
    seed: int = 0


class MeasureConfig(StrictModel):
    """The speed columns: batch 1, the same prompts for every model, medians of ``repeats`` interleaved runs."""
    prompt_tokens: int = Field(default=64, ge=1)
    new_tokens: int = Field(default=32, ge=1)
    repeats: int = Field(default=5, ge=1)
    memory: bool = Field(default=True, description="also the peak memory of generating with each model, each "
                         "measured in a fresh process")


class CompressConfig(StrictModel):
    checkpoint: str | None = Field(default=None, description="the dense model: default the selected, else the "
                                   "latest checkpoint; or anything the loader reads")
    variants: list[Variant] = Field(default_factory=list)
    calibration: CalibrationConfig = CalibrationConfig()
    measure: MeasureConfig = MeasureConfig()
    quality: QualityBudget = Field(default_factory=QualityBudget, description="how much of the evaluation each "
                                   "variant gets")
