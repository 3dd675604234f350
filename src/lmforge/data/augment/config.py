"""``data.augment``: seeded, label-preserving augmentation of training documents."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lmforge.core.config import StrictModel

Operation = Literal["delete", "swap", "insert", "rename"]


class AugmentConfig(StrictModel):
    """A ``fraction`` of the training documents (chosen by a seeded hash of their text) each get
    ``copies`` augmented copies, written to the training split right after the original; the
    validation split never sees one. Each copy applies one operation, picked at random from
    ``operations``: delete, swap or insert words (inserted words come from the same document, so the
    label still holds), or rename the local variables of Python functions (code documents only).
    """

    enabled: bool = False
    fraction: float = Field(default=0.1, gt=0, le=1)
    copies: int = Field(default=1, ge=1, le=16)
    operations: list[Operation] = Field(default_factory=lambda: ["delete", "swap", "insert", "rename"],
                                        min_length=1)
    word_fraction: float = Field(default=0.1, gt=0, le=0.5)  # share of words one operation touches
