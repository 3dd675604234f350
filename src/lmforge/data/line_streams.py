"""Bytes and lines of plain, gzip (.gz) and zstd (.zst, .zstd) files.

A corrupt or truncated stream raises ``CorruptInput`` with a reason (``invalid_gzip``, ``truncated_gzip``,
``invalid_zstd``, ``truncated_zstd``, ``unreadable``) after yielding every complete line before the damage,
so a reader keeps the clean part of a damaged file and counts the damage once, at the line it stopped.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path

import zstandard

_CHUNK = 1 << 20


class CorruptInput(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def compression(path: Path) -> str | None:
    suffix = path.suffix.lower()
    return "gzip" if suffix == ".gz" else "zstd" if suffix in (".zst", ".zstd") else None


def iter_lines(path: Path) -> Iterator[bytes]:
    """The lines of ``path`` (with their b"\\n"), decompressed by the file's ending."""
    kind = compression(path)
    try:
        if kind == "zstd":
            yield from _zstd_lines(path)
        elif kind == "gzip":
            yield from _gzip_lines(path)
        else:
            with open(path, "rb") as f:
                yield from f
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise CorruptInput("unreadable") from None


def read_bytes(path: Path) -> bytes:
    """The whole (decompressed) content of ``path``."""
    if compression(path) is None:
        try:
            return path.read_bytes()
        except (FileNotFoundError, PermissionError, IsADirectoryError):
            raise CorruptInput("unreadable") from None
    return b"".join(iter_lines(path))


def _gzip_lines(path: Path) -> Iterator[bytes]:
    try:
        with gzip.open(path, "rb") as f:
            yield from f
    except EOFError:
        raise CorruptInput("truncated_gzip") from None
    except (gzip.BadGzipFile, zlib.error, OSError) as exc:
        if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
            raise
        raise CorruptInput("invalid_gzip") from None


def _zstd_lines(path: Path) -> Iterator[bytes]:
    """zstd frames one after another; a frame cut short is a truncated stream (the library is silent)."""
    pending = b""
    with open(path, "rb") as f:
        decoder, fed = zstandard.ZstdDecompressor().decompressobj(), False
        while chunk := f.read(_CHUNK):
            while chunk:
                try:
                    data = decoder.decompress(chunk)
                except zstandard.ZstdError:
                    raise CorruptInput("invalid_zstd") from None
                fed = True
                chunk = b""
                if decoder.eof:  # next frame
                    chunk = decoder.unused_data
                    decoder, fed = zstandard.ZstdDecompressor().decompressobj(), False
                lines = (pending + data).split(b"\n")
                pending = lines.pop()
                for line in lines:
                    yield line + b"\n"
        if fed and not decoder.eof:
            raise CorruptInput("truncated_zstd")
    if pending:
        yield pending
