import json
import random

import pytest

from lmforge.data.config import DataConfig, SourceConfig
from lmforge.data.curate import curate, split_score
from lmforge.errors import DataError


def write_jsonl(path, texts, extra_lines=()):
    lines = [json.dumps({"text": t}, ensure_ascii=False) for t in texts] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def config(path, **kw):
    return DataConfig(sources=[SourceConfig(kind="jsonl", path=str(path))], min_chars=4, **kw)


def read_split(out, name):
    return [json.loads(line) for line in (out / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]


def corpus(n):
    return [f"document number {i} with some words" for i in range(n)]


def test_stats_exact_on_small_corpus(tmp_path):
    texts = ["first doc", "second ✓ doc", "abc", "first doc", "fourth\r\ndoc", "fifth doc"]
    path = write_jsonl(tmp_path / "in.jsonl", texts, extra_lines=["{broken"])
    out = tmp_path / "out"
    stats = curate(config(path, val_fraction=0.5, max_skip_fraction=0.2), seed=1, out_dir=out)

    assert stats == json.loads((out / "stats.json").read_text())
    assert stats["documents_read"] == 6
    assert stats["bytes_read"] == sum(len(t.encode()) for t in texts)
    assert stats["skipped"] == {"invalid_json": 1}
    assert stats["sources"][0]["documents"] == 6
    steps = {s["name"]: s for s in stats["steps"]}
    assert [s["name"] for s in stats["steps"]] == ["normalize", "strip_control", "length", "dedup_exact"]
    assert steps["strip_control"]["changed"] == 1
    assert steps["strip_control"]["bytes_out"] == steps["strip_control"]["bytes_in"] - 1
    assert (steps["length"]["documents_out"], steps["length"]["dropped"]) == (5, {"too_short": 1})
    assert (steps["dedup_exact"]["documents_out"], steps["dedup_exact"]["dropped"]) == (4, {"duplicate": 1})

    kept = ["first doc", "second ✓ doc", "fourth\ndoc", "fifth doc"]
    train, val = read_split(out, "train"), read_split(out, "val")
    assert sorted(r["text"] for r in train + val) == sorted(kept)
    assert {r["id"] for r in train + val} == {"in.jsonl:1", "in.jsonl:2", "in.jsonl:5", "in.jsonl:6"}
    assert all(r["source"] == f"jsonl:{path}" for r in train + val)
    for name, rows in (("train", train), ("val", val)):
        split = stats["splits"][name]
        assert split["documents"] == len(rows)
        assert split["bytes"] == sum(len(r["text"].encode()) for r in rows)
        assert split["characters"] == sum(len(r["text"]) for r in rows)
    assert [r["text"] for r in train] == ["first doc"]  # the only one with split_score(text, 1) >= 0.5
    assert {r["text"] for r in val} == {t for t in kept if split_score(t, 1) < 0.5}
    assert sorted(p.name for p in out.iterdir()) == ["stats.json", "train.jsonl", "val.jsonl"]


def val_texts(tmp_path, texts, seed, name):
    path = write_jsonl(tmp_path / f"{name}.jsonl", texts)
    curate(config(path, val_fraction=0.2), seed=seed, out_dir=tmp_path / name)
    return {r["text"] for r in read_split(tmp_path / name, "val")}


def test_split_depends_on_seed_not_on_order(tmp_path):
    texts = corpus(200)
    shuffled = random.Random(0).sample(texts, len(texts))
    a = val_texts(tmp_path, texts, seed=7, name="a")
    b = val_texts(tmp_path, shuffled, seed=7, name="b")
    c = val_texts(tmp_path, texts, seed=8, name="c")
    assert a == b
    assert a != c
    assert 20 <= len(a) <= 60  # about 0.2 * 200
    assert a == {t for t in texts if split_score(t, 7) < 0.2}


@pytest.mark.parametrize("fraction", [0.001, 0.999])
def test_each_split_gets_a_document_even_at_extreme_fractions(tmp_path, fraction):
    texts = corpus(3)
    train_sets = set()
    for order in (texts, texts[::-1]):
        path = write_jsonl(tmp_path / "in.jsonl", order)
        stats = curate(config(path, val_fraction=fraction), seed=0, out_dir=tmp_path / "out")
        docs = stats["splits"]
        assert docs["train"]["documents"] >= 1 and docs["val"]["documents"] >= 1
        assert docs["train"]["documents"] + docs["val"]["documents"] == 3
        train_sets.add(frozenset(r["text"] for r in read_split(tmp_path / "out", "train")))
    assert len(train_sets) == 1  # the rescued document does not depend on the order


def test_empty_after_filtering_is_an_error_and_writes_nothing(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", ["ab", "abc", "x"], extra_lines=["nope"])
    out = tmp_path / "out"
    with pytest.raises(DataError) as err:
        curate(config(path, max_skip_fraction=0.5), seed=0, out_dir=out)
    assert str(err.value) == (
        "no documents left after filtering: 3 read, skipped: invalid_json=1, dropped: too_short=3"
    )
    assert not out.exists() or list(out.iterdir()) == []


def test_too_many_unusable_records_fail_loudly(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", corpus(8), extra_lines=["{bad", '{"other": 1}'])
    with pytest.raises(DataError) as err:
        curate(config(path), seed=0, out_dir=tmp_path / "out")  # 2 of 10 > 0.1
    assert str(err.value) == (
        "data.sources[0]: 2 of 10 files or records were unusable (invalid_json=1, missing_field=1), "
        "more than data.max_skip_fraction=0.1"
    )
    assert list((tmp_path / "out").iterdir()) == []
    stats = curate(config(path, max_skip_fraction=0.2), seed=0, out_dir=tmp_path / "out")
    assert stats["skipped"] == {"invalid_json": 1, "missing_field": 1}


def test_a_single_document_cannot_be_split(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", ["only one document"])
    with pytest.raises(DataError, match="only 1 document left after filtering"):
        curate(config(path), seed=0, out_dir=tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_max_documents_caps_after_filtering(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", ["x"] + corpus(10))
    stats = curate(config(path, max_documents=4), seed=0, out_dir=tmp_path / "out")
    assert stats["splits"]["train"]["documents"] + stats["splits"]["val"]["documents"] == 4
    assert stats["steps"][2]["dropped"] == {"too_short": 1}


def test_bad_source_path_fails_before_writing(tmp_path):
    cfg = DataConfig(sources=[SourceConfig(kind="python-stdlib"), SourceConfig(kind="text", path="/no/such")])
    with pytest.raises(DataError, match=r"^data\.sources\[1\]\.path: no such file or directory: /no/such$"):
        curate(cfg, seed=0, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()
