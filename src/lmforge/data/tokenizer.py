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


def read_tokenizer(path: Path) -> Tokenizer:
    """Any ``tokenizer.json``: lmforge's, or a Hugging Face folder's with its own special tokens."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"tokenizer file not found: {path}")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:  # the library raises plain Exception for any parse error
        raise DataError(f"{path}: not a valid tokenizer file: {str(e).splitlines()[0]}") from None
    # not saved in tokenizer.json: a literal "<|endoftext|>" in text is text, never the EOS token
    tokenizer.encode_special_tokens = True
    return tokenizer


def load_tokenizer(path: Path) -> Tokenizer:
    """lmforge's own tokenizer (``<|endoftext|>`` required)."""
    tokenizer = read_tokenizer(path)
    if tokenizer.token_to_id(EOS_TOKEN) is None:
        raise DataError(f"{path}: tokenizer has no {EOS_TOKEN} token")
    return tokenizer


def end_of_text_id(path: Path, tokenizer: Tokenizer) -> int | None:
    """The id that ends a document for the tokenizer saved at ``path``: lmforge's ``<|endoftext|>``, else the
    ``eos_token`` of the ``tokenizer_config.json`` beside it, else the ``eos_token_id`` of a ``config.json``
    there (a Hugging Face folder); None when nothing names one."""
    eos = tokenizer.token_to_id(EOS_TOKEN)
    if eos is not None:
        return eos
    folder = Path(path).parent
    token = _json_key(folder / "tokenizer_config.json", "eos_token")
    if isinstance(token, dict):  # {"content": "</s>", ...}
        token = token.get("content")
    if isinstance(token, str) and tokenizer.token_to_id(token) is not None:
        return tokenizer.token_to_id(token)
    for name in ("generation_config.json", "config.json"):
        ids = _json_key(folder / name, "eos_token_id")
        ids = ids[0] if isinstance(ids, list) and ids else ids
        if isinstance(ids, int) and 0 <= ids < tokenizer.get_vocab_size(with_added_tokens=True):
            return ids
    return None


class ForeignTokenizer:
    """Another model's ``tokenizers.Tokenizer`` (a Hugging Face folder's) with the end-of-text id that model
    uses (``</s>``, ...), where lmforge's code looks for ``<|endoftext|>``: ``eos_id``. Everything else is the
    wrapped tokenizer's."""

    def __init__(self, tokenizer: Tokenizer, eos_id: int | None):
        self._tokenizer, self.eos_id = tokenizer, eos_id

    def __getattr__(self, name: str):
        return getattr(self._tokenizer, name)


def model_tokenizer(path: Path) -> Tokenizer | ForeignTokenizer:
    """The tokenizer saved at ``path`` as a model reads it: lmforge's as it is, another's with its ``eos_id``."""
    tokenizer = read_tokenizer(path)
    if tokenizer.token_to_id(EOS_TOKEN) is not None:
        return tokenizer
    return ForeignTokenizer(tokenizer, end_of_text_id(path, tokenizer))


def eos_id_of(tokenizer) -> int | None:
    """The end-of-text id of a tokenizer from ``model_tokenizer`` (or ``load_tokenizer``)."""
    return tokenizer.eos_id if isinstance(tokenizer, ForeignTokenizer) else tokenizer.token_to_id(EOS_TOKEN)


def _json_key(path: Path, key: str):
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get(key) if isinstance(data, dict) else None


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


def tokenizer_digest(path: Path | None) -> str | None:
    """The SHA-256 of a tokenizer file (two models read the same tokens when theirs are equal); None: no file."""
    import hashlib

    return None if path is None else hashlib.sha256(Path(path).read_bytes()).hexdigest()


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def keep_tokenizer(tokenizer_json: Path, folder: Path, eos_id: int) -> None:
    """Copy another model's tokenizer files beside ``tokenizer_json`` into ``folder`` (a stage's ``tokenizer/``,
    where ``checkpoint.load.model_tokenizer_path`` finds it for the models the stage writes), naming its
    end-of-text token in ``tokenizer_config.json`` when only the model's ``config.json`` named it."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (Path(tokenizer_json).parent / name).is_file():
            shutil.copyfile(Path(tokenizer_json).parent / name, folder / name)
    tokenizer = read_tokenizer(folder / "tokenizer.json")
    if end_of_text_id(folder / "tokenizer.json", tokenizer) == eos_id:
        return
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    atomic_write_text(config_file, json.dumps({**config, "eos_token": tokenizer.id_to_token(eos_id)}, indent=2))
