"""``lmforge secure keygen | encrypt | decrypt | sign | verify``: keys, encrypted files and folders, signatures."""

from __future__ import annotations

import os
from pathlib import Path

import click

from lmforge.command import common_options, output_flags, require_run_dir, resolve
from lmforge.errors import SecureError

PATH = click.Path(path_type=Path)


def _passphrase(confirm: bool) -> str:
    from lmforge.secure.gate import PASSPHRASE_ENV

    secret = os.environ.get(PASSPHRASE_ENV)
    if secret is None:
        secret = click.prompt("passphrase", hide_input=True, confirmation_prompt=confirm, err=True)
    if not secret:
        raise SecureError(f"an empty passphrase (set {PASSPHRASE_ENV} or type one)")
    return secret


@click.group()
def secure() -> None:
    """Key pairs, encrypted checkpoints (a streaming AES-256-GCM envelope) and OpenSSF model signatures; `lmforge
    secure release` is the secure stage of lmforge run."""


@secure.command()
@common_options
@click.option("--checkpoint", help="The model to protect (overrides secure.checkpoint): selected, latest, best, "
              "finetuned, merged, or a path the loader opens.")
def release(recipe, overrides, run_dir, checkpoint) -> None:
    """The secure stage of lmforge run alone: export the run's model signed (EC P-256) and encrypted (X25519) with
    keys made for the run and kept in <run>/secure/keys/ (reused when there), then verify it by its signature
    and by loading it back: secure/model.safetensors.enc, its .sig, secure/summary.json (recipe section secure:)."""
    from lmforge.report.headlines import secure_actions
    from lmforge.secure.stage import check_secure, run_secure

    if checkpoint is not None:
        overrides = (*overrides, f"secure.checkpoint={checkpoint}")
    cfg, run = resolve(recipe, run_dir, overrides)
    require_run_dir(run)
    summary = run_secure(run, cfg, check_secure(run, cfg))  # refuses bad input before anything is written
    click.echo(f"{secure_actions(summary)} {summary['model']} -> {run.root / summary['output']} (verified)")


@secure.command()
@click.option("--output", type=PATH, required=True, help="Folder to write private.pem (mode 0600) and public.pem into.")
@click.option("--kind", type=click.Choice(["x25519", "rsa", "ec-p256"]), default="x25519", show_default=True,
              help="x25519 or rsa: to encrypt for; ec-p256: to sign with.")
@click.option("--bits", type=int, default=3072, show_default=True, help="RSA key size (at least 3072).")
@output_flags
def keygen(output: Path, kind: str, bits: int) -> None:
    """Write a new key pair."""
    from lmforge.secure.keys import keygen as write_keys

    private, public = write_keys(output, kind, bits)
    click.echo(f"{kind} key pair: {private} (private, keep it secret), {public} (public, share it)")


@secure.command()
@click.argument("path", type=PATH)
@click.option("--recipient", "recipients", type=PATH, multiple=True,
              help="Public key (X25519 or RSA PEM) that may decrypt (repeatable).")
@click.option("--passphrase", is_flag=True,
              help="Also let a passphrase decrypt (from LMFORGE_KEY_PASSPHRASE, else asked for).")
@click.option("--output", type=PATH, required=True, help="Encrypted file (for a file) or folder (for a folder).")
@click.option("--segment-size", type=click.IntRange(1, 1 << 30), default=1 << 20, show_default=True,
              help="Plaintext bytes per authenticated segment.")
@click.option("--scrypt-log-n", type=click.IntRange(10, 20), default=15, show_default=True,
              help="Passphrase cost: scrypt with N = 2^this.")
@output_flags
def encrypt(path: Path, recipients: tuple[Path, ...], passphrase: bool, output: Path, segment_size: int,
            scrypt_log_n: int) -> None:
    """Encrypt a file or a folder (file by file, same names) for each recipient."""
    from lmforge.secure.envelope import Passphrase
    from lmforge.secure.keys import ENCRYPTION_KINDS, load_public
    from lmforge.secure.protect import encrypt_path

    keys = [load_public(r, ENCRYPTION_KINDS, "--recipient") for r in recipients]
    if passphrase:
        keys.append(Passphrase(_passphrase(confirm=True), scrypt_log_n))
    if not keys:
        raise SecureError("no recipient: give --recipient PUBLIC_KEY (repeatable) or --passphrase")
    names = encrypt_path(path, output, keys, segment_size)
    click.echo(f"encrypted {len(names)} file(s) for {len(keys)} recipient(s) -> {output}")


@secure.command()
@click.argument("path", type=PATH)
@click.option("--key", type=PATH, help="Private key (X25519 or RSA PEM); without it, a passphrase "
                                       "(LMFORGE_KEY_PASSPHRASE, else asked for).")
@click.option("--output", type=PATH, required=True, help="Plaintext file or folder to write.")
@output_flags
def decrypt(path: Path, key: Path | None, output: Path) -> None:
    """Decrypt a file or folder that lmforge secure encrypt wrote (every segment authenticated)."""
    from lmforge.secure.gate import identity_for
    from lmforge.secure.protect import decrypt_path

    identity = identity_for(key, None if key is not None else _passphrase(confirm=False))
    names = decrypt_path(path, output, identity)
    click.echo(f"decrypted {len(names)} file(s) -> {output}")


@secure.command()
@click.argument("path", type=PATH)
@click.option("--key", type=PATH, required=True, help="EC P-256 private key (lmforge secure keygen --kind ec-p256).")
@output_flags
def sign(path: Path, key: Path) -> None:
    """Sign a file or folder (OpenSSF model signing): <folder>.sig or <file>.sig beside it."""
    from lmforge.secure.signing import sign as sign_path

    click.echo(f"signed {path} -> {sign_path(path, key)}")


@secure.command()
@click.argument("path", type=PATH)
@click.option("--public-key", type=PATH, required=True, help="EC P-256 public key of the signer.")
@output_flags
def verify(path: Path, public_key: Path) -> None:
    """Check a file's or folder's signature: fails on any changed, added or removed file."""
    from lmforge.secure.signing import signature_path, verify as verify_path

    verify_path(path, public_key)
    click.echo(f"verified {path} against {signature_path(path)}")
