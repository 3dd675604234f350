"""Saving sealed: a checkpoint or export written encrypted from memory (no plaintext on disk) and signed from the
digests taken while writing, checked against ``model_signing``'s own hashing and verifier and against a plain save."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil

import pytest
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load, save

from lmforge.checkpoint.export import write_exported
from lmforge.checkpoint.formats import (MODEL_FILE, OPTIMIZER_FILE, STATE_FILE, safetensors_pieces, save_checkpoint,
                                        tensors_in)
from lmforge.checkpoint.load import load_model
from lmforge.errors import CheckpointError, SecureError
from lmforge.model.config import SIZES, ModelDims
from lmforge.model.decoder import Decoder
from lmforge.model.fused_layout import model_views
from lmforge.secure.envelope import decrypt_bytes, is_envelope
from lmforge.secure.gate import gate_for
from lmforge.secure.keys import keygen, load_private, load_public
from lmforge.secure.protect import decrypt_path
from lmforge.secure.seal import Seal
from lmforge.secure.signing import sign, signature_path, verify

DIMS = ModelDims(vocab_size=256, **SIZES["debug"])


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    enc_private, enc_public = keygen(root / "enc", "x25519")
    sign_private, sign_public = keygen(root / "sign", "ec-p256")
    return {"enc_private": enc_private, "enc_public": enc_public, "sign_private": sign_private,
            "sign_public": sign_public}


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model = Decoder(DIMS)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randint(0, 256, (2, 16))).float().mean().backward()
    optimizer.step()
    return model, optimizer, {"step": 1, "resume_key": {"model": DIMS.to_dict(), "seq_len": 16}}


def _statement(signature):
    """The in-toto statement a signature signs (the DSSE payload of its Sigstore bundle)."""
    return json.loads(base64.b64decode(json.loads(signature.read_text())["dsseEnvelope"]["payload"]))


def _contents(file):
    """A safetensors file's metadata and tensors (its bytes vary: safetensors writes metadata in hash order)."""
    with safe_open(str(file), framework="pt") as f:
        return f.metadata(), {k: f.get_tensor(k).tolist() for k in f.keys()}


def _weights(loaded):
    return {k: v.clone() for k, v in loaded.model.state_dict().items()}


def test_sealed_checkpoint_is_encrypted_signed_and_loads_as_the_plain_one(tmp_path, keys, trained):
    model, optimizer, state = trained
    save_checkpoint(tmp_path / "plain", model, optimizer, state)
    seal = Seal((load_public(keys["enc_public"]),), keys["sign_private"])
    save_checkpoint(tmp_path / "sealed", model, optimizer, state, seal=seal)
    sealed = tmp_path / "sealed"
    assert sorted(p.name for p in sealed.iterdir()) == sorted([MODEL_FILE, OPTIMIZER_FILE, STATE_FILE])
    assert all(is_envelope(p) for p in sealed.iterdir())  # no plaintext file on disk
    identity = load_private(keys["enc_private"])
    for name in (MODEL_FILE, OPTIMIZER_FILE):  # the plaintext holds what a plain save writes
        assert _parsed(decrypt_bytes(sealed / name, identity)) == _parsed((tmp_path / "plain" / name).read_bytes())
    manifest = json.loads(decrypt_bytes(sealed / STATE_FILE, identity))["files"]  # the plaintexts' digests
    assert manifest == {name: hashlib.sha256(decrypt_bytes(sealed / name, identity)).hexdigest()
                        for name in (MODEL_FILE, OPTIMIZER_FILE)}

    # the signature is model_signing's over the files as they lie on disk: its own hashing and verifier agree
    verify(sealed, keys["sign_public"])
    shutil.copytree(sealed, tmp_path / "copy" / "sealed")
    sign(tmp_path / "copy" / "sealed", keys["sign_private"])  # model_signing hashing the files itself
    ours, library = (_statement(signature_path(p)) for p in (sealed, tmp_path / "copy" / "sealed"))
    assert ours == library and {r["name"] for r in ours["predicate"]["resources"]} == {
        MODEL_FILE, OPTIMIZER_FILE, STATE_FILE}

    plain = _weights(load_model(tmp_path / "plain"))
    loaded = _weights(load_model(sealed, access=gate_for(keys["enc_private"], keys["sign_public"])))
    assert plain.keys() == loaded.keys() and all(torch.equal(plain[k], loaded[k]) for k in plain)
    decrypt_path(sealed, tmp_path / "decrypted", identity)  # a plain checkpoint whose manifest checks
    decrypted = _weights(load_model(tmp_path / "decrypted"))
    assert all(torch.equal(plain[k], decrypted[k]) for k in plain)


def test_a_changed_sealed_checkpoint_is_refused_before_parsing(tmp_path, keys, trained):
    model, optimizer, state = trained
    save_checkpoint(tmp_path / "c", model, optimizer, state,
                    seal=Seal((load_public(keys["enc_public"]),), keys["sign_private"]))
    file = tmp_path / "c" / OPTIMIZER_FILE  # not even a file the model load decrypts
    data = bytearray(file.read_bytes())
    data[-1] ^= 1
    file.write_bytes(bytes(data))
    with pytest.raises(SecureError, match="does not verify"):
        load_model(tmp_path / "c", access=gate_for(keys["enc_private"], keys["sign_public"]))


def test_encrypted_without_signature_still_checks_its_manifest(tmp_path, keys, trained):
    model, optimizer, state = trained
    seal = Seal((load_public(keys["enc_public"]),))
    save_checkpoint(tmp_path / "a", model, optimizer, state, seal=seal)
    save_checkpoint(tmp_path / "b", model, None, state, seal=seal)
    assert not signature_path(tmp_path / "a").exists()
    gate = gate_for(keys["enc_private"])
    assert torch.equal(load_model(tmp_path / "a", access=gate).model.embed_tokens.weight, model.embed_tokens.weight)
    # a file from another checkpoint, valid under the same key, is caught by the manifest (no signature here)
    (tmp_path / "a" / STATE_FILE).write_bytes((tmp_path / "b" / STATE_FILE).read_bytes())
    with pytest.raises(CheckpointError, match="unexpected file optimizer.safetensors"):
        load_model(tmp_path / "a", access=gate_for(keys["enc_private"]))
    save_checkpoint(tmp_path / "c", Decoder(DIMS), None, state, seal=seal)  # other weights
    (tmp_path / "b" / MODEL_FILE).write_bytes((tmp_path / "c" / MODEL_FILE).read_bytes())
    with pytest.raises(CheckpointError, match="model.safetensors: corrupt or truncated .SHA-256 does not match"):
        load_model(tmp_path / "b", access=gate_for(keys["enc_private"]))


def test_signed_only_export_and_sealed_export(tmp_path, keys, trained):
    model = trained[0]
    weights = {k: v.detach().contiguous() for k, v in model_views(model, DIMS).items()}
    write_exported(tmp_path / "plain.safetensors", weights, DIMS.to_dict(), 1, 16, "test")
    write_exported(tmp_path / "signed.safetensors", weights, DIMS.to_dict(), 1, 16, "test",
                   seal=Seal(signing_key=keys["sign_private"]))
    assert _contents(tmp_path / "signed.safetensors") == _contents(tmp_path / "plain.safetensors")
    verify(tmp_path / "signed.safetensors", keys["sign_public"])
    write_exported(tmp_path / "sealed.safetensors", weights, DIMS.to_dict(), 1, 16, "test",
                   seal=Seal((load_public(keys["enc_public"]),), keys["sign_private"]))
    assert is_envelope(tmp_path / "sealed.safetensors")
    verify(tmp_path / "sealed.safetensors", keys["sign_public"])
    plain = _weights(load_model(tmp_path / "plain.safetensors"))
    sealed = _weights(load_model(tmp_path / "sealed.safetensors",
                                 access=gate_for(keys["enc_private"], keys["sign_public"])))
    assert all(torch.equal(plain[k], sealed[k]) for k in plain)


def test_a_seal_needs_something_to_do_and_a_signing_key(tmp_path, keys):
    with pytest.raises(SecureError, match="nothing to seal with"):
        Seal()
    with pytest.raises(SecureError):
        Seal(signing_key=keys["enc_private"])  # an X25519 key cannot sign


def test_gate_head_decrypts_only_the_leading_segments(tmp_path, keys):
    data = bytes(range(256)) * 40  # 10,240 bytes in 10 segments of 1,024
    seal = Seal((load_public(keys["enc_public"]),), segment_size=1024)
    seal.write_file(tmp_path / "f.enc", [data[:1500], b"", data[1500:3000], data[3000:]])  # segments straddle pieces
    sealed = bytearray((tmp_path / "f.enc").read_bytes())
    sealed[-3] ^= 1  # the last segment's tag
    (tmp_path / "f.enc").write_bytes(bytes(sealed))
    gate = gate_for(keys["enc_private"])
    assert gate.head(tmp_path / "f.enc", 1500) == data[:1500]  # segments 0 and 1, each authenticated
    with pytest.raises(SecureError, match="segment 9 fails authentication"):
        gate.plaintext(tmp_path / "f.enc")
    (tmp_path / "plain.bin").write_bytes(data)
    assert gate.head(tmp_path / "plain.bin", 10) is None and gate.plaintext(tmp_path / "plain.bin") is None


@pytest.mark.parametrize("sizes", [[0], [5], [1024], [1023, 1], [1, 2047, 0, 3000], [0, 0, 4096]])
def test_pieces_are_sealed_as_their_concatenation(tmp_path, keys, sizes):
    data = bytes((7 * i) % 251 for i in range(sum(sizes)))
    pieces, at = [], 0
    for n in sizes:
        pieces.append(data[at:at + n])
        at += n
    seal = Seal((load_public(keys["enc_public"]),), segment_size=1024)
    plain, written = seal.write_file(tmp_path / "f.enc", pieces)
    assert decrypt_bytes(tmp_path / "f.enc", load_private(keys["enc_private"])) == data
    assert plain == hashlib.sha256(data).hexdigest()
    assert written == hashlib.sha256((tmp_path / "f.enc").read_bytes()).hexdigest()


def test_safetensors_pieces_are_a_file_safetensors_reads():
    tensors = {"w": torch.randn(3, 5), "half": torch.randn(4).to(torch.bfloat16), "flags": torch.tensor([True, False]),
               "step": torch.tensor(7), "empty": torch.zeros(0, 3), "ids": torch.arange(6, dtype=torch.int64).view(2, 3),
               "strided": torch.randn(4, 6)[:, ::2]}
    data = b"".join(bytes(p) for p in safetensors_pieces(tensors, {"k": "v"}))
    for loaded in (load(data), tensors_in(bytearray(data), "x")):  # safetensors' reader, and lmforge's views
        assert loaded.keys() == tensors.keys()
        assert all(loaded[k].dtype == t.dtype and torch.equal(loaded[k], t) for k, t in tensors.items())
    assert _metadata(data) == {"k": "v"} and int.from_bytes(data[:8], "little") % 8 == 0
    buffer = bytearray(save({"a": torch.arange(3.0)}))
    a = tensors_in(buffer, "x")["a"]
    buffer[-4:] = torch.tensor([9.0]).numpy().tobytes()
    assert a.tolist() == [0.0, 1.0, 9.0]  # a view of the buffer, not a copy


def _safetensors(header: dict, data: bytes) -> bytearray:
    text = json.dumps(header).encode()
    return bytearray(len(text).to_bytes(8, "little") + text + data)


@pytest.mark.parametrize("buffer", [
    bytearray(b"\x01"),  # shorter than the size field
    bytearray((1 << 40).to_bytes(8, "little") + b"{}"),  # a header past the end
    bytearray((2).to_bytes(8, "little") + b"[]"),  # not an object
    _safetensors({"a": {"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}}, bytes(4)),
    _safetensors({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, bytes(4)),  # shape and range
    _safetensors({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, bytes(4)),
    _safetensors({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                  "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(8)),  # overlapping
    _safetensors({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8)),  # a gap
    _safetensors({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(5)),  # trailing bytes
    _safetensors({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(4)),  # past the end
])
def test_tensors_in_refuses_what_safetensors_refuses(buffer):
    with pytest.raises(SafetensorError):
        load(bytes(buffer))
    with pytest.raises(CheckpointError, match="^checkpoint f: not a safetensors file"):
        tensors_in(buffer, "f")


def _metadata(data: bytes) -> dict | None:
    return json.loads(data[8:8 + int.from_bytes(data[:8], "little")]).get("__metadata__")


def _parsed(data: bytes):
    """Safetensors bytes' metadata and tensors (the byte layout may differ: tensor order, metadata order)."""
    return _metadata(data), {k: (t.dtype, t.tolist()) for k, t in load(bytes(data)).items()}
