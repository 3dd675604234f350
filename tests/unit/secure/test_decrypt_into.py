"""Loading an encrypted model decrypts it straight into the model's own weights, segment by segment (no buffer of
the file's size): segments that cut tensors anywhere, destinations of another dtype or not contiguous, a tampered
segment in the middle, and the same weights as the plain file."""

from __future__ import annotations

import pytest
import torch

from lmforge.checkpoint.export import write_exported
from lmforge.checkpoint.formats import safetensors_pieces
from lmforge.checkpoint.load import _decrypt_into, _encrypted_layout, load_model, opened_with
from lmforge.errors import CheckpointError, SecureError
from lmforge.model.config import SIZES, ModelDims
from lmforge.model.decoder import Decoder
from lmforge.model.fused_layout import model_views
from lmforge.secure.envelope import decrypt_into
from lmforge.secure.gate import gate_for
from lmforge.secure.keys import keygen, load_private, load_public
from lmforge.secure.seal import Seal


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    return keygen(root / "enc", "x25519")


def _sealed(path, tensors, public, segment_size):
    Seal((load_public(public),), segment_size=segment_size).write_file(path, safetensors_pieces(tensors, {}))


@pytest.mark.parametrize("segment_size", [64, 1000, 1 << 20])
def test_tensors_land_whole_wherever_segments_cut_them(tmp_path, keys, segment_size):
    private, public = keys
    torch.manual_seed(0)
    tensors = {"a": torch.randn(7, 13), "empty": torch.zeros(0, 4), "b": torch.arange(50, dtype=torch.int64),
               "c": torch.randn(3, 5, 2).to(torch.bfloat16), "d": torch.randn(1)}
    _sealed(tmp_path / "t.enc", tensors, public, segment_size)
    fused = torch.full((20, 13), -1.0)  # "a" lands in rows 3..9 of a bigger weight (contiguous rows)
    strided = torch.full((5, 3, 2), -1.0).transpose(0, 1)  # not contiguous, and fp32 for bf16: staged
    into = {"a": fused[3:10], "empty": torch.empty(0, 4), "b": torch.zeros(50, dtype=torch.int64), "c": strided,
            "d": torch.zeros(1)}
    with opened_with(gate_for(private)):
        start, layout = _encrypted_layout(tmp_path / "t.enc")
        assert {name: entry[1] for name, entry in layout.items()} == {k: list(v.shape) for k, v in tensors.items()}
        _decrypt_into(tmp_path / "t.enc", start, layout, into)
    assert torch.equal(fused[3:10], tensors["a"]) and (fused[:3] == -1).all() and (fused[10:] == -1).all()
    assert torch.equal(into["b"], tensors["b"]) and torch.equal(into["d"], tensors["d"])
    assert torch.equal(strided, tensors["c"].float())


def test_segments_are_placed_in_order_only_once_authenticated(tmp_path, keys):
    private, public = keys
    data = bytes((3 * i) % 256 for i in range(5000))
    Seal((load_public(public),), segment_size=512).write_file(tmp_path / "f.enc", [data])
    got = []
    decrypt_into(tmp_path / "f.enc", load_private(private), lambda offset, seg: got.append((offset, bytes(seg))))
    assert [offset for offset, _ in got] == list(range(0, 5000, 512))
    assert b"".join(seg for _, seg in got) == data
    sealed = bytearray((tmp_path / "f.enc").read_bytes())
    sealed[-3000] ^= 1  # inside segment 4 of 10
    (tmp_path / "f.enc").write_bytes(bytes(sealed))
    got.clear()
    with pytest.raises(SecureError, match="segment 4 fails authentication"):
        decrypt_into(tmp_path / "f.enc", load_private(private), lambda offset, seg: got.append(offset))
    assert got == [0, 512, 1024, 1536]  # nothing of the bad segment, nothing after it


def test_an_encrypted_export_loads_the_plain_files_weights_and_a_tampered_one_loads_nothing(tmp_path, keys):
    private, public = keys
    dims = ModelDims(vocab_size=300, **SIZES["debug"])
    torch.manual_seed(1)
    model = Decoder(dims)
    weights = {k: v.detach().contiguous() for k, v in model_views(model, dims).items()}
    write_exported(tmp_path / "plain.safetensors", weights, dims.to_dict(), 1, 16, "test")
    write_exported(tmp_path / "enc.safetensors", weights, dims.to_dict(), 1, 16, "test",
                   seal=Seal((load_public(public),), segment_size=4096))
    plain = load_model(tmp_path / "plain.safetensors").model.state_dict()
    loaded = load_model(tmp_path / "enc.safetensors", access=gate_for(private)).model
    assert loaded.lm_head.weight is loaded.embed_tokens.weight  # still tied
    assert all(torch.equal(plain[k], v) for k, v in loaded.state_dict().items())
    tokens = torch.randint(0, 300, (2, 12))
    assert torch.equal(loaded(tokens), model.eval()(tokens))
    sealed = bytearray((tmp_path / "enc.safetensors").read_bytes())
    sealed[len(sealed) // 2] ^= 1
    (tmp_path / "enc.safetensors").write_bytes(bytes(sealed))
    with pytest.raises(SecureError, match="fails authentication"):
        load_model(tmp_path / "enc.safetensors", access=gate_for(private))


def test_an_uninitialized_decoder_is_the_decoder_once_its_weights_are_loaded():
    dims = ModelDims(vocab_size=300, **SIZES["debug"])
    torch.manual_seed(0)
    model = Decoder(dims)
    empty = Decoder.uninitialized(dims)
    assert empty.lm_head.weight is empty.embed_tokens.weight
    assert [n for n, _ in empty.named_parameters()] == [n for n, _ in model.named_parameters()]
    assert torch.equal(empty.rope_cos, model.rope_cos) and torch.equal(empty.rope_sin, model.rope_sin)
    empty.load_state_dict(model.state_dict())
    tokens = torch.randint(0, 300, (2, 12))
    assert torch.equal(empty(tokens), model(tokens))


def test_an_encrypted_file_whose_header_claims_too_much_is_one_line(tmp_path, keys):
    private, public = keys
    body = (1 << 40).to_bytes(8, "little") + b"{}" * 100  # a safetensors header length of 1 TiB
    Seal((load_public(public),), segment_size=64).write_file(tmp_path / "big.enc", [body])
    with opened_with(gate_for(private)), pytest.raises(CheckpointError) as caught:
        _encrypted_layout(tmp_path / "big.enc")
    assert str(caught.value) == (f"checkpoint {tmp_path / 'big.enc'}: not a safetensors file (decrypted; a header "
                                 f"of {1 << 40:,} bytes)")
