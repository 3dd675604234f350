"""Estimator accuracy on CPU: predicted against measured peak training memory, one row per configuration.

Measured = the peak of live tensor storage bytes during the second of two real training updates (the
loop's ``train_step``; ``lmforge.estimate.measure``): allocated tensor bytes, what the estimator predicts
and what ``torch.cuda.max_memory_allocated`` reports on a GPU. Not the process RSS, which also holds the
interpreter, the libraries and pages the allocator keeps. Memory is deterministic, so one run per row.

The peer column is what the usual tools predict: model states only, 16 bytes per parameter (fp32
weights + gradients + two Adam moments: DeepSpeed's ``estimate_*_model_states_mem_needs`` without ZeRO,
and ``accelerate estimate-memory``'s "training with Adam = 4 x the model size"), no activations.

    python bench/estimator_accuracy.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from lmforge.estimate.measure import measure_training_peak
from lmforge.estimate.memory import estimate_memory
from lmforge.model.config import ModelConfig
from lmforge.model.decoder import count_parameters

# (size, overrides, vocab, micro-batch, seq len, activation checkpointing, precision, optimizer, accumulation)
CONFIGS = [
    ("debug", {}, 512, 4, 64, False, "fp32", "adamw", 1),
    ("debug", {}, 512, 16, 128, False, "fp32", "adamw", 1),
    ("debug", {}, 512, 16, 128, True, "fp32", "adamw", 1),
    ("debug", {}, 512, 8, 64, False, "bf16", "adamw", 1),
    ("debug", {}, 512, 4, 64, False, "fp32", "adafactor", 2),
    ("debug", {"n_kv_heads": 4, "tie_embeddings": False}, 1000, 8, 96, False, "fp32", "muon", 1),
    ("debug", {"dropout": 0.1}, 512, 8, 128, False, "fp32", "sgd", 1),
    ("tiny", {}, 4096, 2, 64, False, "fp32", "adamw", 1),
    ("tiny", {}, 4096, 4, 128, False, "fp32", "adamw", 1),
    ("tiny", {}, 4096, 4, 128, True, "fp32", "adamw", 1),
    ("tiny", {}, 4096, 8, 256, False, "fp32", "adamw", 1),
    ("tiny", {}, 4096, 8, 256, True, "fp32", "adamw", 1),
    ("tiny", {}, 4096, 4, 256, False, "fp32", "lion", 2),
    ("tiny", {}, 4096, 4, 128, False, "bf16", "adamw", 1),
    ("tiny", {}, 4096, 4, 128, True, "bf16", "adamw", 1),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the debug-size rows")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    rows = []
    print(f"# machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print("| model | micro-batch x seq | checkpointing | precision | optimizer | accumulation | measured MiB | "
          "predicted MiB | error | predicted peak in | model states only (peer) | peer error |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for size, overrides, vocab, micro, seq, ac, precision, optimizer, accumulation in CONFIGS:
        if args.quick and size != "debug":
            continue
        dims = ModelConfig(size=size, **overrides).dims(vocab)
        start = time.perf_counter()
        measured = measure_training_peak(dims, micro_batch=micro, seq_len=seq, accumulation=accumulation,
                                         optimizer=optimizer, precision=precision, activation_checkpointing=ac)
        predicted = estimate_memory(dims, micro_batch=micro, seq_len=seq, optimizer=optimizer, precision=precision,
                                    activation_checkpointing=ac, accumulation=accumulation)
        error = predicted.peak / measured["peak"] - 1
        peer = 16 * count_parameters(dims)
        label = size + "".join(f" {k}={v}" for k, v in overrides.items())
        rows.append(dict(model=label, micro_batch=micro, seq_len=seq, checkpointing=ac, precision=precision,
                         optimizer=optimizer, accumulation=accumulation, measured=measured["peak"],
                         predicted=predicted.peak, error=error, phase=predicted.peak_phase, peer=peer,
                         seconds=time.perf_counter() - start))
        print(f"| {label} | {micro} x {seq} | {'on' if ac else 'off'} | {precision} | {optimizer} | {accumulation} | "
              f"{measured['peak'] / 2**20:.2f} | {predicted.peak / 2**20:.2f} | {error:+.1%} | {predicted.peak_phase} | "
              f"{peer / 2**20:.2f} | {peer / measured['peak'] - 1:+.0%} |", flush=True)
    worst = max(abs(r["error"]) for r in rows)
    median = sorted(abs(r["error"]) for r in rows)[len(rows) // 2]
    peer_median = sorted(abs(r["peer"] / r["measured"] - 1) for r in rows)[len(rows) // 2]
    print(f"\n{len(rows)} configurations; lmforge: largest error {worst:.1%}, median absolute error {median:.1%}; "
          f"model states only: median absolute error {peer_median:.0%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
