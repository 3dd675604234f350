"""Compression on trained models, through ``lmforge compress`` as a user runs it, against the targets of the
compression issue: Wanda vs magnitude at 50%, structured pruning's decode speed-up and its cost before and after
recovery, int8 / int4 perplexity, size and speed against dense, and the share of the gap distillation closes.

Two models, each trained on the built-in run's data (the standard library's ``.py`` files):
1. ``default``: the built-in run itself (``lmforge run``: the ``tiny`` decoder, 100 steps);
2. ``small``: the ``small`` decoder (d512, 8 blocks, 8 heads in 4 groups, ffn 1376) trained ``--small-steps``
   on the same token shards (``lmforge train --set model.size=small``);
3. ``long``: the built-in run's ``tiny`` decoder trained ``--long-steps`` instead of 100 (the first two are far
   from converged: pruning their near-initial weights costs little whatever the method).

On each, one ``lmforge compress`` makes: magnitude and Wanda at 50%, 2:4 (Wanda's score), structured with 25% of
the MLP channels removed (``mlp25``, recovered for ``--recovery-steps``) and with a quarter of the channels and
half the heads (``mlp25h50``), int8, int4 (group 32: the ``tiny`` decoder's ffn 688 is no multiple of 32, so int4
is for ``small`` only) and a distilled student with half the blocks beside its cross-entropy control
(``--distill-steps`` each). The table's speed columns are batch-1 medians of ``--repeats`` interleaved rounds in
one process. The figures and the targets are printed and written to ``--json``.

    python bench/compress_quality.py [--work bench/out/compress_quality] [--models default,small]
        [--small-steps 150] [--distill-steps 100] [--recovery-steps 50] [--repeats 5]

The runs are kept in ``--work`` and reused (delete it to train again). For speed against the peer (transformers
+ ``torch.ao.quantization.quantize_dynamic``) see ``bench/compress_speed.py``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

LMFORGE = [sys.executable, "-m", "lmforge"]
MODEL_PARTS = ("train", "eval", "sample", "compress")  # not copied: the small run trains its own model


def lmforge(*args: str) -> None:
    start = time.perf_counter()
    print("$ lmforge " + " ".join(args), flush=True)
    subprocess.run([*LMFORGE, *args], check=True)
    print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)


def variants(model: str, recovery: int, distill: int) -> str:
    items = ["{name: mag50, method: magnitude, sparsity: 0.5}", "{name: wanda50, method: wanda, sparsity: 0.5}",
             "{name: sparse24, method: two_four}",
             f"{{name: mlp25, method: structured, mlp_fraction: 0.25, recovery_steps: {recovery}}}",
             "{name: mlp25h50, method: structured, mlp_fraction: 0.25, head_fraction: 0.5}",
             "{name: q8, method: int8}"]
    if model == "small":
        items.append("{name: q4, method: int4, group_size: 32}")
    items.append(f"{{name: kd, method: distill, max_steps: {distill}}}")
    return "compress.variants=[" + ", ".join(items) + "]"


def prepare(work: Path, model: str, small_steps: int, long_steps: int) -> Path:
    default = work / "default"
    if not (default / "train" / "checkpoints").is_dir():
        shutil.rmtree(default, ignore_errors=True)
        lmforge("run", "--run-dir", str(default))
    if model == "default":
        return default
    run = work / model
    size, steps = ("small", small_steps) if model == "small" else ("tiny", long_steps)
    if not (run / "train" / "checkpoints").is_dir():
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(default, run, ignore=lambda folder, names: MODEL_PARTS if Path(folder) == default else ())
        lmforge("train", "--run-dir", str(run), "--redo", "--set", f"model.size={size}",
                "--set", f"train.max_steps={steps}", "--set", f"train.warmup_steps={max(10, steps // 20)}",
                "--set", "train.eval_every=50", "--set", f"train.checkpoint_every={steps}")
    return run


def report(model: str, rows: dict, summary: dict) -> dict:
    dense = rows["dense"]
    rise = {n: r["perplexity"] / dense["perplexity"] - 1 for n, r in rows.items()}
    ratio = {n: r["ratio_to_dense"] for n, r in rows.items()}
    print(f"\n{model}: dense {dense['parameters']:,} parameters, perplexity {dense['perplexity']:.3f}, decode "
          f"{dense['decode_tokens_per_s']:.1f} tok/s")
    print(f"{'variant':18s} {'params':>11s} {'nonzero':>11s} {'MB':>7s} {'ppl':>8s} {'ppl rise':>9s} "
          f"{'decode x':>9s} {'prefill x':>10s}")
    for n, r in rows.items():
        print(f"{n:18s} {r['parameters']:11,} {r['nonzero_parameters']:11,} {r['weight_bytes'] / 1e6:7.1f} "
              f"{r['perplexity']:8.3f} {rise[n]:+9.2%} {ratio[n]['decode_tokens_per_s']:8.2f}x "
              f"{ratio[n]['prefill_tokens_per_s']:9.2f}x")
    checks = {}

    def check(name, value, target, ok):
        checks[name] = {"value": value, "target": target, "met": bool(ok)}
        print(f"  {'MET ' if ok else 'MISS'} {name}: {value:.4g} (target {target})")

    check("wanda50 ppl rise / magnitude50 ppl rise", rise["wanda50"] / rise["mag50"], "<= 0.5",
          rise["wanda50"] <= 0.5 * rise["mag50"])
    check("mlp25 decode speed-up", ratio["mlp25"]["decode_tokens_per_s"], ">= 1.2",
          ratio["mlp25"]["decode_tokens_per_s"] >= 1.2)
    print(f"  mlp25 perplexity rise {rise['mlp25']:+.2%} before recovery, {rise['mlp25-recovered']:+.2%} after "
          f"(mlp25h50: {rise['mlp25h50']:+.2%}, decode {ratio['mlp25h50']['decode_tokens_per_s']:.2f}x)")
    size = {n: 1 / ratio[n]["weight_bytes"] for n in rows}
    check("int8 ppl rise", rise["q8"], "<= 1%", rise["q8"] <= 0.01)
    check("int8 smaller", size["q8"], ">= 3.5x", size["q8"] >= 3.5)
    check("int8 decode speed-up", ratio["q8"]["decode_tokens_per_s"], ">= 3.5x (small)",
          ratio["q8"]["decode_tokens_per_s"] >= 3.5)
    if "q4" in rows:
        check("int4 ppl rise", rise["q4"], "<= 5%", rise["q4"] <= 0.05)
        check("int4 smaller", size["q4"], ">= 6x", size["q4"] >= 6)
        check("int4 decode speed-up", ratio["q4"]["decode_tokens_per_s"], ">= 5x (small)",
              ratio["q4"]["decode_tokens_per_s"] >= 5)
    gap = summary["variants"]["kd"].get("gap_closed")
    print(f"  distillation: student {rows['kd']['parameters']:,} parameters "
          f"({rows['kd']['parameters'] / dense['parameters']:.0%} of the teacher), val loss kd "
          f"{rows['kd']['val_loss']:.4f}, CE-only {rows['kd-ce']['val_loss']:.4f}, teacher {dense['val_loss']:.4f}")
    if gap is not None:
        check("distillation gap closed", gap, ">= 30%", gap >= 0.3)
    return {"rows": rows, "checks": checks, "gap_closed": gap}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("bench/out/compress_quality"))
    parser.add_argument("--models", default="default,small,long")
    parser.add_argument("--long-steps", type=int, default=800)
    parser.add_argument("--small-steps", type=int, default=150)
    parser.add_argument("--distill-steps", type=int, default=100)
    parser.add_argument("--recovery-steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = {}
    for model in args.models.split(","):
        run = prepare(args.work, model, args.small_steps, args.long_steps)
        lmforge("compress", "--run-dir", str(run), "--set", variants(model, args.recovery_steps, args.distill_steps),
                "--set", f"compress.measure.repeats={args.repeats}", "--set", "compress.measure.memory=false")
        rows = json.loads((run / "compress" / "table.json").read_text())
        summary = json.loads((run / "compress" / "summary.json").read_text())
        results[model] = report(model, rows, summary)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"results": results, "args": {k: str(v) for k, v in vars(args).items()}},
                                        indent=2))


if __name__ == "__main__":
    main()
