"""``lmforge export --format hf``: any model the loader reads -> a Hugging Face ``LlamaForCausalLM`` folder.

The folder holds ``config.json`` (``LlamaForCausalLM``, with transformers 5's ``rope_parameters`` and the
older top-level ``rope_theta``), ``model.safetensors`` (HF's names, metadata ``{"format": "pt"}``, no
``lm_head.weight`` when the embeddings are tied), ``generation_config.json`` and the tokenizer
(``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``), so that
``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained`` load it offline. The math is
the same (``model/hf_names.py``): HF's separate q/k/v and gate/up projections are the rows of lmforge's
fused ones, and both rotate halves of each head (``rotate_half``), so no row is permuted.

transformers writes the config and tokenizer files (it is what reads them); everything is checked and
built first, then the whole folder appears at once (``core.atomic.atomic_dir``): a failed export leaves
nothing behind.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from lmforge.checkpoint.export import check_output
from lmforge.checkpoint.hf_import import CONFIG, TOKENIZER_FILES, WEIGHTS, hf_config, load_hf_tokenizer
from lmforge.checkpoint.load import LoadedModel, load_model, require_language_model
from lmforge.core.atomic import atomic_dir
from lmforge.data.tokenizer import EOS_TOKEN
from lmforge.errors import LmforgeError
from lmforge.model.hf_names import hf_llama_config, to_hf_state_dict

TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def _transformers():
    try:
        import transformers
    except ImportError:
        raise LmforgeError("export --format hf needs transformers (pip install transformers)") from None
    return transformers


def _token_ids(loaded: LoadedModel, tokenizer) -> dict:
    """bos/eos/pad ids: an HF source's own; else its tokenizer's end-of-text ends a text (lmforge's
    ``<|endoftext|>``, or the one a fine-tune of an HF model kept) and there is no bos."""
    if loaded.state.get("format") == "hf":
        config = hf_config(loaded.path)
        return {key: config.get(key) for key in TOKEN_IDS}
    return {"bos_token_id": None, "eos_token_id": loaded.eos_id, "pad_token_id": None}


def config_json(loaded: LoadedModel, token_ids: dict) -> dict:
    """``config.json`` of the export: transformers' own LlamaConfig, plus the top-level ``rope_theta`` that
    transformers 4 reads."""
    dims = loaded.model.dims
    config = hf_llama_config(dims, use_cache=True, **token_ids).to_dict()
    config.pop("attn_implementation", None)
    dtype = str(next(loaded.model.parameters()).dtype).removeprefix("torch.")
    return {**config, "architectures": ["LlamaForCausalLM"], "rope_theta": dims.rope_theta, "dtype": dtype}


def export_hf(checkpoint: Path, output: Path) -> dict:
    """Write ``checkpoint`` (a checkpoint folder, an exported file or an HF folder) as an HF folder ``output``."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    check_output(output, "hf")
    require_language_model(checkpoint, "export --format hf")
    transformers = _transformers()
    loaded = load_model(checkpoint)
    if "quantization" in loaded.state:
        raise LmforgeError(f"export --format hf: {checkpoint} is quantized ({loaded.state['quantization']['method']}); "
                           "export the dense model it was made from")
    if loaded.tokenizer_path is None:
        raise LmforgeError(f"export --format hf: {checkpoint} has no tokenizer (it lies in no run directory); "
                           "export a checkpoint of a run")
    dims = loaded.model.dims
    if dims.d_model % dims.n_heads:  # LlamaConfig refuses it, whatever head_dim says
        raise LmforgeError(f"export --format hf: {checkpoint} has {dims.n_heads} heads (of {dims.head_dim}) in a "
                           f"{dims.d_model}-wide model; transformers' LlamaConfig needs a head count that divides "
                           "the width (remove heads down to a divisor, or export lmforge's own format)")
    tokenizer = load_hf_tokenizer(loaded.tokenizer_path)  # as saved (lmforge's loader sets encode_special_tokens)
    weights = {name: t.detach().contiguous().clone() for name, t in to_hf_state_dict(loaded.model.state_dict(), dims).items()
               if not (dims.tie_embeddings and name == "lm_head.weight")}
    token_ids = _token_ids(loaded, tokenizer)
    config = config_json(loaded, token_ids)
    generation = transformers.GenerationConfig(**{k: v for k, v in token_ids.items() if v is not None})
    try:
        with atomic_dir(output) as tmp:
            (tmp / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            save_file(weights, str(tmp / WEIGHTS), metadata={"format": "pt"})
            generation.save_pretrained(tmp)
            kept = loaded.tokenizer_path.parent
            if (kept / "tokenizer_config.json").is_file():  # an HF tokenizer (imported, or kept by a fine-tune)
                for name in TOKENIZER_FILES:
                    if (kept / name).is_file():
                        shutil.copyfile(kept / name, tmp / name)
            else:
                transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS_TOKEN).save_pretrained(tmp)
    except (OSError, SafetensorError) as exc:  # atomic_dir removed the half-built folder
        raise LmforgeError(f"export --output {output}: cannot write there ({getattr(exc, 'strerror', None) or exc})") from None
    return {"output": str(output), "tensors": len(weights), "parameters": sum(t.numel() for t in weights.values()),
            "step": loaded.step, "source_format": loaded.state.get("format", "safetensors")}
