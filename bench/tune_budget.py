"""Hyperparameter search under a budget of training tokens: TPE + successive halving against a full grid.

The corpus, tokenizer and token shards are the default recipe's (the Python standard library, 4096-token
BPE), prepared once. Every trial trains a reduced model (the ``debug`` size unless --size) for --steps
steps from the recipe's seed and is scored by its final validation loss.

1. grid: every point of  train.lr x train.warmup_steps x model.n_layers  (no pruning). Its best loss is
   the target, its total training tokens the reference.
2. TPE (--startup random trials first) + successive halving (first rung at train.eval_every = 10
   steps, --reduction-factor), for each --seeds sampler seed, over the continuous ranges that the grid
   samples (lr log-uniform over the grid's span, warm-up as an integer range, the same layer choices),
   with a budget of one third of the grid's tokens (``tune.max_tokens``; trials cut by the pruner count
   the tokens they trained).

It prints each search's best loss against tokens spent, and the figures for BENCHMARKS.md:

    python bench/tune_budget.py [--size debug] [--steps 60] [--seeds 0 1 2] [--startup 10] [--reduction-factor 3]
                                [--keep-grid] [--json bench/out/tune_budget.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import time
from pathlib import Path

from lmforge import pipeline
from lmforge.core import progress
from lmforge.recipe import build_config, load_recipe
from lmforge.rundir import RunDir
from lmforge.tune.study import run_study
from lmforge.tune.worker import Budget

LRS = [3e-3, 1e-2, 3e-2, 1e-1]
WARMUPS = [0, 10, 20]
LAYERS = [1, 2, 3]


def recipe(args, tune: dict):
    base = load_recipe("default")
    raw = base.model_dump(mode="json")
    raw["name"] = "tune-budget"
    raw["model"] = {"size": args.size}
    raw["train"].update({"max_steps": args.steps, "batch_size": 8, "seq_len": 64, "eval_every": 10,
                         "eval_batches": 8, "checkpoint_every": args.steps, "warmup_steps": 0})
    raw["tune"] = tune
    return build_config(raw, "bench")


def grid_tune() -> dict:
    return {"sampler": {"kind": "grid"},
            "space": {"train.lr": {"type": "categorical", "choices": LRS},
                      "train.warmup_steps": {"type": "categorical", "choices": WARMUPS},
                      "model.n_layers": {"type": "categorical", "choices": LAYERS}}}


def tpe_tune(args, seed: int, max_tokens: int) -> dict:
    return {"sampler": {"kind": "tpe", "seed": seed, "n_startup_trials": args.startup}, "n_trials": 500,
            "max_tokens": max_tokens,
            "pruner": {"kind": "successive_halving", "reduction_factor": args.reduction_factor},
            "space": {"train.lr": {"type": "float", "low": LRS[0], "high": LRS[-1], "log": True},
                      "train.warmup_steps": {"type": "int", "low": WARMUPS[0], "high": WARMUPS[-1]},
                      "model.n_layers": {"type": "categorical", "choices": LAYERS}}}


def curve(tune_dir: Path) -> list[tuple[int, float]]:
    """(tokens spent so far, best loss so far) after each trial, in the order the trials ran."""
    import optuna

    study = optuna.load_study(study_name="tune-budget", storage=f"sqlite:///{(tune_dir / 'study.db').resolve()}")
    points, spent, best = [], 0, float("inf")
    for t in sorted(Budget.counted(study.get_trials()), key=lambda t: t.number):
        spent += int(t.user_attrs.get("tokens", 0))
        if t.state.name == "COMPLETE":
            best = min(best, t.value)
        points.append((spent, best))
    return points


def search(run: RunDir, cfg, tune_dir: Path, fresh: bool = True) -> dict:
    if fresh:
        shutil.rmtree(tune_dir, ignore_errors=True)
    start = time.perf_counter()
    run_study(run, cfg, tune_dir=tune_dir)
    points = curve(tune_dir)
    return {"curve": points, "tokens": points[-1][0], "best": points[-1][1], "trials": len(points),
            "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="debug")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--startup", type=int, default=10, help="TPE: random trials before the model")
    ap.add_argument("--reduction-factor", type=int, default=3, help="successive halving")
    ap.add_argument("--out", type=Path, default=Path("bench/out/tune_budget"))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep-grid", action="store_true", help="reuse the grid study of an earlier run (same settings)")
    args = ap.parse_args()
    progress.set_enabled(False)
    run = RunDir(args.out / "run")
    grid_cfg = recipe(args, grid_tune())
    if pipeline.done_stages(run).get("pack", {}).get("fingerprint") not in (None, pipeline.fingerprint(grid_cfg, "pack")):
        shutil.rmtree(run.root)  # the default recipe's data settings changed since the last run
        shutil.rmtree(args.out / "grid", ignore_errors=True)
    pipeline.run_through(run, grid_cfg, ["pack"])  # the default corpus, once

    grid = search(run, grid_cfg, args.out / "grid", fresh=not args.keep_grid)
    budget = grid["tokens"] // 3
    print(f"grid: {grid['trials']} trials, {grid['tokens']:,} tokens, best val loss {grid['best']:.4f} "
          f"({grid['seconds']} s)")
    tpe = {}
    for seed in args.seeds:
        result = search(run, recipe(args, tpe_tune(args, seed, budget)), args.out / f"tpe_seed{seed}")
        within = [b for tok, b in result["curve"] if tok <= budget]
        reached = next((tok for tok, b in result["curve"] if b <= grid["best"]), None)
        result.update(best_within_budget=min(within, default=float("inf")), tokens_to_grid_best=reached)
        tpe[seed] = result
        when = "never" if reached is None else f"{reached:,} tokens ({reached / grid['tokens']:.1%} of the grid)"
        print(f"tpe+sh seed {seed}: {result['trials']} trials, {result['tokens']:,} tokens, best {result['best']:.4f}, "
              f"best within {budget:,} tokens {result['best_within_budget']:.4f}, reached the grid's best after "
              f"{when} ({result['seconds']} s)")
    reached = [r["tokens_to_grid_best"] for r in tpe.values()]
    median_best = statistics.median(r["best_within_budget"] for r in tpe.values())
    hits = sum(r is not None and r <= budget for r in reached)
    print(f"\nTPE + successive halving, budget {budget:,} tokens (1/3 of the grid's {grid['tokens']:,}): "
          f"median best {median_best:.4f} vs grid best {grid['best']:.4f} "
          f"(ratio {median_best / grid['best']:.4f}); reached the grid's best within the budget in "
          f"{hits}/{len(reached)} seeds")
    report = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
                         f"{platform.python_version()}", "size": args.size, "steps": args.steps,
              "grid": grid, "budget": budget, "tpe": tpe, "median_best_within_budget": median_best, "hits": hits}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
