"""Saving protected, without plaintext on disk and without a second read: a ``Seal`` (the recipients to encrypt
for, the EC P-256 key to sign with) writes each file of a checkpoint or export straight from memory, an envelope
(``envelope.seal_segments``) when there are recipients, and hashes on the way both the plaintext (for a
checkpoint's integrity manifest) and the bytes it writes (for the signature). ``Seal.sign`` then writes the
OpenSSF model-signing signature from those digests: the same bundle ``model_signing`` would write after hashing the
files again (its own verifier checks it), without reading them back.

Hashing runs on two worker threads (``hashlib`` releases the GIL on large buffers) while the main thread encrypts
and writes, so a save costs about what a plain save that hashes its files costs.
"""

from __future__ import annotations

import dataclasses
import hashlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from lmforge.core.atomic import atomic_open, atomic_write_with
from lmforge.errors import SecureError
from lmforge.secure.envelope import SEGMENT_SIZE, seal_segments
from lmforge.secure.keys import SIGNING_KINDS, load_private
from lmforge.secure.signing import signature_path


@dataclasses.dataclass(frozen=True)
class Seal:
    """How files are saved: encrypted for ``recipients`` (public keys or a ``Passphrase``; none: plain) and
    signed with the private key in ``signing_key`` (None: unsigned). The signing key is read and checked when the
    Seal is made, before anything is written."""
    recipients: tuple = ()
    signing_key: Path | None = None
    segment_size: int = SEGMENT_SIZE

    def __post_init__(self):
        if not self.recipients and self.signing_key is None:
            raise SecureError("nothing to seal with: give recipients to encrypt for, a key to sign with, or both")
        if self.signing_key is not None:
            load_private(self.signing_key, SIGNING_KINDS, "signing")

    @property
    def encrypts(self) -> bool:
        return bool(self.recipients)

    def write(self, out: BinaryIO, data: bytes, name: str) -> tuple[str, str]:
        """Write ``data`` into the open file ``out`` (an envelope naming ``name`` when encrypting); returns the
        SHA-256 (hex) of the plaintext and of the bytes written. The caller makes the file appear atomically."""
        with ThreadPoolExecutor(1) as plain_pool, ThreadPoolExecutor(1) as written_pool:
            plain: Future = plain_pool.submit(lambda: hashlib.sha256(data).hexdigest())
            if not self.encrypts:
                out.write(data)
                digest = plain.result()
                return digest, digest
            written = hashlib.sha256()
            view, offset = memoryview(data), 0

            def read(n: int) -> memoryview:
                nonlocal offset
                offset += n
                return view[offset - n:offset]

            for piece in seal_segments(read, len(data), list(self.recipients), name, self.segment_size):
                written_pool.submit(written.update, piece)  # one worker: the pieces are hashed in order
                out.write(piece)
            return plain.result(), written_pool.submit(written.hexdigest).result()

    def write_file(self, path: str | Path, data: bytes, name: str | None = None) -> tuple[str, str]:
        """``write`` into a new file ``path``, which appears only once complete."""
        with atomic_open(path, "wb") as out:
            return self.write(out, data, Path(path).name if name is None else name)

    def sign(self, path: str | Path, written: dict[str, str]) -> Path | None:
        """Sign the file or folder ``path`` from ``written`` (each file's name relative to the folder, or "."
        for a file, and the SHA-256 of its bytes on disk; every file of it); replaces an older signature.
        Returns the signature's path, None when the Seal does not sign."""
        if self.signing_key is None:
            return None
        from model_signing import hashing, manifest, signing
        from model_signing._hashing.hashing import Digest  # the library's digest type (not re-exported)

        path = Path(path)
        template = hashing.Config().hash(path, files_to_hash=[])  # name and serialization, nothing hashed
        items = [manifest.FileManifestItem(path=PurePosixPath(name), digest=Digest("sha256", bytes.fromhex(hex_)))
                 for name, hex_ in sorted(written.items())]
        signed = manifest.Manifest(template.model_name, items,
                                   manifest.SerializationType.from_args(template.serialization_type))
        config = signing.Config().use_elliptic_key_signer(private_key=Path(self.signing_key))
        config.set_hashing_config(_Hashed(signed))
        signature = signature_path(path)
        atomic_write_with(signature, lambda tmp: config.sign(path, tmp))
        return signature


class _Hashed:
    """What ``model_signing``'s signer asks its hashing configuration for (``hash(path)``): a manifest already
    computed while the files were written."""

    def __init__(self, manifest):
        self._manifest = manifest

    def hash(self, model_path, *, files_to_hash=None):
        return self._manifest
