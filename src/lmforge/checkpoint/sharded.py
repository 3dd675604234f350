"""Sharded checkpoints through ``torch.distributed.checkpoint`` (DCP), in safetensors files only.

Layout of ``checkpoints/step_NNNNNNNN/`` written by a sharded run (FSDP2 and/or tensor parallel):

- ``shard-000RR-model-00001-of-00001.safetensors``: what process ``RR - 1`` holds, written by DCP's
  ``HuggingFaceStorageWriter``; each tensor's offset in the whole tensor sits in the file's JSON header.
  Reading (``HuggingFaceStorageReader``) parses those headers, never pickle: DCP's default
  ``FileSystemWriter`` would add a pickled ``.metadata`` file, which lmforge does not use.
- ``state.json``: step, RNG, optimizer hyperparameters, the layout it was saved with, and the integrity
  manifest: the SHA-256 of every other file. Loading checks the manifest first (missing, extra, corrupt
  or truncated files are refused) and only then lets DCP read anything.

Entries are canonical (``model.<name>`` and ``optim.<name>.<state>``, fused projections split into
q/k/v and gate/up, see ``fused.py``), so any layout loads any other: a run saved on 2 processes resumes on
1, on 4, or with tensor parallelism. The folder is built as ``step_N.tmp-dcp`` by all processes and
renamed by rank 0 once complete, so an interrupted write is never taken for a finished checkpoint.

Runs whose parameters are not sharded (one process, DDP) keep ``formats.py``'s safetensors files; both
formats load into every layout (``training.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch.distributed.tensor import DTensor, distribute_tensor

from lmforge.core.atomic import TMP_MARK, fsync_dir
from lmforge.distributed.context import DistContext
from lmforge.model.fused_layout import canonical_entries, clean_name, model_views, to_canonical
from lmforge.distributed.parallelize import reshard
from lmforge.errors import CheckpointError
from lmforge.model.config import ModelDims
from lmforge.checkpoint.formats import (
    MODEL_FILE,
    OPTIMIZER_FILE,
    STATE_FILE,
    capture_rng,
    read_state,
    restore_rng,
    sha256_file,
)

DCP_FORMAT = "dcp-safetensors"
MODEL, OPTIM = "model.", "optim."


# --- canonical entries of the optimizer state ------------------------------------------------------
def _named_params(model: torch.nn.Module) -> dict[int, str]:
    return {id(p): clean_name(name) for name, p in model.named_parameters()}


def _optimizer_params(optimizer) -> list[torch.nn.Parameter]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def optimizer_entries(model: torch.nn.Module, optimizer, dims: ModelDims) -> tuple[dict[str, torch.Tensor], dict]:
    """(canonical tensor views of the optimizer state, its JSON part: hyperparameters and non-tensor values).

    A state tensor shaped like its parameter is split like the parameter; other tensors (``step``) are
    stored once under the parameter's name.
    """
    names = _named_params(model)
    tensors, scalars = {}, {}
    for p in _optimizer_params(optimizer):
        name = names[id(p)]
        for key, value in optimizer.state.get(p, {}).items():
            if torch.is_tensor(value) and value.shape == p.shape and value.dim() > 0:
                for cname, view in canonical_entries(name, value, dims):
                    tensors[f"{OPTIM}{cname}.{key}"] = view
            elif torch.is_tensor(value):
                tensors[f"{OPTIM}{name}.{key}"] = value
            else:
                scalars.setdefault(name, {})[key] = value
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    return tensors, {"param_groups": groups, "scalars": scalars, "has_state": bool(optimizer.state)}


def _restore_groups(optimizer, saved_groups: list[dict]) -> None:
    """Hyperparameters from JSON (a tuple such as ``betas`` comes back as a list: made a tuple again)."""
    for group, saved in zip(optimizer.param_groups, saved_groups):
        group.update({k: tuple(v) if isinstance(group.get(k), tuple) else v for k, v in saved.items() if k != "params"})


def _restore_optimizer_json(model: torch.nn.Module, optimizer, meta: dict) -> None:
    _restore_groups(optimizer, meta["param_groups"])
    names = _named_params(model)
    for p in _optimizer_params(optimizer):
        optimizer.state[p].update(meta["scalars"].get(names[id(p)], {}))


def init_optimizer_state(optimizer) -> None:
    """Create the optimizer's state (so a checkpoint can be loaded into it): one step with zero gradients
    at learning rate 0, which leaves the parameters as they are. Every value is then overwritten."""
    if optimizer.state:
        return
    params = _optimizer_params(optimizer)
    for p in params:
        p.grad = torch.zeros_like(p)
    lrs = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    optimizer.step()
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)


# --- save ------------------------------------------------------------------------------------------
def save_sharded(path: Path, model: torch.nn.Module, optimizer, state: dict, ctx: DistContext) -> None:
    """Every process writes its shards into ``step_N.tmp-dcp``; rank 0 adds the manifest and renames it."""
    from torch.distributed.checkpoint import HuggingFaceStorageWriter, save

    path = Path(path)
    tmp = path.with_name(f"{path.name}{TMP_MARK}dcp")
    if ctx.is_main:
        shutil.rmtree(tmp, ignore_errors=True)  # a leftover of a write that was killed
        tmp.mkdir(parents=True)
    ctx.barrier()
    reshard(model)
    dims = model.dims
    tensors = {MODEL + k: v for k, v in model_views(model, dims).items()}
    opt_tensors, meta = optimizer_entries(model, optimizer, dims) if optimizer is not None else ({}, None)
    tensors.update(opt_tensors)
    single = not dist.is_initialized()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")  # one process: the intent
        save(tensors, storage_writer=HuggingFaceStorageWriter(str(tmp), save_distributed=True), no_dist=single)
    ctx.barrier()
    if ctx.is_main:
        files = {f.name: sha256_file(f) for f in sorted(tmp.iterdir())}
        full = dict(state, format=DCP_FORMAT, layout=ctx.layout.to_dict(), rng=capture_rng(), files=files)
        if meta is not None:
            full["optimizer"] = meta
        with open(tmp / STATE_FILE, "w") as f:
            f.write(json.dumps(full, indent=1, sort_keys=True))
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(tmp)
        if path.exists():
            old = path.with_name(f"{path.name}{TMP_MARK}old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
        fsync_dir(path.parent)
    ctx.barrier()


# --- load ------------------------------------------------------------------------------------------
def agreed_state(path: Path, ctx: DistContext) -> dict:
    """``state.json`` after rank 0 has checked the integrity manifest; every rank raises if it failed."""
    error = None
    if ctx.is_main:
        try:
            read_state(path, verify=True)
        except CheckpointError as exc:
            error = exc
    if ctx.any(error is not None):
        raise error or CheckpointError(f"checkpoint {path}: failed its integrity check (see rank 0)")
    return read_state(path, verify=False)


def dcp_load(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """DCP's load into ``tensors`` in place; in one process without a process group when there is none."""
    from torch.distributed.checkpoint import HuggingFaceStorageReader, load

    single = not dist.is_initialized()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")  # that is the intent
        load(tensors, storage_reader=HuggingFaceStorageReader(str(path)), no_dist=single)


def _check_fits(path: Path, wanted: dict[str, torch.Tensor], reader) -> None:
    saved = reader.read_metadata().state_dict_metadata
    missing = sorted(k for k in wanted if k not in saved)
    if missing:
        raise CheckpointError(f"checkpoint {path}: does not fit this model or optimizer (missing {missing[:3]})")
    wrong = [f"{k} {tuple(saved[k].size)} vs {tuple(v.shape)}" for k, v in wanted.items()
             if tuple(saved[k].size) != tuple(v.shape)]
    if wrong:
        raise CheckpointError(f"checkpoint {path}: tensor shapes do not fit this model: {wrong[:2]}")


def load_dcp_into(path: Path, state: dict, model: torch.nn.Module, optimizer) -> None:
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    reshard(model)
    dims = model.dims
    wanted = {MODEL + k: v for k, v in model_views(model, dims).items()}
    meta = state.get("optimizer")
    if optimizer is not None and meta is not None and meta.get("has_state"):
        init_optimizer_state(optimizer)
        wanted.update(optimizer_entries(model, optimizer, dims)[0])
    try:
        _check_fits(path, wanted, HuggingFaceStorageReader(str(path)))
        dcp_load(wanted, path)
    except (SafetensorError, OSError, RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path}: cannot load: {str(exc).strip().splitlines()[0]}") from None
    if optimizer is not None and meta is not None:
        _restore_optimizer_json(model, optimizer, meta)


@torch.no_grad()
def _copy_full(view: torch.Tensor, full: torch.Tensor) -> None:
    """Write this process's part of the whole tensor ``full`` into ``view``."""
    if isinstance(view, DTensor):
        local = distribute_tensor(full.to(view.device), view.device_mesh, view.placements, src_data_rank=None)
        view._local_tensor.copy_(local._local_tensor)
    else:
        view.copy_(full)


def full_model_tensors(path: Path, dims: ModelDims) -> dict[str, torch.Tensor]:
    """The weights of a safetensors checkpoint under canonical names (views of the loaded tensors)."""
    try:
        full = load_file(str(Path(path) / MODEL_FILE))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"checkpoint {path / MODEL_FILE}: cannot load weights: {exc}") from None
    if dims.tie_embeddings and "embed_tokens.weight" not in full and "lm_head.weight" in full:
        full["embed_tokens.weight"] = full.pop("lm_head.weight")  # one name of the tied pair was kept
    if dims.tie_embeddings:
        full.pop("lm_head.weight", None)
    return to_canonical(full, dims)


def _saved_parameter_order(model: torch.nn.Module, optimizer) -> list[torch.nn.Parameter | None]:
    """The optimizer's parameters as a whole-model safetensors checkpoint numbers them: its own order, or for
    a pipeline stage's parts (``stage_modules``) the whole decoder's, None for what other stages hold."""
    params = _optimizer_params(optimizer)
    if not hasattr(model, "stage_modules"):
        return params
    from lmforge.model.decoder import Decoder
    from lmforge.model.parameter_kinds import is_decayed

    with torch.device("meta"):
        whole = list(Decoder(model.dims).named_parameters())
    order = [n for n, p in whole if is_decayed(n, p)] + [n for n, p in whole if not is_decayed(n, p)]  # its groups
    mine = {clean_name(n): p for n, p in model.named_parameters()}
    return [mine.get(n) for n in order]


def load_safetensors_into_sharded(path: Path, state: dict, model: torch.nn.Module, optimizer) -> None:
    reshard(model)
    dims = model.dims
    full = full_model_tensors(path, dims)
    views = model_views(model, dims)
    part = hasattr(model, "stage_modules")  # a pipeline stage holds some of the weights
    if (set(views) - set(full)) or (not part and set(full) != set(views)):
        raise CheckpointError(f"checkpoint {path / MODEL_FILE}: weights do not fit this model "
                              f"(missing {sorted(set(views) - set(full))[:3]}, "
                              f"unexpected {sorted(set(full) - set(views))[:3]})")
    for name, view in views.items():
        if tuple(full[name].shape) != tuple(view.shape):
            raise CheckpointError(f"checkpoint {path / MODEL_FILE}: {name} has shape {tuple(full[name].shape)}, "
                                  f"this model {tuple(view.shape)}")
        _copy_full(view, full[name])
    if optimizer is None:
        return
    meta = state.get("optimizer")
    if meta is None or OPTIMIZER_FILE not in state["files"]:
        raise CheckpointError(f"checkpoint {path}: holds no optimizer state, cannot resume training from it")
    tensors = load_file(str(Path(path) / OPTIMIZER_FILE))
    if not tensors and not meta["scalars"]:
        return  # saved before the first update
    init_optimizer_state(optimizer)
    names = _named_params(model)
    params = _saved_parameter_order(model, optimizer)
    for key, tensor in tensors.items():
        _, pid, state_key = key.split(".", 2)
        p = params[int(pid)]
        if p is None:  # another pipeline stage's
            continue
        live = optimizer.state[p][state_key]
        if live.shape == p.shape and live.dim() > 0:
            pairs = zip(canonical_entries(names[id(p)], live, dims), canonical_entries(names[id(p)], tensor, dims))
            for (_, view), (_, whole) in pairs:
                _copy_full(view, whole)
        else:
            _copy_full(live, tensor)
    _restore_groups(optimizer, meta["param_groups"])
    for pid, entry in meta["scalars"].items():
        if params[int(pid)] is not None:
            optimizer.state[params[int(pid)]].update(entry)
