"""``train:`` in a recipe."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lmforge.core.config import StrictModel
from lmforge.errors import RecipeError

OptimizerName = Literal["adamw", "adam", "rmsprop", "sgd", "lion", "adafactor", "muon"]
OPTIMIZERS: tuple[str, ...] = OptimizerName.__args__


class SGDSettings(StrictModel):
    momentum: float = Field(default=0.9, ge=0, lt=1)
    nesterov: bool = True


class RMSpropSettings(StrictModel):
    alpha: float = Field(default=0.99, gt=0, lt=1, description="smoothing constant of the squared-gradient average")
    momentum: float = Field(default=0.0, ge=0, lt=1)


class LionSettings(StrictModel):
    beta1: float = Field(default=0.9, ge=0, lt=1, description="interpolation of momentum and gradient for the sign")
    beta2: float = Field(default=0.99, ge=0, lt=1, description="momentum decay")


class AdafactorSettings(StrictModel):
    beta2_decay: float = Field(default=-0.8, le=0, description="second-moment decay exponent (torch.optim.Adafactor)")


class MuonSettings(StrictModel):
    """Muon for the 2-D weights inside the blocks; AdamW (train.beta1/beta2/eps) for embeddings, the LM head
    and norms."""

    momentum: float = Field(default=0.95, ge=0, lt=1)
    nesterov: bool = True
    ns_steps: int = Field(default=5, ge=1, le=20, description="Newton-Schulz iterations")
    adjust_lr: Literal["match_rms_adamw", "original"] = Field(
        default="match_rms_adamw", description="match_rms_adamw: the matrices reuse train.lr tuned for AdamW")


class AdversarialSettings(StrictModel):
    """Adversarial training in embedding space (``train.adversarial``, ``finetune.adversarial``): each batch's
    loss is taken at input embeddings perturbed, position by position, within a ball around the clean ones
    (as ``lmforge attack``'s FGSM/PGD measure it: radius ``epsilon`` times the mean L2 norm of the embedding
    table's rows; L-infinity: that radius spread evenly over the coordinates), found by ascent steps on the
    same loss. pgd (Madry et al.): the model trains on the last ascent iterate; freelb (Zhu et al.): on the
    mean over the ascent iterates. The clean loss joins with weight ``clean_weight``."""
    method: Literal["pgd", "freelb"] = "pgd"
    norm: Literal["linf", "l2"] = "linf"
    epsilon: float = Field(default=0.1, gt=0, description="the radius, relative to the embedding norm")
    steps: int = Field(default=3, ge=1, description="ascent steps per batch (each one more forward and backward)")
    step_size: float | None = Field(default=None, gt=0, description="relative as epsilon; default 2.5 * epsilon "
                                    "/ steps")
    random_start: bool = Field(default=True, description="start at a uniform point of the ball (else at the "
                               "clean input)")
    clean_weight: float = Field(default=0.5, ge=0, lt=1, description="loss = clean_weight * clean loss + "
                                "(1 - clean_weight) * adversarial loss")


class TrainConfig(StrictModel):
    max_steps: int = Field(default=200, ge=1)
    batch_size: int = Field(default=16, ge=1, description="global batch: sequences per optimizer step")
    micro_batch_size: int | Literal["auto"] | None = Field(
        default=None, description="sequences per forward pass on one process; default: batch_size / processes; "
                                  "auto: the largest that fits memory (gradient accumulation keeps the global batch)")
    seq_len: int | None = Field(default=None, ge=2, description="default: the model's context length")
    lr: float = Field(default=3e-3, gt=0, le=10)
    schedule: Literal["cosine", "linear", "wsd"] = Field(
        default="cosine", description="after warm-up: cosine or linear decay, or warm-up-stable-decay")
    decay_fraction: float = Field(default=0.2, gt=0, le=1, description="wsd: the final fraction of steps that decays")
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    warmup_steps: int = Field(default=20, ge=0)
    optimizer: OptimizerName = "adamw"
    weight_decay: float = Field(default=0.1, ge=0)
    beta1: float = Field(default=0.9, ge=0, lt=1, description="adamw, adam (and muon's AdamW part)")
    beta2: float = Field(default=0.95, ge=0, lt=1, description="adamw, adam (and muon's AdamW part)")
    eps: float = Field(default=1e-8, gt=0)
    sgd: SGDSettings = SGDSettings()
    rmsprop: RMSpropSettings = RMSpropSettings()
    lion: LionSettings = LionSettings()
    adafactor: AdafactorSettings = AdafactorSettings()
    muon: MuonSettings = MuonSettings()
    grad_clip: float | None = Field(default=1.0, gt=0)
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        default="fp32", description="fp32; bf16 autocast; fp16 autocast with a gradient scaler. Weights stay fp32")
    activation_checkpointing: bool = Field(default=False, description="recompute each block's activations in backward")
    compile: bool = Field(default=False, description="torch.compile each block")
    memory_limit_gb: float | None = Field(
        default=None, gt=0, description="memory a process may use; checked before training (CPU default: the "
                                        "machine's memory; CUDA: the device's)")
    peak_tflops: float | None = Field(default=None, gt=0, description="device peak for MFU where the table lacks it")
    eval_every: int = Field(default=50, ge=0, description="0: only at the start and the end")
    eval_batches: int = Field(default=8, ge=1)
    eval_tasks: list[str] = Field(default_factory=list, description="task YAML files, or builtin, scored at every "
                                  "validation step into metrics.jsonl (<task>/<metric>)")
    log_every: int = Field(default=10, ge=1)
    checkpoint_every: int = Field(default=50, ge=1)
    keep_checkpoints: int = Field(default=2, ge=1)
    max_nonfinite_in_row: int = Field(default=5, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    strict: bool = Field(default=False, description="a training split smaller than one batch, or than a few "
                         "steps' worth, is an error instead of a warning")
    adversarial: AdversarialSettings | None = Field(default=None, description="adversarial training in "
                                                   "embedding space (see AdversarialSettings); default: none")

    @model_validator(mode="after")
    def _check(self):
        micro = self.micro_batch_size
        if isinstance(micro, int) and micro < 1:
            raise ValueError(f"micro_batch_size ({micro}) must be at least 1")
        if isinstance(micro, int) and micro > self.batch_size:
            raise ValueError(f"micro_batch_size ({micro}) must not exceed batch_size ({self.batch_size})")
        return self


def sequence_length(train: TrainConfig, context_length: int) -> int:
    """Tokens per training sequence: ``train.seq_len``, or the model's context length (the training loop's
    rule, which the estimator and the optimizer comparison share)."""
    seq_len = train.seq_len or context_length
    if seq_len > context_length:
        raise RecipeError(f"train.seq_len: {seq_len} exceeds the model context length {context_length}")
    return seq_len
