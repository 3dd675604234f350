"""The decoder as Hugging Face ``LlamaForCausalLM``: its config, and lmforge's weights under HF's names
(both ways: ``hf_name``/``canonical_name``, ``hf_llama_config``/``dims_from_hf_config``).

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


_FROM_HF_OUTSIDE = {hf: ours for ours, hf in _OUTSIDE.items()}
_FROM_HF_IN_BLOCK = {hf: ours for ours, hf in _IN_BLOCK.items()}


def canonical_name(hf: str) -> str:
    """The canonical lmforge name of an HF Llama weight (the inverse of ``hf_name``)."""
    if hf in _FROM_HF_OUTSIDE:
        return _FROM_HF_OUTSIDE[hf]
    parts = hf.split(".", 3)
    if len(parts) < 4 or parts[:2] != ["model", "layers"] or not parts[2].isdigit() or parts[3] not in _FROM_HF_IN_BLOCK:
        raise KeyError(f"no lmforge name for the Hugging Face weight {hf!r}")
    return f"layers.{parts[2]}.{_FROM_HF_IN_BLOCK[parts[3]]}"


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


# Hugging Face model types whose weights and math are Llama's once their differences are ruled out
LLAMA_FAMILY = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}
REFUSED_FAMILY = {  # close relatives that do not fit the decoder, and why
    "qwen2": "Qwen2 models have biases on their q/k/v projections, which the decoder does not have",
    "qwen3": "Qwen3 models normalize q and k per head (q_norm, k_norm), which the decoder does not do",
    "gemma": "Gemma models scale the embeddings and offset their norm weights, which the decoder does not do",
}
_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "max_position_embeddings")


def _rope_theta(config: dict) -> float:
    """The rotary base of a transformers 5 config (``rope_parameters``) or of an older one (``rope_theta``,
    ``rope_scaling``); anything but plain rotary embeddings is refused."""
    rope = config.get("rope_parameters")
    if rope is None and config.get("rope_scaling") is not None:
        rope = {"rope_theta": config.get("rope_theta", 10000.0), **config["rope_scaling"]}
        key = "rope_scaling"
    else:
        key = "rope_parameters"
    if rope is None:
        return float(config.get("rope_theta", 10000.0))
    if not isinstance(rope, dict) or any(isinstance(value, dict) for value in rope.values()):
        raise ValueError(f"{key}: per-layer rotary parameters are not supported")
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise ValueError(f"{key}: rope_type {kind!r} (scaled rotary embeddings) is not supported; "
                         "the decoder has plain rotary embeddings")
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(f"{key}: partial_rotary_factor={rope['partial_rotary_factor']} is not supported")
    return float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))


def dims_from_hf_config(config: dict) -> ModelDims:
    """The ``ModelDims`` of a Hugging Face ``config.json`` of the Llama family. Anything the decoder cannot
    compute exactly (biases, another activation, scaled rotary embeddings, a sliding window, a head dimension
    other than hidden_size / num_attention_heads, quantized weights) raises ValueError naming the key."""
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    if model_type in REFUSED_FAMILY:
        raise ValueError(f"model_type {model_type!r} is not supported: {REFUSED_FAMILY[model_type]}")
    if model_type not in LLAMA_FAMILY:
        raise ValueError(f"model_type {model_type!r} ({', '.join(architectures) or 'no architectures'}) is not "
                         f"supported: lmforge imports {' and '.join(LLAMA_FAMILY)} models")
    if architectures and LLAMA_FAMILY[model_type] not in architectures:
        raise ValueError(f"architectures {architectures}: lmforge imports {LLAMA_FAMILY[model_type]} (a causal LM)")
    for key in _REQUIRED:
        if not isinstance(config.get(key), int) or isinstance(config.get(key), bool):
            raise ValueError(f"{key}: missing or not an integer ({config.get(key)!r})")
    refusals = [("hidden_act", "silu", "the decoder's MLP is SwiGLU (silu)"),
                ("attention_bias", False, "the decoder has no biases"),
                ("mlp_bias", False, "the decoder has no biases"),
                ("quantization_config", None, "quantized weights are not supported")]
    for key, fits, why in refusals:
        if config.get(key, fits) != fits:
            raise ValueError(f"{key}={config[key]!r} is not supported: {why}")
    window, context = config.get("sliding_window"), config["max_position_embeddings"]
    if window is not None and config.get("use_sliding_window", True) and window < context:
        raise ValueError(f"sliding_window={window} (below max_position_embeddings={context}) is not supported: "
                         "the decoder attends to the whole context")
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim")
    if head_dim is not None and (not isinstance(head_dim, int) or head_dim < 2 or head_dim % 2):
        raise ValueError(f"head_dim={head_dim!r} is not supported: the head dimension must be a whole, even number "
                         "(rotary embeddings)")
    if head_dim is None and (hidden % heads or (hidden // heads) % 2):
        raise ValueError(f"num_attention_heads={heads}: hidden_size {hidden} / heads must be a whole, even "
                         "head dimension")
    if heads % kv_heads:
        raise ValueError(f"num_key_value_heads={kv_heads} does not divide num_attention_heads={heads}")
    return ModelDims(vocab_size=config["vocab_size"], d_model=hidden, n_layers=config["num_hidden_layers"],
                     n_heads=heads, n_kv_heads=kv_heads, ffn_hidden=config["intermediate_size"], context_length=context,
                     rope_theta=_rope_theta(config), norm_eps=float(config.get("rms_norm_eps", 1e-6)),
                     tie_embeddings=bool(config.get("tie_word_embeddings", False)),
                     init_std=float(config.get("initializer_range", 0.02)),
                     explicit_head_dim=head_dim)
