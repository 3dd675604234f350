"""Saving protected, without plaintext on disk and without a second read: a ``Seal`` (the recipients to encrypt
for, the EC P-256 key to sign with) writes each file of a checkpoint or export straight from memory (the pieces of
``checkpoint.formats.safetensors_pieces``: a header, then each tensor's own memory), an envelope
(``envelope.sealer``) when there are recipients, and hashes on the way both the plaintext (for a checkpoint's
integrity manifest) and the bytes it writes (for the signature). ``Seal.sign`` then writes the OpenSSF
model-signing signature from those digests: the same bundle ``model_signing`` would write after hashing the files
again (its own verifier checks it), without reading them back.

Segments are sealed on worker threads and both hashes run on their own (AES-GCM and ``hashlib`` release the GIL
on large buffers) while the main thread writes in order, so a save costs about what a plain save that hashes its
files costs.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from lmforge.core.atomic import atomic_open, atomic_write_with
from lmforge.errors import SecureError
from lmforge.secure.envelope import SEGMENT_SIZE, sealer, segment_sizes
from lmforge.secure.keys import SIGNING_KINDS, load_private
from lmforge.secure.signing import signature_path

IN_FLIGHT = 8  # segments being sealed, and sealed segments written but not yet hashed, at most (each kind)
SEAL_THREADS = 2  # AES-GCM releases the GIL: segments are sealed on this many threads


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

    def write(self, out: BinaryIO, pieces: list, name: str, plain_digest: bool = True) -> tuple[str | None, str]:
        """Write the concatenation of ``pieces`` (bytes-like, e.g. a serialized header then each tensor's memory,
        never joined whole) into the open file ``out``, an envelope naming ``name`` when encrypting; returns the
        SHA-256 (hex) of the plaintext (None when encrypting without ``plain_digest``: only a checkpoint's manifest
        needs it) and of the bytes written. The caller makes the file appear atomically."""
        pieces = [memoryview(p).cast("B") for p in pieces]
        with ThreadPoolExecutor(1) as plain_pool, ThreadPoolExecutor(1) as written_pool, \
                ThreadPoolExecutor(SEAL_THREADS) as seal_pool:
            plain_hash = hashlib.sha256()
            hash_plain = plain_digest or not self.encrypts
            plain = [plain_pool.submit(plain_hash.update, p) for p in pieces] if hash_plain else []  # in order
            if not self.encrypts:
                for p in pieces:
                    out.write(p)
                for f in plain:
                    f.result()
                return plain_hash.hexdigest(), plain_hash.hexdigest()
            size = sum(len(p) for p in pieces)
            envelope = sealer(size, list(self.recipients), name, self.segment_size)
            written = hashlib.sha256(envelope.aad)
            out.write(envelope.aad)
            sealed: deque[Future] = deque()
            hashed: deque[Future] = deque()

            def drain(keep: int) -> None:  # write the oldest sealed segments, in order, and hash them
                while len(sealed) > keep:
                    piece = sealed.popleft().result()
                    hashed.append(written_pool.submit(written.update, piece))
                    out.write(piece)
                    while len(hashed) > IN_FLIGHT:
                        hashed.popleft().result()

            for i, chunk in enumerate(_segments(pieces, self.segment_size, size)):
                sealed.append(seal_pool.submit(envelope.seal, i, chunk))
                drain(IN_FLIGHT)
            drain(0)
            for f in [*hashed, *plain]:
                f.result()
            return plain_hash.hexdigest() if hash_plain else None, written.hexdigest()

    def write_file(self, path: str | Path, pieces: list, name: str | None = None,
                   plain_digest: bool = True) -> tuple[str | None, str]:
        """``write`` into a new file ``path``, which appears only once complete."""
        with atomic_open(path, "wb") as out:
            return self.write(out, pieces, Path(path).name if name is None else name, plain_digest)

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


def _segments(pieces: list[memoryview], segment_size: int, size: int) -> Iterator:
    """The plaintext of each segment, in order, from consecutive ``pieces``: a view into a piece where the segment
    lies in one, else its parts joined (one segment's copy)."""
    index, offset = 0, 0
    for want in segment_sizes(size, segment_size):
        parts = []
        while want:
            while offset == len(pieces[index]):
                index, offset = index + 1, 0
            take = min(want, len(pieces[index]) - offset)
            parts.append(pieces[index][offset:offset + take])
            offset, want = offset + take, want - take
        yield parts[0] if len(parts) == 1 else b"".join(parts) if parts else b""


class _Hashed:
    """What ``model_signing``'s signer asks its hashing configuration for (``hash(path)``): a manifest already
    computed while the files were written."""

    def __init__(self, manifest):
        self._manifest = manifest

    def hash(self, model_path, *, files_to_hash=None):
        return self._manifest
