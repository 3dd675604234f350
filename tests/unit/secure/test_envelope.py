"""The envelope: byte-identical round trips at segment edges, and every kind of tampering refused in one line."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from lmforge.errors import SecureError
from lmforge.secure.envelope import MAGIC, Passphrase, decrypt_bytes, decrypt_file, encrypt_file, read_header
from lmforge.secure.keys import generate, load_public

SEG = 64


@pytest.fixture(scope="module")
def x25519_key():
    return generate("x25519")


def _sealed(tmp_path, data: bytes, key, name="f.bin"):
    src, out = tmp_path / name, tmp_path / (name + ".enc")
    src.write_bytes(data)
    encrypt_file(src, out, [key.public_key()], name, segment_size=SEG)
    return out


@pytest.mark.parametrize("size", [0, 1, SEG - 1, SEG, SEG + 1, 3 * SEG, 3 * SEG + 5])
def test_round_trip_is_byte_identical(tmp_path, x25519_key, size):
    data = os.urandom(size)
    out = _sealed(tmp_path, data, x25519_key)
    assert decrypt_bytes(out, x25519_key) == data
    decrypt_file(out, tmp_path / "plain", x25519_key)
    assert (tmp_path / "plain").read_bytes() == data


def test_rsa_and_passphrase_recipients(tmp_path):
    rsa_key = generate("rsa")
    src = tmp_path / "f"
    src.write_bytes(os.urandom(200))
    encrypt_file(src, tmp_path / "e", [rsa_key.public_key(), Passphrase("pw", 10)], "f", segment_size=SEG)
    assert decrypt_bytes(tmp_path / "e", rsa_key) == src.read_bytes()
    assert decrypt_bytes(tmp_path / "e", Passphrase("pw")) == src.read_bytes()
    with pytest.raises(SecureError, match="wrong passphrase"):
        decrypt_bytes(tmp_path / "e", Passphrase("other"))
    with pytest.raises(SecureError, match="wrong key"):
        decrypt_bytes(tmp_path / "e", generate("rsa"))


def test_every_single_bit_flip_is_refused(tmp_path, x25519_key):
    out = _sealed(tmp_path, os.urandom(2 * SEG + 7), x25519_key)
    blob = out.read_bytes()
    header_end = len(read_header(out).aad)
    positions = sorted(set(range(0, header_end, 7)) | set(range(header_end, len(blob))))  # header sampled, body all
    for pos in positions:
        for bit in (0, 7):
            bad = bytearray(blob)
            bad[pos] ^= 1 << bit
            out.write_bytes(bytes(bad))
            with pytest.raises(SecureError) as err:
                decrypt_bytes(out, x25519_key)
            assert "\n" not in str(err.value)


def test_truncation_reorder_duplicate_trailing_and_foreign_header(tmp_path, x25519_key):
    out = _sealed(tmp_path, os.urandom(3 * SEG), x25519_key)
    blob = out.read_bytes()
    h = len(read_header(out).aad)
    seg = [blob[h + i * (SEG + 16): h + (i + 1) * (SEG + 16)] for i in range(3)]
    cuts = [h, h + SEG + 16, h + 2 * (SEG + 16), h + 5, h + SEG + 30, len(blob) - 1]
    variants = [blob[:c] for c in cuts] + [
        blob[:h] + seg[1] + seg[0] + seg[2], blob[:h] + seg[0] + seg[0] + seg[2],
        blob[:h] + seg[0] + seg[1], blob + b"x", blob[:h] + seg[0] + seg[1] + seg[1]]
    other = _sealed(tmp_path, os.urandom(3 * SEG), x25519_key, "g.bin").read_bytes()
    variants.append(other[:len(read_header(tmp_path / "g.bin.enc").aad)] + blob[h:])
    for variant in variants:
        out.write_bytes(variant)
        with pytest.raises(SecureError):
            decrypt_bytes(out, x25519_key)
        with pytest.raises(SecureError):
            decrypt_file(out, tmp_path / "never", x25519_key)
        assert not (tmp_path / "never").exists()


def test_wrong_key_and_not_an_envelope(tmp_path, x25519_key):
    out = _sealed(tmp_path, b"abc", x25519_key)
    with pytest.raises(SecureError, match="wrong key"):
        decrypt_bytes(out, generate("x25519"))
    (tmp_path / "plain").write_bytes(b"no magic")
    with pytest.raises(SecureError, match="not an lmforge encrypted file"):
        decrypt_bytes(tmp_path / "plain", x25519_key)
    assert out.read_bytes().startswith(MAGIC)


def test_small_rsa_keys_are_refused(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    small = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "small.pem"
    pem.write_bytes(small.public_key().public_bytes(serialization.Encoding.PEM,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(SecureError, match="under 3072 bits are refused"):
        load_public(pem)
    with pytest.raises(SecureError, match="under 3072 bits are refused"):
        generate("rsa", 2048)
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(SecureError, match="under 3072 bits are refused"):
        encrypt_file(tmp_path / "f", tmp_path / "e", [small.public_key()], "f")
    assert not (tmp_path / "e").exists()
    shutil.rmtree(tmp_path)


def test_a_large_plaintext_is_one_writable_buffer_tensors_can_view(tmp_path, x25519_key, monkeypatch):
    from lmforge.secure import envelope

    monkeypatch.setattr(envelope, "SMALL_FILE", 100)  # above it: a NumPy array, not a bytearray
    data = os.urandom(3 * SEG + 5)
    plain = decrypt_bytes(_sealed(tmp_path, data, x25519_key), x25519_key)
    assert isinstance(plain, memoryview) and not plain.readonly and plain == data
    view = torch.frombuffer(plain, dtype=torch.uint8)  # what formats.tensors_in makes of it: no copy
    assert bytes(view.numpy()) == data
    view[0] ^= 0xFF
    assert plain[0] == data[0] ^ 0xFF
    small = decrypt_bytes(_sealed(tmp_path, data[:50], x25519_key, "small"), x25519_key)
    assert isinstance(small, bytearray) and small == data[:50]
