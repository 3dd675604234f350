"""Hugging Face in and out: an lmforge checkpoint exported with ``--format hf`` loads in transformers
(``AutoModelForCausalLM``, ``AutoTokenizer``, offline) with the same logits and greedy continuation, and a
transformers folder (single or sharded safetensors) loads through ``checkpoint.load`` with transformers'
logits, on random models of several shapes. Everything is built here; nothing is downloaded."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors import safe_open

from hf_models import SHAPE_IDS, SHAPES, hf_folder, lmforge_dims, lmforge_run, token_ids
from lmforge.checkpoint.hf_export import export_hf
from lmforge.checkpoint.load import checkpoint_dims, load_model, pick
from lmforge.data.tokenizer import EOS_TOKEN
from lmforge.model.generate import generate
from lmforge.errors import LmforgeError
from lmforge.model.config import ModelDims
from lmforge.rundir import RunDir

TOLERANCE = 1e-5  # fp32, the bound


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_export_loads_in_transformers_with_the_same_logits_and_greedy_continuation(tmp_path, shape):
    tied, _, _, _, vocab = shape
    checkpoint, ours = lmforge_run(tmp_path / "run", lmforge_dims(*shape))
    out = tmp_path / "hf"
    result = export_hf(checkpoint, out)
    assert result["step"] == 3 and sorted(p.name for p in out.iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]

    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert config["rope_theta"] == 5000.0 and config["rope_parameters"] == {"rope_type": "default", "rope_theta": 5000.0}
    assert config["tie_word_embeddings"] is tied and config["eos_token_id"] == 0
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert ("lm_head.weight" in f.keys()) is not tied

    hf = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    assert type(hf).__name__ == "LlamaForCausalLM" and next(hf.parameters()).dtype == torch.float32
    ids = token_ids(vocab)
    with torch.no_grad():
        diff = max_diff(ours(ids), hf(input_ids=ids).logits)
    assert diff < TOLERANCE, diff

    prompt = ids[0, :5].tolist()
    with torch.no_grad():
        theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None,
                             pad_token_id=0)[0, len(prompt):].tolist()
    assert generate(ours, prompt, 12, temperature=0) == theirs


def test_exported_tokenizer_loads_in_transformers_with_the_same_ids(tmp_path):
    checkpoint, _ = lmforge_run(tmp_path / "run", lmforge_dims(*SHAPES[2]))
    export_hf(checkpoint, tmp_path / "hf")
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    ours = load_model(checkpoint).tokenizer
    text = "def add(a, b):\n    return a + b  # the cat sat on the mat"
    assert theirs(text)["input_ids"] == ours.encode(text).ids
    assert theirs.eos_token == EOS_TOKEN and theirs.eos_token_id == 0
    assert theirs.decode(ours.encode(text).ids) == text
    assert json.loads((tmp_path / "hf" / "generation_config.json").read_text())["eos_token_id"] == 0


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_transformers_folder_loads_through_the_one_loader_with_its_logits(tmp_path, shape, sharded):
    tied, heads, kv_heads, layers, vocab = shape
    hf = hf_folder(tmp_path / "hf", *shape, max_shard_size="40KB" if sharded else None)
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists() is sharded
    assert pick(RunDir(tmp_path / "elsewhere"), tmp_path / "hf") == tmp_path / "hf"
    dims = checkpoint_dims(tmp_path / "hf")
    assert (dims.n_heads, dims.n_kv_heads, dims.n_layers, dims.vocab_size, dims.tie_embeddings) == (
        heads, kv_heads, layers, vocab, tied)
    assert (dims.rope_theta, dims.norm_eps, dims.context_length) == (5000.0, 1e-6, 64)

    loaded = load_model(tmp_path / "hf")
    assert loaded.state["format"] == "hf" and loaded.seq_len == 64 and loaded.step == 0
    assert (loaded.model.lm_head.weight is loaded.model.embed_tokens.weight) is tied
    ids = token_ids(vocab)
    with torch.no_grad():
        diff = max_diff(loaded.model(ids), hf(input_ids=ids).logits)
    assert diff < TOLERANCE, diff
    assert loaded.tokenizer_path == tmp_path / "hf" / "tokenizer.json"
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    assert loaded.tokenizer.encode("the quick brown fox").ids == theirs("the quick brown fox")["input_ids"]


def test_a_head_dimension_other_than_hidden_over_heads_goes_both_ways(tmp_path):
    """Models whose heads were removed (compress structured) or that say head_dim (n_heads x head_dim != hidden)."""
    hf = hf_folder(tmp_path / "hf", *SHAPES[0], head_dim=24)  # 4 heads x 24 in a 64-wide model
    dims = checkpoint_dims(tmp_path / "hf")
    assert dims.explicit_head_dim == dims.head_dim == 24 and dims.d_model == 64
    ids = token_ids(SHAPES[0][-1])
    with torch.no_grad():
        diff = max_diff(load_model(tmp_path / "hf").model(ids), hf(input_ids=ids).logits)
    assert diff < TOLERANCE, diff

    def exported(heads, folder):  # ``heads`` of 16 left in a 64-wide model
        base = lmforge_dims(False, heads, heads, 2, 101).to_dict()
        checkpoint, ours = lmforge_run(tmp_path / folder, ModelDims(**{**base, "d_model": 64, "explicit_head_dim": 16}))
        return checkpoint, ours

    checkpoint, ours = exported(2, "run")
    export_hf(checkpoint, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["head_dim"] == 16
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", local_files_only=True).eval()
    with torch.no_grad():
        diff = max_diff(ours(ids), theirs(input_ids=ids).logits)
    assert diff < TOLERANCE, diff
    checkpoint, _ = exported(3, "three")  # transformers' LlamaConfig wants heads that divide the width
    with pytest.raises(LmforgeError, match=r"^export --format hf: .* has 3 heads \(of 16\) in a 64-wide model; "
                                           r"transformers' LlamaConfig needs a head count that divides the width"):
        export_hf(checkpoint, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


def test_mistral_without_a_sliding_window_is_llama(tmp_path):
    shape = SHAPES[0]
    hf = hf_folder(tmp_path / "hf", *shape, model_type="mistral", sliding_window=None)
    assert type(hf).__name__ == "MistralForCausalLM"
    ids = token_ids(shape[-1])
    with torch.no_grad():
        diff = max_diff(load_model(tmp_path / "hf").model(ids), hf(input_ids=ids).logits)
    assert diff < TOLERANCE, diff


def test_imported_model_exports_back_unchanged(tmp_path):
    hf_folder(tmp_path / "hf", *SHAPES[1])
    export_hf(tmp_path / "hf", tmp_path / "again")
    with safe_open(str(tmp_path / "hf" / "model.safetensors"), framework="pt") as a, \
            safe_open(str(tmp_path / "again" / "model.safetensors"), framework="pt") as b:
        assert set(a.keys()) == set(b.keys())
        for name in a.keys():
            assert torch.equal(a.get_tensor(name), b.get_tensor(name)), name
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "hf" / name).read_bytes()
    assert json.loads((tmp_path / "again" / "config.json").read_text())["eos_token_id"] == 0
