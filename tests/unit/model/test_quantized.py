"""Quantized linear layers and decoders: int8's error within its analytic bound against fp32, int4's kernel
equal to its stored (dequantized) weights, a quantized decoder's saved-and-reloaded outputs equal to its
in-memory ones (the one loader rebuilds it, a tied table and head as one tensor), and int4's cached generation
equal to the uncached one."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lmforge.checkpoint.export import write_quantized
from lmforge.checkpoint.load import load_model
from lmforge.model.config import SIZES, ModelDims
from lmforge.model.decoder import Decoder
from lmforge.model.generate import generate
from lmforge.model.quantized import Int4Linear, Int8Linear, check_group_size, quantize

DIMS = dataclasses.replace(ModelDims(vocab_size=96, **SIZES["debug"]), ffn_hidden=128)


def linear(n_in=256, n_out=80, seed=0) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(n_in, n_out, bias=False)


def test_int8_error_is_within_the_bound_of_its_two_roundings():
    lin, x = linear(), torch.randn(6, 256, generator=torch.Generator().manual_seed(1))
    q = Int8Linear.of(lin)
    error = (q(x) - lin(x)).abs()
    s = q.scales  # (out,): weight step
    a = (x.max() - x.min()) / 127  # the activations' step (7 bits, per tensor)
    bound = (x.abs().sum(1, keepdim=True) * s / 2 + lin.weight.abs().sum(1) * a / 2 + 256 * s * a / 4)
    assert (error <= bound * 1.01 + 1e-6).all()
    assert (q.dequantized() - lin.weight).abs().max() <= s.max() / 2 + 1e-7
    assert error.max() < 0.03 * lin(x).abs().max()


@pytest.mark.parametrize("group", [32, 64, 128])
def test_int4_kernel_computes_with_its_stored_weights(group):
    lin, x = linear(seed=2), torch.randn(4, 256, generator=torch.Generator().manual_seed(3))
    q = Int4Linear.of(lin, group)
    assert q.ints().min() >= 0 and q.ints().max() <= 15
    step = q.scales.repeat_interleave(group, 1)
    assert ((q.dequantized() - lin.weight).abs() <= step / 2 + 1e-6).all()
    reference = x @ q.dequantized().T
    assert (q(x) - reference).abs().max() < 0.02 * reference.abs().max()  # bf16 activations


def test_a_group_size_that_does_not_divide_the_inputs_is_refused():
    with pytest.raises(ValueError, match="group size 48 does not divide the input dimension 64 of layers.0.attn.qkv_proj"):
        check_group_size(Decoder(DIMS), 48)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("method, group", [("int8", None), ("int4", 32)])
def test_saved_and_reloaded_outputs_equal_the_in_memory_ones(tmp_path, method, group, tied):
    dims = dataclasses.replace(DIMS, tie_embeddings=tied)
    torch.manual_seed(0)
    dense = Decoder(dims)
    ids = torch.randint(0, 96, (2, 20), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        reference = dense(ids)
    model = quantize(dense, method, group)
    if tied:  # one int8 table for the lookup and the head, as in the fp32 model
        assert model.embed_tokens.qweight is model.lm_head.qweight
    path = tmp_path / "q.safetensors"
    write_quantized(path, model, 3, 32, {"method": method, "group_size": group})
    loaded = load_model(path)
    assert loaded.state["quantization"] == {"method": method, "group_size": group} and loaded.seq_len == 32
    with torch.no_grad():
        out = loaded.model(ids)
        assert torch.equal(out, model(ids))
        assert (out - reference).abs().max() < (0.05 if method == "int8" else 0.3) * reference.abs().max()
    if tied:
        assert loaded.model.embed_tokens.qweight is loaded.model.lm_head.qweight
    dense_bytes = sum(p.numel() * 4 for p in Decoder(dims).parameters())
    assert path.stat().st_size < (0.3 if method == "int8" else 0.25) * dense_bytes
    prompt = ids[0, :6].tolist()
    cached = generate(loaded.model, prompt, 8, temperature=0.0)
    assert len(cached) == 8
    if method == "int4":  # weight-only: a row's result does not depend on the others (int8 quantizes the
        # activations per tensor, so the cached one-token steps and a whole-sequence pass round differently)
        assert cached == generate(loaded.model, prompt, 8, temperature=0.0, use_cache=False)
