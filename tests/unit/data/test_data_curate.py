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


# Rule sets off and no near-duplicate removal: these tests are about reading, counting and splitting
# (the tiny texts here fail the prose rules, and "document number 3 ..." is a near-duplicate of "... 4 ...").
RULES_OFF = {name: {"apply_to": "none"} for name in ("gopher_quality", "gopher_repetition", "c4", "fineweb", "code")}


def config(path, **kw):
    settings = {"min_chars": 4, "quality": RULES_OFF, "minhash": {"enabled": False}, "report": False, "workers": 1,
                **kw}
    return DataConfig(sources=[SourceConfig(kind="jsonl", path=str(path))], **settings)


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
    assert [s["name"] for s in stats["steps"]] == ["normalize", "strip_control", "length", "pii", "dedup_exact"]
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
    assert sorted(p.name for p in out.iterdir()) == ["skipped.jsonl", "stats.json", "train.jsonl", "val.jsonl"]
    assert [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()] == [
        {"source": 0, "file": "in.jsonl", "line": 7, "reason": "invalid_json"}]


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
        "more than data.max_skip_fraction=0.1; the first: in.jsonl:9 (invalid_json)"
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


def test_corrupt_corpus_gives_the_clean_subset_and_logs_each_bad_record(tmp_path):
    import gzip

    clean = [f"clean record number {i} with enough words" for i in range(40)]
    folder = tmp_path / "corrupt"
    folder.mkdir()
    lines = [json.dumps({"text": t}).encode() for t in clean[:20]]
    lines[3:3] = [b"{not json", b'{"text": "bad \xff utf8"}', b'{"text": "nul \x00 byte"}', b'{"body": "no text"}']
    (folder / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    member = gzip.compress(b"".join(json.dumps({"text": t}).encode() + b"\n" for t in clean[20:]))
    (folder / "b.jsonl.gz").write_bytes(member + gzip.compress(b'{"text": "lost in the cut"}\n' * 50)[:30])
    clean_path = write_jsonl(tmp_path / "clean.jsonl", clean)

    source = SourceConfig(kind="jsonl", path=str(folder), pattern="*.jsonl*")
    settings = {"min_chars": 4, "quality": RULES_OFF, "minhash": {"enabled": False}, "report": False,
                "max_skip_fraction": 0.2}
    stats = curate(DataConfig(sources=[source], **settings), seed=5, out_dir=tmp_path / "out")
    curate(DataConfig(sources=[SourceConfig(kind="jsonl", path=str(clean_path))], **settings), seed=5,
           out_dir=tmp_path / "ref")
    for name in ("train", "val"):
        assert [r["text"] for r in read_split(tmp_path / "out", name)] == \
            [r["text"] for r in read_split(tmp_path / "ref", name)]
    assert stats["skipped"] == {"invalid_json": 1, "invalid_utf8": 1, "nul_byte": 1, "missing_field": 1,
                                "truncated_gzip": 1}
    logged = [json.loads(line) for line in (tmp_path / "out" / "skipped.jsonl").read_text().splitlines()]
    assert [(r["file"], r["line"], r["reason"]) for r in logged] == [
        ("a.jsonl", 4, "invalid_json"), ("a.jsonl", 5, "invalid_utf8"), ("a.jsonl", 6, "nul_byte"),
        ("a.jsonl", 7, "missing_field"), ("b.jsonl.gz", 21, "truncated_gzip")]
    with pytest.raises(DataError, match=r"5 of 45 files or records were unusable .* the first: a.jsonl:4"):
        curate(DataConfig(sources=[source], **{**settings, "max_skip_fraction": 0.1}), seed=5, out_dir=tmp_path / "x")


def test_report_summary_and_histogram(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", corpus(30) + ["mail me at someone@example.org please"])
    stats = curate(config(path, report=True), seed=0, out_dir=tmp_path / "out")
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| pii | 31 | 31 |" in summary and "email: 1" in summary
    assert "![document lengths before and after](length_histogram.png)" in summary
    assert (tmp_path / "out" / "length_histogram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sum(stats["lengths"]["read"]) == 31 and sum(stats["lengths"]["kept"]) == 31


def test_progress_bar_per_step_with_documents_per_second(tmp_path, capsys):
    from lmforge.core import progress

    path = write_jsonl(tmp_path / "in.jsonl", corpus(20))
    was = progress.is_enabled()
    progress.set_enabled(True)
    try:
        curate(config(path), seed=0, out_dir=tmp_path / "out")
    finally:
        progress.set_enabled(was)
    err = capsys.readouterr().err
    for step in ("read", "normalize", "strip_control", "length", "pii", "dedup", "write"):
        assert step in err
    assert "docs/s" in err
