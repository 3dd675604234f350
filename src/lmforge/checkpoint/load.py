"""The one way in to a trained model, for every stage and command: ``pick`` a checkpoint, ``load_model`` it.

Kinds that load: a run directory (its latest or best checkpoint), a checkpoint folder written by one
process or DDP (safetensors) or by a sharded run (DCP), a file written by ``lmforge export``, and a Hugging
Face folder of the Llama family (``checkpoint/hf_import.py``; its own tokenizer). A classifier (``lmforge
finetune`` objective classification: its file, or a checkpoint of it) loads as a decoder whose ``lm_head`` gives
one logit per label (``LoadedModel.labels``), read at the end-of-text token after the text (``classifier_ids``);
stages that need a language model refuse it by name (``require_language_model``). A folder's integrity
manifest (the SHA-256 of every file, in ``state.json``) is checked before any tensor is parsed; an exported
file and an HF folder's weights are plain safetensors (a JSON header and raw tensors, nothing executable).

Protected checkpoints pass the same gate: an access (``lmforge.secure.gate.Gate``, from a command's ``--key`` /
``--verify-with``, installed by ``opened_with`` or given as ``access=``) first verifies the signature of the path
asked for, then gives the in-memory plaintext of every encrypted file (an exported file, or each file of an
encrypted checkpoint folder, whose manifest is then checked against the plaintext) before any of it is parsed.
"""

from __future__ import annotations

import bisect
import contextlib
import contextvars
import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from lmforge.checkpoint.formats import (MODEL_FILE, STATE_FILE, load_safetensors, read_state, restore_rng,
                                        safetensors_layout, tensors_in)
from lmforge.checkpoint.hf_import import hf_dims, hf_tokenizer_path, hf_weights, is_hf_folder
from lmforge.checkpoint.sharded import DCP_FORMAT, MODEL, dcp_load, full_model_tensors, load_dcp_into
from lmforge.core.metrics import read_metrics
from lmforge.data.tokenizer import eos_id_of, model_tokenizer
from lmforge.errors import CheckpointError
from lmforge.model.config import ModelDims
from lmforge.model.decoder import Decoder
from lmforge.model.fused_layout import model_views
from lmforge.model.quantized import quantized_decoder
from lmforge.rundir import RunDir

MAX_HEADER = 100_000_000  # bytes of a safetensors header at most (safetensors' own limit)

CHOICES = ("latest", "best", "selected", "finetuned", "merged")
ADVERSARIAL = "lmforge.adversarial"  # an exported file's: the adversarial training it had (train.AdversarialSettings, JSON)
LABELS = "lmforge.labels"  # a classifier's exported metadata: its labels in the order of its head's rows (JSON list)

# How checkpoints are opened: None (plain files only), or an object with ``check(path)`` (a signature, where one is
# asked for), ``verified(path) -> bool`` (whether it was), ``plaintext(file) -> bytes | None`` (an encrypted file's,
# None for a plain one), ``head(file, size)`` (its first bytes only) and ``digest(file)`` (its plaintext's SHA-256):
# lmforge.secure's Gate
ACCESS: contextvars.ContextVar = contextvars.ContextVar("lmforge_checkpoint_access", default=None)


@contextlib.contextmanager
def opened_with(access) -> Iterator[None]:
    """Within the block, every checkpoint read here goes through ``access`` (a command's --key / --verify-with)."""
    token = ACCESS.set(access)
    try:
        yield
    finally:
        ACCESS.reset(token)


def _checked(path: Path) -> Path:
    """``path`` after its signature checked (when the access asks for one): before any byte of it is parsed."""
    access = ACCESS.get()
    if access is not None:
        access.check(path)
    return path


def _plaintext(file: Path) -> bytes | None:
    """An encrypted file's authenticated plaintext, in memory; None for a plain file."""
    access = ACCESS.get()
    return None if access is None or not file.is_file() else access.plaintext(file)


def _plaintext_head(file: Path, size: int) -> bytes | None:
    """The first ``size`` bytes of an encrypted file's plaintext (only its first segments decrypted); None for a
    plain file."""
    access = ACCESS.get()
    return None if access is None or not file.is_file() else access.head(file, size)


def _state(path: Path, verify: bool) -> dict:
    """A checkpoint folder's state (``formats.read_state``); an encrypted folder's decrypted in memory, its
    manifest checked against every file's plaintext (every file of it must be encrypted). Not hashed again when the
    folder's signature was verified: it covered every file as stored (an encrypted file's ciphertext, whose
    authenticated decryption is the plaintext)."""
    access = ACCESS.get()
    verify = verify and not (access is not None and access.verified(path))  # the signature covered every file
    if not path.is_dir() or _plaintext(path / STATE_FILE) is None:
        return read_state(path, verify=verify)

    def encrypted(read):
        def checked(file: Path):
            got = read(file) if file.is_file() else None
            if got is None:
                raise CheckpointError(f"checkpoint {file}: not encrypted, unlike its folder's {STATE_FILE}")
            return got
        return checked

    # each file's digest from its plaintext streamed (not kept: the weights are decrypted again to be loaded)
    return read_state(path, verify=verify, plaintext=encrypted(access.plaintext),
                      hash_of=encrypted(access.digest))


@dataclasses.dataclass
class LoadedModel:
    model: Decoder  # in eval mode, on the device asked for
    state: dict  # the checkpoint's state.json (an exported file, an HF folder: step, model and seq_len made up)
    path: Path  # the checkpoint folder or file that was loaded
    tokenizer_path: Path | None  # an HF folder's tokenizer.json, else the run directory's the checkpoint lies in

    @property
    def tokenizer(self):
        """The model's ``tokenizers.Tokenizer`` (read when asked for): an HF folder's own, else the run's (or a
        fine-tune's of another base's); None outside a run directory."""
        return None if self.tokenizer_path is None else model_tokenizer(self.tokenizer_path)

    @property
    def eos_id(self) -> int | None:
        """Its tokenizer's end-of-text id (``data.tokenizer.eos_id_of``); None without a tokenizer."""
        return None if self.tokenizer_path is None else eos_id_of(self.tokenizer)

    @property
    def labels(self) -> list[str] | None:
        """A classifier's labels, in the order of its head's logits; None for a language model."""
        return self.state.get("labels")

    @property
    def step(self) -> int:
        return self.state["step"]

    @property
    def seq_len(self) -> int:
        """The sequence length it was trained with."""
        return self.state["resume_key"]["seq_len"]

    @property
    def adversarial(self) -> dict | None:
        """The adversarial training its last training run had (``train.adversarial`` / ``finetune.adversarial``
        settings); None: trained without."""
        return self.state["resume_key"].get("adversarial")


def pick(run: RunDir, choice: str | Path | None = None) -> Path:
    """The checkpoint ``choice`` names: ``selected`` (the one ``eval.select`` chose), ``latest``, ``best``
    (the lowest validation loss logged at a kept checkpoint's step), ``finetuned`` (``lmforge finetune``'s
    model, LoRA merged), ``merged`` (``lmforge merge``'s), or a path (a run directory, a checkpoint
    folder, an exported file, a Hugging Face model folder). None: the selected checkpoint when the eval stage chose one, else the latest."""
    if choice is None:
        return selected_checkpoint(run) or _latest(run)
    if str(choice) == "latest":
        return _latest(run)
    if str(choice) == "best":
        return _best(run)
    if str(choice) == "finetuned":
        if not run.finetuned_model.is_file():
            raise CheckpointError(f"{run.finetuned_model}: no fine-tuned model; run lmforge finetune first")
        return run.finetuned_model
    if str(choice) == "merged":
        if not run.merged_model.is_file():
            raise CheckpointError(f"{run.merged_model}: no merged model; run lmforge merge first")
        return run.merged_model
    if str(choice) == "selected":
        chosen = selected_checkpoint(run)
        if chosen is None:
            raise CheckpointError(f"{run.selection}: no checkpoint was selected; set eval.select and run lmforge eval")
        return chosen
    path = Path(choice)
    if path.is_dir() and not (path / STATE_FILE).exists() and (path / "stages.json").exists():
        return pick(RunDir(path))  # a run directory: its selected or latest checkpoint
    if not path.exists():
        raise CheckpointError(f"checkpoint {path}: no such checkpoint folder or file (or give latest, best, selected, finetuned, merged)")
    return path


def selected_checkpoint(run: RunDir) -> Path | None:
    """The checkpoint ``eval/selection.json`` names, None without one; one that is gone is an error (training
    never deletes it)."""
    if not run.selection.exists():
        return None
    try:
        chosen = run.root / json.loads(run.selection.read_text(encoding="utf-8"))["chosen"]["path"]
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{run.selection}: unreadable selection; rerun lmforge eval") from None
    if not chosen.exists():
        raise CheckpointError(f"{run.selection}: the selected checkpoint {chosen} is gone; rerun lmforge eval or "
                              "give --checkpoint latest")
    return chosen


def _latest(run: RunDir) -> Path:
    latest = run.latest_checkpoint()
    if latest is None:
        raise CheckpointError(f"{run.checkpoints}: no checkpoint; train first (lmforge train)")
    return latest[1]


def _best(run: RunDir) -> Path:
    kept = dict(run.list_checkpoints())
    if not kept:
        raise CheckpointError(f"{run.checkpoints}: no checkpoint; train first (lmforge train)")
    scored = {r["step"]: r["val_loss"] for r in read_metrics(run.metrics)
              if r.get("kind") == "eval" and r.get("step") in kept and math.isfinite(r.get("val_loss", math.nan))}
    if not scored:
        raise CheckpointError(f"{run.checkpoints}: no kept checkpoint has a validation loss in {run.metrics} "
                              "(checkpoint steps are not evaluation steps); use latest or a path")
    return kept[min(scored, key=lambda step: (scored[step], -step))]


def model_dims(path: Path, state: dict) -> ModelDims:
    """The decoder a checkpoint's state describes (a classifier's: its head untied from the embeddings)."""
    try:
        dims = ModelDims(**state["resume_key"]["model"])
    except (KeyError, TypeError):
        raise CheckpointError(f"checkpoint {path}: {STATE_FILE} does not describe a model") from None
    return dims if _state_labels(state) is None else dataclasses.replace(dims, tie_embeddings=False)


def _state_labels(state: dict) -> list[str] | None:
    """The labels of a classification fine-tuning checkpoint (its resume key's), else None."""
    return state.get("resume_key", {}).get("finetune", {}).get("labels")


def checkpoint_labels(path: str | Path) -> list[str] | None:
    """A classifier's labels in the order of its logits (an exported file's ``lmforge.labels``, a classification
    fine-tuning checkpoint's resume key), None for a language model; from metadata or state alone."""
    path = _checked(Path(path))
    if path.is_file():
        return _exported_labels(path, _exported_metadata(path)[0])
    if is_hf_folder(path):
        return None
    return _state_labels(_state(path, verify=False))


def _exported_labels(path: Path, meta: dict) -> list[str] | None:
    if LABELS not in meta:
        return None
    try:
        labels = json.loads(meta[LABELS])
    except json.JSONDecodeError:
        labels = None
    if not isinstance(labels, list) or not labels or not all(isinstance(label, str) for label in labels):
        raise CheckpointError(f"checkpoint {path}: its {LABELS} metadata is not a list of label names")
    return labels


def require_language_model(path: str | Path, where: str) -> None:
    """Refuse a classifier where a language model is needed (``where``: the command or setting), from its
    metadata or state alone, before anything is written."""
    labels = checkpoint_labels(path)
    if labels is not None:
        raise CheckpointError(f"checkpoint {path}: a classifier (lmforge finetune objective classification; labels "
                              f"{', '.join(labels)}), not a language model; {where} needs a language model")


def classifier_ids(text_ids: list[int], eos: int, seq_len: int) -> list[int]:
    """What a classifier reads: the text's tokens (the last ``seq_len - 1``: the end is nearest the classified
    position), then end-of-text, the position whose logits are the labels'."""
    return [*list(text_ids)[-(seq_len - 1):], eos]


def checkpoint_dims(path: str | Path) -> ModelDims:
    """The decoder a checkpoint folder or exported file holds, read from its state or metadata alone (no
    tensor is read, no hash is checked: ``load_model`` does that)."""
    path = _checked(Path(path))
    if path.is_file():
        return _exported_metadata(path)[1]
    if is_hf_folder(path):
        return hf_dims(path)
    return model_dims(path, _state(path, verify=False))


def checkpoint_seq_len(path: str | Path) -> int:
    """The sequence length a checkpoint's model was trained with (an HF folder: its context), from its state or
    metadata alone."""
    path = _checked(Path(path))
    if path.is_file():
        meta, dims = _exported_metadata(path)
        return int(meta.get("lmforge.seq_len", dims.context_length))
    if is_hf_folder(path):
        return hf_dims(path).context_length
    state = _state(path, verify=False)
    return int(state.get("resume_key", {}).get("seq_len", model_dims(path, state).context_length))


TRAINING_ONLY = ("dropout", "init_std")  # dimensions that do not change what a trained model computes


def check_fits(path: str | Path, dims: ModelDims, expected: ModelDims, where) -> None:
    """A checkpoint's model must be the one ``where`` (a run directory) describes: ``expected``, its recipe's
    dimensions over its tokenizer's vocabulary (training-only settings aside)."""
    diff = [f"model.{k}={v} ({'tokenizer' if k == 'vocab_size' else 'recipe'}: {getattr(expected, k)})"
            for k, v in dims.to_dict().items() if k not in TRAINING_ONLY and getattr(expected, k) != v]
    if diff:
        raise CheckpointError(f"checkpoint {path} does not fit {where}: it holds a model with {', '.join(diff)}")


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    restore_rng_state: bool = True, state: dict | None = None) -> dict:
    """Verify, then load any checkpoint folder (safetensors or DCP) into a model that is not distributed, in
    place (with optimizer state and RNG where asked); returns its JSON state. ``state``: already read and
    verified by ``read_state`` (not hashed again)."""
    path = Path(path)
    state = read_state(path, verify=True) if state is None else state
    if state.get("format", "safetensors") == DCP_FORMAT:
        load_dcp_into(path, state, model, optimizer)
        if restore_rng_state:
            restore_rng(state["rng"])
        return state
    return load_safetensors(path, model, optimizer, state, restore_rng_state)


def load_model(path: str | Path, device: torch.device | str = "cpu", access=None) -> LoadedModel:
    """Build the decoder a checkpoint folder, exported file or HF folder describes and load its weights; with
    ``access`` (else the one ``opened_with`` installed), signed and encrypted ones too."""
    if access is not None:
        with opened_with(access):
            return load_model(path, device)
    path = _checked(Path(path))
    if path.is_file():
        model, state = _load_exported(path)
    elif is_hf_folder(path):
        dims = hf_dims(path)
        model = _decoder_with(path, dims, hf_weights(path, dims))
        state = {"step": 0, "format": "hf", "resume_key": {"model": dims.to_dict(), "seq_len": dims.context_length}}
        return LoadedModel(model.to(device).eval(), state, path, model_tokenizer_path(path))
    else:
        state = _state(path, verify=True)
        if state.get("resume_key", {}).get("finetune", {}).get("mode") == "lora":
            raise CheckpointError(f"checkpoint {path}: a LoRA fine-tuning checkpoint (adapters beside the base's "
                                  "weights); load the fine-tuned model, LoRA merged: finetuned (its run's "
                                  "finetune/model.safetensors)")
        labels = _state_labels(state)
        model = _decoder(model_dims(path, state), labels)
        if _plaintext(path / STATE_FILE) is None:
            load_checkpoint(path, model, optimizer=None, restore_rng_state=False, state=state)
        else:
            _require_not_sharded(path, state)
            _load_weights(path / MODEL_FILE, model)
        if labels is not None:
            state = {**state, "labels": labels}
    return LoadedModel(model.to(device).eval(), state, path, model_tokenizer_path(path))


def _require_not_sharded(path: Path, state: dict) -> None:
    if state.get("format", "safetensors") == DCP_FORMAT:
        raise CheckpointError(f"checkpoint {path}: an encrypted sharded (DCP) checkpoint does not load in memory; "
                              "decrypt it first (lmforge secure decrypt), or encrypt its lmforge export")


def _load_weights(file: Path, model: nn.Module) -> None:
    """An encrypted ``model.safetensors`` decrypted straight into ``model`` (``_decrypt_into``), as
    ``formats.load_safetensors`` loads one from disk: a weight it does not hold must be tied to one it holds
    (safetensors drops shared tensors' aliases)."""
    start, layout = _encrypted_layout(file)
    state = model.state_dict()
    held = {state[name].data_ptr() for name in layout if name in state}
    untied = [name for name in state if name not in layout and state[name].data_ptr() not in held]
    unexpected = [name for name in layout if name not in state]
    wrong = [name for name in layout if name in state and list(state[name].shape) != layout[name][1]]
    if untied or unexpected or wrong:
        raise CheckpointError(f"checkpoint {file}: weights do not fit this model (missing {sorted(untied)[:3]}, "
                              f"unexpected {sorted(unexpected)[:3]}, other shapes {sorted(wrong)[:3]})")
    _decrypt_into(file, start, layout, state)


def _encrypted_layout(file: Path) -> tuple[int, dict] | None:
    """Where each tensor lies in an encrypted safetensors file (``formats.safetensors_layout``), from its first
    segments only (each authenticated); None for a plain file."""
    access = ACCESS.get()
    size = None if access is None or not file.is_file() else access.plaintext_size(file)
    if size is None:
        return None
    length = int.from_bytes(access.head(file, 8), "little")
    if length > MAX_HEADER:
        raise CheckpointError(f"checkpoint {file}: not a safetensors file (decrypted; a header of {length:,} bytes)")
    return safetensors_layout(access.head(file, 8 + length), size, file)


def _decrypt_into(file: Path, start: int, layout: dict, destinations: dict[str, torch.Tensor]) -> None:
    """Decrypt safetensors ``file`` (its ``layout``) segment by segment straight into ``destinations`` (name ->
    the model's own tensor of that shape, for every name of the layout): no buffer of the file's size, and each
    weight written once, as a plain load copies it from the mapped file. A segment inside one tensor is decrypted
    in place; one across tensors is copied in once authenticated. A destination of another dtype, or not
    contiguous, gets its tensor through a staging copy. On a failed segment the caller drops the model."""
    sinks, staged = [], []  # (begin, end, bytes) of each tensor in the file, in order
    with torch.no_grad():
        for name, (dtype, shape, begin, end) in sorted(layout.items(), key=lambda item: item[1][2:]):
            dest = destinations[name]
            if dest.dtype != dtype or not dest.is_contiguous():
                staged.append((dest, torch.empty(shape, dtype=dtype)))
                dest = staged[-1][1]
            sinks.append((start + begin, start + end, dest.reshape(-1).view(torch.uint8)))
        ends = [end for _, end, _ in sinks]

        def direct(offset: int, size: int):  # the tensor memory a segment lies in whole, if one
            i = bisect.bisect_right(ends, offset)
            if i < len(sinks) and sinks[i][0] <= offset and offset + size <= sinks[i][1] and size:
                begin, _, into = sinks[i]
                return memoryview(into[offset - begin:offset - begin + size].numpy())
            return None

        def place(offset: int, segment: memoryview) -> None:  # a segment's parts into the tensors it overlaps
            stop = offset + len(segment)
            data = torch.frombuffer(segment, dtype=torch.uint8) if len(segment) else None
            for begin, end, into in sinks[bisect.bisect_right(ends, offset):]:
                if begin >= stop:
                    break
                lo, hi = max(begin, offset), min(end, stop)
                if hi > lo:
                    into[lo - begin:hi - begin].copy_(data[lo - offset:hi - offset])

        ACCESS.get().decrypt_into(file, place, direct)
        for dest, stage in staged:
            dest.copy_(stage)


def _decoder(dims: ModelDims, labels: list[str] | None = None) -> Decoder:
    """A ``Decoder(dims)`` to load weights into (uninitialized: every weight is then loaded); a classifier's with
    a head of one logit per label in place of the LM head."""
    model = Decoder.uninitialized(dims)
    if labels is not None:
        model.lm_head = nn.Linear(dims.d_model, len(labels), bias=False)
    return model


def _load_exported(path: Path) -> tuple[Decoder, dict]:
    """A file of ``lmforge export``: canonical tensor names, the model dimensions in its metadata."""
    meta, dims = _exported_metadata(path)
    labels = _exported_labels(path, meta)
    layout = None if "lmforge.quantization" in meta else _encrypted_layout(path)
    if layout is not None:  # decrypted straight into the model
        model, views = _decoder_for(path, dims, {name: entry[1] for name, entry in layout[1].items()}, labels)
        _decrypt_into(path, *layout, views)
        return model, _exported_state(meta, dims, labels)
    data = _plaintext(path)
    try:
        tensors = load_file(str(path)) if data is None else tensors_in(data, path)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"checkpoint {path}: not a safetensors file ({str(exc).splitlines()[0]})") from None
    if "lmforge.quantization" in meta:  # a quantized model (``lmforge compress``): its own layers
        try:
            model = quantized_decoder(dims, json.loads(meta["lmforge.quantization"]), tensors)
        except (ValueError, RuntimeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"checkpoint {path}: quantized tensors do not fit the model it describes "
                                  f"({str(exc).splitlines()[0]})") from None
    else:
        model = _decoder_with(path, dims, tensors, labels)
    return model, _exported_state(meta, dims, labels)


def _exported_state(meta: dict, dims: ModelDims, labels: list[str] | None) -> dict:
    """The state an exported file's metadata stands for (what a checkpoint's state.json would say)."""
    seq_len = int(meta.get("lmforge.seq_len", dims.context_length))
    state = {"step": int(meta.get("lmforge.step", 0)), "format": "export",
             "resume_key": {"model": dims.to_dict(), "seq_len": seq_len}}
    if ADVERSARIAL in meta:  # trained adversarially: as a checkpoint's resume key records it
        state["resume_key"]["adversarial"] = json.loads(meta[ADVERSARIAL])
    if "lmforge.quantization" in meta:
        state["quantization"] = json.loads(meta["lmforge.quantization"])
    elif labels is not None:
        state["labels"] = labels
    return state


def _decoder_with(path: Path, dims: ModelDims, tensors: dict[str, torch.Tensor],
                  labels: list[str] | None = None) -> Decoder:
    """A ``Decoder(dims)`` (a classifier's with ``labels``) holding ``tensors`` (canonical names: every weight
    once, shapes checked), in fp32."""
    model, views = _decoder_for(path, dims, {name: list(t.shape) for name, t in tensors.items()}, labels)
    with torch.no_grad():
        for name, view in views.items():
            view.copy_(tensors[name])
    return model


def _decoder_for(path: Path, dims: ModelDims, shapes: dict[str, list[int]],
                 labels: list[str] | None) -> tuple[Decoder, dict[str, torch.Tensor]]:
    """An uninitialized ``Decoder(dims)`` (a classifier's with ``labels``) and its weights under canonical names,
    once ``shapes`` (the canonical names and shapes of the tensors to load) are checked to be exactly its."""
    model = _decoder(dims, labels)
    views = model_views(model, dims)
    if set(shapes) != set(views):
        raise CheckpointError(f"checkpoint {path}: tensors do not fit the model it describes "
                              f"(missing {sorted(set(views) - set(shapes))[:3]}, "
                              f"unexpected {sorted(set(shapes) - set(views))[:3]})")
    for name, view in views.items():
        if tuple(shapes[name]) != tuple(view.shape):
            raise CheckpointError(f"checkpoint {path}: {name} has shape {tuple(shapes[name])}, "
                                  f"the model {tuple(view.shape)}")
    return model, views


def _exported_metadata(path: Path) -> tuple[dict, ModelDims]:
    """The metadata of an exported file and the model dimensions it records."""
    start = _plaintext_head(path, 8)
    try:
        if start is None:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        else:
            meta = _metadata_of(path, _plaintext_head(path, 8 + int.from_bytes(start, "little")))
        return meta, ModelDims(**json.loads(meta["lmforge.model"]))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"checkpoint {path}: not a safetensors file ({str(exc).splitlines()[0]})") from None
    except (KeyError, TypeError, json.JSONDecodeError):
        raise CheckpointError(f"checkpoint {path}: a safetensors file without lmforge's model metadata "
                              "(lmforge.model); not written by lmforge export") from None


def _metadata_of(path: Path, data: bytes) -> dict:
    """The ``__metadata__`` of safetensors bytes (its format: an 8-byte little-endian length, then that much JSON
    header); safetensors' Python API reads metadata only from a file on disk."""
    try:
        length = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + length]) if 8 + length <= len(data) else None
        meta = header.get("__metadata__") or {}
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        meta = None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path}: not a safetensors file (decrypted)")
    return meta


def model_tokenizer_path(path: Path) -> Path | None:
    """The tokenizer a model reads: an HF folder's own, else that of the run directory the checkpoint lies in
    (the nearest folder above with a ``tokenizer/tokenizer.json``: a fine-tune of another base keeps that
    base's there); None when there is none."""
    path = Path(path)
    if is_hf_folder(path):
        return hf_tokenizer_path(path)
    for folder in path.absolute().parents:
        tokenizer = RunDir(folder).tokenizer
        if tokenizer.exists():
            return tokenizer
    return None


def consolidated_weights(path: Path, optimizer: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
    """Whole weights of any checkpoint folder under canonical names, and its state (verified first).

    With ``optimizer`` (DCP checkpoints), the optimizer state too: every entry, ``model.``/``optim.`` prefixed."""
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    path = _checked(Path(path))
    state = _state(path, verify=True)
    dims = model_dims(path, state)
    if _plaintext(path / STATE_FILE) is not None:  # decrypted in memory: canonical names through the model's views
        _require_not_sharded(path, state)
        model = _decoder(dims, _state_labels(state))
        _load_weights(path / MODEL_FILE, model)
        return {k: v.detach().contiguous().clone() for k, v in model_views(model, dims).items()}, state
    if state.get("format") != DCP_FORMAT:
        return {k: v.contiguous().clone() for k, v in full_model_tensors(path, dims).items()}, state
    try:
        saved = HuggingFaceStorageReader(str(path)).read_metadata().state_dict_metadata
        weights = {k: torch.empty(md.size, dtype=md.properties.dtype) for k, md in saved.items()
                   if optimizer or k.startswith(MODEL)}
        dcp_load(weights, path)
    except (SafetensorError, OSError, RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path}: cannot load: {str(exc).strip().splitlines()[0]}") from None
    return (weights if optimizer else {k[len(MODEL):]: v for k, v in weights.items()}), state
