import json

import pytest

from lmforge.data.config import TokenizerConfig
from lmforge.data.tokenizer import EOS_TOKEN, _batched_texts, load_tokenizer, train_tokenizer
from lmforge.errors import DataError

SAMPLES = [
    "def add(a, b):\n    return a + b  # sum\n",
    "class Foo:\r\n\tpass\n\n\n    \n",
    "héllo wörld — naïve café, 日本語のテキスト, emoji 😀👍🏽, math ∑∫√",
    "  leading spaces and trailing  ",
    "mixed\x00nul and \u200b zero width and <|endoftext|> literal",
]


def write_jsonl(path, texts):
    path.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(texts)))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tok")
    data = write_jsonl(tmp / "train.jsonl", SAMPLES * 10)
    tokenizer = train_tokenizer(TokenizerConfig(vocab_size=300, min_frequency=2), data, tmp / "tokenizer.json")
    return tmp, tokenizer


def test_vocab_size_and_layout(trained):
    _, tokenizer = trained
    assert tokenizer.get_vocab_size() == 300
    assert tokenizer.token_to_id(EOS_TOKEN) == 0
    byte_tokens = [tokenizer.id_to_token(i) for i in range(1, 257)]
    assert len(set(byte_tokens)) == 256 and all(len(t) == 1 for t in byte_tokens)


def test_round_trip_from_saved_file(trained):
    tmp, _ = trained
    tokenizer = load_tokenizer(tmp / "tokenizer.json")
    unseen = "¿Qué? Ünïcödé ₿ 🚀\nx = [i ** 2 for i in range(10)]\t# comment\r\n"
    for text in SAMPLES + [unseen, "", " ", "\n\n"]:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        assert tokenizer.decode(ids, skip_special_tokens=False) == text
    assert len(tokenizer.encode(SAMPLES[0]).ids) < len(SAMPLES[0].encode())  # merges were learned


def test_training_is_deterministic(trained, tmp_path):
    tmp, tokenizer = trained
    again = train_tokenizer(TokenizerConfig(vocab_size=300), tmp / "train.jsonl", tmp_path / "t.json")
    assert again.to_str() == tokenizer.to_str()
    assert (tmp_path / "t.json").read_text() == (tmp / "tokenizer.json").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]  # no temporary files left


def test_max_train_bytes_caps_on_a_character_boundary(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", ["aaaa", "ééé", "zzzz"])  # 4 + 6 + 4 bytes
    batches = list(_batched_texts(data, max_bytes=7, on_line=lambda n: None, batch=2))
    assert batches == [["aaaa", "é"]]  # 4 bytes + one whole 2-byte character of the next text
    assert list(_batched_texts(data, None, lambda n: None, batch=2)) == [["aaaa", "ééé"], ["zzzz"]]


def test_load_missing_or_corrupt_tokenizer(tmp_path):
    with pytest.raises(DataError, match="tokenizer file not found"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"version": "1.0", "model": ')
    with pytest.raises(DataError, match=r"bad\.json: not a valid tokenizer file") as err:
        load_tokenizer(tmp_path / "bad.json")
    assert "\n" not in str(err.value)
