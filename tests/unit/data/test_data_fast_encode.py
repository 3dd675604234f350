"""The tiktoken fast path gives exactly the ids ``tokenizers`` gives, and falls back when it cannot."""

import json
import random
import sys

import numpy as np
import pytest
import tiktoken
from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers

from lmforge.data.config import PackConfig, TokenizerConfig
from lmforge.data.fast_encode import BYTE_LEVEL_SPLIT, DocumentEncoder, byte_to_unicode, convert
from lmforge.data.packing import pack_tokens
from lmforge.data.tokenizer import new_tokenizer, read_tokenizer, train_tokenizer
from lmforge.errors import DataError

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
from stdlib_samples import stdlib_sample  # noqa: E402

UNICODE = ("naïve café Ünïcödé straße ΑΒΓ δέκα русский текст 中文字符 日本語のテキスト 한국어 "
           "emoji 😀👍🏽 👨‍👩‍👧 flags 🇫🇷 math ∑∫√∞ ≠ ≤ arrows → ⇒ digits ٣٤٥ ४५६ ①②③ ½ ¾ ²³ "
           "combining é n̈ zero-width a\u200bb \u200d nbsp a\u00a0b ideographic\u3000space")
TRICKY = [
    "", " ", "  ", "\n", "\n\n\n", "\t\t x", "  \tx", "x  ", "x \n", " \n ", "\r\n\r\n", "a \u00a0 b",
    "don't can't I'm you're we've they'll he'd 'S 'T 'RE it''s '", "''s ' s", "'ll'll'd",
    "123 4567 89012345 3.14159 1e-10 0x1F 1_000_000 ٣٤٥", "abc123def 123abc",
    "<|endoftext|>", "a<|endoftext|>b", " <|endoftext|> ", "<|endoftext|><|endoftext|>", "<|endoftext",
    "def f(x):\n    return x ** 2  # comment\n\n\nclass A:\n\tpass\n",
    "    " * 50 + "x", " " * 1000, "-" * 1000, "=" * 401 + "a" * 401, "ab" * 600, "😀" * 300,
    "".join(chr(c) for c in range(32, 0x250)), UNICODE, "\x00\x01\x7f\x80\x9f", "\ufeffBOM", "\U0010fffd",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A byte-level BPE trained by lmforge on real code plus unicode text: its path and its tokenizer."""
    tmp = tmp_path_factory.mktemp("fast")
    texts = stdlib_sample(30, seed=3) + [UNICODE * 20, "don't I'm we'll " * 50, "😀👍🏽 " * 40, "-" * 500]
    docs = tmp / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    train_tokenizer(TokenizerConfig(vocab_size=1500), docs, tmp / "tokenizer.json")
    return tmp / "tokenizer.json", read_tokenizer(tmp / "tokenizer.json")


def tiktoken_of(path):
    conversion = convert(json.loads(path.read_text(encoding="utf-8")))
    assert conversion.reason is None
    return conversion.encoding


def hf_ids(tokenizer, texts):
    return [e.ids for e in tokenizer.encode_batch_fast(texts, add_special_tokens=False)]


def test_identical_ids_on_tricky_strings(trained):
    path, tokenizer = trained
    encoding = tiktoken_of(path)
    assert [encoding.encode_ordinary(t) for t in TRICKY] == hf_ids(tokenizer, TRICKY)
    # the text of the special token is text, as read_tokenizer's tokenizer encodes it
    assert 0 not in encoding.encode_ordinary("<|endoftext|>")
    assert len(tokenizer.get_vocab()) == 1500 and encoding.max_token_value == 1499


def test_identical_ids_on_random_strings(trained):
    path, tokenizer = trained
    encoding = tiktoken_of(path)
    rng = random.Random(0)
    alphabet = list(" \t\n\r'sdtmlvre0123456789_-=()[]{}:.,#\"\\") + list("aébßΩж中😀٣\u00a0\u3000\u200d")
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 600))) for _ in range(400)]
    assert [encoding.encode_ordinary(t) for t in texts] == hf_ids(tokenizer, texts)


def test_conversion_inverts_gpt2_byte_table(trained):
    path, _ = trained
    table = byte_to_unicode()
    assert len(set(table.values())) == 256 and table[ord("A")] == "A" and table[ord(" ")] == "Ġ"
    encoding = tiktoken_of(path)
    vocab = json.loads(path.read_text())["model"]["vocab"]
    for token, i in vocab.items():
        if i:  # not <|endoftext|>
            assert encoding.decode_single_token_bytes(i) == bytes({c: b for b, c in table.items()}[ch] for ch in token)
    assert encoding.special_tokens_set == {"<|endoftext|>"}


def tokenizer_json(tokenizer: Tokenizer) -> dict:
    return json.loads(tokenizer.to_str())


def test_rank_order_that_differs_from_merges_is_refused():
    """Merges b+c, a+b, ab+c: tokenizers splits "abc" as a|bc (no a+bc merge); ranking by id, tiktoken would
    join a and bc into abc. The converter must see that and fall back."""
    alphabet = byte_to_unicode()
    vocab = {"<|endoftext|>": 0, **{ch: i + 1 for i, ch in enumerate(alphabet.values())}}
    vocab.update({"bc": 257, "ab": 258, "abc": 259})
    hf = Tokenizer(models.BPE(vocab=vocab, merges=[("b", "c"), ("a", "b"), ("ab", "c")]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    assert hf.encode("abc").ids == [vocab["a"], 257]
    ranks = {bytes([b]): vocab[ch] for b, ch in alphabet.items()} | {b"bc": 257, b"ab": 258, b"abc": 259}
    naive = tiktoken.Encoding("naive", pat_str=BYTE_LEVEL_SPLIT, mergeable_ranks=ranks, special_tokens={})
    assert naive.encode_ordinary("abc") == [259]  # what an unchecked conversion would give
    conversion = convert(tokenizer_json(hf))
    assert conversion.encoding is None and "'ab' + 'c'" in conversion.reason and "rank order" in conversion.reason


def test_ids_out_of_merge_order_are_refused(trained):
    path, _ = trained
    tj = json.loads(path.read_text())
    first, second = (a + b for a, b in tj["model"]["merges"][:2])
    vocab = tj["model"]["vocab"]
    vocab[first], vocab[second] = vocab[second], vocab[first]
    assert "do not increase in merge order" in convert(tj).reason


@pytest.mark.parametrize("change, reason", [
    (lambda t: setattr(t, "normalizer", normalizers.NFKC()), "normalizer (NFKC)"),
    (lambda t: setattr(t, "normalizer", normalizers.Lowercase()), "normalizer (Lowercase)"),
    (lambda t: setattr(t, "pre_tokenizer", pre_tokenizers.Whitespace()), "pre-tokenizer is Whitespace"),
    (lambda t: setattr(t, "pre_tokenizer", pre_tokenizers.ByteLevel(add_prefix_space=True)), "prefix space"),
    (lambda t: setattr(t, "pre_tokenizer", pre_tokenizers.ByteLevel(use_regex=False)), "use_regex=False"),
    (lambda t: t.add_tokens([AddedToken("hello world", special=False)]), "not special"),
    (lambda t: t.enable_truncation(16), "truncation"),
])
def test_fallback_to_tokenizers_with_the_reason(trained, tmp_path, change, reason):
    """A tokenizer whose steps tiktoken does not have packs through tokenizers, into the same shards."""
    path, _ = trained
    tokenizer = Tokenizer.from_file(str(path))
    change(tokenizer)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    assert reason in convert(tokenizer_json(tokenizer)).reason
    docs = tmp_path / "docs.jsonl"
    texts = ["Hello World, hello world!\n", "x = 1  # ü\n" * 20]
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    index = pack_tokens(tmp_path / "tokenizer.json", docs, tmp_path / "packed", PackConfig())
    assert index["encoder"] == "tokenizers" and reason in index["encoder_fallback"]
    expected = []
    for ids in hf_ids(read_tokenizer(tmp_path / "tokenizer.json"), texts):
        expected += ids + [0]
    assert np.fromfile(tmp_path / "packed" / "shard_00000.bin", dtype="<u2").tolist() == expected


def test_not_bpe_falls_back():
    wordlevel = Tokenizer(models.WordLevel(vocab={"<unk>": 0, "a": 1}, unk_token="<unk>"))
    assert convert(tokenizer_json(wordlevel)).reason == "model is 'WordLevel', not BPE"
    bpe = new_tokenizer()  # untrained: no byte symbols in its vocabulary
    assert "lacks the byte symbol" in convert(tokenizer_json(bpe)).reason


def test_special_tokens_encoded_as_special_fall_back(trained):
    path, _ = trained
    tokenizer = read_tokenizer(path)
    tokenizer.encode_special_tokens = False
    encoder = DocumentEncoder(path, tokenizer, 0, np.dtype("<u2"), threads=2)
    encoder.close()
    assert encoder.route == "tokenizers" and "encoded as special tokens" in encoder.reason


@pytest.mark.parametrize("batch_documents", [1, 7, 1024])
def test_packed_shards_byte_identical_to_tokenizers(trained, tmp_path, batch_documents):
    path, tokenizer = trained
    texts = stdlib_sample(12, seed=5) + TRICKY[1:]  # not the empty text: the JSONL reader keeps it anyway
    texts.append("")
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    cfg = PackConfig(shard_tokens=1024, batch_documents=batch_documents)
    fast = pack_tokens(path, docs, tmp_path / "fast", cfg)
    slow = pack_tokens(path, docs, tmp_path / "slow", cfg, encoder="tokenizers")
    assert (fast["encoder"], slow["encoder"], slow["encoder_fallback"]) == ("tiktoken", "tokenizers", "asked for")
    assert "encoder_fallback" not in fast
    assert fast["shards"] == slow["shards"] and len(fast["shards"]) > 3
    for shard in fast["shards"]:
        assert (tmp_path / "fast" / shard["file"]).read_bytes() == (tmp_path / "slow" / shard["file"]).read_bytes()
    expected = []
    for ids in hf_ids(tokenizer, texts):
        expected += ids + [0]
    stream = np.concatenate([np.fromfile(tmp_path / "fast" / s["file"], dtype="<u2") for s in fast["shards"]])
    assert stream.tolist() == expected


@pytest.mark.parametrize("encoder", ["auto", "tokenizers"])
def test_lone_surrogate_is_a_clear_error(trained, tmp_path, encoder):
    path, _ = trained
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"text": "fine"}\n{"text": "bad \\ud800 half"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"docs.jsonl:2: text is not valid Unicode \(a lone surrogate\)"):
        pack_tokens(path, docs, tmp_path / "out", PackConfig(), encoder=encoder)
    assert not (tmp_path / "out").exists()
