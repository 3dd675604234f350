"""The encrypted file format: a streaming AEAD envelope (the manner of Tink's AES-GCM-HKDF streaming and of
STREAM), built from ``cryptography``'s primitives only.

Layout of one envelope (one per file; a folder is encrypted file by file under the same names)::

    MAGIC (8 bytes) | header length (4 bytes, big-endian) | header (JSON) | segment 0 | segment 1 | ...

The header holds the format version, the segment size, the file's name (relative to what was encrypted) and
plaintext size, a random salt and nonce prefix, and one stanza per recipient: the file's fresh 32-byte data key
wrapped for an X25519 key (ephemeral X25519 + HKDF-SHA256 + AES-GCM, as age does), an RSA key of >= 3072 bits
(RSA-OAEP-SHA256) or a passphrase (scrypt + AES-GCM). Each segment is AES-256-GCM of ``segment_size``
plaintext bytes (the last may be shorter, or empty for an empty file) under a key derived by HKDF-SHA256 from
the data key and the salt; its 12-byte nonce is the 7-byte prefix, the segment's 4-byte counter and a 1-byte
last-segment flag, and its associated data is everything before segment 0. So a flipped bit anywhere, a
truncation (at or between segment boundaries), reordered, duplicated or dropped segments, trailing bytes and a
header taken from another file all fail authentication, and decryption refuses them in one line.

Decryption streams: ``decrypt_segments`` yields each segment only after its tag checked; ``decrypt_file`` writes
them under a temporary name that is renamed into place only once the last segment checked; ``decrypt_bytes``
keeps the plaintext in memory for the loader (never on disk).
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import json
import os
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa, x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from lmforge.core.atomic import atomic_open
from lmforge.errors import SecureError
from lmforge.secure.keys import MIN_RSA_BITS

MAGIC = b"LMFENC\x00\x01"
VERSION = 1
SEGMENT_SIZE = 1 << 20
TAG = 16
NONCE_PREFIX = 7
MAX_HEADER = 1 << 20
SMALL_FILE = 16 << 20  # decrypted into a bytearray up to this size (state, metadata), into a NumPy array above
SCRYPT_LOG_N = 15  # 32 MiB, ~0.1 s: the cost age uses for a passphrase is 2^18; a checkpoint folder pays it per file
SCRYPT_LOG_N_RANGE = (10, 20)  # a header asking for more is refused (it would be a memory bomb)
_ZERO_NONCE = bytes(12)  # each key-wrapping key is used once (fresh ephemeral key or salt), as in age
_OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


@dataclasses.dataclass(frozen=True)
class Passphrase:
    """A passphrase as recipient (encrypt) or identity (decrypt); ``log_n``: scrypt's cost when encrypting."""
    secret: str = dataclasses.field(repr=False)
    log_n: int = SCRYPT_LOG_N


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def _hkdf(secret: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(secret)


def _raw(public: x25519.X25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _scrypt(passphrase: str, salt: bytes, log_n: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=1 << log_n, r=8, p=1).derive(passphrase.encode("utf-8"))


def wrap(data_key: bytes, recipient) -> dict:
    """The stanza that gives ``recipient`` (an X25519 or RSA public key, or a Passphrase) the data key."""
    if isinstance(recipient, x25519.X25519PublicKey):
        ephemeral = x25519.X25519PrivateKey.generate()
        eph_raw = _raw(ephemeral.public_key())
        kek = _hkdf(ephemeral.exchange(recipient), eph_raw + _raw(recipient), b"lmforge x25519 wrap v1")
        return {"type": "x25519", "ephemeral": _b64(eph_raw),
                "wrapped": _b64(AESGCM(kek).encrypt(_ZERO_NONCE, data_key, None))}
    if isinstance(recipient, rsa.RSAPublicKey):
        if recipient.key_size < MIN_RSA_BITS:
            raise SecureError(f"an RSA key of {recipient.key_size} bits; keys under {MIN_RSA_BITS} bits are refused")
        return {"type": "rsa-oaep-sha256", "wrapped": _b64(recipient.encrypt(data_key, _OAEP))}
    if isinstance(recipient, Passphrase):
        salt = os.urandom(16)
        kek = _scrypt(recipient.secret, salt, recipient.log_n)
        return {"type": "scrypt", "salt": _b64(salt), "log_n": recipient.log_n,
                "wrapped": _b64(AESGCM(kek).encrypt(_ZERO_NONCE, data_key, None))}
    raise SecureError(f"cannot encrypt for a {type(recipient).__name__} (an X25519 or RSA public key, or a passphrase)")


def _unwrap(stanza: dict, identity) -> bytes | None:
    """The data key if ``identity`` (a private key or Passphrase) opens ``stanza``, else None."""
    kind = stanza.get("type")
    try:
        if kind == "x25519" and isinstance(identity, x25519.X25519PrivateKey):
            eph_raw = _unb64(stanza["ephemeral"])
            shared = identity.exchange(x25519.X25519PublicKey.from_public_bytes(eph_raw))
            kek = _hkdf(shared, eph_raw + _raw(identity.public_key()), b"lmforge x25519 wrap v1")
            return AESGCM(kek).decrypt(_ZERO_NONCE, _unb64(stanza["wrapped"]), None)
        if kind == "rsa-oaep-sha256" and isinstance(identity, rsa.RSAPrivateKey):
            return identity.decrypt(_unb64(stanza["wrapped"]), _OAEP)
        if kind == "scrypt" and isinstance(identity, Passphrase):
            log_n = int(stanza["log_n"])
            if not SCRYPT_LOG_N_RANGE[0] <= log_n <= SCRYPT_LOG_N_RANGE[1]:
                return None
            kek = _scrypt(identity.secret, _unb64(stanza["salt"]), log_n)
            return AESGCM(kek).decrypt(_ZERO_NONCE, _unb64(stanza["wrapped"]), None)
    except (InvalidTag, ValueError, KeyError, TypeError):
        return None
    return None


def _nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    return prefix + struct.pack(">I?", counter, last)


def segment_count(size: int, segment_size: int) -> int:
    return max(1, -(-size // segment_size))


@dataclasses.dataclass(frozen=True)
class Sealer:
    """One file's envelope in the making: ``aad`` (everything before segment 0, written first) and ``seal(i,
    chunk)``, segment ``i`` of ``count`` sealed; segments may be sealed in any order, on several threads."""
    aad: bytes
    count: int
    _aead: AESGCM
    _prefix: bytes

    def seal(self, i: int, chunk) -> bytes:
        return self._aead.encrypt(_nonce(self._prefix, i, i == self.count - 1), chunk, self.aad)


def sealer(size: int, recipients: list, name: str, segment_size: int = SEGMENT_SIZE) -> Sealer:
    """The envelope of ``size`` plaintext bytes named ``name`` for ``recipients``: a fresh data key, salt and nonce
    prefix."""
    if not recipients:
        raise SecureError("no recipient: give --recipient PUBLIC_KEY (or --passphrase)")
    if not 1 <= segment_size <= 1 << 30:
        raise SecureError(f"segment size {segment_size}: out of range (1 byte to 1 GiB)")
    data_key, salt, prefix = os.urandom(32), os.urandom(32), os.urandom(NONCE_PREFIX)
    header = {"version": VERSION, "segment_size": segment_size, "name": name, "size": size,
              "salt": _b64(salt), "nonce_prefix": _b64(prefix), "recipients": [wrap(data_key, r) for r in recipients]}
    body = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return Sealer(MAGIC + struct.pack(">I", len(body)) + body, segment_count(size, segment_size),
                  AESGCM(_hkdf(data_key, salt, b"lmforge envelope v1 segments")), prefix)


def segment_sizes(size: int, segment_size: int) -> Iterator[int]:
    """The plaintext size of each segment of a ``size``-byte file, in order."""
    count = segment_count(size, segment_size)
    for i in range(count):
        yield segment_size if i < count - 1 else size - segment_size * (count - 1)


def encrypt_file(source: str | Path, output: str | Path, recipients: list, name: str,
                 segment_size: int = SEGMENT_SIZE) -> None:
    """Encrypt ``source`` into the envelope ``output`` (written atomically) for every one of ``recipients``,
    reading and writing one segment at a time."""
    source = Path(source)
    size = source.stat().st_size

    def read(n: int) -> bytes:
        chunk = src.read(n)
        if len(chunk) != n:
            raise SecureError(f"{source}: changed while it was encrypted")
        return chunk

    envelope = sealer(size, recipients, name, segment_size)  # recipients and segment size checked first
    with open(source, "rb") as src, atomic_open(output, "wb") as out:
        out.write(envelope.aad)
        for i, n in enumerate(segment_sizes(size, segment_size)):
            out.write(envelope.seal(i, read(n)))
        if src.read(1):
            raise SecureError(f"{source}: changed while it was encrypted")


@dataclasses.dataclass(frozen=True)
class Header:
    fields: dict  # the parsed JSON header (authenticated only once a segment's tag has checked)
    aad: bytes  # the bytes before segment 0, every segment's associated data

    @property
    def name(self) -> str:
        return self.fields["name"]

    @property
    def size(self) -> int:
        return self.fields["size"]


def is_envelope(path: str | Path) -> bool:
    """Whether ``path`` is a file that starts with the envelope's magic bytes."""
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except (IsADirectoryError, FileNotFoundError, PermissionError):
        return False


def _read_header(f, where: Path) -> Header:
    start = f.read(len(MAGIC) + 4)
    if len(start) < len(MAGIC) + 4 or start[:len(MAGIC)] != MAGIC:
        raise SecureError(f"{where}: not an lmforge encrypted file (lmforge secure encrypt)")
    (length,) = struct.unpack(">I", start[len(MAGIC):])
    body = f.read(length) if length <= MAX_HEADER else b""
    try:
        fields = json.loads(body.decode("utf-8"))
        ok = (fields["version"] == VERSION and isinstance(fields["name"], str) and isinstance(fields["size"], int)
              and fields["size"] >= 0 and isinstance(fields["segment_size"], int)
              and 1 <= fields["segment_size"] <= 1 << 30 and len(_unb64(fields["nonce_prefix"])) == NONCE_PREFIX
              and len(_unb64(fields["salt"])) == 32 and isinstance(fields["recipients"], list))
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise SecureError(f"{where}: corrupt envelope header (tampered or truncated)")
    return Header(fields, start + body)


def read_header(path: str | Path) -> Header:
    with open(path, "rb") as f:
        return _read_header(f, Path(path))


@dataclasses.dataclass(frozen=True)
class _Opened:
    """An envelope whose data key one of the recipients' stanzas gave: what opening each segment needs."""
    path: Path
    header: Header
    key: bytes = dataclasses.field(repr=False)  # the segments' key
    prefix: bytes
    count: int

    def _failed(self, i: int) -> SecureError:
        return SecureError(f"{self.path}: segment {i} fails authentication (tampered, reordered or from another "
                           "file)")

    def open(self, i: int, sealed: bytes) -> bytes:
        """Segment ``i``'s plaintext, once its tag checked."""
        try:
            return AESGCM(self.key).decrypt(_nonce(self.prefix, i, i == self.count - 1), sealed, self.header.aad)
        except InvalidTag:
            raise self._failed(i) from None

    def open_into(self, i: int, sealed: bytes, out: memoryview) -> None:
        """Segment ``i``'s plaintext written into ``out`` (its size), then its tag checked: on failure ``out`` holds
        unauthenticated bytes, and the caller drops it. Into place: a fresh copy costs as much as decrypting."""
        decryptor = Cipher(algorithms.AES(self.key), modes.GCM(_nonce(self.prefix, i, i == self.count - 1))).decryptor()
        decryptor.authenticate_additional_data(self.header.aad)
        if len(out):
            decryptor.update_into(memoryview(sealed)[:-TAG], out)
        try:
            decryptor.finalize_with_tag(sealed[-TAG:])
        except InvalidTag:
            raise self._failed(i) from None


def _open(f, path: Path, identity) -> _Opened:
    header = _read_header(f, path)
    fields = header.fields
    data_key = next((k for s in fields["recipients"] if isinstance(s, dict)
                     and (k := _unwrap(s, identity)) is not None), None)
    if data_key is None or len(data_key) != 32:
        what = "passphrase" if isinstance(identity, Passphrase) else "key"
        raise SecureError(f"{path}: the {what} given is not one this file was encrypted for (wrong {what})")
    return _Opened(path, header, _hkdf(data_key, _unb64(fields["salt"]), b"lmforge envelope v1 segments"),
                   _unb64(fields["nonce_prefix"]), segment_count(fields["size"], fields["segment_size"]))


def _sealed_segments(f, opened: _Opened) -> Iterator[tuple[int, bytes]]:
    """Each segment's sealed bytes as read, checking lengths: a truncation, or bytes after the last segment, fail."""
    for i, want in enumerate(segment_sizes(opened.header.size, opened.header.fields["segment_size"])):
        sealed = f.read(want + TAG)
        if len(sealed) != want + TAG:
            raise SecureError(f"{opened.path}: truncated (segment {i} of {opened.count} is cut short)")
        if i == opened.count - 1 and f.read(1):
            raise SecureError(f"{opened.path}: bytes after the last segment (tampered)")
        yield i, sealed


def decrypt_segments(path: str | Path, identity) -> Iterator[bytes]:
    """The plaintext of envelope ``path``, segment by segment, each yielded only after its tag checked; the last
    one checks that nothing follows. ``identity``: a private key or a Passphrase."""
    path = Path(path)
    with open(path, "rb") as f:
        opened = _open(f, path, identity)
        for i, sealed in _sealed_segments(f, opened):
            yield opened.open(i, sealed)


def _check_length(path: Path, opened: _Opened) -> None:
    expected = len(opened.header.aad) + opened.header.size + opened.count * TAG
    if path.stat().st_size != expected:
        raise SecureError(f"{path}: {path.stat().st_size:,} bytes where its header describes {expected:,} "
                          "(truncated or tampered)")


def decrypt_into(path: str | Path, identity, place, direct=None, threads: int = 2) -> None:
    """Hand the plaintext of ``path`` to ``place(offset, segment)`` segment by segment, in order, each only after
    its tag checked, without ever holding the whole file: segments are opened on ``threads`` threads into a few
    reused buffers (``segment`` is a view of one, valid during the call). ``direct(offset, size)`` may instead
    give the writable memory a segment's plaintext belongs in (None: not one place), which it is decrypted into
    in place (no copy) and not handed to ``place``; that memory holds unauthenticated bytes until the segment's
    tag checked. A file that fails raises at its first bad segment: the caller drops whatever it filled."""
    path = Path(path)
    with open(path, "rb") as f, ThreadPoolExecutor(threads) as pool:
        opened = _open(f, path, identity)
        _check_length(path, opened)
        step, in_flight = opened.header.fields["segment_size"], 2 * threads
        slots = [bytearray(step) for _ in range(in_flight + 1)]  # the one being filled is never one still queued

        def fill(i: int, sealed: bytes, into: memoryview | None) -> memoryview | None:
            if into is not None:
                opened.open_into(i, sealed, into)
                return None
            out = memoryview(slots[i % len(slots)])[:len(sealed) - TAG]
            opened.open_into(i, sealed, out)
            return out

        pending: collections.deque = collections.deque()

        def finish(j: int, job) -> None:
            segment = job.result()
            if segment is not None:
                place(j * step, segment)

        for i, sealed in _sealed_segments(f, opened):
            into = None if direct is None else direct(i * step, len(sealed) - TAG)
            pending.append((i, pool.submit(fill, i, sealed, into)))
            while len(pending) > in_flight:
                finish(*pending.popleft())
        for j, job in pending:
            finish(j, job)


def decrypt_bytes(path: str | Path, identity, threads: int = 2) -> bytearray | memoryview:
    """The whole plaintext of ``path`` in memory (one writable buffer of its size, filled in place: tensors can view
    it; a bytearray up to SMALL_FILE bytes, else a view of a NumPy array), every segment authenticated first (nothing is
    returned from a file that fails): ``decrypt_into`` with every segment decrypted in place into that buffer."""
    size, made = read_header(path).size, []

    def into_buffer(offset: int, length: int) -> memoryview:
        if not made:  # made at the first segment, once decrypt_into checked the file's length against the header
            # a large buffer from NumPy, not zeroed (a bytearray is: one more pass) and on huge pages (NumPy asks
            # for them; a 2 GB anonymous mmap took 2-9 s to first touch here, the array 0.3-0.4 s once warm)
            made.append(bytearray(size) if size <= SMALL_FILE else memoryview(np.empty(size, np.uint8)))
        return memoryview(made[0])[offset:offset + length]

    decrypt_into(path, identity, None, into_buffer, threads)  # every segment has its place: none is handed on
    return made[0]


def decrypt_file(path: str | Path, output: str | Path, identity) -> str:
    """Decrypt ``path`` into ``output`` one segment at a time (atomically: the file appears only once every
    segment checked); returns the name recorded in the header."""
    name = read_header(path).name
    with atomic_open(output, "wb") as out:
        for plain in decrypt_segments(path, identity):
            out.write(plain)
    return name
