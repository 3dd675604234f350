"""A Hugging Face model folder of the Llama family, read as the decoder: its config, weights and tokenizer.

A folder holds ``config.json``, its weights as ``model.safetensors`` or as shards listed in
``model.safetensors.index.json``, and usually ``tokenizer.json``. Only JSON and safetensors are read
(``pytorch_model.bin`` is pickle: never). The config must describe what the decoder computes exactly
(``model/hf_names.dims_from_hf_config``); anything else is refused with one line naming the key. The
weights come back under lmforge's canonical names; ``checkpoint/load.py`` copies them into a ``Decoder``.
No transformers needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from lmforge.checkpoint.formats import STATE_FILE
from lmforge.errors import CheckpointError
from lmforge.model.config import ModelDims
from lmforge.model.hf_names import canonical_name, dims_from_hf_config

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
TOKENIZER = "tokenizer.json"
TOKENIZER_FILES = (TOKENIZER, "tokenizer_config.json", "special_tokens_map.json")
IGNORED = ("rotary_emb.inv_freq",)  # buffers some older checkpoints saved; recomputed from the config


def is_hf_folder(path: Path) -> bool:
    """A folder that looks like a Hugging Face model (a config or safetensors weights) and is no checkpoint."""
    path = Path(path)
    return path.is_dir() and not (path / STATE_FILE).exists() and any(
        (path / name).exists() for name in (CONFIG, WEIGHTS, INDEX))


def _where(path: Path) -> str:
    return f"Hugging Face model {path}"


def _read_json(path: Path, file: Path) -> dict:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{_where(path)}: {file.name} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{_where(path)}: {file.name} is unreadable ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{_where(path)}: {file.name} is not a JSON object")
    return data


def hf_config(path: Path) -> dict:
    """The folder's ``config.json``."""
    return _read_json(path, Path(path) / CONFIG)


def hf_dims(path: Path) -> ModelDims:
    """The decoder the folder's ``config.json`` describes, or one line saying which key does not fit."""
    try:
        return dims_from_hf_config(hf_config(path))
    except ValueError as exc:
        raise CheckpointError(f"{_where(path)}: {CONFIG}: {exc}") from None


def hf_weight_files(path: Path) -> dict[Path, set[str] | None]:
    """The safetensors files to read, with the tensor names the index assigns each (None: a single file)."""
    if (path / WEIGHTS).exists() or not (path / INDEX).exists():
        if not (path / WEIGHTS).is_file():
            bin_note = " (pytorch_model.bin is pickle and never read)" if (path / "pytorch_model.bin").exists() else ""
            raise CheckpointError(f"{_where(path)}: no {WEIGHTS} or {INDEX}{bin_note}")
        return {path / WEIGHTS: None}
    weight_map = _read_json(path, path / INDEX).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{_where(path)}: {INDEX} has no weight_map")
    files: dict[Path, set[str]] = {}
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or Path(shard).name != shard:
            raise CheckpointError(f"{_where(path)}: {INDEX} names {shard!r} for {name}: not a file of the folder")
        files.setdefault(path / shard, set()).add(name)
    for shard in files:
        if not shard.is_file():
            raise CheckpointError(f"{_where(path)}: shard {shard.name} named in {INDEX} is missing")
    return files


def hf_weights(path: Path, dims: ModelDims) -> dict[str, torch.Tensor]:
    """Every weight of the folder under its canonical lmforge name (HF's separate projections are the
    canonical entries already). A tied model's ``lm_head.weight``, if saved, is left out: the embedding is
    the head, as in transformers."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    for file, expected in hf_weight_files(path).items():
        try:
            loaded = load_file(str(file))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{_where(path)}: {file.name} is not a readable safetensors file "
                                  f"({str(exc).splitlines()[0]})") from None
        if expected is not None and not expected <= set(loaded):
            raise CheckpointError(f"{_where(path)}: {file.name} lacks {sorted(expected - set(loaded))[0]}, "
                                  f"which {INDEX} places there")
        for name, tensor in loaded.items():
            if name.endswith(IGNORED) or (dims.tie_embeddings and name == "lm_head.weight"):
                continue
            try:
                tensors[canonical_name(name)] = tensor
            except KeyError:
                raise CheckpointError(f"{_where(path)}: unexpected tensor {name} in {file.name} (the Llama "
                                      "decoder has no such weight)") from None
    return tensors


def hf_tokenizer_path(path: Path) -> Path | None:
    """The folder's ``tokenizer.json``, if it has one."""
    tokenizer = Path(path) / TOKENIZER
    return tokenizer if tokenizer.is_file() else None


def load_hf_tokenizer(tokenizer: Path):
    """A ``tokenizers.Tokenizer`` from an HF folder's ``tokenizer.json`` (its own special tokens, whatever
    they are: lmforge's ``<|endoftext|>`` is not required)."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(tokenizer))
    except Exception as exc:  # the library raises plain Exception for any parse error
        raise CheckpointError(f"{tokenizer}: not a valid tokenizer file: {str(exc).splitlines()[0]}") from None
