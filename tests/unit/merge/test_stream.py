"""Streaming: every kind of input (checkpoint folder, exported file, Hugging Face folder) reads, tensor by tensor,
the weights the loader reads; the hand-written safetensors writer gives a file safetensors and the loader read
back exactly; merging a model with itself gives it back bit for bit with every method."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parents[1] / "checkpoint"))
from hf_models import hf_folder, lmforge_dims, lmforge_run  # noqa: E402

from lmforge.checkpoint.export import export_checkpoint, exported_metadata  # noqa: E402
from lmforge.checkpoint.hf_import import hf_dims, hf_weights  # noqa: E402
from lmforge.checkpoint.load import consolidated_weights, load_model  # noqa: E402
from lmforge.merge.config import MergeConfig  # noqa: E402
from lmforge.merge.stage import MergePlan, stream_merge  # noqa: E402
from lmforge.merge.stream import WeightSource, canonical_shapes, write_streamed  # noqa: E402

DIMS = [lmforge_dims(True, 4, 2, 2, 97), lmforge_dims(False, 4, 4, 2, 101)]


@pytest.mark.parametrize("dims", DIMS, ids=["tied-gqa", "untied-mha"])
def test_every_input_kind_streams_the_loaders_weights(tmp_path, dims):
    checkpoint, _ = lmforge_run(tmp_path / "run", dims)
    expected, _ = consolidated_weights(checkpoint)
    exported = tmp_path / "model.safetensors"
    export_checkpoint(checkpoint, exported)
    for path in (checkpoint, exported):
        source = WeightSource(path, "merge.inputs[0]")
        assert list(canonical_shapes(dims)) and set(canonical_shapes(dims)) == set(expected)
        for name, tensor in expected.items():
            assert torch.equal(source.tensor(name), tensor.float()), (path, name)
    hf = tmp_path / "hf"
    hf_folder(hf, dims.tie_embeddings, dims.n_heads, dims.n_kv_heads, dims.n_layers, dims.vocab_size)
    theirs = hf_weights(hf, hf_dims(hf))
    source = WeightSource(hf, "merge.inputs[1]")
    assert set(theirs) == set(canonical_shapes(hf_dims(hf)))
    for name, tensor in theirs.items():
        assert torch.equal(source.tensor(name), tensor.float())


def test_streamed_file_reads_back_in_safetensors_and_the_loader(tmp_path):
    dims = DIMS[0]
    checkpoint, model = lmforge_run(tmp_path / "run", dims)
    weights, _ = consolidated_weights(checkpoint)
    shapes = canonical_shapes(dims)
    out = tmp_path / "run" / "merge" / "model.safetensors"
    metadata = exported_metadata(dims.to_dict(), 7, 32, "merge-linear")
    write_streamed(out, shapes, lambda name: weights[name], metadata)
    back = load_file(str(out))
    assert set(back) == set(shapes) and all(torch.equal(back[n], weights[n]) for n in shapes)
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata() == metadata
    loaded = load_model(out)
    assert loaded.step == 7 and loaded.seq_len == 32 and loaded.tokenizer_path == tmp_path / "run" / "tokenizer" / "tokenizer.json"
    ids = torch.randint(0, dims.vocab_size, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded.model(ids), model(ids))


@pytest.mark.parametrize("method", ["linear", "greedy_soup", "task_arithmetic", "ties", "dare_linear", "dare_ties",
                                    "slerp"])
def test_merging_a_model_with_itself_gives_it_back_bit_for_bit(tmp_path, method):
    dims = DIMS[1]
    checkpoint, _ = lmforge_run(tmp_path / "run", dims)
    exported = tmp_path / "copy.safetensors"
    export_checkpoint(checkpoint, exported)
    inputs = [WeightSource(checkpoint, "merge.inputs[0]"), WeightSource(exported, "merge.inputs[1]")]
    plan = MergePlan(inputs, WeightSource(checkpoint, "merge.base"), dims, 32, None, [0.3, 0.7])
    mc = MergeConfig(inputs=["a", "b"], method=method, density=0.4, scale=0.9)
    out = tmp_path / "merged.safetensors"
    stream_merge(mc, plan, inputs, plan.weights, out)
    expected, _ = consolidated_weights(checkpoint)
    back = load_file(str(out))
    assert all(torch.equal(back[name], tensor) for name, tensor in expected.items())


def test_a_linear_merge_of_two_models_is_their_mean(tmp_path):
    dims = DIMS[0]
    first, _ = lmforge_run(tmp_path / "a", dims, seed=1)
    second, _ = lmforge_run(tmp_path / "b", dims, seed=2)
    inputs = [WeightSource(first, "merge.inputs[0]"), WeightSource(second, "merge.inputs[1]")]
    plan = MergePlan(inputs, None, dims, 32, None, [1.0, 1.0])
    out = tmp_path / "merged.safetensors"
    stream_merge(MergeConfig(inputs=["a", "b"]), plan, inputs, plan.weights, out)
    a, b, merged = consolidated_weights(first)[0], consolidated_weights(second)[0], load_file(str(out))
    assert all(torch.equal(merged[n], (a[n] + b[n]) / 2) for n in a)
