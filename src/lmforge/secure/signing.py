"""Signatures in the OpenSSF model-signing format, made and checked by the ``model-signing`` library offline with
an EC P-256 key file: a Sigstore bundle whose DSSE envelope signs an in-toto statement listing the SHA-256 of
every file of the model (a file, or every file of a folder but the signature itself).

The signature lies beside what it signs: ``<folder>.sig`` for a folder (``model.sig`` for a folder ``model/``; not
inside it, where a checkpoint's integrity manifest would count it as a file it does not know), ``<file>.sig`` for
a file. Either verifies with the
library's own command too: ``model_signing verify key --signature SIG --public_key PUBLIC_KEY PATH``. Verification
fails when any file changed, was added or was removed.
"""

from __future__ import annotations

from pathlib import Path

from lmforge.core.atomic import atomic_write_with
from lmforge.errors import SecureError
from lmforge.secure.keys import SIGNING_KINDS, load_private, load_public



def signature_path(path: str | Path) -> Path:
    path = Path(path).absolute()
    return path.with_name(path.name + ".sig")


def sign(path: str | Path, private_key: str | Path) -> Path:
    """Sign the file or folder ``path`` with the EC P-256 key in ``private_key``; returns the signature's path
    (refused if it exists)."""
    from model_signing import signing

    path = Path(path)
    if not path.exists():
        raise SecureError(f"{path}: no such file or folder to sign")
    load_private(private_key, SIGNING_KINDS, "signing")
    signature = signature_path(path)
    if signature.exists():
        raise SecureError(f"{signature}: a signature already exists; remove it to sign again")
    config = signing.Config().use_elliptic_key_signer(private_key=Path(private_key))
    try:
        atomic_write_with(signature, lambda tmp: config.sign(path, tmp))
    except (OSError, ValueError) as exc:
        raise SecureError(f"{path}: cannot sign: {str(exc).strip().splitlines()[0]}") from None
    return signature


def verify(path: str | Path, public_key: str | Path) -> None:
    """Check ``path`` against its signature and the EC P-256 public key in ``public_key``; one-line SecureError
    on a missing signature, a wrong key, or any changed, added or removed file."""
    from model_signing import verifying

    path = Path(path)
    if not path.exists():
        raise SecureError(f"{path}: no such file or folder to verify")
    load_public(public_key, SIGNING_KINDS, "verification")
    signature = signature_path(path)
    if not signature.is_file():
        raise SecureError(f"{path}: no signature {signature} (lmforge secure sign)")
    config = verifying.Config().use_elliptic_key_verifier(public_key=Path(public_key))
    try:
        config.verify(path, signature)
    except Exception as exc:  # the library raises ValueError, its bundle parser others: every one is a failed check
        detail = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise SecureError(f"{path}: signature {signature} does not verify: {detail}") from None
