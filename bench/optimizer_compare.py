"""The seven optimizers on the default corpus at an equal token budget: `lmforge optimizers compare` with
the settings below, then its results as a Markdown table for BENCHMARKS.md.

Default settings (chosen to finish within an hour on a shared, oversubscribed 2-core CPU; run it with
OMP_NUM_THREADS=1 there, which is ~3x faster than 2 contended threads): the default recipe's corpus,
tokenizer and `tiny` model, batch 8 x 64 tokens, 60 steps (30,720 tokens per run), warm-up 6 steps then
cosine decay, validation every 20 steps on 4 x 16 windows of 64 tokens, three learning rates per
optimizer (0.33x, 1x, 3x its centre). Every run starts from the same seeded weights and sees the same batches.

    OMP_NUM_THREADS=1 python bench/optimizer_compare.py [--run-dir runs/bench-optimizers] [--steps 60] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lmforge.cli import main as lmforge

SETTINGS = ["train.batch_size=8", "train.seq_len=64", "train.warmup_steps=6", "train.eval_every=20",
            "train.eval_batches=4"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/bench-optimizers")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr-factors", default="0.33,1,3")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    overrides = [item for kv in SETTINGS + args.extra for item in ("--set", kv)]
    start = time.perf_counter()
    try:
        lmforge(["optimizers", "compare", "default", "--run-dir", args.run_dir, "--steps", str(args.steps),
                 "--lr-factors", args.lr_factors, *overrides])
    except SystemExit as exc:
        if exc.code:
            raise
    minutes = (time.perf_counter() - start) / 60
    report = json.loads((Path(args.run_dir) / "optimizers" / "results.json").read_text())
    s = report["settings"]
    print(f"\n{s['model']} model, {s['tokens']:,} tokens per run ({s['steps']} steps x {s['tokens_per_step']:,}), "
          f"{s['schedule']} schedule, lr factors {s['lr_factors']}; {minutes:.0f} min in all\n")
    print("| optimizer | best lr | best val loss | val loss per lr | tokens/s (median) | optimizer state MiB |")
    print("|---|---|---|---|---|---|")
    for r in report["optimizers"]:
        sweep = ", ".join(f"{lr}: {'diverged' if v is None else f'{v:.3f}'}" for lr, v in r["sweep"].items())
        best = "diverged" if r["best_val_loss"] is None else f"{r['best_val_loss']:.4f}"
        print(f"| {r['optimizer']} | {r['best_lr'] if r['best_lr'] is not None else ''} | {best} | {sweep} | "
              f"{r['tokens_per_s'] or 0:,.0f} | {r['state_bytes'] / 2**20:.2f} |")
    print(f"\n{report['recommendation']}")


if __name__ == "__main__":
    main()
