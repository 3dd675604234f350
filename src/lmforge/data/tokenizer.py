"""Byte-level BPE tokenizer (the ``tokenizers`` library), trained on the training split only.

Layout: ``<|endoftext|>`` is the only special token and has id 0; ids 1..256 are the 256 byte symbols
(ByteLevel's initial alphabet), so any text encodes without an unknown token and decodes back exactly;
merges follow up to ``vocab_size``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from lmforge.core.atomic import atomic_write_text
from lmforge.core.progress import track
from lmforge.data.config import TokenizerConfig
from lmforge.errors import DataError

EOS_TOKEN = "<|endoftext|>"
EOS_ID = 0


def new_tokenizer() -> Tokenizer:
    """An untrained byte-level BPE: no prefix space, so decode(encode(text)) == text."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def train_tokenizer(cfg: TokenizerConfig, train_jsonl: Path, out_path: Path) -> Tokenizer:
    """Train on the texts of ``train_jsonl`` (streamed, at most ``max_train_bytes``); save ``out_path``."""
    train_jsonl, out_path = Path(train_jsonl), Path(out_path)
    if not train_jsonl.is_file():
        raise DataError(f"tokenizer training data not found: {train_jsonl} (run the data stage first)")
    tokenizer = new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    with track("tokenizer", total=train_jsonl.stat().st_size / 1e6, unit="MB") as bar:
        texts = _batched_texts(train_jsonl, cfg.max_train_bytes, on_line=lambda n: bar.advance(n / 1e6))
        tokenizer.train_from_iterator(texts, trainer)
    atomic_write_text(out_path, tokenizer.to_str())
    return tokenizer


def load_tokenizer(path: Path) -> Tokenizer:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"tokenizer file not found: {path}")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:  # the library raises plain Exception for any parse error
        raise DataError(f"{path}: not a valid tokenizer file: {e}") from None
    if tokenizer.token_to_id(EOS_TOKEN) is None:
        raise DataError(f"{path}: tokenizer has no {EOS_TOKEN} token")
    # not saved in tokenizer.json: a literal "<|endoftext|>" in text is text, never the EOS token
    tokenizer.encode_special_tokens = True
    return tokenizer


def _batched_texts(path: Path, max_bytes: int | None, on_line, batch: int = 1000) -> Iterator[list[str]]:
    """Texts of a curated JSONL file, in lists of ``batch``, stopping after ``max_bytes`` UTF-8 bytes."""
    texts: list[str] = []
    used = 0
    with open(path, "rb") as f:
        for line in f:
            text = json.loads(line)["text"]
            size = len(text.encode("utf-8"))
            if max_bytes is not None and used + size > max_bytes:
                text = text.encode("utf-8")[: max_bytes - used].decode("utf-8", errors="ignore")
                size = max_bytes - used
            texts.append(text)
            used += size
            on_line(len(line))
            if len(texts) == batch:
                yield texts
                texts = []
            if max_bytes is not None and used >= max_bytes:
                break
    if texts:
        yield texts
