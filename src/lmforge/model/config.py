"""Model config: a named size plus optional overrides, resolved into concrete dimensions."""

from __future__ import annotations

import dataclasses
from typing import Literal

from pydantic import Field, model_validator

from lmforge.core.config import StrictModel

SizeName = Literal["debug", "tiny", "small", "124m", "1b"]


@dataclasses.dataclass(frozen=True)
class ModelDims:
    """Every number the decoder needs. ``vocab_size`` comes from the trained tokenizer."""

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_hidden: int
    context_length: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    dropout: float = 0.0
    init_std: float = 0.02
    # None: d_model / n_heads; set when heads were removed (compress structured) or an imported model says so
    explicit_head_dim: int | None = None

    def __post_init__(self):  # one spelling per shape: a head_dim equal to d_model / n_heads is the default
        if self.explicit_head_dim is not None and self.explicit_head_dim * self.n_heads == self.d_model:
            object.__setattr__(self, "explicit_head_dim", None)

    @property
    def head_dim(self) -> int:
        return self.explicit_head_dim or self.d_model // self.n_heads

    def to_dict(self) -> dict:
        """The fields, without ``explicit_head_dim`` when unset (resume keys and fingerprints made before it
        existed stay the same)."""
        d = dataclasses.asdict(self)
        if d["explicit_head_dim"] is None:
            del d["explicit_head_dim"]
        return d


# Named sizes (vocab_size is filled in from the tokenizer). Parameter counts quoted at the vocab shown.
SIZES: dict[str, dict] = {
    # < 1M parameters at vocab 4096: unit and integration tests
    "debug": dict(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=172, context_length=128),
    # ~5M parameters at vocab 4096: the built-in run on a laptop CPU
    "tiny": dict(d_model=256, n_layers=6, n_heads=8, n_kv_heads=4, ffn_hidden=688, context_length=256),
    # ~30M parameters at vocab 16384
    "small": dict(d_model=512, n_layers=8, n_heads=8, n_kv_heads=4, ffn_hidden=1376, context_length=512),
    # GPT-2 small class: ~124M parameters at vocab 50257
    "124m": dict(d_model=768, n_layers=12, n_heads=12, n_kv_heads=12, ffn_hidden=2048, context_length=1024),
    # Llama-3.2-1B class: ~1.0B parameters at vocab 32000
    "1b": dict(d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8, ffn_hidden=8192, context_length=2048),
}


class ModelConfig(StrictModel):
    """``model:`` in a recipe. ``size`` picks the defaults; any field set here overrides them."""

    size: SizeName = "tiny"
    d_model: int | None = Field(default=None, ge=8)
    n_layers: int | None = Field(default=None, ge=1)
    n_heads: int | None = Field(default=None, ge=1)
    n_kv_heads: int | None = Field(default=None, ge=1)
    ffn_hidden: int | None = Field(default=None, ge=1)
    context_length: int | None = Field(default=None, ge=2)
    # default d_model / n_heads; set, the attention works in n_heads x head_dim (which may differ from d_model)
    head_dim: int | None = Field(default=None, ge=2)
    # embedding rows; default: the tokenizer's size (a model imported with a padded vocabulary has more rows)
    vocab_size: int | None = Field(default=None, ge=2)
    rope_theta: float = Field(default=10000.0, gt=0)
    norm_eps: float = Field(default=1e-5, gt=0)
    tie_embeddings: bool = True
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    init_std: float = Field(default=0.02, gt=0)

    def _resolved(self) -> dict:
        values = dict(SIZES[self.size])
        for key in ("d_model", "n_layers", "n_heads", "n_kv_heads", "ffn_hidden", "context_length"):
            if getattr(self, key) is not None:
                values[key] = getattr(self, key)
        if self.n_heads is not None and self.n_kv_heads is None:
            values["n_kv_heads"] = min(values["n_kv_heads"], values["n_heads"])
        return values

    @model_validator(mode="after")
    def _check_shapes(self):
        v = self._resolved()
        if self.head_dim is None and v["d_model"] % v["n_heads"]:
            raise ValueError(f"n_heads ({v['n_heads']}) must divide d_model ({v['d_model']})")
        if v["n_heads"] % v["n_kv_heads"]:
            raise ValueError(f"n_kv_heads ({v['n_kv_heads']}) must divide n_heads ({v['n_heads']})")
        if self.head_dim is not None and self.head_dim % 2:
            raise ValueError(f"head_dim ({self.head_dim}) must be even (rotary embeddings)")
        if self.head_dim is None and (v["d_model"] // v["n_heads"]) % 2:
            raise ValueError(f"head dimension d_model/n_heads = {v['d_model'] // v['n_heads']} must be even (rotary embeddings)")
        return self

    @classmethod
    def describing(cls, dims: ModelDims, dropout: float = 0.0, init_std: float = 0.02) -> ModelConfig:
        """The ``model:`` section whose ``dims()`` are ``dims`` (training-only settings given)."""
        return cls(size="debug", vocab_size=dims.vocab_size, d_model=dims.d_model, n_layers=dims.n_layers,
                   n_heads=dims.n_heads, n_kv_heads=dims.n_kv_heads, ffn_hidden=dims.ffn_hidden,
                   context_length=dims.context_length, head_dim=dims.explicit_head_dim, rope_theta=dims.rope_theta,
                   norm_eps=dims.norm_eps, tie_embeddings=dims.tie_embeddings, dropout=dropout, init_std=init_std)

    def dims(self, vocab_size: int) -> ModelDims:
        """The decoder over a tokenizer of ``vocab_size`` tokens (``model.vocab_size`` rows, when set)."""
        if self.vocab_size is not None and self.vocab_size < vocab_size:
            from lmforge.errors import RecipeError

            raise RecipeError(f"model.vocab_size: {self.vocab_size} embedding rows cannot hold the tokenizer's "
                              f"{vocab_size} tokens")
        return ModelDims(
            vocab_size=vocab_size if self.vocab_size is None else self.vocab_size,
            rope_theta=self.rope_theta,
            norm_eps=self.norm_eps,
            tie_embeddings=self.tie_embeddings,
            dropout=self.dropout,
            init_std=self.init_std,
            explicit_head_dim=self.head_dim,
            **self._resolved(),
        )
