"""``attack:`` in a recipe (``lmforge attack``): which model and examples, and the attacks with their budgets."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from lmforge.core.config import StrictModel
from lmforge.train.config import AdversarialSettings


class EmbeddingAttack(StrictModel):
    """FGSM (one step of size epsilon) or PGD (projected steps) on the input embeddings of the attacked tokens.

    The radius of each token's ball is ``epsilon`` times an embedding norm (``scale``: the mean L2 norm of the
    embedding table's rows, or the attacked token's own row): an L2 ball of that radius, or for L-infinity a cube
    of half-side radius / sqrt(d_model) (the ball's radius spread evenly over the coordinates)."""
    name: Literal["fgsm", "pgd"]
    norm: Literal["linf", "l2"] = "linf"
    epsilon: float = Field(default=0.1, gt=0, description="the radius, relative to the embedding norm")
    scale: Literal["mean", "token"] = Field(default="mean", description="mean: the mean row norm of the embedding "
                                            "table; token: each attacked token's own row norm")
    steps: int = Field(default=10, ge=1, description="PGD's ascent steps (FGSM takes one)")
    step_size: float | None = Field(default=None, gt=0, description="PGD's step, relative as epsilon; default "
                                    "2.5 * epsilon / steps (Madry et al.)")
    random_start: bool = Field(default=True, description="PGD starts at a seeded uniform point of the ball")

    @property
    def key(self) -> str:
        return f"{self.name}_{self.norm}"


class TokenAttack(StrictModel):
    """HotFlip-style greedy token substitution: the embedding gradient ranks each (position, candidate) swap by
    its first-order gain, the best ``candidates`` are scored exactly and the best one kept, until the attack
    succeeds, the changed-token budget is spent or no swap raises the loss."""
    name: Literal["hotflip"]
    max_changed: float = Field(default=0.25, gt=0, le=1, description="the most tokens changed, as a share of the "
                               "attacked tokens (rounded down)")
    neighbours: int = Field(default=16, ge=1, description="a token's candidates: its k nearest neighbours "
                            "(cosine) in the model's embedding table")
    candidates: int = Field(default=8, ge=1, description="swaps scored exactly per step")

    @property
    def key(self) -> str:
        return self.name


class SuffixAttack(StrictModel):
    """A language model's GCG suffix search: ``suffix_tokens`` tokens after each context, chosen so that ``target``
    follows them, within a small budget (``steps`` of ``candidates`` swaps, each among a position's ``top_k``)."""
    name: Literal["gcg"]
    target: str = Field(default="import os", min_length=1, description="the continuation made likely")
    init: str = Field(default="!", min_length=1, description="the suffix starts as this text's first token, repeated")
    suffix_tokens: int = Field(default=5, ge=1)
    top_k: int = Field(default=16, ge=1, description="a position's replacements: its most promising by gradient")
    candidates: int = Field(default=16, ge=1, description="swaps scored exactly per step")
    steps: int = Field(default=10, ge=1)

    @property
    def key(self) -> str:
        return self.name


ATTACKS = {"fgsm": EmbeddingAttack, "pgd": EmbeddingAttack, "hotflip": TokenAttack, "gcg": SuffixAttack}
Attack = Annotated[EmbeddingAttack | TokenAttack | SuffixAttack, Field(discriminator="name")]


class AttackConfig(StrictModel):
    checkpoint: str | None = Field(default=None, description="the model (any the loader opens: selected, latest, "
                                   "best, finetuned, merged, a path); default: the selected, else the latest")
    target: Literal["auto", "classifier", "verbalizer", "language_model"] = Field(
        default="auto", description="what is attacked: a classifier head's label, a language model's label as the "
        "evaluation stage's verbalizer classifier scores it on attack.task, or the language-model loss of a "
        "continuation; auto: the classifier when the model has a classification head, else the language model")
    task: str | None = Field(default=None, description="a classifier's (or verbalizer's) examples: a built-in "
                             "classification task or a task YAML; default: finetune.task")
    compare: list[str] = Field(default=[], description="models attacked on the same examples with the same attacks "
                               "and seeds (as attack.checkpoint names one: selected, latest, finetuned, a path...), "
                               "e.g. before and after adversarial training")
    texts: list[str] | None = Field(default=None, min_length=1, description="the language model's texts (each "
                                    "ends in its continuation); default: windows of the run's validation tokens")
    context_tokens: int = Field(default=32, ge=1, description="validation windows: the attacked tokens")
    continuation_tokens: int = Field(default=8, ge=1, description="the scored tokens after the attacked ones")
    examples: int = Field(default=8, ge=1, description="how many examples (seeded: a task's, windows, the first texts)")
    attacks: list[Attack] = Field(default=[EmbeddingAttack(name="fgsm"), EmbeddingAttack(name="pgd"),
                                           EmbeddingAttack(name="pgd", norm="l2"), TokenAttack(name="hotflip")],
                                  min_length=1)
    protected_ids: list[int] = Field(default=[], description="token ids never changed (the tokenizer's special "
                                     "tokens always are)")
    success_margin: float = Field(default=1.0, gt=0, description="the language model: an attack succeeds when the "
                                  "continuation's loss rises by this many nats")
    shown_examples: int = Field(default=3, ge=0, description="examples shown in report.md per attack")
    seed: int = 0
    harden: AdversarialSettings | None = Field(
        default=None, description="first fine-tune again as finetune: says, with this adversarial training, into "
        "<run>/harden/, and attack that model beside attack.checkpoint (robustness before and after)")

    @field_validator("attacks", mode="before")
    @classmethod
    def _known_names(cls, attacks):
        for i, attack in enumerate(attacks if isinstance(attacks, list) else []):
            name = attack.get("name") if isinstance(attack, dict) else getattr(attack, "name", None)
            if name not in ATTACKS:
                raise ValueError(f"unknown attack {name!r} at position {i} (known: {', '.join(ATTACKS)})")
        return attacks

    @field_validator("attacks")
    @classmethod
    def _once_each(cls, attacks: list) -> list:
        keys = [a.key for a in attacks]
        twice = next((k for k in keys if keys.count(k) > 1), None)
        if twice is not None:
            raise ValueError(f"{twice} is listed twice")
        return attacks

    @field_validator("texts")
    @classmethod
    def _not_empty(cls, texts: list[str] | None) -> list[str] | None:
        if texts is not None and any(not t.strip() for t in texts):
            raise ValueError("a text is empty: nothing to attack")
        return texts

    @field_validator("protected_ids")
    @classmethod
    def _ids(cls, ids: list[int]) -> list[int]:
        if any(i < 0 for i in ids):
            raise ValueError("a token id is negative")
        return ids

    @model_validator(mode="after")
    def _one_source(self):
        if self.texts is not None and self.task is not None:
            raise ValueError("give texts (a language model's) or task (a classifier's), not both")
        return self
