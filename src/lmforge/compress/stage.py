"""``lmforge compress``: every variant of ``compress.variants`` made from one dense model (loaded through the
one loader), written as an exported file ``compress/<name>/model.safetensors`` that every command loads
(``--checkpoint runs/x/compress/<name>/model.safetensors``), then the size / speed / quality table of the dense
model and the variants (``compress.table``) and ``compress/summary.json``."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import torch

from lmforge.checkpoint.export import write_exported, write_quantized
from lmforge.checkpoint.load import (
    checkpoint_dims,
    checkpoint_seq_len,
    load_model,
    model_tokenizer_path,
    pick,
    require_language_model,
)
from lmforge.compress.calibration import calibration_windows, input_norms
from lmforge.compress.config import CompressConfig
from lmforge.compress.distill import check_student, distillation_loss, train_student
from lmforge.compress.memory import peak_memory_mb
from lmforge.compress.prune import apply_masks, holding_zeros, prune, pruned_weights
from lmforge.compress.structured import kept_channels, kept_heads, prune_structured
from lmforge.compress.table import measure, quality, weight_figures, with_ratios, write_table
from lmforge.core.atomic import atomic_write_json
from lmforge.core.progress import info
from lmforge.data.packing import TokenShards
from lmforge.data.tokenizer import load_tokenizer, tokenizer_digest
from lmforge.errors import CompressError
from lmforge.evaluate.config import BUILTIN
from lmforge.evaluate.task_eval import EvalSettings
from lmforge.evaluate.task_sources import builtin_tasks, load_user_tasks
from lmforge.model.config import ModelDims
from lmforge.model.fused_layout import model_views
from lmforge.model.quantized import quantize
from lmforge.recipe import RunConfig
from lmforge.rundir import RunDir

STAGE = "compress"
CALIBRATED = ("wanda", "structured")
QUANTIZED = ("int8", "int4")


@dataclasses.dataclass
class CompressPlan:
    dense: Path
    dims: ModelDims
    seq_len: int


def settings_of(cfg: RunConfig) -> CompressConfig:
    return cfg.compress or CompressConfig()


def needs_calibration(variant) -> bool:
    return variant.method in CALIBRATED or (variant.method == "two_four" and variant.score == "wanda")


def check_compress(run: RunDir, cfg: RunConfig) -> CompressPlan:
    """Before anything is written: the variants (names, shapes they need), the dense model, the data."""
    cc = settings_of(cfg)
    if not cc.variants:
        raise CompressError("compress.variants: no variant to make (e.g. [{name: wanda50, method: wanda, "
                            "sparsity: 0.5}])")
    names = [v.name for v in cc.variants] + [f"{v.name}-ce" for v in cc.variants if v.method == "distill"] + \
        [f"{v.name}-recovered" for v in cc.variants if getattr(v, "recovery_steps", 0)]
    repeated = next((n for n in names if names.count(n) > 1 or n == "dense"), None)
    if repeated is not None:
        raise CompressError(f"compress.variants: the name {repeated!r} is {'reserved' if repeated == 'dense' else 'used twice'}")
    dense = pick(run, cc.checkpoint).absolute()
    require_language_model(dense, "lmforge compress")
    dims = checkpoint_dims(dense)
    for i, v in enumerate(cc.variants):
        if v.method == "two_four":
            widths = {dims.d_model, dims.ffn_hidden, dims.n_heads * dims.head_dim}
            odd = sorted(w for w in widths if w % 4)
            if odd:
                raise CompressError(f"compress.variants[{i}] ({v.name}): 2:4 needs input dimensions divisible by 4; "
                                    f"the model has {odd[0]}")
        if v.method == "int4":
            widths = {"d_model (q/k/v, gate/up inputs)": dims.d_model, "ffn_hidden (down input)": dims.ffn_hidden,
                      "heads x head_dim (output projection input)": dims.n_heads * dims.head_dim}
            odd = next(((what, w) for what, w in widths.items() if w % v.group_size), None)
            if odd is not None:
                raise CompressError(f"compress.variants[{i}] ({v.name}): group size {v.group_size} does not divide "
                                    f"the input dimension {odd[1]} ({odd[0]})")
        if v.method == "distill":
            check_student(dims, v, f"compress.variants[{i}]")
            theirs = model_tokenizer_path(dense)
            if theirs is not None and tokenizer_digest(theirs) != tokenizer_digest(run.tokenizer):
                raise CompressError(f"compress.variants[{i}] ({v.name}): the teacher {dense} reads another tokenizer "
                                    f"({theirs}) than the run's token shards; distillation needs the same one")
        if v.method == "structured":
            check_structured(dims, v, f"compress.variants[{i}] ({v.name})")
    for need in (run.tokens("train") / "index.json", run.tokens("val") / "index.json"):
        if not need.exists():
            raise CompressError(f"{need}: not found; run the data stages first (lmforge data)")
    shards = TokenShards(run.tokens("train"))
    if shards.vocab_size != dims.vocab_size:
        raise CompressError(f"compress.checkpoint {dense}: a model of vocabulary {dims.vocab_size}, the run's "
                            f"tokens {shards.vocab_size}")
    seq_len = checkpoint_seq_len(dense)
    if any(needs_calibration(v) for v in cc.variants):
        calibration_windows(shards, seq_len, cc.calibration.batches, cc.calibration.batch_size, cc.calibration.seed)
    return CompressPlan(dense, dims, seq_len)


def check_structured(dims: ModelDims, v, where: str) -> None:
    if v.mlp_fraction and kept_channels(dims.ffn_hidden, v.mlp_fraction) == dims.ffn_hidden:
        raise CompressError(f"{where}: mlp_fraction {v.mlp_fraction} removes no channel of {dims.ffn_hidden}")
    if v.head_fraction and kept_heads(dims, v.head_fraction)[0] == dims.n_heads:
        group = dims.n_heads // dims.n_kv_heads
        what = f"query head of a group of {group}" if group > 1 else f"head of {dims.n_heads}"
        raise CompressError(f"{where}: head_fraction {v.head_fraction} removes no {what}")


def make_variant(dense, variant, norms):
    """The variant's model: a pruned or quantized copy of ``dense``, or a smaller structured one."""
    if variant.method == "structured":
        return prune_structured(dense, variant.mlp_fraction, variant.head_fraction, norms)[0]
    model = type(dense)(dense.dims)
    model.load_state_dict(dense.state_dict())
    if variant.method in QUANTIZED:
        return quantize(model, variant.method, getattr(variant, "group_size", None))
    prune(model, variant, norms)
    return model.eval()


def save_variant(model, path: Path, seq_len: int, variant) -> None:
    if variant.method in QUANTIZED:
        write_quantized(path, model, 0, seq_len, {"method": variant.method,
                                                  "group_size": getattr(variant, "group_size", None)})
        return
    weights = {name: view.detach().contiguous().clone() for name, view in model_views(model, model.dims).items()}
    write_exported(path, weights, model.dims.to_dict(), 0, seq_len, f"compress-{variant.method}")


def distill_variant(run: RunDir, cfg: RunConfig, plan: CompressPlan, teacher, variant, device) -> dict:
    """The distilled student and its cross-entropy control, trained and saved; their table entries."""
    teacher.requires_grad_(False)
    dims = check_student(plan.dims, variant, "compress.variants")
    loss = distillation_loss(teacher.to(device), variant.alpha, variant.temperature, variant.reverse)
    out = {}
    for name, loss_fn, method in ((variant.name, loss, "distill"), (f"{variant.name}-ce", None, "ce-control")):
        folder = run.stage_dir(STAGE) / name
        checkpoint = train_student(run, cfg, folder, dims, variant.max_steps, variant.lr, loss_fn, device)
        student = load_model(checkpoint).model
        save_variant(student, folder / "model.safetensors", plan.seq_len, variant)
        shutil.rmtree(checkpoint.parent, ignore_errors=True)  # the exported model is the result
        out[name] = {"method": method, "path": str((folder / "model.safetensors").relative_to(run.root)),
                     "model": load_model(folder / "model.safetensors").model,
                     "settings": variant.model_dump() if method == "distill" else {"control_of": variant.name}}
    teacher.to("cpu")
    return out


def recover(run: RunDir, cfg: RunConfig, plan: CompressPlan, variant, path: Path, pruned, device) -> dict:
    """The pruned variant trained ``recovery_steps`` more steps on the run's data (``<name>-recovered``); an
    unstructured or 2:4 one keeps its zeros (``compress.prune.holding_zeros``)."""
    from lmforge.train.loop import lm_loss

    folder = run.stage_dir(STAGE) / f"{variant.name}-recovered"
    keep = None if variant.method == "structured" else pruned_weights(pruned)
    adapt, loss_fn = (None, None) if keep is None else holding_zeros(keep, lm_loss)
    lr = variant.recovery_lr or cfg.train.lr / 10  # measured: train.lr undoes 800 steps of training, a tenth recovers
    checkpoint = train_student(run, cfg, folder, pruned.dims, variant.recovery_steps, lr, loss_fn,
                               device, init_from=path, adapt=adapt)
    model = load_model(checkpoint).model
    if keep is not None:  # the last step's update is not followed by another forward's zeroing
        apply_masks(model, keep)
    save_variant(model, folder / "model.safetensors", plan.seq_len, variant)
    shutil.rmtree(checkpoint.parent, ignore_errors=True)
    return {"method": f"{variant.method}+recovery", "path": str((folder / "model.safetensors").relative_to(run.root)),
            "model": load_model(folder / "model.safetensors").model, "settings": {"recovery_of": variant.name}}


def run_compress(run: RunDir, cfg: RunConfig, plan: CompressPlan, device="cpu") -> dict:
    cc = settings_of(cfg)
    folder = run.stage_dir(STAGE)
    run.stage_summary(STAGE).unlink(missing_ok=True)
    dense = load_model(plan.dense).model
    norms = None
    if any(needs_calibration(v) for v in cc.variants):
        c = cc.calibration
        windows = calibration_windows(TokenShards(run.tokens("train")), plan.seq_len, c.batches, c.batch_size, c.seed)
        norms = input_norms(dense, windows, c.batch_size)
        info(f"compress: calibration statistics from {len(windows)} windows of {plan.seq_len} tokens")
    models = {"dense": {"method": "dense", "path": str(plan.dense), "model": dense}}
    for variant in cc.variants:
        if variant.method == "distill":
            models |= distill_variant(run, cfg, plan, dense, variant, device)
            continue
        path = folder / variant.name / "model.safetensors"
        save_variant(make_variant(dense, variant, norms), path, plan.seq_len, variant)
        loaded = load_model(path).model  # the table measures what every stage will load
        models[variant.name] = {"method": variant.method, "path": str(path.relative_to(run.root)), "model": loaded,
                                "file_bytes": path.stat().st_size, "settings": variant.model_dump()}
        info(f"compress: {variant.name} ({variant.method}) -> {path}")
        if getattr(variant, "recovery_steps", 0):
            models[f"{variant.name}-recovered"] = recover(run, cfg, plan, variant, path, loaded, device)
    rows = table_rows(run, cfg, plan, models)
    write_table(rows, folder)
    summary = {"dense": str(plan.dense), "variants": {n: {k: r[k] for k in ("method", "path", "parameters",
                                                                          "nonzero_parameters", "val_loss",
                                                                          "perplexity", "decode_tokens_per_s",
                                                                          "ratio_to_dense")}
                                                     for n, r in rows.items()},
               "table": "compress/table.md"}
    for variant in cc.variants:
        if variant.method == "distill":  # the share of the CE-only student's gap to the teacher that distillation
            # closes (None when that student is no worse than the teacher: there is no gap)
            ce, ours, teacher = (rows[n]["val_loss"] for n in (f"{variant.name}-ce", variant.name, "dense"))
            summary["variants"][variant.name]["gap_closed"] = (ce - ours) / (ce - teacher) if ce > teacher else None
    atomic_write_json(run.stage_summary(STAGE), summary)
    return summary


def table_rows(run: RunDir, cfg: RunConfig, plan: CompressPlan, models: dict) -> dict:
    cc = settings_of(cfg)
    val = TokenShards(run.tokens("val"))
    prompt = val.window(0, max(cc.measure.prompt_tokens, 1))[:cc.measure.prompt_tokens].tolist()
    tokenizer = load_tokenizer(run.tokenizer)
    names = cc.quality.task_names(cfg.eval)
    tasks = load_user_tasks(names, "eval.tasks")
    if BUILTIN in names:
        tasks += builtin_tasks(run, run.stage_dir(STAGE) / "tasks", cfg.seed, cfg.eval.builtin_examples, tokenizer,
                               plan.dims.context_length)[0]
    settings = EvalSettings.of(cfg.eval)
    windows = cc.quality.max_windows(cfg.eval, plan.seq_len)
    bytes_per_token = val.num_bytes / max(1, val.num_tokens)
    torch.manual_seed(cfg.seed)
    measure(models, prompt, cc.measure)
    if cc.measure.memory:
        paths = {name: run.root / entry["path"] if name != "dense" else Path(entry["path"])
                 for name, entry in models.items()}
        for name, mb in peak_memory_mb(paths, prompt, cc.measure.new_tokens).items():
            models[name]["peak_memory_mb"] = mb
    rows = {}
    for name, entry in models.items():
        model = entry.pop("model")
        rows[name] = {**entry, **weight_figures(model),
                      **quality(model, val, plan.seq_len, windows, bytes_per_token, tasks, tokenizer, settings,
                                cfg.eval.batch_size)}
    return with_ratios(rows)
