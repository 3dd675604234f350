"""``lmforge merge``: several models of one architecture and tokenizer merged into one, streamed tensor by
tensor (``merge.stream``) with one of ``merge.methods``' methods (or a greedy soup of them), written as an
exported file ``merge/model.safetensors`` that every stage loads (``--checkpoint merged``), then evaluated
against its ingredients, the base and their ensemble (``merge.evaluation``): ``merge/summary.md`` and
``merge/summary.json`` say whether the merge beat them."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import torch

from lmforge.checkpoint.export import exported_metadata
from lmforge.checkpoint.load import (
    TRAINING_ONLY,
    checkpoint_seq_len,
    model_tokenizer_path,
    pick,
    require_language_model,
)
from lmforge.core.atomic import atomic_write_json, atomic_write_text
from lmforge.core.progress import info, track
from lmforge.data.tokenizer import eos_id_of, keep_tokenizer, model_tokenizer, tokenizer_digest
from lmforge.errors import MergeError
from lmforge.merge import methods
from lmforge.merge.config import TASK_METHODS, MergeConfig
from lmforge.merge.stream import WeightSource, canonical_shapes, write_streamed
from lmforge.model.config import ModelDims
from lmforge.recipe import RunConfig
from lmforge.rundir import RunDir

STAGE = "merge"


@dataclasses.dataclass
class MergePlan:
    """What ``check_merge`` settled before anything is written."""
    inputs: list[WeightSource]
    base: WeightSource | None
    dims: ModelDims
    seq_len: int  # the first input's training sequence length: the merge's, and the evaluation's
    tokenizer: Path | None  # the inputs' tokenizer when it is not the run's (None: the run's)
    weights: list[float]


CHECKPOINTS = "checkpoints"  # in merge.inputs: every kept checkpoint of the run


def merge_settings(cfg: RunConfig) -> MergeConfig:
    return cfg.merge or MergeConfig()


def check_merge(run: RunDir, cfg: RunConfig) -> MergePlan:
    """The inputs (and base) picked and read as far as their headers: two or more, the same architecture and
    shapes and the same tokenizer (by hash), and what the method needs."""
    mc = merge_settings(cfg)
    entries = expand_inputs(run, mc.inputs)
    if len(entries) < 2:
        raise MergeError(f"merge.inputs: give two or more models to merge (got {len(entries)})")
    if mc.weights is not None and len(mc.weights) != len(entries):
        raise MergeError(f"merge.weights: {len(mc.weights)} value(s) for {len(entries)} input(s)")
    if mc.method in TASK_METHODS and mc.base is None:
        raise MergeError(f"merge.method={mc.method} needs merge.base (the model the deltas are taken from)")
    named = [(f"merge.inputs[{i}]", entry) for i, entry in enumerate(entries)]
    if mc.base is not None:
        named.append(("merge.base", mc.base))
    picked = [(pick(run, entry).absolute(), where) for where, entry in named]
    for path, where in picked:  # before any header is read
        require_language_model(path, f"lmforge merge ({where})")
    sources = [WeightSource(path, where) for path, where in picked]
    first = sources[0]
    for source in sources[1:]:
        ours, theirs = first.dims.to_dict(), source.dims.to_dict()
        diff = next((k for k in ours if k not in TRAINING_ONLY and ours[k] != theirs[k]), None)
        if diff is not None:
            raise MergeError(f"{source.where} {source.path}: model.{diff}={theirs[diff]}, but {first.where} "
                             f"{first.path} has {ours[diff]}")
    digests = [tokenizer_digest(model_tokenizer_path(s.path) or (run.tokenizer if run.tokenizer.exists() else None))
               for s in sources]
    for source, digest in zip(sources[1:], digests[1:]):
        if digest != digests[0]:
            raise MergeError(f"{source.where} {source.path}: another tokenizer than {first.where}'s (sha256 "
                             f"{str(digest)[:12]} vs {str(digests[0])[:12]})")
    theirs = model_tokenizer_path(first.path)
    foreign = theirs if theirs is not None and digests[0] != tokenizer_digest(run.tokenizer) else None
    if mc.evaluate or mc.method == "greedy_soup":
        need = run.val_docs if foreign is not None else run.tokens("val") / "index.json"
        if not need.exists():
            raise MergeError(f"{need}: not found; the merge is evaluated on the run's validation data (run lmforge "
                             "data first, or set merge.evaluate=false)")
    weights = list(mc.weights) if mc.weights is not None else [1.0] * len(entries)
    inputs, base = sources[:len(entries)], (sources[-1] if mc.base is not None else None)
    return MergePlan(inputs, base, first.dims, checkpoint_seq_len(first.path), foreign, weights)


def expand_inputs(run: RunDir, inputs: list[str]) -> list:
    """``merge.inputs`` with ``checkpoints`` replaced by every kept checkpoint of the run's training, oldest first
    (a soup of one run's checkpoints)."""
    out = []
    for entry in inputs:
        if entry != CHECKPOINTS:
            out.append(entry)
            continue
        kept = run.list_checkpoints()
        if not kept:
            raise MergeError(f"merge.inputs: {CHECKPOINTS}: {run.checkpoints} holds no checkpoint; train first")
        out.extend(path for _, path in kept)
    return out


def _seed(seed: int, tensor: int, model: int) -> int:
    return int(np.random.SeedSequence([seed, tensor, model]).generate_state(1)[0])


def merged_tensor(mc: MergeConfig, plan: MergePlan, inputs: list[WeightSource], weights: list[float],
                  name: str, index: int) -> torch.Tensor:
    """Tensor ``name`` (the ``index``-th) of the merge of ``inputs`` by ``mc.method``."""
    tensors = [source.tensor(name) for source in inputs]
    base = plan.base.tensor(name) if mc.method in TASK_METHODS else None
    if methods.same(tensors + ([base] if base is not None else [])):
        return tensors[0]
    if mc.method in ("linear", "greedy_soup"):
        return methods.linear(tensors, weights)
    if mc.method == "slerp":
        return methods.slerp(tensors[0], tensors[1], mc.t)
    if mc.method == "task_arithmetic":
        return methods.task_arithmetic(base, tensors, weights, mc.scale)
    if mc.method == "ties":
        return methods.ties(base, tensors, weights, mc.scale, mc.density, inplace=True)  # read for this merge alone
    generators = [torch.Generator().manual_seed(_seed(mc.seed, index, i)) for i in range(len(tensors))]
    merge = methods.dare_linear if mc.method == "dare_linear" else methods.dare_ties
    return merge(base, tensors, weights, mc.scale, mc.density, generators)


def stream_merge(mc: MergeConfig, plan: MergePlan, inputs: list[WeightSource], weights: list[float],
                 output: Path) -> None:
    """Write the merge of ``inputs`` to ``output``, one tensor at a time."""
    shapes = canonical_shapes(plan.dims)
    index = {name: i for i, name in enumerate(shapes)}
    metadata = exported_metadata(plan.dims.to_dict(), 0, plan.seq_len, f"merge-{mc.method}")
    with track(f"merge ({mc.method})", total=len(shapes), unit="tensor") as bar:
        write_streamed(output, shapes, lambda name: merged_tensor(mc, plan, inputs, weights, name, index[name]),
                       metadata, on_tensor=bar.advance)


def greedy_soup(run: RunDir, cfg: RunConfig, plan: MergePlan, output: Path, device) -> list[dict]:
    """Wortsman et al. 2022: the inputs in order of their held-out loss, each added to the uniform soup only if
    the soup's held-out loss does not get worse. Writes the final soup to ``output``; returns the steps."""
    from lmforge.merge.evaluation import held_out_loss

    mc = merge_settings(cfg)
    scores = [held_out_loss(run, cfg, plan, source.path, device) for source in plan.inputs]
    order = sorted(range(len(plan.inputs)), key=lambda i: (scores[i], i))
    soup, best = [order[0]], scores[order[0]]
    steps = [{"input": order[0], "loss": best, "kept": True}]
    with tempfile.TemporaryDirectory(dir=output.parent) as folder:
        for i in order[1:]:
            candidate = Path(folder) / "candidate.safetensors"
            stream_merge(mc, plan, [plan.inputs[j] for j in soup + [i]], [1.0] * (len(soup) + 1), candidate)
            loss = held_out_loss(run, cfg, plan, candidate, device)
            kept = loss <= best
            steps.append({"input": i, "loss": loss, "kept": kept})
            if kept:
                soup, best = soup + [i], loss
            info(f"greedy soup: input {i} ({plan.inputs[i].path.name}): held-out loss {loss:.4f} -> "
                 f"{'kept' if kept else 'left out'}")
    stream_merge(mc, plan, [plan.inputs[j] for j in soup], [1.0] * len(soup), output)
    return steps


def run_merge(run: RunDir, cfg: RunConfig, plan: MergePlan, device) -> dict:
    """Merge as ``plan`` says into ``merge/model.safetensors``, evaluate, write the summaries; returns the JSON one."""
    from lmforge.merge.evaluation import evaluate_merge, summary_markdown

    mc = merge_settings(cfg)
    stage_dir = run.stage_dir(STAGE)
    stage_dir.mkdir(parents=True, exist_ok=True)
    run.stage_summary(STAGE).unlink(missing_ok=True)
    output = run.merged_model
    summary = {"method": mc.method, "inputs": [str(s.path) for s in plan.inputs],
               "base": None if plan.base is None else str(plan.base.path), "weights": plan.weights,
               "output": str(output.relative_to(run.root))}
    if mc.method == "greedy_soup":
        summary["soup"] = greedy_soup(run, cfg, plan, output, device)
    else:
        stream_merge(mc, plan, plan.inputs, plan.weights, output)
    if plan.tokenizer is not None:  # the inputs' own tokenizer goes with the merged model
        keep_tokenizer(plan.tokenizer, stage_dir / "tokenizer", eos_id_of(model_tokenizer(plan.tokenizer)))
    if mc.evaluate:
        summary["evaluation"] = evaluate_merge(run, cfg, plan, output, device)
        atomic_write_text(stage_dir / "summary.md", summary_markdown(summary))
    atomic_write_json(run.stage_summary(STAGE), summary)
    return summary
