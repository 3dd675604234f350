import json

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from lmforge.data.config import PackConfig, TokenizerConfig
from lmforge.data.packing import TokenShards, pack_tokens, token_dtype
from lmforge.data.tokenizer import EOS_TOKEN, new_tokenizer, train_tokenizer
from lmforge.errors import DataError

DOCS = [f"def function_{i}(x):\n    return x * {i} + {'ü' * (i % 3)}  # <|endoftext|>\n" * 3 for i in range(40)]


def write_jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pack")
    docs = write_jsonl(tmp / "docs.jsonl", DOCS)
    tokenizer = train_tokenizer(TokenizerConfig(vocab_size=300), docs, tmp / "tokenizer.json")
    tokenizer.encode_special_tokens = True
    eos = tokenizer.token_to_id(EOS_TOKEN)
    stream = []
    for text in DOCS:
        stream += tokenizer.encode(text, add_special_tokens=False).ids + [eos]
    return tmp, docs, np.array(stream, dtype=np.int64)


def test_eos_after_every_document_and_index(setup):
    tmp, docs, stream = setup
    index = pack_tokens(tmp / "tokenizer.json", docs, tmp / "big", PackConfig())
    assert index["dtype"] == "uint16" and index["eos_id"] == 0 and index["vocab_size"] == 300
    assert index["num_documents"] == len(DOCS)
    assert index["num_bytes"] == sum(len(t.encode()) for t in DOCS)
    assert index["num_tokens"] == len(stream) and len(index["shards"]) == 1
    tokens = np.fromfile(tmp / "big" / "shard_00000.bin", dtype="<u2").astype(np.int64)
    assert np.array_equal(tokens, stream)
    # one EOS per document (the literal "<|endoftext|>" in the text is encoded as text), and last
    assert (tokens == 0).sum() == len(DOCS) and tokens[-1] == 0
    assert json.loads((tmp / "big" / "index.json").read_text()) == index


def test_shard_boundaries_and_windows(setup):
    tmp, docs, stream = setup
    assert len(stream) > 2 * 1024
    pack_tokens(tmp / "tokenizer.json", docs, tmp / "small", PackConfig(shard_tokens=1024, batch_documents=7))
    shards = TokenShards(tmp / "small")
    sizes = [len(s) for s in shards.shards]
    assert sizes[:-1] == [1024] * (len(sizes) - 1) and sum(sizes) == len(stream) == shards.num_tokens
    assert np.array_equal(np.concatenate([np.asarray(s) for s in shards.shards]), stream)
    shards.verify()

    seq = 100
    per_shard = [(n - 1) // seq for n in sizes]  # 1024 tokens -> 10 windows of 101 tokens
    assert per_shard[0] == 10 and shards.num_windows(seq) == sum(per_shard)
    np.testing.assert_array_equal(shards.window(0, seq), stream[0:101])
    np.testing.assert_array_equal(shards.window(9, seq), stream[900:1001])
    np.testing.assert_array_equal(shards.window(10, seq), stream[1024:1125])  # first window of shard 1
    last = shards.num_windows(seq) - 1
    start = sum(sizes[:-1]) + (per_shard[-1] - 1) * seq
    np.testing.assert_array_equal(shards.window(last, seq), stream[start : start + seq + 1])
    assert shards.window(3, seq).dtype == np.int64
    batch = shards.windows([10, 0, 9], seq)
    assert batch.shape == (3, 101)
    np.testing.assert_array_equal(batch[0], stream[1024:1125])
    with pytest.raises(IndexError):
        shards.window(last + 1, seq)
    assert shards.num_windows(1023) == sum(1 for n in sizes if n > 1023)


def test_truncated_or_missing_shard_is_a_data_error(setup, tmp_path):
    tmp, docs, _ = setup
    out = tmp_path / "tokens"
    pack_tokens(tmp / "tokenizer.json", docs, out, PackConfig(shard_tokens=1024))
    shard = out / "shard_00001.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(DataError, match=r"shard_00001\.bin: truncated or corrupt token shard: 2046 bytes"):
        TokenShards(out)
    shard.unlink()
    with pytest.raises(DataError, match=r"shard_00001\.bin: token shard missing"):
        TokenShards(out)
    (out / "index.json").write_text("{")
    with pytest.raises(DataError, match=r"index\.json: not valid JSON"):
        TokenShards(out)


def test_no_leftovers_on_success_or_failure(setup, tmp_path):
    tmp, docs, _ = setup
    pack_tokens(tmp / "tokenizer.json", docs, tmp_path / "ok", PackConfig(shard_tokens=1024))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"no_text": 1}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not a JSON record with a 'text' field"):
        pack_tokens(tmp / "tokenizer.json", bad, tmp_path / "failed", PackConfig())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "ok"]
    assert all(".tmp-" not in p.name for p in (tmp_path / "ok").iterdir())
    # repacking replaces the folder as a whole
    pack_tokens(tmp / "tokenizer.json", docs, tmp_path / "ok", PackConfig())
    assert sorted(p.name for p in (tmp_path / "ok").iterdir()) == ["index.json", "shard_00000.bin"]


def test_dtype_choice_and_uint32_shards(tmp_path):
    assert token_dtype(65536) == np.dtype("<u2") and token_dtype(65537) == np.dtype("<u4")
    # A byte-level tokenizer with 70,000 entries whose byte tokens sit above 65535: ids need uint32.
    base = new_tokenizer()
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    pads = [f"<pad{i}>" for i in range(70_000 - 1 - len(alphabet))]
    vocab = {token: i for i, token in enumerate([EOS_TOKEN, *pads, *alphabet])}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer, tokenizer.decoder = base.pre_tokenizer, base.decoder
    tokenizer.add_special_tokens([EOS_TOKEN])
    tokenizer.save(str(tmp_path / "big.json"))
    assert min(vocab[c] for c in "abc") > 65535
    docs = write_jsonl(tmp_path / "d.jsonl", ["ab", "c"])
    index = pack_tokens(tmp_path / "big.json", docs, tmp_path / "out", PackConfig())
    assert index["dtype"] == "uint32" and index["vocab_size"] == 70_000
    shards = TokenShards(tmp_path / "out")
    expected = [vocab["a"], vocab["b"], 0, vocab["c"], 0]
    assert np.asarray(shards.shards[0]).tolist() == expected
    assert (tmp_path / "out" / "shard_00000.bin").stat().st_size == 5 * 4
    np.testing.assert_array_equal(shards.window(0, 4), expected)
