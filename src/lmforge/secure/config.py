"""``secure:`` in a recipe (the whole-life run's ``secure`` stage): which model is protected, and how."""

from __future__ import annotations

from pydantic import Field, model_validator

from lmforge.core.config import StrictModel


class SecureConfig(StrictModel):
    checkpoint: str | None = Field(default=None, description="the model protected (any the loader opens: selected, "
                                   "latest, best, finetuned, merged, a path); default: the selected, else the latest")
    encrypt: bool = Field(default=True, description="encrypt the exported model for the run's X25519 key "
                          "(<run>/secure/model.safetensors.enc); false: a plain signed export")
    sign: bool = Field(default=True, description="sign the exported model with the run's EC P-256 key "
                       "(OpenSSF model signing, <output>.sig)")
    segment_size: int = Field(default=1 << 20, ge=1, le=1 << 30, description="the plaintext bytes of each "
                              "authenticated segment of the encrypted file (secure.envelope's default: 1 MiB)")

    @model_validator(mode="after")
    def _something_to_do(self):
        if not self.encrypt and not self.sign:
            raise ValueError("encrypt=false and sign=false: nothing to do (keep one, or leave secure: out)")
        return self
