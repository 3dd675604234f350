"""What the one model loader (``checkpoint.load``) is handed to open protected checkpoints: ``Gate.check(path)``
verifies a file's or folder's signature (with ``--verify-with``) before any byte of it is parsed, and
``Gate.plaintext(file)`` gives an encrypted file's plaintext in memory (every segment authenticated), or None for
a plain file. Plaintext never touches disk here.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from lmforge.errors import SecureError
from lmforge.secure.envelope import (SMALL_FILE, Passphrase, decrypt_bytes, decrypt_into, decrypt_segments, is_envelope,
                                     read_header)
from lmforge.secure.keys import ENCRYPTION_KINDS, SIGNING_KINDS, load_private, load_public
from lmforge.secure.signing import verify

PASSPHRASE_ENV = "LMFORGE_KEY_PASSPHRASE"


class Gate:
    def __init__(self, identity=None, verify_with: Path | None = None):
        self.identity = identity  # a private key or Passphrase; None: encrypted files are refused
        self.verify_with = verify_with  # an EC P-256 public key file; None: no signature is asked for
        self._verified: set[Path] = set()
        self._plain: dict[Path, bytes] = {}  # decrypted once per process: metadata, then weights, read the same file

    def check(self, path: str | Path) -> None:
        """Verify ``path``'s signature when ``--verify-with`` was given (once per path)."""
        path = Path(path).absolute()
        if self.verify_with is not None and path not in self._verified:
            verify(path, self.verify_with)
            self._verified.add(path)

    def verified(self, path: str | Path) -> bool:
        """Whether ``path``'s signature was verified by this gate."""
        return Path(path).absolute() in self._verified

    def plaintext(self, file: str | Path) -> bytes | None:
        """The plaintext of an encrypted ``file``, None when it is not encrypted. Small files (a checkpoint's
        state: up to envelope.SMALL_FILE bytes) are kept for the next ask; weights are decrypted when asked for and
        not kept."""
        file = Path(file).absolute()
        if file in self._plain:
            return self._plain[file]
        if not self._encrypted(file):
            return None
        plain = decrypt_bytes(file, self.identity)
        if len(plain) <= SMALL_FILE:
            self._plain[file] = plain
        return plain

    def plaintext_size(self, file: str | Path) -> int | None:
        """The plaintext size an encrypted ``file``'s header records (its segments check it); None when plain."""
        file = Path(file).absolute()
        return read_header(file).size if self._encrypted(file) else None

    def decrypt_into(self, file: str | Path, place, direct=None) -> bool:
        """Hand an encrypted ``file``'s plaintext to ``place(offset, segment)``, or decrypt it in place where
        ``direct(offset, size)`` says (envelope.decrypt_into: never the whole file in memory); False, and nothing
        done, when it is plain."""
        file = Path(file).absolute()
        if file in self._plain:
            place(0, memoryview(self._plain[file]))
            return True
        if not self._encrypted(file):
            return False
        decrypt_into(file, self.identity, place, direct)
        return True

    def head(self, file: str | Path, size: int) -> bytes | None:
        """The first ``size`` bytes of an encrypted ``file``'s plaintext (fewer if it is shorter), decrypting only
        the segments that hold them (each authenticated); None when it is not encrypted."""
        file = Path(file).absolute()
        if file in self._plain:
            return self._plain[file][:size]
        if not self._encrypted(file):
            return None
        out = bytearray()
        segments = decrypt_segments(file, self.identity)
        for plain in segments:
            out += plain
            if len(out) >= size:
                break
        segments.close()
        return bytes(out[:size])

    def digest(self, file: str | Path) -> str | None:
        """The SHA-256 (hex) of an encrypted ``file``'s plaintext, decrypted segment by segment and not kept; None
        when it is not encrypted."""
        file = Path(file).absolute()
        if file in self._plain:
            return hashlib.sha256(self._plain[file]).hexdigest()
        if not self._encrypted(file):
            return None
        sha = hashlib.sha256()
        for plain in decrypt_segments(file, self.identity):
            sha.update(plain)
        return sha.hexdigest()

    def _encrypted(self, file: Path) -> bool:
        if not is_envelope(file):
            return False
        if self.identity is None:
            raise SecureError(f"{file}: encrypted (lmforge secure encrypt); give --key PRIVATE_KEY or set "
                              f"{PASSPHRASE_ENV}")
        return True


def identity_for(key: Path | None, passphrase: str | None = None):
    """The private key in ``key`` (X25519 or RSA), else a passphrase (given, or from LMFORGE_KEY_PASSPHRASE), else
    None."""
    if key is not None:
        return load_private(key, ENCRYPTION_KINDS, "decryption")
    secret = passphrase if passphrase is not None else os.environ.get(PASSPHRASE_ENV)
    return Passphrase(secret) if secret else None


def gate_for(key: Path | None = None, verify_with: Path | None = None, passphrase: str | None = None) -> Gate:
    """A Gate from the options every model-loading command takes (``--key``, ``--verify-with``), the key files
    read and checked now, before anything is loaded."""
    if verify_with is not None:
        load_public(verify_with, SIGNING_KINDS, "--verify-with")
    return Gate(identity_for(key, passphrase), None if verify_with is None else Path(verify_with))
