"""Encrypting and decrypting a file or a whole folder: one envelope per file (``envelope.py``), under the same
relative names, each header recording that name, so a folder stays a folder (a checkpoint folder encrypted this
way still loads, decrypted in memory, and a file moved to another name inside it is refused on decryption).

Every key is read and every input checked before anything is written; an output that exists is refused; a folder
is built under a temporary name and appears only complete (``core.atomic``).
"""

from __future__ import annotations

from pathlib import Path

from lmforge.core.atomic import atomic_dir
from lmforge.errors import SecureError
from lmforge.secure.envelope import SEGMENT_SIZE, decrypt_file, encrypt_file, read_header


def _files(folder: Path) -> list[Path]:
    """Every file under ``folder`` (sorted); a symbolic link or a folder with no file is refused."""
    found = []
    for p in sorted(folder.rglob("*")):
        if p.is_symlink():
            raise SecureError(f"{p}: a symbolic link; only plain files are encrypted")
        if p.is_file():
            found.append(p)
    if not found:
        raise SecureError(f"{folder}: a folder with no file to encrypt")
    return found


def _check_paths(source: Path, output: Path) -> None:
    if not source.exists():
        raise SecureError(f"{source}: no such file or folder")
    if output.exists() or output.is_symlink():
        raise SecureError(f"--output {output}: already exists; give a new path")
    if source.is_dir() and output.absolute().is_relative_to(source.absolute()):
        raise SecureError(f"--output {output}: inside the folder it would be made from ({source})")


def encrypt_path(source: str | Path, output: str | Path, recipients: list,
                 segment_size: int = SEGMENT_SIZE) -> list[str]:
    """Encrypt the file or folder ``source`` into ``output`` for ``recipients``; returns the names encrypted."""
    source, output = Path(source), Path(output)
    _check_paths(source, output)
    if source.is_file():
        encrypt_file(source, output, recipients, source.name, segment_size)
        return [source.name]
    files = _files(source)
    names = [f.relative_to(source).as_posix() for f in files]
    with atomic_dir(output) as tmp:
        for file, name in zip(files, names):
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            encrypt_file(file, tmp / name, recipients, name, segment_size)
    return names


def decrypt_path(source: str | Path, output: str | Path, identity) -> list[str]:
    """Decrypt the envelope or folder of envelopes ``source`` into ``output`` (plaintext on disk: what
    ``lmforge secure decrypt`` is for); a file whose header names another file is refused."""
    source, output = Path(source), Path(output)
    _check_paths(source, output)
    if source.is_file():
        decrypt_file(source, output, identity)
        return [read_header(source).name]
    files = _files(source)
    names = [f.relative_to(source).as_posix() for f in files]
    for file, name in zip(files, names):
        recorded = read_header(file).name
        if recorded != name:
            raise SecureError(f"{file}: its header names {recorded!r}, not {name!r} (a file moved or taken from "
                              "another folder)")
    with atomic_dir(output) as tmp:
        for file, name in zip(files, names):
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            decrypt_file(file, tmp / name, identity)
    return names
