"""``finetune:`` in a recipe (``lmforge finetune``). The optimizer, batch, schedule shape, evaluation and
checkpoint cadence are ``train:``'s; only what differs for fine-tuning is set here."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lmforge.core.config import StrictModel
from lmforge.data.config import SourceConfig
from lmforge.train.config import AdversarialSettings

FUSED_AND_OUTPUT_PROJECTIONS = ["qkv_proj", "out_proj", "gate_up_proj", "down_proj"]


class FrozenSettings(StrictModel):
    """``mode: frozen``: what does not train."""

    embeddings: bool = Field(default=False, description="the token embeddings (and the LM head tied to them)")
    first_blocks: int = Field(default=0, ge=0, description="the first N transformer blocks")
    patterns: list[str] = Field(default_factory=list, description="fnmatch patterns of parameter names, e.g. "
                                "'layers.*.attn.*'; each must match at least one parameter")


class LoraSettings(StrictModel):
    """``mode: lora``: adapters through peft (``peft.LoraConfig``) around the blocks' linear layers."""

    rank: int = Field(default=8, ge=1)
    alpha: float = Field(default=16.0, gt=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(FUSED_AND_OUTPUT_PROJECTIONS), min_length=1,
                                      description="linear layers inside the blocks, by name or name suffix "
                                                  "(qkv_proj, out_proj, gate_up_proj, down_proj, layers.0.attn.qkv_proj)")
    use_rslora: bool = Field(default=False, description="scale by alpha / sqrt(rank) instead of alpha / rank")
    use_dora: bool = Field(default=False, description="weight-decomposed LoRA (DoRA)")


class FinetuneConfig(StrictModel):
    base: str | None = Field(default=None, description="the model to start from: a checkpoint folder, an exported "
                             "file, a run directory or a Hugging Face folder; default: this run's selected, else "
                             "latest checkpoint")
    objective: Literal["causal_lm", "sft", "classification"] = Field(
        default="causal_lm", description="causal_lm: continued pretraining on the run's token shards (or "
        "finetune.sources', packed with the base's tokenizer); sft: prompt -> completion records (finetune.data), "
        "the loss on the completion only; classification: a head on the last token, labels from finetune.task or "
        "the documents' label (a source's label_field)")
    task: str | None = Field(default=None, description="objective classification: a classification task of the "
                             "evaluation stage: a built-in one (which_package) or a task YAML with train_path")
    data: str | None = Field(default=None, description="objective sft: a JSONL file of records with a prompt and "
                             "a completion string field")
    sources: list[SourceConfig] | None = Field(default=None, min_length=1, description="objective causal_lm: new "
                                               "data (data.sources' shape) curated with data:'s steps and packed "
                                               "with the base's tokenizer under finetune/; default: the run's "
                                               "curated data")
    prompt_field: str = Field(default="prompt", min_length=1)
    completion_field: str = Field(default="completion", min_length=1)
    val_fraction: float = Field(default=0.1, gt=0, lt=1, description="objective sft: the seeded share of the "
                                "records held out for validation (at least one record)")
    mode: Literal["full", "frozen", "lora"] = "full"
    frozen: FrozenSettings = FrozenSettings()
    lora: LoraSettings = LoraSettings()
    max_steps: int = Field(default=100, ge=1)
    lr: float = Field(default=1e-3, gt=0, le=10)
    warmup_steps: int = Field(default=0, ge=0)
    adversarial: AdversarialSettings | None = Field(default=None, description="adversarial training in embedding "
                                                   "space, as train.adversarial; default: none")
