import gzip
import json

import pytest
from pydantic import ValidationError

from lmforge.data.config import DataConfig, SourceConfig
from lmforge.data.readers import SourceStats, read_source
from lmforge.errors import DataError


def read(source: SourceConfig, index: int = 0):
    stats = SourceStats()
    docs = list(read_source(index, source, stats))
    return docs, stats


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("alpha text")
    (tmp_path / "sub" / "b.txt").write_text("beta ünïcode")
    (tmp_path / "sub" / "c.py").write_text("print('c')\n")
    (tmp_path / "bin.txt").write_bytes(b"abc\x00def")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / ".hidden.txt").write_text("hidden")
    return tmp_path


def test_text_directory_one_document_per_file_bad_files_counted(tree):
    docs, stats = read(SourceConfig(kind="text", path=str(tree)))
    assert [d.id for d in docs] == ["a.txt", "sub/b.txt", "sub/c.py"]
    assert docs[1].text == "beta ünïcode"
    assert docs[0].source == f"text:{tree}"
    assert stats.documents == 3
    assert stats.bytes == len(b"alpha text") + len("beta ünïcode".encode()) + len(b"print('c')\n")
    assert stats.skipped == {"binary": 1, "invalid_utf8": 1}


def test_files_with_pattern_and_glob_path(tree):
    docs, _ = read(SourceConfig(kind="files", path=str(tree), pattern="**/*.py"))
    assert [(d.id, d.text) for d in docs] == [("sub/c.py", "print('c')\n")]
    docs, stats = read(SourceConfig(kind="files", path=str(tree / "**" / "*.txt")))
    assert [d.id for d in docs] == ["a.txt", "sub/b.txt"]  # ids relative to the folder before the glob
    assert stats.skipped == {"binary": 1, "invalid_utf8": 1}


def test_single_file_and_max_documents(tree):
    docs, _ = read(SourceConfig(kind="text", path=str(tree / "sub" / "b.txt")))
    assert [(d.id, d.text) for d in docs] == [("b.txt", "beta ünïcode")]
    docs, stats = read(SourceConfig(kind="text", path=str(tree), max_documents=2))
    assert [d.id for d in docs] == ["a.txt", "sub/b.txt"]
    assert stats.documents == 2


def test_jsonl_records_and_bad_lines_counted_by_reason(tmp_path):
    lines = [
        json.dumps({"content": "first"}).encode(),
        b"{not json",
        json.dumps({"other": "x"}).encode(),
        json.dumps({"content": 3}).encode(),
        json.dumps(["content"]).encode(),
        b"   ",
        b'{"content": "caf\xe9"}',
        b'{"content": "lone \\ud800 surrogate"}',
        json.dumps({"content": "last\nline ✓"}, ensure_ascii=False).encode(),
    ]
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    docs, stats = read(SourceConfig(kind="jsonl", path=str(path), field="content"))
    assert [(d.id, d.text) for d in docs] == [("d.jsonl:1", "first"), ("d.jsonl:9", "last\nline ✓")]
    assert stats.skipped == {"invalid_json": 1, "missing_field": 2, "field_not_string": 1, "invalid_utf8": 2}
    assert stats.documents == 2
    assert stats.bytes == len("first".encode()) + len("last\nline ✓".encode())


def test_jsonl_gzip_and_corrupt_gzip(tmp_path):
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(b'{"text": "zipped"}\n'))
    (tmp_path / "b.jsonl.gz").write_bytes(b"not gzip at all")
    docs, stats = read(SourceConfig(kind="jsonl", path=str(tmp_path), pattern="*.jsonl.gz"))
    assert [(d.id, d.text) for d in docs] == [("a.jsonl.gz:1", "zipped")]
    assert stats.skipped == {"invalid_gzip": 1}


def test_python_stdlib_sorted_py_files_without_site_packages():
    docs, stats = read(SourceConfig(kind="python-stdlib", max_documents=5))
    ids = [d.id for d in docs]
    assert len(ids) == 5 and ids == sorted(ids)
    assert all(i.endswith(".py") and "site-packages" not in i for i in ids)
    assert {d.source for d in docs} == {"python-stdlib"}
    assert stats.documents == 5


def test_missing_path_and_empty_glob_name_the_key(tmp_path):
    with pytest.raises(DataError, match=r"^data\.sources\[2\]\.path: no such file or directory: .*/nope$"):
        read_source(2, SourceConfig(kind="text", path=str(tmp_path / "nope")), SourceStats())
    with pytest.raises(DataError, match=r"^data\.sources\[0\]\.path: no files match pattern '\*\.md'"):
        read_source(0, SourceConfig(kind="files", path=str(tmp_path), pattern="*.md"), SourceStats())
    with pytest.raises(DataError, match=r"^data\.sources\[1\]\.path: no files match the glob pattern"):
        read_source(1, SourceConfig(kind="files", path=str(tmp_path / "*.md")), SourceStats())


def _problems(make) -> list[tuple[tuple, str]]:
    with pytest.raises(ValidationError) as exc:
        make()
    return [(e["loc"], e["msg"]) for e in exc.value.errors()]


def test_config_requires_path_except_for_stdlib():
    stdlib = SourceConfig(kind="python-stdlib")
    assert _problems(lambda: SourceConfig(kind="text")) == [
        (("path",), "Value error, a path (file, directory or glob pattern) is required for kind 'text'")]
    assert _problems(lambda: SourceConfig(kind="python-stdlib", path="/x")) == [
        (("path",), "Value error, kind 'python-stdlib' takes no path (it reads the running interpreter's stdlib)")]
    assert _problems(lambda: SourceConfig(kind="text", path="/x", bogus=1)) == [
        (("bogus",), "Extra inputs are not permitted")]
    assert _problems(lambda: DataConfig(sources=[])) == [
        (("sources",), "List should have at least 1 item after validation, not 0")]
    assert _problems(lambda: DataConfig(sources=[stdlib], min_chars=10, max_chars=5)) == [
        ((), "Value error, min_chars (10) is larger than max_chars (5)")]
    assert _problems(lambda: DataConfig(sources=[stdlib], val_fraction=1.0)) == [
        (("val_fraction",), "Input should be less than 1")]


def test_jsonl_zstd_and_truncated_streams_keep_the_clean_part(tmp_path):
    import zstandard

    lines = b"".join(json.dumps({"text": f"record {i}"}).encode() + b"\n" for i in range(2000))
    (tmp_path / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    streamer = zstandard.ZstdCompressor().compressobj()  # many blocks, as a streaming writer makes them
    blocks = b"".join(streamer.compress(lines[i:i + 4096]) + streamer.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
                      for i in range(0, len(lines), 4096)) + streamer.flush()
    docs, stats = read(SourceConfig(kind="jsonl", path=str(tmp_path / "a.jsonl.zst")))
    assert len(docs) == 2000 and docs[-1].id == "a.jsonl.zst:2000" and stats.skipped == {}
    for name, data in (("b.jsonl.gz", gzip.compress(lines)), ("c.jsonl.zst", blocks)):
        (tmp_path / name).write_bytes(data[: len(data) // 2])
        docs, stats = read(SourceConfig(kind="jsonl", path=str(tmp_path / name)))
        assert 0 < len(docs) < 2000
        assert [d.text for d in docs] == [f"record {i}" for i in range(len(docs))]  # the records before the cut
        reason = "truncated_gzip" if name.endswith(".gz") else "truncated_zstd"
        assert stats.skipped == {reason: 1}
        assert stats.bad_records == [{"file": name, "line": len(docs) + 1, "reason": reason}]


def test_bad_records_are_logged_with_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "good"}\n{bad\n{"text": "nul\x00byte"}\n{"other": 1}\n{"text": "fine too"}\n')
    docs, stats = read(SourceConfig(kind="jsonl", path=str(path)))
    assert [d.text for d in docs] == ["good", "fine too"]
    assert stats.bad_records == [{"file": "d.jsonl", "line": 2, "reason": "invalid_json"},
                                 {"file": "d.jsonl", "line": 3, "reason": "nul_byte"},
                                 {"file": "d.jsonl", "line": 4, "reason": "missing_field"}]


def test_csv_records_with_labels_and_bad_rows(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b'text,label\n"first, with a comma",pos\n"multi\nline",neg\nno label,\n'
                     b'bad \xff bytes,pos\ntoo,many,fields\n,neg\nlast,neg\n')
    docs, stats = read(SourceConfig(kind="csv", path=str(path), label_field="label"))
    assert [(d.id, d.text, d.label) for d in docs] == [("t.csv:2", "first, with a comma", "pos"),
                                                      ("t.csv:4", "multi\nline", "neg"), ("t.csv:9", "last", "neg")]
    assert stats.skipped == {"missing_label": 1, "invalid_utf8": 1, "invalid_csv": 1, "missing_field": 1}
    assert [r["line"] for r in stats.bad_records] == [5, 6, 7, 8]


def test_parquet_records_and_a_corrupt_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["alpha", None, "gamma"], "y": [1, 0, 1], "extra": [1.0, 2.0, 3.0]}),
                   tmp_path / "a.parquet")
    (tmp_path / "b.parquet").write_bytes(b"PAR1 truncated")
    docs, stats = read(SourceConfig(kind="parquet", path=str(tmp_path), pattern="*.parquet", field="body",
                                    label_field="y"))
    assert [(d.id, d.text, d.label) for d in docs] == [("a.parquet:1", "alpha", "1"), ("a.parquet:3", "gamma", "1")]
    assert stats.skipped == {"missing_field": 1, "invalid_parquet": 1}


def test_code_or_prose_by_file_ending_unless_set(tree):
    docs, _ = read(SourceConfig(kind="files", path=str(tree)))
    assert {d.id: d.is_code for d in docs} == {"a.txt": False, "sub/b.txt": False, "sub/c.py": True}
    docs, _ = read(SourceConfig(kind="files", path=str(tree), content="code"))
    assert all(d.is_code for d in docs)
    docs, _ = read(SourceConfig(kind="python-stdlib", max_documents=2))
    assert all(d.is_code for d in docs)


def test_label_field_is_for_records_only():
    with pytest.raises(ValidationError, match="label_field is for record sources"):
        SourceConfig(kind="text", path="/x", label_field="y")
    with pytest.raises(ValidationError, match="label_field and field are both 'text'"):
        SourceConfig(kind="jsonl", path="/x", label_field="text")
