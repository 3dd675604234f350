"""Checks shared by the bad-input tests: the whole one-line error a command prints, and a run directory left
exactly as it was."""

from __future__ import annotations

from pathlib import Path


def assert_error_line(code: int, err: str, line: str, exit_code: int = 2) -> None:
    """The command failed with ``exit_code`` and its stderr is ``line`` alone (run_cli passes --quiet): the
    whole message, not a word of it, and no traceback."""
    assert "Traceback" not in err, err
    assert (code, err.strip()) == (exit_code, line)


def snapshot(root: Path) -> dict:
    """Every path under ``root`` with, for files, their bytes and modification time (a rewrite with the same
    bytes still shows)."""
    if not root.exists():
        return {}
    return {p.relative_to(root): (p.read_bytes(), p.stat().st_mtime_ns) if p.is_file() else None
            for p in sorted(root.rglob("*"))}
