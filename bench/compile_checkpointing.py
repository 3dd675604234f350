"""torch.compile and activation checkpointing on CPU: training tokens/s and memory, against plain eager.

Each variant (eager / compiled blocks, checkpointing off / on) trains in a fresh process, so its peak RSS
(ru_maxrss) is its own; rounds alternate the variants and the figure is the median step time over all
rounds after warm-up steps (compilation excluded). Memory is also given as allocated tensor bytes for the
eager variants (``lmforge.train.measure``; the compiled graph's buffers are not visible to that
counter) next to the estimator's prediction. The model and step are the training loop's own.

    python bench/compile_checkpointing.py [--size tiny] [--batch 16] [--seq 256] [--steps 8] [--warmup 3] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

VARIANTS = [("eager", False, False), ("eager + checkpointing", False, True), ("compiled", True, False),
            ("compiled + checkpointing", True, True)]


def worker(args) -> None:
    import torch

    from lmforge.distributed.context import DistContext
    from lmforge.train.measure import RandomWindows
    from lmforge.model.config import ModelConfig
    from lmforge.model.decoder import Decoder
    from lmforge.train.batches import BatchPlan
    from lmforge.train.config import TrainConfig
    from lmforge.train.loop import train_step
    from lmforge.distributed.parallelize import apply_activation_checkpointing, compile_model_parts
    from lmforge.train.optim import build_optimizer

    dims = ModelConfig(size=args.size).dims(args.vocab)
    torch.manual_seed(0)
    model = Decoder(dims)
    if args.checkpointing:
        apply_activation_checkpointing(model)
    if args.compile:
        compile_model_parts(model)
    opt = build_optimizer(model, TrainConfig(batch_size=args.batch))
    plan, data = BatchPlan(10_000, args.batch, 0), RandomWindows(dims.vocab_size)
    ctx = DistContext(device=torch.device("cpu"))
    times, losses = [], []
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        loss, _, _ = train_step(model, model, opt, plan, data, step, args.seq, 1e-3, 1.0, ctx)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
        losses.append(loss)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print(json.dumps({"step_times": times, "peak_rss": peak_rss, "losses": losses}))


def allocated_peaks(args) -> dict:
    from lmforge.train.measure import measure_training_peak
    from lmforge.estimate.memory import estimate_memory
    from lmforge.model.config import ModelConfig

    dims = ModelConfig(size=args.size).dims(args.vocab)
    out = {}
    for ac in (False, True):
        measured = measure_training_peak(dims, micro_batch=args.batch, seq_len=args.seq, activation_checkpointing=ac)
        predicted = estimate_memory(dims, micro_batch=args.batch, seq_len=args.seq, activation_checkpointing=ac)
        out[ac] = (measured["peak"], predicted.peak)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    common = ["--size", args.size, "--vocab", str(args.vocab), "--batch", str(args.batch), "--seq", str(args.seq),
              "--steps", str(args.steps), "--warmup", str(args.warmup)]
    results = {name: {"times": [], "rss": [], "losses": None} for name, _, _ in VARIANTS}
    for round_ in range(args.rounds):
        for name, compiled, ac in VARIANTS:
            cmd = [sys.executable, __file__, "--worker", *common, *(["--compile"] if compiled else []),
                   *(["--checkpointing"] if ac else [])]
            out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            results[name]["times"] += out["step_times"]
            results[name]["rss"].append(out["peak_rss"])
            results[name]["losses"] = out["losses"]
            print(f"round {round_ + 1}/{args.rounds} {name}: median step {statistics.median(out['step_times']):.3f} s",
                  file=sys.stderr, flush=True)
    allocated = allocated_peaks(args)
    tokens = args.batch * args.seq
    base = statistics.median(results["eager"]["times"])
    print(f"{args.size} model, micro-batch {args.batch} x {args.seq} tokens, AdamW fp32, {args.rounds} rounds x "
          f"{args.steps} timed steps (after {args.warmup} warm-up)")
    print("| variant | median step s | tokens/s | vs eager | peak RSS MiB | allocated peak MiB (measured / predicted) |")
    print("|---|---|---|---|---|---|")
    for name, compiled, ac in VARIANTS:
        median = statistics.median(results[name]["times"])
        rss = statistics.median(results[name]["rss"]) / 2**20
        alloc = "" if compiled else "{:.1f} / {:.1f}".format(*(b / 2**20 for b in allocated[ac]))
        print(f"| {name} | {median:.3f} | {tokens / median:,.0f} | {base / median:.2f}x | {rss:.0f} | {alloc} |")
        results[name]["median_step_s"] = median
    drift = max(abs(a - b) for a, b in zip(results["eager"]["losses"], results["compiled"]["losses"]))
    print(f"\nlargest loss difference compiled vs eager over {len(results['eager']['losses'])} steps: {drift:.2e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results, "allocated": {str(k): v for k, v in allocated.items()}},
                      f, indent=1)


if __name__ == "__main__":
    main()
