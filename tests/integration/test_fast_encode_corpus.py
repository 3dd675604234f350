"""The tiktoken fast path on the whole default corpus: every document of the built-in recipe's curated data
(train and validation), encoded with the tokenizer the default run trains, gets exactly the ids of
``tokenizers``; so does every Unicode character in a few contexts."""

import json

import numpy as np
import pytest

from lmforge.core import progress
from lmforge.data import curate, pack_tokens, train_tokenizer
from lmforge.data.fast_encode import convert
from lmforge.data.tokenizer import EOS_ID, read_tokenizer
from lmforge.recipe import load_recipe

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def default_corpus(tmp_path_factory):
    """The default recipe's curated documents and the tokenizer its run trains on them."""
    tmp = tmp_path_factory.mktemp("corpus")
    cfg = load_recipe(None)
    enabled = progress._enabled
    progress.set_enabled(False)
    try:
        curate(cfg.data, cfg.seed, tmp / "data")
        train_tokenizer(cfg.tokenizer, tmp / "data" / "train.jsonl", tmp / "tokenizer.json")
    finally:
        progress.set_enabled(enabled)
    return tmp, cfg


def documents(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_every_document_of_the_default_corpus_gets_tokenizers_ids(default_corpus):
    tmp, cfg = default_corpus
    tokenizer = read_tokenizer(tmp / "tokenizer.json")
    conversion = convert(json.loads((tmp / "tokenizer.json").read_text(encoding="utf-8")))
    assert conversion.reason is None
    docs = documents(tmp / "data" / "train.jsonl") + documents(tmp / "data" / "val.jsonl")
    assert len(docs) > 1000
    texts = [d["text"] for d in docs]
    expected = [e.ids for e in tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
    got = conversion.encoding.encode_ordinary_batch(texts, num_threads=2)
    differing = [d["id"] for d, a, b in zip(docs, got, expected) if a != b]
    assert differing == [], f"{len(differing)} of {len(docs)} documents differ, e.g. {differing[:5]}"
    # and the packed validation shards are those ids, each document followed by <|endoftext|>
    index = pack_tokens(tmp / "tokenizer.json", tmp / "data" / "val.jsonl", tmp / "val", cfg.pack)
    assert index["encoder"] == "tiktoken"
    stream = np.concatenate([np.fromfile(tmp / "val" / s["file"], dtype="<u2") for s in index["shards"]])
    val_ids = expected[-index["num_documents"]:]
    assert stream.tolist() == [i for ids in val_ids for i in ids + [EOS_ID]]


def test_every_code_point_gets_tokenizers_ids(default_corpus):
    """Each character after a letter, a digit, a space and itself: the two libraries' Unicode tables
    (letters, numbers, whitespace) split it alike. Planes 0-3 and 14; not surrogates, nor planes 4-13
    (unassigned in every Unicode version so far) or 15-16 (private use: never a letter, digit or space)."""
    tmp, _ = default_corpus
    tokenizer = read_tokenizer(tmp / "tokenizer.json")
    encoding = convert(json.loads((tmp / "tokenizer.json").read_text(encoding="utf-8"))).encoding
    points = [*range(0xD800), *range(0xE000, 0x40000), *range(0xE0000, 0xF0000)]
    chars = [chr(c) for c in points]
    texts = ["".join(f"a{c}1{c} {c}{c}\n" for c in chars[i:i + 4096]) for i in range(0, len(chars), 4096)]
    expected = [e.ids for e in tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
    got = encoding.encode_ordinary_batch(texts, num_threads=2)
    differing = [hex(ord(texts[i][1])) for i in range(len(texts)) if got[i] != expected[i]]
    assert differing == [], f"blocks starting at {differing[:5]} differ"
