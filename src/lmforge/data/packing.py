"""Packing: encode documents (in threads; through tiktoken when the tokenizer converts exactly, see
``fast_encode``) into flat token shards, and read them back as windows.

On disk (``out_dir``, which appears atomically): ``shard_00000.bin``, ... raw little-endian uint16
(uint32 when the vocabulary exceeds 65536) with the EOS token after every document, and ``index.json``.
Documents may continue from one shard into the next; training windows never cross a shard boundary.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lmforge.core.atomic import atomic_dir
from lmforge.core.progress import info, track
from lmforge.data.config import PackConfig
from lmforge.data.fast_encode import DocumentEncoder
from lmforge.data.tokenizer import end_of_text_id, read_tokenizer
from lmforge.errors import DataError

INDEX = "index.json"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 65536 else np.dtype("<u4")


def pack_tokens(tokenizer_path: Path, docs_jsonl: Path, out_dir: Path, cfg: PackConfig,
                encoder: str = "auto") -> dict:
    """Encode every document of ``docs_jsonl`` and write ``out_dir``; return its index, with ``encoder``: the
    library that encoded ("tiktoken" when the tokenizer converts exactly, else "tokenizers", and then
    ``encoder_fallback``: why). ``encoder="tokenizers"`` forces the fallback (the shards are the same)."""
    tokenizer = read_tokenizer(tokenizer_path)  # lmforge's, or a base model's own (fine-tuning)
    docs_jsonl = Path(docs_jsonl)
    if not docs_jsonl.is_file():
        raise DataError(f"documents to pack not found: {docs_jsonl}")
    eos_id, vocab_size = end_of_text_id(tokenizer_path, tokenizer), tokenizer.get_vocab_size()
    if eos_id is None:
        raise DataError(f"{tokenizer_path}: the tokenizer names no end-of-text token to end documents with")
    dtype = token_dtype(vocab_size)
    num_documents = num_bytes = 0
    with DocumentEncoder(tokenizer_path, tokenizer, eos_id, dtype, usable_cpus(), force=encoder) as documents:
        info(f"pack {docs_jsonl.name}: encoding with {documents.route}"
             + (f" ({documents.reason})" if documents.reason else ""))
        with atomic_dir(out_dir) as tmp, _ShardWriter(tmp, cfg.shard_tokens, dtype) as writer:
            with track(f"pack {docs_jsonl.name}", total=docs_jsonl.stat().st_size / 1e6, unit="MB") as bar:
                pending = None  # the batch being encoded while the next one is read
                for texts, text_bytes, line_bytes in _batches(docs_jsonl, cfg.batch_documents):
                    tokens = documents.submit(texts)
                    if pending is not None:
                        _write(writer, bar, *pending)
                    pending = (tokens, line_bytes)
                    num_documents += len(texts)
                    num_bytes += text_bytes
                if pending is not None:
                    _write(writer, bar, *pending)
            if num_documents == 0:
                raise DataError(f"{docs_jsonl}: no documents to pack")
            writer.close()
            index = {
                "dtype": dtype.name,
                "eos_id": eos_id,
                "vocab_size": vocab_size,
                "shards": writer.shards,
                "num_tokens": sum(s["tokens"] for s in writer.shards),
                "num_documents": num_documents,
                "num_bytes": num_bytes,
                "encoder": documents.route,
                **({"encoder_fallback": documents.reason} if documents.reason else {}),
            }
            (tmp / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return index


def _write(writer: _ShardWriter, bar, tokens, line_bytes: int) -> None:
    writer.write(tokens())
    bar.advance(line_bytes / 1e6)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _batches(path: Path, size: int) -> Iterator[tuple[list[str], int, int]]:
    """(texts, their UTF-8 bytes, JSONL bytes they took) in batches of ``size`` documents."""
    texts, text_bytes, nbytes = [], 0, 0
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            try:
                text = json.loads(line)["text"]
                text_bytes += len(text.encode("utf-8"))
            except UnicodeEncodeError:  # a lone surrogate ("\ud800" in the JSON): no tokenizer encodes it
                raise DataError(f"{path}:{lineno}: text is not valid Unicode (a lone surrogate)") from None
            except (ValueError, KeyError, TypeError, AttributeError):
                raise DataError(f"{path}:{lineno}: not a JSON record with a 'text' field") from None
            texts.append(text)
            nbytes += len(line)
            if len(texts) == size:
                yield texts, text_bytes, nbytes
                texts, text_bytes, nbytes = [], 0, 0
    if texts:
        yield texts, text_bytes, nbytes


class _ShardWriter:
    """Cuts a stream of token arrays into files of exactly ``shard_tokens`` tokens (the last one shorter)."""

    def __init__(self, folder: Path, shard_tokens: int, dtype: np.dtype):
        self.folder, self.shard_tokens, self.dtype = folder, shard_tokens, dtype
        self.shards: list[dict] = []
        self._file = None

    def write(self, tokens: np.ndarray) -> None:
        while len(tokens):
            if self._file is None:
                name = f"shard_{len(self.shards):05d}.bin"
                self._file, self._hash, self._count = open(self.folder / name, "wb"), hashlib.sha256(), 0
                self.shards.append({"file": name, "tokens": 0, "sha256": ""})
            take = tokens[: self.shard_tokens - self._count]
            data = take.tobytes()
            self._file.write(data)
            self._hash.update(data)
            self._count += len(take)
            tokens = tokens[len(take):]
            if self._count == self.shard_tokens:
                self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self.shards[-1].update(tokens=self._count, sha256=self._hash.hexdigest())
            self._file = None

    def __enter__(self) -> _ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TokenShards:
    """Read-only memory maps of a packed folder, addressed as fixed-length training windows.

    Window ``i`` of a shard covers tokens ``[i*seq_len, i*seq_len + seq_len + 1)`` (inputs ``[:-1]``,
    targets ``[1:]``), so a shard of ``n`` tokens has ``(n - 1) // seq_len`` windows and no window crosses
    a shard boundary. Global window numbers run over the shards in order.
    """

    def __init__(self, out_dir: Path):
        self.dir = Path(out_dir)
        index = _read_index(self.dir / INDEX)
        self.index = index
        self.eos_id: int = index["eos_id"]
        self.vocab_size: int = index["vocab_size"]
        self.num_tokens: int = index["num_tokens"]
        self.num_bytes: int = index["num_bytes"]
        self.num_documents: int = index["num_documents"]
        self.dtype = np.dtype(index["dtype"]).newbyteorder("<")
        self.shards = [self._open(s) for s in index["shards"]]
        self._starts: dict[int, np.ndarray] = {}  # seq_len -> first global window of each shard

    def _open(self, shard: dict) -> np.memmap:
        path = self.dir / shard["file"]
        if not path.is_file():
            raise DataError(f"{path}: token shard missing (listed in {INDEX})")
        expected, found = shard["tokens"] * self.dtype.itemsize, path.stat().st_size
        if found != expected:
            raise DataError(f"{path}: truncated or corrupt token shard: {found} bytes, expected {expected}")
        return np.memmap(path, dtype=self.dtype, mode="r", shape=(shard["tokens"],))

    def verify(self) -> None:
        """Check every shard's sha256 against the index (reads everything once)."""
        for shard, tokens in zip(self.index["shards"], self.shards):
            if hashlib.sha256(tokens.tobytes()).hexdigest() != shard["sha256"]:
                raise DataError(f"{self.dir / shard['file']}: token shard corrupt: sha256 does not match {INDEX}")

    def _window_starts(self, seq_len: int) -> np.ndarray:
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        if seq_len not in self._starts:
            counts = [max(0, (len(s) - 1) // seq_len) for s in self.shards]
            self._starts[seq_len] = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return self._starts[seq_len]

    def num_windows(self, seq_len: int) -> int:
        return int(self._window_starts(seq_len)[-1])

    def window(self, i: int, seq_len: int) -> np.ndarray:
        """Tokens of global window ``i``: int64 array of length ``seq_len + 1``."""
        starts = self._window_starts(seq_len)
        if not 0 <= i < starts[-1]:
            raise IndexError(f"window {i} out of range: {int(starts[-1])} windows of length {seq_len}")
        shard = int(np.searchsorted(starts, i, side="right")) - 1
        begin = (i - int(starts[shard])) * seq_len
        return self.shards[shard][begin : begin + seq_len + 1].astype(np.int64)

    def windows(self, indices, seq_len: int) -> np.ndarray:
        """A batch of windows: int64 array (len(indices), seq_len + 1)."""
        out = np.empty((len(indices), seq_len + 1), dtype=np.int64)
        for row, i in enumerate(indices):
            out[row] = self.window(int(i), seq_len)
        return out


def _read_index(path: Path) -> dict:
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: packed token index not found (run the tokenize stage first)") from None
    except ValueError as e:
        raise DataError(f"{path}: not valid JSON: {e}") from None
    required = {"dtype", "eos_id", "vocab_size", "shards", "num_tokens", "num_documents", "num_bytes"}
    missing = sorted(required - set(index) if isinstance(index, dict) else required)
    if missing:
        raise DataError(f"{path}: packed token index lacks {', '.join(missing)}")
    for shard in index["shards"]:
        if not (isinstance(shard, dict) and isinstance(shard.get("file"), str) and isinstance(shard.get("tokens"), int)
                and shard["tokens"] > 0 and "/" not in shard["file"]):
            raise DataError(f"{path}: malformed shard entry {shard!r}")
    if index["dtype"] not in ("uint16", "uint32"):
        raise DataError(f"{path}: unsupported token dtype {index['dtype']!r}")
    if sum(s["tokens"] for s in index["shards"]) != index["num_tokens"]:
        raise DataError(f"{path}: shard token counts do not add up to num_tokens")
    return index
