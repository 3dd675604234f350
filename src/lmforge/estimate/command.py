"""``lmforge estimate``: memory and compute of a recipe before any training. torch is imported inside."""

from __future__ import annotations

import json
import sys

import click

from lmforge.command import common_options, resolve


@click.command()
@common_options
@click.option("--json", "as_json", is_flag=True, help="Print the estimate as JSON instead of tables.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="Device to plan for (default: the recipe's).")
@click.option("--gpu", help="GPU name for the peak FLOP/s table, e.g. H100, A100, L4 (implies --device cuda).")
@click.option("--device-memory-gb", type=click.FloatRange(min=0, min_open=True, max=1e9),
              help="Memory per device (default: train.memory_limit_gb, the GPU's, or this machine's).")
@click.option("--peak-tflops", type=click.FloatRange(min=0, min_open=True, max=1e9), help="Peak TFLOP/s per device.")
@click.option("--mfu", type=float, default=0.4, show_default=True, help="Model FLOPs utilization to assume.")
@click.option("--dp", type=int, help="Data-parallel replicas (default: parallel.dp_replicate, or what --world-size "
                                     "leaves).")
@click.option("--fsdp", type=int, help="FSDP (sharded data parallel) degree (default: parallel.dp_shard).")
@click.option("--tp", type=int, help="Tensor-parallel degree (default: parallel.tp).")
@click.option("--pp", type=int, help="Pipeline stages (default: parallel.pp): adds each pipeline rank's memory and "
                                     "the schedule's bubble.")
@click.option("--world-size", type=int, help="Devices in all (default: pp * dp * fsdp * tp).")
def estimate(recipe, overrides, run_dir, as_json, device, gpu, device_memory_gb, peak_tflops, mfu, dp, fsdp, tp,
             pp, world_size):
    """Parameters, training FLOPs, memory per device and step time of RECIPE, before any training.

    Memory is broken down into weights, gradients, optimizer state, activations (with and without
    activation checkpointing) and overhead, for fp32, bf16 and fp16 mixed precision, under the given
    data-parallel, FSDP and tensor-parallel degrees; plus the largest micro-batch that fits.
    """
    import torch

    from lmforge.core.device import peak_for_name
    from lmforge.errors import RecipeError
    from lmforge.estimate.memory import GIB
    from lmforge.estimate.report import build_report, default_memory_bytes, vocab_size_for
    from lmforge.train.precision import DTYPES

    cfg, run_obj = resolve(recipe, run_dir, overrides)
    device = "cuda" if gpu else device or ("cuda" if cfg.train.device == "cuda" or
                                             (cfg.train.device == "auto" and torch.cuda.is_available()) else "cpu")
    vocab, vocab_source = vocab_size_for(cfg, run_obj)
    memory, memory_source = ((int(device_memory_gb * GIB), "--device-memory-gb") if device_memory_gb
                             else default_memory_bytes(cfg, device))
    peak, peak_source = None, "give --peak-tflops or --gpu"
    if peak_tflops:
        peak, peak_source = peak_tflops * 1e12, "--peak-tflops"
    elif cfg.train.peak_tflops:
        peak, peak_source = cfg.train.peak_tflops * 1e12, "train.peak_tflops"
    else:
        name = gpu or (torch.cuda.get_device_name(0) if device == "cuda" and torch.cuda.is_available() else None)
        if name:
            peak = peak_for_name(name, DTYPES[cfg.train.precision])
            if peak is None:
                raise RecipeError(f"--gpu {name}: not in the peak FLOP/s table; give --peak-tflops")
            peak_source = f"{name} {cfg.train.precision} dense peak"
    pp = cfg.parallel.pp if pp is None else pp
    dp, fsdp, tp = recipe_degrees(cfg.model_copy(update={"parallel": cfg.parallel.model_copy(update={"pp": max(pp, 1)})}),
                                  dp, fsdp, tp, world_size)
    report = build_report(cfg, vocab, device=device, memory_bytes=memory, peak_flops=peak, mfu=mfu, dp=dp,
                          fsdp=fsdp, tp=tp, world_size=world_size, pp=pp)
    report.update(vocab_source=vocab_source, memory_source=memory_source, peak_source=peak_source)
    if as_json:
        click.echo(json.dumps(report, indent=1))
    else:
        render(report)


def recipe_degrees(cfg, dp: int | None, fsdp: int | None, tp: int | None, world_size: int | None):
    """Degrees not given on the command line come from the recipe's ``parallel:`` section (its -1 / auto
    degree from --world-size, where given)."""
    from lmforge.distributed.config import AUTO
    from lmforge.distributed.layout import resolve_layout

    p = cfg.parallel
    if world_size is not None and dp is None and fsdp is None and tp is None:
        layout = resolve_layout(p, world_size)
        return layout.dp_replicate, layout.dp_shard, layout.tp
    return (dp if dp is not None else (p.dp_replicate if p.dp_replicate != AUTO else None),
            fsdp if fsdp is not None else (p.dp_shard if p.dp_shard != AUTO else 1),
            tp if tp is not None else (p.tp if p.tp != AUTO else 1))


def _gib(n: float | None) -> str:
    if n is None:
        return ""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{n / 2**10:,.1f} KiB"


def _count(n: float) -> str:
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def render(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from lmforge.estimate.optimizer_state import STATE_DESCRIPTION
    from lmforge.estimate.report import PRECISIONS, describe_parallel

    console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
    m, c = r["model"], r["compute"]
    console.print(f"[bold]{r['recipe']}[/bold]: {m['size']} decoder, {m['n_layers']} layers x d_model {m['d_model']}, "
                  f"vocab {m['vocab_size']:,} ({r['vocab_source']}); {r['batch_size']} x {r['seq_len']} tokens per "
                  f"step on {describe_parallel(r['parallel'])} ({r['device']})")

    compute = Table(title="compute", title_justify="left")
    compute.add_column("quantity")
    compute.add_column("value", justify="right")
    compute.add_row("parameters (non-embedding)", f"{c['parameters']:,} ({c['non_embedding_parameters']:,})")
    compute.add_row("training FLOPs per token (6N + attention)",
                    f"{_count(c['flops_per_token'])} (attention {_count(c['attention_flops_per_token'])})")
    compute.add_row("training FLOPs per step", _count(c["flops_per_token"] * c["tokens_per_step"]))
    if c["step_seconds"]:
        compute.add_row(f"step time at {_count(c['peak_flops'])}FLOP/s x MFU {c['mfu']:.0%} x {c['devices']} device(s)",
                        f"{c['step_seconds'] * 1e3:,.1f} ms")
        compute.add_row("tokens/s (all devices)", f"{c['tokens_per_second']:,.0f}")
    else:
        compute.add_row("step time, tokens/s", r["peak_source"])
    console.print(compute)

    memory = Table(title=f"memory per device: micro-batch {r['micro_batch_size']} x {r['seq_len']} tokens, "
                         f"{r['per_device_batch'] // r['micro_batch_size']} micro-batch(es) per step, {r['optimizer']}",
                   title_justify="left")
    memory.add_column("")
    for p in PRECISIONS:
        mark = " *" if p == r["precision"] else ""
        memory.add_column(f"{p}{mark}", justify="right")
    t = r["memory"]
    rows = [("weights (fp32 master)", "off", "weights"), ("gradients", "off", "gradients"),
            (f"optimizer state: {STATE_DESCRIPTION[r['optimizer']]}", "off", "optimizer_state"),
            ("activations", "off", "activations"), ("activations, checkpointing on", "on", "activations"),
            ("overhead (buffers, batch, DP/FSDP buffers)", "off", "overhead"),
            ("peak allocated", "off", "peak"), ("peak allocated, checkpointing on", "on", "peak"),
            ("device total (+ runtime)", "off", "device_total"),
            ("device total, checkpointing on", "on", "device_total")]
    for label, ac, key in rows:
        memory.add_row(label, *[_gib(t[p][ac][key]) for p in PRECISIONS])
    memory.add_row("peak is in", *[t[p]["off"]["peak_phase"] for p in PRECISIONS])
    console.print(memory)
    console.print("* the recipe's precision. Gradients are freed after each update, so they do not add to the "
                  "forward peak unless gradient accumulation keeps them.")
    fit = r["fit"]
    if fit:
        ac = "on" if r["activation_checkpointing"] else "off"
        console.print(f"fits {_gib(r['memory_available'])} ({r['memory_source']}) in {r['precision']}, checkpointing "
                      f"{ac}: micro-batch up to {fit['largest']}; of the per-device batch of {r['per_device_batch']}, "
                      f"micro-batch {fit['largest_divisor']} x {fit['accumulation']} accumulation step(s) "
                      f"(train.micro_batch_size=auto picks this)")
    if r.get("pipeline"):
        render_pipeline(console, r["pipeline"])


def render_pipeline(console, p: dict) -> None:
    from rich.table import Table

    table = Table(title=f"pipeline: {p['pp']} stages x {p['virtual_stages']} per process, {p['schedule']}, "
                        f"{p['microbatches']} micro-batches of {p['microbatch_rows']}; bubble {p['bubble']:.1%} of "
                        "each step" + (" at most" if p["schedule"] == "zero_bubble" else ""), title_justify="left")
    for column in ("pipeline rank", "blocks", "parameters", "weights", "gradients", "optimizer state",
                   "micro-batches in flight", "activations", "peak"):
        table.add_column(column, justify="right")
    for rank in p["ranks"]:
        blocks = rank["blocks"]
        table.add_row(str(rank["rank"]), f"{blocks[0]}-{blocks[-1]}" if len(blocks) > 1 else str(blocks[0]),
                      f"{rank['parameters']:,}", _gib(rank["weights"]), _gib(rank["gradients"]),
                      _gib(rank["optimizer_state"]), str(rank["in_flight"]), _gib(rank["activations"]),
                      _gib(rank["peak"]))
    console.print(table)
