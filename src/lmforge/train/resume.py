"""What must hold before training starts or resumes: the parallel layout fits, and a checkpoint to resume
from is intact and was trained with the same model, data, batch, seed and optimizer."""

from __future__ import annotations

import hashlib
import json

from lmforge.checkpoint.formats import read_state
from lmforge.data.packing import TokenShards
from lmforge.distributed.layout import Layout, resolve_layout
from lmforge.errors import CheckpointError, RecipeError, TrainingError
from lmforge.model.config import ModelDims
from lmforge.recipe import RunConfig
from lmforge.rundir import RunDir
from lmforge.train.config import sequence_length


def resume_key(cfg: RunConfig, dims: ModelDims, seq_len: int, data_digest: str, init_from: str | None = None) -> dict:
    """What must not change between a checkpoint and the run that resumes from it (the parallel layout may)."""
    key = {"model": dims.to_dict(), "seq_len": seq_len, "batch_size": cfg.train.batch_size,
           "seed": cfg.seed, "data": data_digest, "optimizer": cfg.train.optimizer}
    if init_from is not None:
        key["init_from"] = init_from
    return key


def check_layout(cfg: RunConfig, world_size: int, dims: ModelDims, seq_len: int) -> Layout:
    """The recipe's ``parallel:`` degrees for ``world_size`` processes, checked against model and batch."""
    tc = cfg.train
    layout = resolve_layout(cfg.parallel, world_size, dims=dims, batch_size=tc.batch_size, seq_len=seq_len,
                            optimizer=tc.optimizer, precision=tc.precision)
    if tc.adversarial is not None and layout.tp > 1:  # the embeddings' output is a DTensor there
        raise RecipeError(f"adversarial training does not run under tensor parallelism (parallel.tp="
                          f"{layout.tp}); use data parallelism or FSDP")
    if layout.pp > 1:
        if tc.adversarial is not None:
            raise RecipeError(f"adversarial training does not run under pipeline parallelism (parallel.pp={layout.pp})")
        if tc.eval_tasks:
            raise RecipeError(f"train.eval_tasks are scored on the whole model in one process; not under pipeline "
                              f"parallelism (parallel.pp={layout.pp})")
        if isinstance(tc.micro_batch_size, int):
            raise RecipeError(f"train.micro_batch_size={tc.micro_batch_size}: under pipeline parallelism each batch is "
                              "split into parallel.pp_microbatches instead")
    return layout


def preflight(run: RunDir, cfg: RunConfig, world_size: int, *, resume: bool = False,
              checkpoints: bool = True) -> Layout:
    """What a launcher checks before it starts any process: the layout, and (``checkpoints``) the checkpoint
    to resume from: its integrity manifest, and that it fits the recipe."""
    train_data = TokenShards(run.tokens("train"))
    dims = cfg.model.dims(train_data.vocab_size)
    seq_len = sequence_length(cfg.train, dims.context_length)
    layout = check_layout(cfg, world_size, dims, seq_len)
    path = resume_point(run, resume) if checkpoints else None
    if path is not None:
        state = read_state(path, verify=True)
        check_resumable(path, state.get("resume_key", {}), resume_key(cfg, dims, seq_len, shards_digest(train_data)))
    return layout


def resume_point(run: RunDir, resume: bool):
    """The latest checkpoint to resume from, or None; existing checkpoints without ``resume`` are an error."""
    latest = run.latest_checkpoint()
    if latest is None:
        return None
    step, path = latest
    if not resume:
        raise TrainingError(f"{run.root} already holds training checkpoints (latest: step {step}); "
                            "pass --resume to continue it, or --redo train to start training over")
    return path


def shards_digest(shards: TokenShards) -> str:
    return hashlib.sha256(json.dumps([s["sha256"] for s in shards.index["shards"]]).encode()).hexdigest()[:16]


def check_resumable(path, saved: dict, expected: dict) -> None:
    for key, want in expected.items():
        got = saved.get(key)
        if key == "model" and isinstance(got, dict):
            diff = [f"model.{k}={got.get(k)} (recipe: {v})" for k, v in want.items() if got.get(k) != v]
            if diff:
                raise CheckpointError(f"cannot resume from {path}: it was trained with {', '.join(diff)}")
        elif got != want:
            raise CheckpointError(f"cannot resume from {path}: it was trained with {key}={got} (recipe: {want})")
    extra = next((key for key in saved if key not in expected), None)  # a variant the recipe no longer has
    if extra is not None:
        raise CheckpointError(f"cannot resume from {path}: it was trained with {extra}={saved[extra]} (recipe: none)")
