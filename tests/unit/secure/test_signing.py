"""OpenSSF model signing of a folder: verifies, and fails after any change, addition or removal of a file."""

from __future__ import annotations

import pytest

from lmforge.errors import SecureError
from lmforge.secure.keys import keygen
from lmforge.secure.signing import sign, signature_path, verify


def test_folder_signature_fails_after_change_addition_removal(tmp_path):
    private, public = keygen(tmp_path / "keys", "ec-p256")
    model = tmp_path / "model"
    model.mkdir()
    (model / "a.bin").write_bytes(b"weights")
    (model / "b.json").write_text("{}")
    assert sign(model, private) == tmp_path / "model.sig"
    verify(model, public)
    for change in ("change", "add", "remove"):
        if change == "change":
            (model / "a.bin").write_bytes(b"weighTs")
        elif change == "add":
            (model / "c.txt").write_text("new")
        else:
            (model / "b.json").unlink()
        with pytest.raises(SecureError, match="does not verify"):
            verify(model, public)
        (model / "a.bin").write_bytes(b"weights")
        (model / "c.txt").unlink(missing_ok=True)
        (model / "b.json").write_text("{}")
        verify(model, public)
    other_private, other_public = keygen(tmp_path / "other", "ec-p256")
    with pytest.raises(SecureError, match="does not verify"):
        verify(model, other_public)
    with pytest.raises(SecureError, match="already exists"):
        sign(model, other_private)
    signature_path(model).unlink()
    with pytest.raises(SecureError, match="no signature"):
        verify(model, public)
    with pytest.raises(SecureError, match="a key of kind x25519; signing needs ec-p256"):
        sign(model, keygen(tmp_path / "x", "x25519")[0])
    assert not signature_path(model).exists()
