"""The decoder as Hugging Face ``LlamaForCausalLM``: its config, and lmforge's weights under HF's names.

Same math, another layout. HF keeps q/k/v and gate/up as separate projections where lmforge fuses each
into one weight (rows ``[q; k; v]`` and ``[gate; up]``); the split is the canonical one of checkpoints
and exports (``model/fused_layout.py``), whose names are already HF's projection names. Rotary
embeddings use the same half-split convention (HF's ``rotate_half``), so q and k rows need no
permutation. Nothing else differs: no biases, RMSNorm with a weight, SwiGLU, grouped-query attention.

transformers is imported inside the functions only: it is an interoperability (and test) dependency,
not one of lmforge's.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from lmforge.model.config import ModelDims

_OUTSIDE = {"embed_tokens.weight": "model.embed_tokens.weight", "final_norm.weight": "model.norm.weight",
            "lm_head.weight": "lm_head.weight"}
_IN_BLOCK = {  # canonical name inside ``layers.N.`` -> HF's inside ``model.layers.N.``
    "attn_norm.weight": "input_layernorm.weight",
    "attn.q_proj.weight": "self_attn.q_proj.weight",
    "attn.k_proj.weight": "self_attn.k_proj.weight",
    "attn.v_proj.weight": "self_attn.v_proj.weight",
    "attn.out_proj.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.gate_proj.weight": "mlp.gate_proj.weight",
    "mlp.up_proj.weight": "mlp.up_proj.weight",
    "mlp.down_proj.weight": "mlp.down_proj.weight",
}


def hf_name(canonical: str) -> str:
    """HF Llama's name for a canonical lmforge parameter name (``layers.0.attn.q_proj.weight`` ->
    ``model.layers.0.self_attn.q_proj.weight``)."""
    if canonical in _OUTSIDE:
        return _OUTSIDE[canonical]
    layers, index, rest = canonical.split(".", 2) if canonical.count(".") >= 2 else (canonical, "", "")
    if layers != "layers" or not index.isdigit() or rest not in _IN_BLOCK:
        raise KeyError(f"no Hugging Face Llama name for {canonical!r}")
    return f"model.layers.{index}.{_IN_BLOCK[rest]}"


def to_hf_state_dict(state: Mapping[str, torch.Tensor], dims: ModelDims) -> dict[str, torch.Tensor]:
    """lmforge tensors by name (a ``Decoder`` state dict, its parameters' gradients, or an export's
    canonical entries) -> the same tensors under HF Llama's names; fused weights become views of their
    q/k/v and gate/up rows. A tied LM head keeps both names, as HF's own state dict does."""
    from lmforge.model.fused_layout import to_canonical

    return {hf_name(name): tensor for name, tensor in to_canonical(dict(state), dims).items()}


def hf_llama_config(dims: ModelDims, **overrides):
    """The ``transformers.LlamaConfig`` of the same model (``overrides``: e.g. ``attn_implementation``)."""
    from transformers import LlamaConfig

    options = dict(
        vocab_size=dims.vocab_size, hidden_size=dims.d_model, intermediate_size=dims.ffn_hidden,
        num_hidden_layers=dims.n_layers, num_attention_heads=dims.n_heads, num_key_value_heads=dims.n_kv_heads,
        head_dim=dims.head_dim, max_position_embeddings=dims.context_length, rms_norm_eps=dims.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": dims.rope_theta},
        tie_word_embeddings=dims.tie_embeddings, attention_bias=False, mlp_bias=False, hidden_act="silu",
        attention_dropout=dims.dropout, initializer_range=dims.init_std, attn_implementation="sdpa", use_cache=False,
    )
    return LlamaConfig(**{**options, **overrides})


@torch.no_grad()
def to_hf_llama(model: torch.nn.Module, **config_overrides):
    """A ``transformers.LlamaForCausalLM`` holding a copy of ``model``'s weights (a ``Decoder``), in its
    dtype and on its device. With ``dims.dropout`` the two agree in eval mode only: HF drops attention
    probabilities, lmforge also the embeddings and each residual branch."""
    from transformers import LlamaForCausalLM

    dims = model.dims
    weight = next(model.parameters())
    hf = LlamaForCausalLM(hf_llama_config(dims, **config_overrides)).to(device=weight.device, dtype=weight.dtype)
    hf.load_state_dict(to_hf_state_dict(model.state_dict(), dims), strict=True)
    return hf
