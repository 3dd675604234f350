"""The decoder is Hugging Face ``LlamaForCausalLM``'s math ("same math", README and BENCHMARKS): on debug
dimensions (grouped-query attention, tied and untied head) in fp64, the same weights give the same logits,
loss and gradients within 1e-10, through ``model/hf_names.py``'s config and weight names.

HF computes its RMSNorm, rotary angles and loss in fp32 whatever the model's dtype (``.to(torch.float32)``,
``.float()``, ``dtype=torch.float``); ``KeepFloat64`` turns those into fp64, so that what is compared is the
math at fp64 rounding. The models as they ship (fp32, HF's own rotary tables) agree to fp32 rounding.
transformers is a pinned test dependency (requirements-dev.txt): missing, this file fails. Models are built
from configs; nothing is downloaded.
"""

import pytest
import torch
import transformers
from torch.overrides import TorchFunctionMode

from lmforge.model.config import ModelConfig
from lmforge.model.decoder import Decoder, rotary_tables
from lmforge.model.hf_names import hf_llama_config, to_hf_llama, to_hf_state_dict

B, T, VOCAB = 3, 20, 97


class KeepFloat64(TorchFunctionMode):
    """fp32 asked of a torch function (a ``dtype`` argument, ``Tensor.to``, ``Tensor.float``) becomes fp64."""

    def __init__(self):
        super().__init__()
        self.upcasts = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.float and args[0].dtype == torch.float64:
            self.upcasts += 1
            return args[0]
        if kwargs.get("dtype") is torch.float32:
            kwargs["dtype"] = torch.float64
            self.upcasts += 1
        if func is torch.Tensor.to and torch.float32 in args[1:]:
            args = tuple(torch.float64 if a is torch.float32 else a for a in args)
            self.upcasts += 1
        return func(*args, **kwargs)


def models(tie: bool, attention: str, dtype: torch.dtype):
    torch.manual_seed(0)
    ours = Decoder(ModelConfig(size="debug", tie_embeddings=tie).dims(VOCAB)).to(dtype)
    with torch.no_grad():  # a random-looking model, not the init's ones and zeros
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return ours, to_hf_llama(ours, attn_implementation=attention)


def batch():
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (B, T + 1), generator=g)
    x, y = tokens[:, :-1], tokens[:, 1:].clone()
    y[0, :4] = -100  # ignored positions: both average over the rest
    return x, y


def grads(named) -> dict:
    return {name: p.grad for name, p in named}


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("tie", [True, False])
def test_logits_loss_and_gradients_equal_hf_llama_in_fp64(tie, attention):
    ours, hf = models(tie, attention, torch.float64)
    dims = ours.dims
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())
    assert (hf.lm_head.weight is hf.model.embed_tokens.weight) == tie
    mode = KeepFloat64()
    with torch.no_grad():  # exact fp64 rotary angles on both sides (both are rounded to fp32 when built)
        ours.rope_cos, ours.rope_sin = rotary_tables(dims.head_dim, dims.context_length, dims.rope_theta,
                                                     torch.float64)
        with mode:
            inv_freq, _ = hf.model.rotary_emb.compute_default_rope_parameters(hf.config)  # HF's formula
        hf.model.rotary_emb.inv_freq.copy_(inv_freq)
    x, y = batch()

    logits = ours(x)
    with mode:
        hf_logits = hf(input_ids=x).logits
    assert logits.dtype == hf_logits.dtype == torch.float64 and mode.upcasts > 0
    assert (logits - hf_logits).abs().max() < 1e-10

    loss = ours(x, y)
    with mode:  # shift_labels: y is already shifted, so HF scores the same positions
        hf_loss = hf(input_ids=x, labels=y, shift_labels=y).loss
    assert hf_loss.dtype == torch.float64 and abs(loss.item() - hf_loss.item()) < 1e-10
    loss.backward()
    hf_loss.backward()
    ours_grads, hf_grads = to_hf_state_dict(grads(ours.named_parameters()), dims), grads(hf.named_parameters())
    assert ours_grads.keys() == hf_grads.keys()
    for name, grad in ours_grads.items():
        assert (grad - hf_grads[name]).abs().max() < 1e-10, name


@pytest.mark.parametrize("tie", [True, False])
def test_fp32_models_as_they_ship_agree_to_fp32_rounding(tie):
    """HF's own rotary tables (fp32 angles) and fp32 internals: the same model to float rounding."""
    ours, hf = models(tie, "sdpa", torch.float32)
    x, y = batch()
    assert (ours(x) - hf(input_ids=x).logits).abs().max() < 1e-4
    assert abs(ours(x, y).item() - hf(input_ids=x, labels=y, shift_labels=y).loss.item()) < 1e-5


def test_names_cover_every_weight_and_split_the_fused_ones():
    dims = ModelConfig(size="debug", tie_embeddings=False).dims(VOCAB)
    ours = Decoder(dims)
    state = to_hf_state_dict(ours.state_dict(), dims)
    hf_state = transformers.LlamaForCausalLM(hf_llama_config(dims)).state_dict()
    assert state.keys() == hf_state.keys()
    assert all(state[name].shape == hf_state[name].shape for name in state)
    H, K, D = dims.n_heads, dims.n_kv_heads, dims.head_dim
    qkv = ours.layers[1].attn.qkv_proj.weight
    assert torch.equal(state["model.layers.1.self_attn.k_proj.weight"], qkv[H * D:(H + K) * D])
    gate_up = ours.layers[1].mlp.gate_up_proj.weight
    assert torch.equal(state["model.layers.1.mlp.up_proj.weight"], gate_up[dims.ffn_hidden:])
