"""A Hugging Face folder the decoder cannot compute exactly, or cannot read, is refused with one line naming the
key or file, before any weight is copied; an export that cannot be written leaves nothing behind."""

from __future__ import annotations

import json

import pytest

from hf_models import SHAPES, hf_folder, lmforge_dims, lmforge_run
from lmforge.checkpoint.hf_export import export_hf
from lmforge.checkpoint.load import checkpoint_dims, load_model
from lmforge.errors import CheckpointError, LmforgeError


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf") / "llama"
    hf_folder(path, *SHAPES[0])
    return path


def with_config(tmp_path, good, **changes):
    """A copy of the good folder whose config.json has ``changes`` (None deletes a key)."""
    folder = tmp_path / "model"
    folder.mkdir(parents=True)
    for file in good.iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    config = json.loads((good / "config.json").read_text())
    config.update(changes)
    config = {k: v for k, v in config.items() if v is not None}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def refused(path, message):
    for read in (checkpoint_dims, load_model):  # the state-only check and the loader say the same
        with pytest.raises(CheckpointError) as info:
            read(path)
        assert str(info.value) == f"Hugging Face model {path}: {message}"


@pytest.mark.parametrize("changes, message", [
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}},
     "config.json: rope_parameters: rope_type 'llama3' (scaled rotary embeddings) is not supported; the decoder has "
     "plain rotary embeddings"),
    ({"rope_parameters": None, "rope_theta": 1e4, "rope_scaling": {"type": "linear", "factor": 2.0}},
     "config.json: rope_scaling: rope_type 'linear' (scaled rotary embeddings) is not supported; the decoder has "
     "plain rotary embeddings"),
    ({"attention_bias": True}, "config.json: attention_bias=True is not supported: the decoder has no biases"),
    ({"mlp_bias": True}, "config.json: mlp_bias=True is not supported: the decoder has no biases"),
    ({"hidden_act": "gelu"}, "config.json: hidden_act='gelu' is not supported: the decoder's MLP is SwiGLU (silu)"),
    ({"head_dim": 15}, "config.json: head_dim=15 is not supported: the head dimension must be a whole, even number "
                       "(rotary embeddings)"),
    ({"quantization_config": {"quant_method": "gptq"}},
     "config.json: quantization_config={'quant_method': 'gptq'} is not supported: quantized weights are not supported"),
    ({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]},
     "config.json: model_type 'qwen2' is not supported: Qwen2 models have biases on their q/k/v projections, which "
     "the decoder does not have"),
    ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]},
     "config.json: model_type 'gpt2' (GPT2LMHeadModel) is not supported: lmforge imports llama and mistral models"),
    ({"architectures": ["LlamaForSequenceClassification"]},
     "config.json: architectures ['LlamaForSequenceClassification']: lmforge imports LlamaForCausalLM (a causal LM)"),
    ({"model_type": "mistral", "architectures": ["MistralForCausalLM"], "sliding_window": 16},
     "config.json: sliding_window=16 (below max_position_embeddings=64) is not supported: the decoder attends to "
     "the whole context"),
    ({"hidden_size": None}, "config.json: hidden_size: missing or not an integer (None)"),
])
def test_config_that_does_not_fit_the_decoder(tmp_path, good, changes, message):
    refused(with_config(tmp_path, good, **changes), message)


def test_missing_or_unreadable_files(tmp_path, good):
    folder = with_config(tmp_path, good)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"^Hugging Face model .*: config.json is unreadable \(Expecting"):
        load_model(folder)
    (folder / "config.json").unlink()
    refused(folder, "config.json is missing")

    folder = with_config(tmp_path / "b", good)
    (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(CheckpointError, match=r"^Hugging Face model .*: model.safetensors is not a readable "
                                              r"safetensors file \("):
        load_model(folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(CheckpointError) as info:
        load_model(folder)
    assert str(info.value) == (f"Hugging Face model {folder}: no model.safetensors or model.safetensors.index.json "
                               "(pytorch_model.bin is pickle and never read)")


def test_shard_named_in_the_index_that_is_missing_or_lacks_its_tensors(tmp_path):
    folder = tmp_path / "sharded"
    hf_folder(folder, *SHAPES[1], max_shard_size="40KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    last = sorted(set(index["weight_map"].values()))[-1]
    moved = (folder / last).read_bytes()
    (folder / last).unlink()
    with pytest.raises(CheckpointError) as info:
        load_model(folder)
    assert str(info.value) == f"Hugging Face model {folder}: shard {last} named in model.safetensors.index.json is missing"
    (folder / last).write_bytes(moved)
    first = sorted(set(index["weight_map"].values()))[0]
    name = next(n for n, shard in index["weight_map"].items() if shard == first)
    index["weight_map"][name] = last
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError) as info:
        load_model(folder)
    assert str(info.value) == (f"Hugging Face model {folder}: {last} lacks {name}, which "
                               "model.safetensors.index.json places there")


def test_weights_that_do_not_fit_the_config(tmp_path, good):
    folder = with_config(tmp_path, good, num_hidden_layers=3)
    with pytest.raises(CheckpointError, match=r"tensors do not fit the model it describes \(missing \['layers\.2\."):
        load_model(folder)


def test_export_refuses_bad_outputs_and_leaves_nothing(tmp_path):
    checkpoint, _ = lmforge_run(tmp_path / "run", lmforge_dims(*SHAPES[0]))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(LmforgeError) as info:
        export_hf(checkpoint, busy)
    assert str(info.value) == f"export --output {busy}: a folder with other files in it; name a new folder"
    with pytest.raises(LmforgeError) as info:
        export_hf(checkpoint, busy / "notes.txt")
    assert str(info.value) == f"export --output {busy / 'notes.txt'}: is a file; name a folder to write"
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]

    export_hf(checkpoint, tmp_path / "hf")  # an earlier export is replaced whole
    export_hf(checkpoint, tmp_path / "hf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "hf", "run"]

    orphan = tmp_path / "orphan"  # a checkpoint outside any run directory: no tokenizer to ship
    checkpoint.rename(orphan)
    with pytest.raises(LmforgeError) as info:
        export_hf(orphan, tmp_path / "out")
    assert str(info.value) == (f"export --format hf: {orphan} has no tokenizer (it lies in no run directory); "
                               "export a checkpoint of a run")
    assert not (tmp_path / "out").exists()
