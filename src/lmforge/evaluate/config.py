"""``eval:`` and ``generate:`` in a recipe."""

from __future__ import annotations

from pydantic import Field

from lmforge.core.config import StrictModel


class EvalConfig(StrictModel):
    max_tokens: int | None = Field(default=262_144, ge=1, description="validation tokens to score; None: all")
    batch_size: int = Field(default=8, ge=1)


class GenerateConfig(StrictModel):
    prompt: str = "def "
    max_new_tokens: int = Field(default=64, ge=1)
    temperature: float = Field(default=0.8, ge=0)
    top_k: int | None = Field(default=50, ge=1)
    top_p: float | None = Field(default=0.95, gt=0, le=1)
    num_samples: int = Field(default=2, ge=1)
    seed: int = 0
