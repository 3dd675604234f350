"""Estimator accuracy on CPU: predicted against measured peak training memory, one row per configuration.

Measured = the peak of live tensor storage bytes during the second of two real training updates (the
loop's ``train_step``; ``lmforge.train.measure``): allocated tensor bytes, what the estimator predicts
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

from lmforge.train.measure import BENCH_CASES, TESTED_CASES
from lmforge.model.decoder import count_parameters


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
    for case in TESTED_CASES + BENCH_CASES:
        size, overrides, _, micro, seq, ac, precision, optimizer, accumulation = case
        if args.quick and size != "debug":
            continue
        start = time.perf_counter()
        predicted, measured = case.predicted_and_measured()
        error = predicted.peak / measured - 1
        peer = 16 * count_parameters(case.dims())
        label = size + "".join(f" {k}={v}" for k, v in overrides.items())
        rows.append(dict(model=label, micro_batch=micro, seq_len=seq, checkpointing=ac, precision=precision,
                         optimizer=optimizer, accumulation=accumulation, measured=measured,
                         predicted=predicted.peak, error=error, phase=predicted.peak_phase, peer=peer,
                         seconds=time.perf_counter() - start))
        print(f"| {label} | {micro} x {seq} | {'on' if ac else 'off'} | {precision} | {optimizer} | {accumulation} | "
              f"{measured / 2**20:.2f} | {predicted.peak / 2**20:.2f} | {error:+.1%} | {predicted.peak_phase} | "
              f"{peer / 2**20:.2f} | {peer / measured - 1:+.0%} |", flush=True)
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
