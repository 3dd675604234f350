"""GPU check: FSDP2 + bf16 + torch.compile on the 124m-class decoder over NCCL; prints tokens/s and MFU.

The training step is lmforge's own (``train_step``: bf16 autocast, gradient clipping by the global norm,
AdamW), on a model parallelized by ``lmforge.distributed.parallelize`` exactly as ``lmforge train`` does
with ``parallel.dp_shard`` = the number of GPUs (FSDP2 ``fully_shard`` per block and at the root, each block
compiled). Tokens are random (no data stage); the figure is the median step time after warm-up (compilation
excluded). MFU = training FLOPs per token (6N + attention, ``training_flops_per_token``) x tokens/s /
(dense bf16 peak of the GPU x GPUs). Target on one H100/H200-class GPU: MFU >= 50% for the 124m-1b class.

    bench/gpu_check.sh                                   # every GPU of this machine (torchrun, NCCL)
    bench/gpu_check.sh --size 1b --batch 4 --seq 2048    # the 1b class
    bench/gpu_check.sh --size 1b --pp 2 --microbatches 8 # pipeline parallel: 2 stages (1f1b), FSDP2 over the rest
    python bench/gpu_check.py --dry-run                  # CPU, gloo, debug model, no compile: the script works

Not part of the tests' requirements: CI has no GPU (a test runs the ``--dry-run`` path on CPU).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="124m", help="model size (debug, tiny, small, 124m, 1b)")
    p.add_argument("--vocab", type=int, default=50304, help="vocabulary (GPT-2's 50257 padded to a multiple of 128)")
    p.add_argument("--batch", type=int, default=16, help="sequences per GPU per step")
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--steps", type=int, default=30, help="timed steps")
    p.add_argument("--warmup", type=int, default=10, help="steps before timing (compilation happens here)")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--peak-tflops", type=float, help="peak bf16 TFLOP/s per device (default: lmforge's GPU table)")
    p.add_argument("--pp", type=int, default=1, help="pipeline stages (parallel.pp); FSDP2 over GPUs / pp")
    p.add_argument("--schedule", default="1f1b", help="parallel.pp_schedule with --pp")
    p.add_argument("--microbatches", type=int, help="parallel.pp_microbatches with --pp (default: the stages)")
    p.add_argument("--dry-run", action="store_true", help="CPU + gloo, debug model, 3 steps, no compile")
    args = p.parse_args(argv)
    if args.dry_run:
        args.size, args.vocab, args.batch, args.seq, args.steps, args.warmup = "debug", 512, 2, 64, 3, 1
        args.no_compile = True
    return args


def _single_process_env() -> None:
    """Run without torchrun: a process group of one (FSDP2 then shards over one device)."""
    if "WORLD_SIZE" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def main(argv=None) -> None:
    args = parse_args(argv)
    _single_process_env()
    import torch
    import torch.distributed as dist

    from lmforge.core.device import peak_flops
    from lmforge.distributed.context import DistContext
    from lmforge.distributed.layout import Layout, build_mesh
    from lmforge.distributed.config import ParallelConfig
    from lmforge.distributed.parallelize import apply_fsdp, parallelize
    from lmforge.train.measure import RandomWindows
    from lmforge.model.config import ModelConfig
    from lmforge.model.decoder import Decoder, count_parameters, training_flops_per_token
    from lmforge.train.batches import BatchPlan
    from lmforge.train.config import TrainConfig
    from lmforge.train.loop import train_step
    from lmforge.distributed.parallelize import apply_memory_options
    from lmforge.train.optim import build_optimizer
    from lmforge.train.precision import precision_policy

    rank, world, local_rank = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if args.dry_run:
        device = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            raise SystemExit("gpu_check: no CUDA device (use --dry-run to check the script on CPU)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        torch.set_float32_matmul_precision("high")
    dist.init_process_group("gloo" if device.type == "cpu" else "nccl")
    if world % args.pp:
        raise SystemExit(f"gpu_check: --pp {args.pp} does not divide the {world} processes")
    layout = Layout(dp_shard=world // args.pp, pp=args.pp)
    ctx = DistContext(rank=rank, world_size=world, local_rank=local_rank, device=device, layout=layout,
                      mesh=build_mesh(layout, device.type))

    dims = ModelConfig(size=args.size).dims(args.vocab)
    data_ranks = world // args.pp
    train_cfg = TrainConfig(batch_size=args.batch * data_ranks, seq_len=args.seq, precision="bf16",
                            compile=not args.no_compile, activation_checkpointing=args.activation_checkpointing)
    torch.manual_seed(0)
    with torch.device(device):
        model = Decoder(dims)
    wrapped = model
    if args.pp > 1:  # what lmforge train does for parallel.pp (parallel.dp_shard = the rest)
        pcfg = ParallelConfig(pp=args.pp, dp_replicate=1, dp_shard=data_ranks, pp_schedule=args.schedule,
                              pp_microbatches=args.microbatches)
        wrapped = parallelize(model, ctx, train_cfg, pcfg)
        model = wrapped.parts
    else:
        apply_memory_options(model, train_cfg)  # what parallelize() does for parallel.dp_shard = GPUs, also on one GPU
        apply_fsdp(model, ctx.mesh["dp_shard"])
    parameters = count_parameters(dims)
    optimizer = build_optimizer(model, train_cfg)
    policy = precision_policy("bf16", device)
    plan = BatchPlan(1 << 20, train_cfg.batch_size, 0, ctx.dp_rank, ctx.dp_size)
    data = RandomWindows(dims.vocab_size)

    times, losses = [], []
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        loss, _, _ = train_step(wrapped, model, optimizer, plan, data, step, args.seq, 3e-4, 1.0, ctx, policy)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
        losses.append(loss)

    step_time = statistics.median(times)
    tokens_per_s = train_cfg.batch_size * args.seq / step_time
    peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_flops(device, torch.bfloat16)
    mfu = training_flops_per_token(dims, args.seq) * tokens_per_s / (peak * world) if peak else None
    if rank == 0:
        memory = (f", peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"
                  if device.type == "cuda" else "")
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run)"
        print(f"gpu_check: {args.size} ({parameters / 1e6:.1f}M parameters), {layout.describe()} on {name}, "
              f"bf16, {'eager' if args.no_compile else 'compiled'}, {args.batch} x {args.seq} tokens per GPU per step, "
              f"torch {torch.__version__}")
        print(f"gpu_check: loss {losses[0]:.3f} -> {losses[-1]:.3f}; median step {step_time * 1e3:.1f} ms over "
              f"{len(times)} steps{memory}")
        shown = f"{mfu:.1%}" if mfu is not None else "n/a (no peak for this device)"
        print(f"gpu_check: tokens/s {tokens_per_s:,.0f}  MFU {shown}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
