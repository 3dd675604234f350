"""Readers: turn one configured source into a stream of Documents.

Bad input never crashes a run: unreadable, binary (NUL bytes), undecodable (invalid UTF-8) or truncated
files and bad records (invalid JSON, a missing field, ...) are counted by reason in
``SourceStats.skipped`` and logged with file and line in ``SourceStats.bad_records``, and skipped. A
missing path or a glob that matches nothing is a DataError naming ``data.sources[i].path``.
"""

from __future__ import annotations

import glob
import os
import sysconfig
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

from lmforge.data.config import SourceConfig
from lmforge.data.document import Document
from lmforge.data.line_streams import CorruptInput, read_bytes
from lmforge.data.source_stats import SourceStats, is_code, relative_id
from lmforge.errors import DataError

_MAGIC = set("*?[")


def source_name(source: SourceConfig) -> str:
    return source.kind if source.path is None else f"{source.kind}:{source.path}"


def resolve_files(index: int, source: SourceConfig, section: str = "data.sources") -> tuple[Path, list[Path]]:
    """(root that document ids are relative to, sorted files) of ``data.sources[index]`` (errors name
    ``section``: ``finetune.sources`` reads its sources the same way)."""
    if source.kind == "python-stdlib":
        return stdlib_files()
    return _resolve_files(f"{section}[{index}].path", source.path, source.pattern)


def read_files(source: SourceConfig, root: Path, files: list[Path], counters: SourceStats) -> Iterator[Document]:
    """Documents of ``files`` (some or all of one source's), in order, counting into ``counters``."""
    from lmforge.data.records import read_records  # records import pyarrow lazily; keep this cheap

    name = source_name(source)
    for path in files:
        if source.kind in ("jsonl", "csv", "parquet"):
            yield from read_records(source, root, path, name, counters)
        else:
            yield from _read_file(source, root, path, name, counters)


def read_source(index: int, source: SourceConfig, counters: SourceStats) -> Iterator[Document]:
    """Documents of ``source`` (``data.sources[index]``) in a deterministic order, counting into ``counters``.

    The files are resolved now, so a missing path raises here rather than at the first ``next()``.
    """
    root, files = resolve_files(index, source)
    return islice(read_files(source, root, files, counters), source.max_documents)


def stdlib_files() -> tuple[Path, list[Path]]:
    """Every ``*.py`` file of the running interpreter's standard library, without installed packages."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if d not in ("site-packages", "dist-packages")]  # not stdlib
        files += [Path(folder, n) for n in names if n.endswith(".py")]
    return root, sorted(p for p in files if p.is_file())


def _resolve_files(key: str, path: str, pattern: str) -> tuple[Path, list[Path]]:
    """(root that ids are relative to, sorted files). Hidden files are left out, as the shell does."""
    p = Path(path).expanduser()
    if any(c in path for c in _MAGIC):
        root = _glob_root(p)
        matches = glob.glob(str(p), recursive=True)
        what = f"no files match the glob pattern {path!r}"
    elif p.is_file():
        return p.parent, [p]
    elif p.is_dir():
        root = p
        matches = [str(p / m) for m in glob.glob(pattern, root_dir=p, recursive=True)]
        what = f"no files match pattern {pattern!r} under {path}"
    else:
        raise DataError(f"{key}: no such file or directory: {path}")
    files = sorted(Path(m) for m in matches if Path(m).is_file())
    if not files:
        raise DataError(f"{key}: {what}")
    return root, files


def _glob_root(pattern: Path) -> Path:
    """The folder before the first glob character: ``/data/**/*.txt`` -> ``/data``."""
    root = Path(".")
    for part in pattern.parent.parts:
        if any(c in part for c in _MAGIC):
            break
        root = root / part
    return root


def _read_file(source: SourceConfig, root: Path, path: Path, name: str, counters: SourceStats) -> Iterator[Document]:
    """One document per file (.gz and .zst files are decompressed)."""
    rel = relative_id(root, path)
    try:
        data = read_bytes(path)
    except CorruptInput as exc:
        counters.skip(exc.reason, rel)
        return
    except OSError:
        counters.skip("unreadable", rel)
        return
    if b"\0" in data:
        counters.skip("binary", rel)
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        counters.skip("invalid_utf8", rel)
        return
    counters.documents += 1
    counters.bytes += len(data)
    yield Document(rel, text, name, is_code=is_code(source, rel))
