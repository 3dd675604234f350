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

from lmforge.train.measure import BENCH_CASES, TESTED_CASES, MemoryCase

GPU_CASES = [MemoryCase(size, {}, *rest) for size, *rest in (  # (size, vocab, micro-batch, seq, AC, precision, ...)
    ("tiny", 4096, 8, 256, False, "bf16", "muon", 1), ("small", 16384, 8, 512, False, "bf16", "adamw", 1),
    ("small", 16384, 8, 512, True, "bf16", "adamw", 1), ("124m", 50257, 8, 1024, False, "bf16", "adamw", 1),
    ("124m", 50257, 8, 1024, True, "bf16", "adafactor", 2), ("124m", 50257, 4, 1024, False, "fp16", "lion", 1),
)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this script measures GPU memory (see bench/estimator_accuracy.py for CPU)")
    print(f"# {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    print("| model | micro-batch x seq | checkpointing | precision | optimizer | acc. | measured MiB | predicted MiB "
          "| error | predicted peak in |\n|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for case in TESTED_CASES + BENCH_CASES + GPU_CASES:
        size, overrides, _, micro, seq, ac, precision, optimizer, accumulation = case
        predicted, measured = case.predicted_and_measured("cuda")
        error = predicted.peak / measured - 1
        size += "".join(f" {k}={v}" for k, v in overrides.items())
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
