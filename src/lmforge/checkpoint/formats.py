"""The checkpoint format of one process (and DDP): weights and optimizer tensors in safetensors, everything
else in JSON, never pickle.

A checkpoint is a folder ``step_NNNNNNNN/`` built under a temporary name and renamed into place, so a
kill during the write never leaves something that looks finished. ``state.json`` records the SHA-256 of
each tensor file; loading verifies them before any tensor is parsed, so a corrupt or truncated file is
reported, not loaded.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from lmforge.core.atomic import atomic_dir
from lmforge.errors import CheckpointError

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- optimizer state <-> (tensors, JSON) -------------------------------------------------------
def flatten_optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, entry in sd["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"state.{pid}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, tensor in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = tensor
    for pid, entry in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(entry)
    return {"state": state, "param_groups": meta["param_groups"]}


# --- RNG ---------------------------------------------------------------------------------------
def capture_rng() -> dict:
    rng = {"torch_cpu": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["torch_cuda"] = base64.b64encode(torch.cuda.get_rng_state().numpy().tobytes()).decode()
    return rng


def restore_rng(rng: dict) -> None:
    raw = base64.b64decode(rng["torch_cpu"])
    torch.set_rng_state(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
    if "torch_cuda" in rng and torch.cuda.is_available():
        raw = base64.b64decode(rng["torch_cuda"])
        torch.cuda.set_rng_state(torch.frombuffer(bytearray(raw), dtype=torch.uint8))


# --- save / load -------------------------------------------------------------------------------
def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, state: dict,
                    seal=None) -> None:
    """Write a complete checkpoint folder atomically. ``state`` must be JSON-serialisable. With ``seal``
    (``lmforge.secure.seal.Seal``), every file is written from memory encrypted for its recipients (no
    plaintext on disk), then the folder is signed (``<folder>.sig``) from the digests taken while writing."""
    written = {}

    def put(tmp: Path, name: str, pieces: list) -> str:
        with open(tmp / name, "wb") as out:
            plain, written[name] = seal.write(out, pieces, name)
        return plain

    with atomic_dir(path) as tmp:
        full_state = dict(state, rng=capture_rng())
        if seal is None:
            save_model(model, str(tmp / MODEL_FILE))
            files = {MODEL_FILE: sha256_file(tmp / MODEL_FILE)}
        else:
            files = {MODEL_FILE: put(tmp, MODEL_FILE, safetensors_pieces(*model_tensors(model)))}
        if optimizer is not None:
            tensors, meta = flatten_optimizer_state(optimizer)
            if seal is None:
                save_file(tensors, str(tmp / OPTIMIZER_FILE))
                files[OPTIMIZER_FILE] = sha256_file(tmp / OPTIMIZER_FILE)
            else:
                files[OPTIMIZER_FILE] = put(tmp, OPTIMIZER_FILE, safetensors_pieces(tensors))
            full_state["optimizer"] = meta
        full_state["files"] = files
        text = json.dumps(full_state, indent=1, sort_keys=True)
        if seal is None:
            (tmp / STATE_FILE).write_text(text)
        else:
            put(tmp, STATE_FILE, [text.encode("utf-8")])
    if seal is not None:
        seal.sign(path, written)


def model_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str] | None]:
    """What ``safetensors.torch.save_model`` writes of a model: each shared tensor once (a tied head under the
    first name), and the metadata naming each dropped name's kept one."""
    kept, tensors, aliases = {}, {}, {}
    for name, tensor in model.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in kept:
            aliases[name] = kept[key]
        else:
            kept[key] = name
            tensors[name] = tensor
    return tensors, aliases or None


_DTYPE_NAMES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
                torch.bool: "BOOL"}


def safetensors_pieces(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> list:
    """A safetensors file of ``tensors`` as pieces written one after the other: the header, then each tensor's own
    memory. By hand because safetensors serializes only into one bytes object (copying every tensor twice on the
    way); the format is its documented one: an 8-byte little-endian header size, a JSON header (each tensor's
    dtype, shape and byte range; ``__metadata__``) padded with spaces to a multiple of 8, then the data."""
    header, data, offset = {}, [], 0
    for name, tensor in tensors.items():
        tensor = tensor.detach().to("cpu").contiguous()
        raw = tensor.reshape(-1).view(torch.uint8).numpy()
        header[name] = {"dtype": _DTYPE_NAMES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + raw.nbytes]}
        data.append(raw)
        offset += raw.nbytes
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return [len(text).to_bytes(8, "little"), text, *data]


_DTYPES = {name: dtype for dtype, name in _DTYPE_NAMES.items()}


def safetensors_layout(head, size: int, where) -> tuple[int, dict[str, tuple[torch.dtype, list[int], int, int]]]:
    """Where each tensor lies in safetensors bytes of ``size`` bytes in all, from ``head``, their first bytes (at
    least the header): the offset of the data, and each tensor's dtype, shape and byte range within the data. By
    hand (a decrypted file is never a file safetensors could open); checked as safetensors checks a file (the
    header, each dtype and shape, byte ranges that tile the data exactly), else CheckpointError."""
    view = memoryview(head)
    try:
        length = int.from_bytes(view[:8], "little")
        header = json.loads(bytes(view[8:8 + length])) if len(view) >= 8 and 8 + length <= len(view) else None
        entries = {k: v for k, v in header.items() if k != "__metadata__"}
        start, layout = 8 + length, {}
        for name, entry in entries.items():
            dtype, shape, (begin, end) = _DTYPES[entry["dtype"]], entry["shape"], entry["data_offsets"]
            if not all(isinstance(d, int) and d >= 0 for d in shape) or not 0 <= begin <= end:
                raise ValueError(name)
            if end - begin != math.prod(shape) * torch.empty((), dtype=dtype).element_size():
                raise ValueError(name)
            layout[name] = (dtype, shape, begin, end)
        position = 0
        for _, _, begin, end in sorted(layout.values(), key=lambda entry: entry[2:]):
            if begin != position:
                raise ValueError("ranges")
            position = end
        if start + position != size:
            raise ValueError("size")
    except (ValueError, KeyError, TypeError, AttributeError, RuntimeError, UnicodeDecodeError):
        raise CheckpointError(f"checkpoint {where}: not a safetensors file (decrypted; a corrupt header or byte "
                              "ranges)") from None
    return start, layout


def tensors_in(buffer: bytearray, where) -> dict[str, torch.Tensor]:
    """The tensors of safetensors bytes held in ``buffer`` (a decrypted file), as views of it: no copy (safetensors'
    ``load`` takes only ``bytes`` and copies every tensor)."""
    start, layout = safetensors_layout(buffer, len(buffer), where)
    view, tensors = memoryview(buffer), {}
    for name, (dtype, shape, begin, end) in layout.items():
        data = torch.frombuffer(view, dtype=torch.uint8, count=end - begin, offset=start + begin) \
            if end > begin else torch.empty(0, dtype=torch.uint8)
        tensors[name] = data.view(dtype).reshape(shape)
    return tensors


def read_state(path: Path, verify: bool = True, plaintext=None, hash_of=None) -> dict:
    """Read ``state.json`` and (by default) check every tensor file against its recorded hash. For an encrypted
    folder: ``plaintext`` (file -> bytes) reads the state, ``hash_of`` (file -> hex SHA-256) hashes each file's
    plaintext."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path}: no such checkpoint folder")
    state_file = path / STATE_FILE
    try:
        state = json.loads(state_file.read_text() if plaintext is None else plaintext(state_file))
        files = state["files"]
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path}: {STATE_FILE} is missing (incomplete checkpoint)") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise CheckpointError(f"checkpoint {state_file}: corrupt or truncated state file") from None
    if verify:
        for name, digest in files.items():
            file = path / name
            if not file.is_file():
                raise CheckpointError(f"checkpoint {file}: file is missing")
            actual = sha256_file(file) if hash_of is None else hash_of(file)
            if actual != digest:
                raise CheckpointError(f"checkpoint {file}: corrupt or truncated (SHA-256 does not match state.json)")
        extra = sorted(p.name for p in path.iterdir() if p.name not in files and p.name != STATE_FILE)
        if extra:
            raise CheckpointError(f"checkpoint {path}: unexpected file {extra[0]} (not in the integrity manifest "
                                  "of state.json)")
    return state


def load_safetensors(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, state: dict,
                     restore_rng_state: bool = True) -> dict:
    """Load the weights (and optimizer state and RNG) of a safetensors checkpoint whose ``state`` was read
    and verified by ``read_state``, in place; returns the JSON state."""
    try:
        missing, unexpected = load_model(model, str(path / MODEL_FILE), strict=False)
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise CheckpointError(f"checkpoint {path / MODEL_FILE}: cannot load weights: {str(exc).splitlines()[0]}") from None
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path / MODEL_FILE}: weights do not fit this model "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    if optimizer is not None:
        if OPTIMIZER_FILE not in state["files"]:
            raise CheckpointError(f"checkpoint {path}: holds no optimizer state, cannot resume training from it")
        try:
            tensors = load_file(str(path / OPTIMIZER_FILE))
            optimizer.load_state_dict(unflatten_optimizer_state(tensors, state["optimizer"]))
        except (SafetensorError, ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(f"checkpoint {path / OPTIMIZER_FILE}: optimizer state does not fit: {exc}") from None
    if restore_rng_state:
        restore_rng(state["rng"])
    return state


def prune_checkpoints(checkpoints: list[tuple[int, Path]], keep: int, protect: Path | None = None) -> None:
    """Delete all but the newest ``keep`` checkpoints (called after a new one is safely in place), never
    ``protect`` (the checkpoint ``eval.select`` chose)."""
    for _, path in checkpoints[:-keep]:
        if protect is None or path.resolve() != protect.resolve():
            shutil.rmtree(path, ignore_errors=True)
