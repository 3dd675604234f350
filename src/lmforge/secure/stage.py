"""The whole-life run's ``secure`` stage: the run's final model exported as one file (``checkpoint.export``),
encrypted for an X25519 key and signed with an EC P-256 key (``secure.seal``), both made for the run, then checked:
the signature verifies and the file loads back, through the one loader with the private key, to the very weights
of the source.

  <run>/secure/keys/x25519/     private.pem (mode 0600), public.pem: what the model is encrypted for
  <run>/secure/keys/ec-p256/    private.pem (mode 0600), public.pem: what it is signed with
  <run>/secure/model.safetensors.enc, .sig   (secure.encrypt=false: model.safetensors, plain and signed)
  <run>/secure/summary.json

The keys are made once: a rerun reuses a pair that is there (what was encrypted for it still opens with the same
key, and a signature's public key stays the one handed out) and refuses half a pair or a mismatched one rather than
replace it. The model and its signature are made anew each time; the private keys stay in the run directory until
moved, which the summary's note says.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import torch
from safetensors import safe_open

from lmforge.checkpoint.export import export_checkpoint
from lmforge.checkpoint.formats import STATE_FILE, read_state, safetensors_pieces
from lmforge.checkpoint.hf_import import is_hf_folder
from lmforge.checkpoint.load import checkpoint_dims, load_model, pick
from lmforge.core.atomic import atomic_write_json
from lmforge.core.progress import info
from lmforge.errors import CheckpointError, LmforgeError, SecureError
from lmforge.recipe import RunConfig
from lmforge.rundir import RunDir
from lmforge.secure.config import SecureConfig
from lmforge.secure.envelope import is_envelope
from lmforge.secure.gate import Gate
from lmforge.secure.keys import PRIVATE_FILE, PUBLIC_FILE, keygen, load_private, load_public
from lmforge.secure.seal import Seal
from lmforge.secure.signing import signature_path, verify

STAGE = "secure"
ENCRYPTION, SIGNING = "x25519", "ec-p256"  # the kinds of the run's two key pairs (their folders' names)
OUTPUTS = ("model.safetensors", "model.safetensors.enc")


@dataclasses.dataclass
class SecurePlan:
    """What ``check_secure`` settled before anything is written."""
    source: Path  # the model protected: a checkpoint folder or an exported file
    output: Path  # the file written (encrypted: model.safetensors.enc)
    encryption_keys: Path | None  # the X25519 key folder; None: not encrypted
    signing_keys: Path | None  # the EC P-256 key folder; None: not signed
    segment_size: int


def settings_of(cfg: RunConfig) -> SecureConfig:
    return cfg.secure or SecureConfig()


def key_folder(run: RunDir, kind: str) -> Path:
    return run.stage_dir(STAGE) / "keys" / kind


def check_secure(run: RunDir, cfg: RunConfig) -> SecurePlan:
    """The model picked and read as far as its state or metadata, the key pairs already there checked; one-line
    SecureError before anything is written."""
    sc = settings_of(cfg)
    try:
        source = pick(run, sc.checkpoint).absolute()
    except CheckpointError as exc:
        raise SecureError(f"secure.checkpoint: {exc}") from None
    _check_source(source, run.stage_dir(STAGE))
    folders = {kind: key_folder(run, kind) if wanted else None
               for kind, wanted in ((ENCRYPTION, sc.encrypt), (SIGNING, sc.sign))}
    for kind, folder in folders.items():
        if folder is not None:
            _existing_pair(folder, kind)
    output = run.stage_dir(STAGE) / OUTPUTS[sc.encrypt]
    return SecurePlan(source, output, folders[ENCRYPTION], folders[SIGNING], sc.segment_size)


def _check_source(source: Path, stage_dir: Path) -> None:
    """A plain lmforge model (checkpoint folder or exported file) outside this stage's folder."""
    where = f"secure.checkpoint {source}"
    if stage_dir.absolute() in source.parents or source == stage_dir.absolute():
        raise SecureError(f"{where}: lies in {stage_dir}, which this stage rewrites; give the model to protect")
    if is_hf_folder(source):
        raise SecureError(f"{where}: a Hugging Face folder; protect it with lmforge secure encrypt / sign")
    if is_envelope(source if source.is_file() else source / STATE_FILE):
        raise SecureError(f"{where}: already encrypted; give the plain model")
    try:
        checkpoint_dims(source)  # an lmforge model: its metadata or state describes one
        state = {} if source.is_file() else read_state(source, verify=False)
    except CheckpointError as exc:
        raise SecureError(f"secure.checkpoint: {exc}") from None
    if state.get("resume_key", {}).get("finetune", {}).get("mode") == "lora":
        raise SecureError(f"{where}: a LoRA fine-tuning checkpoint; protect the fine-tuned model (finetuned)")


def _existing_pair(folder: Path, kind: str) -> bool:
    """Whether ``folder`` holds a key pair of ``kind`` to reuse; False: none yet. Half a pair, a key of another
    kind or a public key that is not the private one's is refused (never replaced)."""
    blocking = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise SecureError(f"{blocking}: a file where the secure stage keeps its keys; move it away")
    private, public = folder / PRIVATE_FILE, folder / PUBLIC_FILE
    if not private.exists() and not public.exists():
        return False
    if not (private.is_file() and public.is_file()):
        alone = private if private.exists() else public
        raise SecureError(f"{folder}: half a key pair ({alone.name} alone); restore the other file, or remove the "
                          "folder to make new keys")
    if _public_der(load_private(private, (kind,), "secure").public_key()) != \
            _public_der(load_public(public, (kind,), "secure")):
        raise SecureError(f"{public}: not the public key of {private}; remove the folder to make new keys")
    return True


def _public_der(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def run_secure(run: RunDir, cfg: RunConfig, plan: SecurePlan) -> dict:
    """Make (or reuse) the keys, export the model sealed, check it, write ``secure/summary.json``."""
    encryption, signing = _key_pair(plan.encryption_keys, ENCRYPTION), _key_pair(plan.signing_keys, SIGNING)
    _remove_outputs(run)
    recipients = () if encryption is None else (load_public(encryption[1], (ENCRYPTION,), "encryption"),)
    seal = Seal(recipients, None if signing is None else signing[0], plan.segment_size)
    _export(plan.source, plan.output, seal)
    try:
        _verify(plan, encryption, signing)
    except LmforgeError:
        _remove_outputs(run)  # nothing unverified is left looking protected
        raise
    summary = _summary(run, plan, encryption, signing)
    atomic_write_json(run.stage_summary(STAGE), summary)
    info(summary["note"])
    return summary


def _key_pair(folder: Path | None, kind: str) -> tuple[Path, Path] | None:
    """(private, public) of ``folder``: the pair there (``check_secure`` checked it), else a new one."""
    if folder is None:
        return None
    private, public = folder / PRIVATE_FILE, folder / PUBLIC_FILE
    return (private, public) if private.is_file() and public.is_file() else keygen(folder, kind)


def _remove_outputs(run: RunDir) -> None:
    """An earlier run's model, signature and summary (both outputs: a plain copy never outlives encrypt=true)."""
    for name in OUTPUTS:
        output = run.stage_dir(STAGE) / name
        output.unlink(missing_ok=True)
        signature_path(output).unlink(missing_ok=True)
    run.stage_summary(STAGE).unlink(missing_ok=True)


def _export(source: Path, output: Path, seal: Seal) -> None:
    """A checkpoint folder consolidated (``export_checkpoint``); an exported file's tensors and metadata as they
    are (a classifier's labels, a quantized model's layout), sealed."""
    if source.is_dir():
        export_checkpoint(source, output, seal)
        return
    with safe_open(str(source), framework="pt") as f:
        metadata, tensors = f.metadata() or {}, {name: f.get_tensor(name) for name in f.keys()}
    _, written = seal.write_file(output, safetensors_pieces(tensors, metadata), plain_digest=False)
    seal.sign(output, {".": written})


def _verify(plan: SecurePlan, encryption: tuple | None, signing: tuple | None) -> None:
    """The signature verifies with the public key; the file loads back (decrypted with the private key) to
    weights equal to the source's, tensor by tensor."""
    if signing is not None:
        verify(plan.output, signing[1])
    identity = None if encryption is None else load_private(encryption[0], (ENCRYPTION,), "decryption")
    try:
        loaded = load_model(plan.output, "cpu", access=Gate(identity)).model.state_dict()
    except CheckpointError as exc:
        raise SecureError(f"{plan.output}: does not load back: {exc}") from None
    source = load_model(plan.source, "cpu").model.state_dict()
    differ = sorted(set(source) ^ set(loaded)) or [n for n in source if not torch.equal(source[n], loaded[n])]
    if differ:
        raise SecureError(f"{plan.output}: loads back with other weights than {plan.source} "
                          f"({', '.join(differ[:3])})")


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _summary(run: RunDir, plan: SecurePlan, encryption: tuple | None, signing: tuple | None) -> dict:
    root = run.root.absolute()

    def rel(path: Path | None) -> str | None:
        return None if path is None else str(Path(path).absolute().relative_to(root))

    private_keys = [pair[0] for pair in (encryption, signing) if pair is not None]
    many = len(private_keys) > 1
    return {"model": str(plan.source), "output": rel(plan.output),
            "signature": None if signing is None else rel(signature_path(plan.output)),
            "signed_files": {} if signing is None else {plan.output.name: _sha256(plan.output)},
            "encrypted": None if encryption is None else rel(plan.output),
            "recipients": [] if encryption is None else [{"kind": ENCRYPTION, "public_key": rel(encryption[1])}],
            "private_key": None if encryption is None else rel(encryption[0]),
            "signing_public_key": None if signing is None else rel(signing[1]),
            "segment_size": plan.segment_size, "verified": True,
            "note": f"the private key{'s are' if many else ' is'} kept in the run directory: "
                    f"{', '.join(map(str, private_keys))}; move {'them' if many else 'it'} somewhere safe before "
                    "you share the run"}
