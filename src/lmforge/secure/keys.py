"""Key pairs as PEM files: X25519 and RSA (>= 3072 bits) to encrypt for, EC P-256 to sign with.

``keygen`` writes ``private.pem`` (PKCS#8, mode 0600) and ``public.pem`` (SubjectPublicKeyInfo) into a folder;
``load_private`` / ``load_public`` read one back and refuse, in one line, a missing, unknown or malformed file,
a key of a kind the caller cannot use, and an RSA key under 3072 bits.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa, x25519

from lmforge.core.atomic import atomic_write_with
from lmforge.errors import SecureError

KINDS = ("x25519", "rsa", "ec-p256")
ENCRYPTION_KINDS = ("x25519", "rsa")
SIGNING_KINDS = ("ec-p256",)
MIN_RSA_BITS = 3072
PRIVATE_FILE = "private.pem"
PUBLIC_FILE = "public.pem"


def kind_of(key) -> str:
    """``x25519``, ``rsa`` or ``ec-p256`` for a private or public key object; anything else is refused."""
    if isinstance(key, (x25519.X25519PrivateKey, x25519.X25519PublicKey)):
        return "x25519"
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return "rsa"
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)) and \
            isinstance(key.curve, ec.SECP256R1):
        return "ec-p256"
    return type(key).__name__


def generate(kind: str, bits: int = MIN_RSA_BITS):
    """A fresh private key of ``kind``."""
    if kind == "x25519":
        return x25519.X25519PrivateKey.generate()
    if kind == "rsa":
        if bits < MIN_RSA_BITS:
            raise SecureError(f"--bits {bits}: RSA keys under {MIN_RSA_BITS} bits are refused")
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    if kind == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    raise SecureError(f"--kind {kind}: unknown key kind (one of {', '.join(KINDS)})")


def keygen(folder: str | Path, kind: str, bits: int = MIN_RSA_BITS) -> tuple[Path, Path]:
    """Write a new key pair into ``folder`` (``private.pem`` mode 0600, ``public.pem``); existing files are
    refused before anything is written."""
    folder = Path(folder)
    private_path, public_path = folder / PRIVATE_FILE, folder / PUBLIC_FILE
    for path in (private_path, public_path):
        if path.exists():
            raise SecureError(f"{path}: already exists; give another --output folder")
    if folder.exists() and not folder.is_dir():
        raise SecureError(f"--output {folder}: not a folder")
    key = generate(kind, bits)
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)

    def write_private(tmp: Path) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others, not even briefly
        with os.fdopen(fd, "wb") as f:
            f.write(private_pem)

    atomic_write_with(private_path, write_private)
    atomic_write_with(public_path, lambda tmp: tmp.write_bytes(public_pem))
    return private_path, public_path


def _read(path: Path, what: str) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise SecureError(f"{what} {path}: no such key file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SecureError(f"{what} {path}: unreadable ({exc.strerror})") from None


def _check(key, path: Path, what: str, kinds: tuple[str, ...], use: str):
    kind = kind_of(key)
    if kind not in kinds:
        raise SecureError(f"{what} {path}: a key of kind {kind}; {use} needs {' or '.join(kinds)}")
    if kind == "rsa" and key.key_size < MIN_RSA_BITS:
        raise SecureError(f"{what} {path}: an RSA key of {key.key_size} bits; keys under {MIN_RSA_BITS} bits "
                          "are refused")
    return key


def load_private(path: str | Path, kinds: tuple[str, ...] = KINDS, use: str = "this command"):
    """The private key in PEM file ``path``, of one of ``kinds``."""
    what = "key file"
    data = _read(Path(path), what)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise SecureError(f"{what} {path}: a passphrase-protected private key; give an unprotected one") from None
    except (ValueError, UnsupportedAlgorithm):
        hint = " (a public key; give the private one)" if b"PUBLIC KEY" in data else ""
        raise SecureError(f"{what} {path}: not a PEM private key (unknown or malformed){hint}") from None
    return _check(key, Path(path), what, kinds, use)


def load_public(path: str | Path, kinds: tuple[str, ...] = KINDS, use: str = "this command"):
    """The public key in PEM file ``path``, of one of ``kinds``."""
    what = "public key file"
    data = _read(Path(path), what)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        hint = " (a private key; give the public one)" if b"PRIVATE KEY" in data else ""
        raise SecureError(f"{what} {path}: not a PEM public key (unknown or malformed){hint}") from None
    return _check(key, Path(path), what, kinds, use)
