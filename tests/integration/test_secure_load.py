"""The loader gate end to end: an exported model encrypted for an X25519 recipient and signed with an EC P-256
key generates with --key and --verify-with exactly as the plain file does; no key, the wrong kind of key, another
signer's public key, one flipped bit: one line, exit 2, nothing written."""

from __future__ import annotations

import json
import shutil

import pytest

from cli_errors import assert_error_line, snapshot
from conftest import run_cli

pytestmark = pytest.mark.integration


def test_an_encrypted_signed_model_loads_through_the_gate(trained_base, tmp_path):
    root = tmp_path / "run"
    shutil.copytree(trained_base, root)
    plain, enc = tmp_path / "plain.safetensors", tmp_path / "enc.safetensors"
    for args in (["export", "--run-dir", str(root), "--output", str(plain)],
                 ["secure", "keygen", "--output", str(tmp_path / "box"), "--kind", "x25519"],
                 ["secure", "keygen", "--output", str(tmp_path / "signer"), "--kind", "ec-p256"],
                 ["secure", "keygen", "--output", str(tmp_path / "other"), "--kind", "ec-p256"],
                 ["secure", "encrypt", str(plain), "--recipient", str(tmp_path / "box" / "public.pem"),
                  "--output", str(enc)],
                 ["secure", "sign", str(enc), "--key", str(tmp_path / "signer" / "private.pem")]):
        code, _, err = run_cli(*args)
        assert code == 0, (args, err)
    assert plain.read_bytes()[8:] not in enc.read_bytes()  # nothing of the plain file's header in the clear

    def generate(checkpoint, *extra):
        return run_cli("generate", "--run-dir", str(root), "--json", "--temperature", "0", "--max-new-tokens", "6",
                       "--prompt", "def ", "--checkpoint", str(checkpoint), *extra)

    code, out, err = generate(plain)
    assert code == 0, err
    expected = json.loads(out)["samples"]
    assert expected[0]["tokens"] == 6
    code, out, err = generate(enc, "--key", str(tmp_path / "box" / "private.pem"), "--verify-with",
                              str(tmp_path / "signer" / "public.pem"))
    assert code == 0, err
    assert json.loads(out)["samples"] == expected
    flipped = tmp_path / "flipped.safetensors"
    data = bytearray(enc.read_bytes())
    data[-5] ^= 1
    flipped.write_bytes(bytes(data))
    before = snapshot(root)
    cases = [
        ((enc,), f"error: {enc}: encrypted (lmforge secure encrypt); give --key PRIVATE_KEY or set "
                 "LMFORGE_KEY_PASSPHRASE"),
        ((enc, "--key", str(tmp_path / "signer" / "private.pem")),
         f"error: key file {tmp_path / 'signer' / 'private.pem'}: a key of kind ec-p256; decryption needs x25519 or "
         "rsa"),
        ((flipped, "--key", str(tmp_path / "box" / "private.pem")),
         f"error: {flipped}: segment 0 fails authentication (tampered, reordered or from another file)"),
    ]
    for args, line in cases:
        code, _, err = generate(*args)
        assert_error_line(code, err, line)
    code, _, err = generate(enc, "--key", str(tmp_path / "box" / "private.pem"), "--verify-with",
                            str(tmp_path / "other" / "public.pem"))
    assert code == 2 and err.strip().startswith(f"error: {enc}: signature {enc}.sig does not verify") \
        and len(err.strip().splitlines()) == 1, err
    assert snapshot(root) == before

    # exported sealed in one go: encrypted from memory and signed (no plaintext file, no second pass)
    sealed = tmp_path / "sealed.safetensors"
    code, _, err = run_cli("export", "--run-dir", str(root), "--output", str(sealed), "--recipient",
                           str(tmp_path / "box" / "public.pem"), "--sign-with", str(tmp_path / "signer" / "private.pem"))
    assert code == 0, err
    assert sealed.with_name(sealed.name + ".sig").is_file() and plain.read_bytes()[8:] not in sealed.read_bytes()
    code, out, err = generate(sealed, "--key", str(tmp_path / "box" / "private.pem"), "--verify-with",
                              str(tmp_path / "signer" / "public.pem"))
    assert code == 0, err
    assert json.loads(out)["samples"] == expected
    before = snapshot(tmp_path)
    for extra, line in (
            (["--format", "hf", "--recipient", str(tmp_path / "box" / "public.pem")],
             "error: --recipient/--sign-with: only with --format safetensors (a Hugging Face folder is encrypted "
             "with lmforge secure encrypt)"),
            (["--sign-with", str(tmp_path / "box" / "private.pem")],
             f"error: key file {tmp_path / 'box' / 'private.pem'}: a key of kind x25519; signing needs ec-p256"),
            (["--recipient", str(tmp_path / "signer" / "public.pem")],
             f"error: public key file {tmp_path / 'signer' / 'public.pem'}: a key of kind ec-p256; --recipient "
             "needs x25519 or rsa")):
        code, _, err = run_cli("export", "--run-dir", str(root), "--output", str(tmp_path / "new"), *extra)
        assert_error_line(code, err, line)
    assert snapshot(tmp_path) == before
