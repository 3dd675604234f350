"""The whole-life run's secure stage on a tiny run directory (one checkpoint, no training): the final model exported
encrypted and signed with keys made for the run, checked by decryption, the signature and the loader; reruns keep
the keys; a bad setting is one line and writes nothing."""

from __future__ import annotations

import hashlib
import json
import stat

import pytest
import torch
from pydantic import ValidationError
from safetensors import safe_open
from safetensors.torch import load

from lmforge.checkpoint.export import export_checkpoint, write_exported
from lmforge.checkpoint.formats import save_checkpoint
from lmforge.checkpoint.load import consolidated_weights, load_model
from lmforge.errors import SecureError
from lmforge.model.config import SIZES, ModelDims
from lmforge.model.decoder import Decoder
from lmforge.model.fused_layout import model_views
from lmforge.recipe import load_recipe
from lmforge.rundir import RunDir
from lmforge.secure.config import SecureConfig
from lmforge.secure.envelope import decrypt_bytes, is_envelope
from lmforge.secure.keys import load_private
from lmforge.secure.signing import verify
from lmforge.secure import stage
from lmforge.secure.stage import check_secure, run_secure

DIMS = ModelDims(vocab_size=256, **SIZES["debug"])
SUMMARY_KEYS = {"model", "output", "signature", "signed_files", "encrypted", "recipients", "private_key",
                "signing_public_key", "segment_size", "verified", "note"}


@pytest.fixture
def run(tmp_path) -> RunDir:
    """A run directory holding one checkpoint of a tiny decoder (its latest)."""
    torch.manual_seed(0)
    run = RunDir(tmp_path / "run")
    save_checkpoint(run.checkpoint(3), Decoder(DIMS), None,
                    {"step": 3, "resume_key": {"model": DIMS.to_dict(), "seq_len": 32}})
    return run


def secure(run: RunDir, *overrides: str) -> dict:
    cfg = load_recipe("debug", list(overrides))
    return run_secure(run, cfg, check_secure(run, cfg))


def keys_of(run: RunDir) -> dict[str, bytes]:
    return {str(p.relative_to(run.root)): p.read_bytes() for p in sorted((run.root / "secure" / "keys").rglob("*.pem"))}


def test_the_model_is_encrypted_signed_and_checked_with_keys_kept_in_the_run(run):
    summary = secure(run, "secure.segment_size=4096")
    folder = run.root / "secure"
    assert set(summary) == SUMMARY_KEYS
    assert json.loads((folder / "summary.json").read_text()) == summary
    assert summary["verified"] is True
    assert summary["model"] == str(run.checkpoint(3).absolute())
    assert summary["output"] == summary["encrypted"] == "secure/model.safetensors.enc"
    assert summary["signature"] == "secure/model.safetensors.enc.sig"
    assert summary["recipients"] == [{"kind": "x25519", "public_key": "secure/keys/x25519/public.pem"}]
    assert summary["private_key"] == "secure/keys/x25519/private.pem"
    assert summary["signing_public_key"] == "secure/keys/ec-p256/public.pem"
    assert summary["segment_size"] == 4096
    assert "secure/keys/x25519/private.pem" in summary["note"] and "somewhere safe" in summary["note"]
    for name in ("model.safetensors.enc", "model.safetensors.enc.sig", "keys/x25519/public.pem",
                 "keys/ec-p256/public.pem"):
        assert (folder / name).is_file()
    assert not (folder / "model.safetensors").exists()  # no plaintext on disk
    assert is_envelope(folder / "model.safetensors.enc")
    for kind in ("x25519", "ec-p256"):
        assert stat.S_IMODE((folder / "keys" / kind / "private.pem").stat().st_mode) == 0o600
    assert summary["signed_files"] == {"model.safetensors.enc": hashlib.sha256(
        (folder / "model.safetensors.enc").read_bytes()).hexdigest()}


def test_the_encrypted_file_decrypts_to_the_source_tensors(run):
    secure(run, "secure.segment_size=4096")  # many segments
    identity = load_private(run.root / "secure" / "keys" / "x25519" / "private.pem")
    tensors = load(bytes(decrypt_bytes(run.root / "secure" / "model.safetensors.enc", identity)))
    source, _ = consolidated_weights(run.checkpoint(3))
    assert tensors.keys() == source.keys()
    assert all(torch.equal(tensors[name], source[name]) for name in source)


def test_the_signature_verifies_and_fails_after_one_byte_flipped(run):
    secure(run)
    output = run.root / "secure" / "model.safetensors.enc"
    public = run.root / "secure" / "keys" / "ec-p256" / "public.pem"
    verify(output, public)
    data = bytearray(output.read_bytes())
    data[len(data) // 2] ^= 0x01
    output.write_bytes(bytes(data))
    with pytest.raises(SecureError, match="does not verify"):
        verify(output, public)


def test_a_rerun_reuses_the_keys_and_writes_the_model_again(run):
    first = secure(run)
    keys = keys_of(run)
    before = (run.root / "secure" / "model.safetensors.enc").read_bytes()
    second = secure(run)
    assert keys_of(run) == keys and len(keys) == 4
    assert second["verified"] is True and second["private_key"] == first["private_key"]
    assert (run.root / "secure" / "model.safetensors.enc").read_bytes() != before  # a fresh envelope


def test_plain_signed_then_encrypted_unsigned(run):
    plain = secure(run, "secure.encrypt=false")
    folder = run.root / "secure"
    assert plain["output"] == "secure/model.safetensors" and plain["encrypted"] is None
    assert plain["private_key"] is None and plain["recipients"] == []
    assert "secure/keys/ec-p256/private.pem" in plain["note"]
    assert not (folder / "keys" / "x25519").exists()  # no key made that is not used
    verify(folder / "model.safetensors", folder / "keys" / "ec-p256" / "public.pem")
    assert load_model(folder / "model.safetensors").step == 3
    unsigned = secure(run, "secure.sign=false")
    assert unsigned["signature"] is None and unsigned["signed_files"] == {}
    assert unsigned["signing_public_key"] is None and unsigned["encrypted"] == "secure/model.safetensors.enc"
    assert sorted(p.name for p in folder.iterdir()) == ["keys", "model.safetensors.enc", "summary.json"]  # the
    # plain copy and its signature are gone


def test_an_exported_file_keeps_its_metadata(run):
    model = Decoder(DIMS)
    weights = {n: v.detach().contiguous().clone() for n, v in model_views(model, DIMS).items()}
    write_exported(run.finetuned_model, weights, DIMS.to_dict(), 7, 32, "finetune-full",
                   adversarial={"method": "fgsm"})
    summary = secure(run, "secure.checkpoint=finetuned", "secure.encrypt=false")
    assert summary["model"] == str(run.finetuned_model.absolute())
    with safe_open(str(run.finetuned_model), "pt") as a, safe_open(str(run.root / summary["output"]), "pt") as b:
        assert a.metadata() == b.metadata()
        assert all(torch.equal(a.get_tensor(n), b.get_tensor(n)) for n in a.keys()) and set(a.keys()) == set(b.keys())


def test_a_file_that_loads_back_to_other_weights_fails_and_is_removed(run, tmp_path, monkeypatch):
    other = tmp_path / "other"
    save_checkpoint(other, Decoder(DIMS), None, {"step": 3, "resume_key": {"model": DIMS.to_dict(), "seq_len": 32}})
    monkeypatch.setattr(stage, "export_checkpoint", lambda source, output, seal: export_checkpoint(other, output, seal))
    with pytest.raises(SecureError, match="other weights"):
        secure(run)
    assert sorted(p.name for p in (run.root / "secure").iterdir()) == ["keys"]


@pytest.mark.parametrize("choice, message", [("merged", "no merged model"), ("nowhere", "no such checkpoint"),
                                             ("best", "no kept checkpoint has a validation loss")])
def test_a_bad_checkpoint_is_one_line_and_writes_nothing(run, choice, message):
    cfg = load_recipe("debug", [f"secure.checkpoint={choice}"])
    with pytest.raises(SecureError, match=message) as exc:
        check_secure(run, cfg)
    assert "\n" not in str(exc.value)
    assert not (run.root / "secure").exists()


def test_an_encrypted_source_and_half_a_key_pair_are_refused_before_anything_is_written(run):
    secure(run)
    cfg = load_recipe("debug", [f"secure.checkpoint={run.root / 'secure' / 'model.safetensors.enc'}"])
    with pytest.raises(SecureError, match="lies in"):
        check_secure(run, cfg)
    (run.root / "secure" / "keys" / "x25519" / "public.pem").unlink()
    before = sorted(p.name for p in (run.root / "secure").iterdir())
    with pytest.raises(SecureError, match="half a key pair"):
        check_secure(run, load_recipe("debug", []))
    assert sorted(p.name for p in (run.root / "secure").iterdir()) == before


def test_the_config_refuses_nothing_to_do_and_unknown_keys():
    with pytest.raises(ValidationError, match="nothing to do"):
        SecureConfig(encrypt=False, sign=False)
    with pytest.raises(ValidationError, match="extra"):
        SecureConfig(recipient="x.pem")
    with pytest.raises(ValidationError):
        SecureConfig(segment_size=0)
    assert load_recipe("debug", ["secure.encrypt=false"]).secure == SecureConfig(encrypt=False)
