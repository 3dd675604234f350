"""The tiny seeded decoders the attack tests run on: a language model, or a classifier with a head of one logit per
label, with weights far enough from the initialisation that their losses and gradients are not flat."""

from __future__ import annotations

import torch

from lmforge.model.config import SIZES, ModelDims
from lmforge.model.decoder import Decoder

CONTEXT = (5, 17, 3, 42, 8, 8, 61, 1, 29, 13)


def decoder(labels: int | None = None) -> Decoder:
    torch.manual_seed(0)
    m = Decoder(ModelDims(vocab_size=64, **SIZES["debug"]))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        if labels is not None:
            m.lm_head = torch.nn.Linear(m.dims.d_model, labels, bias=False)
            m.lm_head.weight.normal_(0, 0.5)
    return m.eval().requires_grad_(False)
