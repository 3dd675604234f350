"""The unit of data that flows through readers and steps."""

from __future__ import annotations

from dataclasses import dataclass

# File name endings read as source code (the code quality rules apply to them, the prose rules do not).
CODE_SUFFIXES = frozenset(
    ".py .pyi .pyx .c .h .cc .cpp .cxx .hpp .hh .cu .java .kt .scala .go .rs .js .mjs .ts .tsx .jsx .rb .php "
    ".cs .swift .m .mm .sh .bash .zsh .ps1 .pl .pm .lua .r .jl .hs .ml .mli .ex .exs .erl .clj .dart .sql "
    ".zig .nim .f90 .asm .s .vim .el .lisp .scm .cmake .mk .toml .yaml .yml .json .xml .html .css".split()
)


@dataclass
class Document:
    id: str  # stable: a relative path, or file:line for JSONL records
    text: str
    source: str  # which configured source it came from, e.g. "python-stdlib" or "jsonl:/data/x.jsonl"
    label: str | None = None  # labelled records (text + label): carried through to the output
    is_code: bool = False  # source code: code quality rules instead of prose rules

    def to_record(self) -> dict:
        record = {"id": self.id, "text": self.text, "source": self.source}
        if self.label is not None:
            record["label"] = self.label
        return record


def is_code_path(name: str) -> bool:
    """Whether a file name (or a document id like ``pkg/mod.py``) is source code, by its ending."""
    dot = name.rfind(".")
    if name.endswith((".gz", ".zst", ".zstd")):
        stem = name[:dot]
        dot = stem.rfind(".")
        name = stem
    return dot >= 0 and name[dot:].lower() in CODE_SUFFIXES


def utf8_len(text: str) -> int:
    """Number of UTF-8 bytes of ``text`` (without encoding when it is pure ASCII)."""
    return len(text) if text.isascii() else len(text.encode("utf-8"))
