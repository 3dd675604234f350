"""Estimator accuracy on a CUDA GPU: predicted peak against ``torch.cuda.max_memory_allocated``.

The same configurations as bench/estimator_accuracy.py (CPU) plus GPU-sized ones; each runs two training
updates with the loop's own ``train_step`` and the peak of the second is compared with the estimator's
``peak`` (allocated bytes; ``device_total`` adds the CUDA context and allocator slack, which
max_memory_allocated does not count). Exits with a message where no GPU is available.

    python bench/gpu_estimate.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

CONFIGS = [  # (size, vocab, micro-batch, seq len, checkpointing, precision, optimizer, accumulation)
    ("debug", 512, 4, 64, False, "fp32", "adamw", 1), ("debug", 512, 16, 128, False, "fp32", "adamw", 1),
    ("debug", 512, 16, 128, True, "fp32", "adamw", 1), ("debug", 512, 8, 64, False, "bf16", "adamw", 1),
    ("tiny", 4096, 8, 256, False, "fp32", "adamw", 1), ("tiny", 4096, 8, 256, True, "fp32", "adamw", 1),
    ("tiny", 4096, 8, 256, False, "bf16", "muon", 1), ("small", 16384, 8, 512, False, "bf16", "adamw", 1),
    ("small", 16384, 8, 512, True, "bf16", "adamw", 1), ("124m", 50257, 8, 1024, False, "bf16", "adamw", 1),
    ("124m", 50257, 8, 1024, True, "bf16", "adafactor", 2), ("124m", 50257, 4, 1024, False, "fp16", "lion", 1),
]


def measure(dims, micro, seq, ac, precision, optimizer, accumulation) -> int:
    from lmforge.distributed.context import DistContext
    from lmforge.estimate.measure import RandomWindows
    from lmforge.model.decoder import Decoder
    from lmforge.train.batches import BatchPlan
    from lmforge.train.config import TrainConfig
    from lmforge.train.loop import train_step
    from lmforge.train.memory import apply_activation_checkpointing, release_memory
    from lmforge.train.optim import build_optimizer
    from lmforge.train.precision import precision_policy

    device = torch.device("cuda")
    batch = micro * accumulation
    torch.manual_seed(0)
    model = Decoder(dims).to(device)
    if ac:
        apply_activation_checkpointing(model)
    opt = build_optimizer(model, TrainConfig(optimizer=optimizer, batch_size=batch, micro_batch_size=micro))
    policy, ctx = precision_policy(precision, device), DistContext(device=device)
    plan, data = BatchPlan(64 * batch, batch, 0, micro_batch_size=micro), RandomWindows(dims.vocab_size)
    train_step(model, model, opt, plan, data, 0, seq, 1e-4, 1.0, ctx, policy)  # creates the optimizer state
    torch.cuda.reset_peak_memory_stats(device)
    train_step(model, model, opt, plan, data, 1, seq, 1e-4, 1.0, ctx, policy)
    peak = torch.cuda.max_memory_allocated(device)
    del model, opt
    release_memory()
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this script measures GPU memory (see bench/estimator_accuracy.py for CPU)")
    from lmforge.estimate.memory import estimate_memory
    from lmforge.model.config import ModelConfig

    print(f"# {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    print("| model | micro-batch x seq | checkpointing | precision | optimizer | acc. | measured MiB | predicted MiB "
          "| error | predicted peak in |\n|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for size, vocab, micro, seq, ac, precision, optimizer, accumulation in CONFIGS:
        dims = ModelConfig(size=size).dims(vocab)
        measured = measure(dims, micro, seq, ac, precision, optimizer, accumulation)
        predicted = estimate_memory(dims, micro_batch=micro, seq_len=seq, optimizer=optimizer, precision=precision,
                                    activation_checkpointing=ac, accumulation=accumulation, device="cuda")
        error = predicted.peak / measured - 1
        rows.append(dict(model=size, micro_batch=micro, seq_len=seq, checkpointing=ac, precision=precision,
                         optimizer=optimizer, accumulation=accumulation, measured=measured, predicted=predicted.peak,
                         error=error, phase=predicted.peak_phase))
        print(f"| {size} | {micro} x {seq} | {'on' if ac else 'off'} | {precision} | {optimizer} | {accumulation} | "
              f"{measured / 2**20:.1f} | {predicted.peak / 2**20:.1f} | {error:+.1%} | {predicted.peak_phase} |",
              flush=True)
    print(f"\nlargest error {max(abs(r['error']) for r in rows):.1%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
