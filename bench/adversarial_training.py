"""Adversarial training on the built-in classification task: accuracy under attack and its clean-accuracy cost.

A base is pretrained once with the built-in default recipe (``lmforge data``, ``lmforge train``). For each seed
(``--seeds``: the task's seeded examples, the head's init, the batch order) a classification head is fine-tuned
on the built-in ``which_package`` task (which of the four largest stdlib packages a function comes from) through
``lmforge finetune`` (mode full), once plainly and once per adversarial method (``--methods``: ``pgd`` and/or
``freelb``, ``finetune.adversarial`` with ``--train-epsilon`` and ``--train-steps`` ascent steps), each in its own
copy of the base's run directory, with the same steps, batch and learning rate. Each classifier is then attacked
through ``lmforge attack`` on the same ``--examples`` test examples (the evaluation stage's, from validation
documents none of whose texts is in the training ones) with FGSM, PGD (L-infinity and L2, ``--attack-epsilon``)
and HotFlip, the plain model given as ``attack.compare`` of the adversarially trained one, so one report holds
both. Printed: per seed and as medians, clean accuracy, accuracy under each attack, and the wall time of each
fine-tuning (the adversarial one's as a ratio of the plain one's; a shared machine makes that ratio noisy).

    OMP_NUM_THREADS=2 python bench/adversarial_training.py [--seeds 0 1 2] [--methods pgd freelb] \\
        [--finetune-steps 150] [--examples 100] [--json bench/out/adversarial.json]
    python bench/adversarial_training.py --quick      # a smoke run

There is no peer to compare with: no Hugging Face, TextAttack or ART trainer does adversarial training of a model
offline (transformers #33983 is an open request); the plain fine-tuning is the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
from pathlib import Path

import torch

from finetune_transfer import run_cli, sets  # lmforge in a fresh process, retried if killed from outside


def finetune(base: Path, run: Path, args, seed: int, method: str | None, log: Path) -> float:
    shutil.copytree(base, run)
    overrides = {"seed": seed, "finetune.objective": "classification", "finetune.task": "which_package",
                 "finetune.max_steps": args.finetune_steps, "finetune.lr": args.lr,
                 "finetune.warmup_steps": args.finetune_steps // 10, "train.batch_size": args.batch,
                 "train.seq_len": args.seq_len, "train.eval_every": args.finetune_steps,
                 "train.checkpoint_every": args.finetune_steps}
    if method is not None:
        overrides |= {"finetune.adversarial.method": method, "finetune.adversarial.epsilon": args.train_epsilon,
                      "finetune.adversarial.steps": args.train_steps}
    return run_cli(["finetune", "--run-dir", str(run), *sets(overrides), "--quiet"], args, log)


def tokens_per_second(run: Path) -> float:
    """The median training throughput of a fine-tuning run (its loop alone, without start-up and scoring)."""
    records = [json.loads(line) for line in (run / "finetune" / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["tokens_per_s"] for r in records if r.get("kind") == "train" and r["step"] > 1)


def attacks(args) -> str:
    e = args.attack_epsilon
    return json.dumps([{"name": "fgsm", "epsilon": e}, {"name": "pgd", "epsilon": e, "steps": args.attack_steps},
                       {"name": "pgd", "norm": "l2", "epsilon": e, "steps": args.attack_steps},
                       {"name": "hotflip"}])


def attack(run: Path, compare: Path, args, seed: int, log: Path) -> dict:
    overrides = {"seed": seed, "attack.checkpoint": "finetuned", "attack.examples": args.examples,
                 "attack.seed": seed, "attack.attacks": attacks(args),
                 "attack.compare": json.dumps([str(compare / "finetune" / "model.safetensors")]),
                 "attack.shown_examples": 2}
    run_cli(["attack", "--run-dir", str(run), *sets(overrides), "--quiet"], args, log)
    summary = json.loads((run / "attack" / "summary.json").read_text())
    return {Path(m["model"]).parent.parent.name: m for m in summary["models"]}


def accuracies(model: dict) -> dict:
    out = {"clean": model["clean_accuracy"]}
    out |= {key: s["accuracy_under_attack"] for key, s in model["attacks"].items()}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=["pgd", "freelb"], choices=["pgd", "freelb"])
    p.add_argument("--pretrain-steps", type=int, default=300)
    p.add_argument("--finetune-steps", type=int, default=150)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128, help="fine-tuning's: a text's last seq_len - 1 tokens")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--train-epsilon", type=float, default=0.1)
    p.add_argument("--train-steps", type=int, default=2)
    p.add_argument("--attack-epsilon", type=float, default=0.1)
    p.add_argument("--attack-steps", type=int, default=10)
    p.add_argument("--examples", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="a smoke run: one seed, few steps and examples")
    p.add_argument("--keep", type=Path, help="keep the run directories here")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    if args.quick:
        args.seeds, args.pretrain_steps, args.finetune_steps, args.examples = args.seeds[:1], 20, 10, 8

    root = Path(tempfile.mkdtemp(prefix="adv-bench-")) if args.keep is None else args.keep
    root.mkdir(parents=True, exist_ok=True)
    log = root / "lmforge.log"
    base = root / "base"
    if not (base / "train" / "summary.json").exists():  # --keep DIR of an earlier run: its base is reused
        print(f"pretraining the base (default recipe, {args.pretrain_steps} steps) in {base}", flush=True)
        shutil.rmtree(base, ignore_errors=True)
        run_cli(["data", "--run-dir", str(base), "--quiet"], args, log)
        run_cli(["train", "--run-dir", str(base), *sets({"train.max_steps": args.pretrain_steps,
                                                        "train.checkpoint_every": args.pretrain_steps}), "--quiet"],
                args, log)
    for old in root.glob("seed*"):
        shutil.rmtree(old)
    results = []
    for seed in args.seeds:
        plain = root / f"seed{seed}-plain"
        seconds = {"plain": finetune(base, plain, args, seed, None, log)}
        speed = {"plain": tokens_per_second(plain)}
        row = {"seed": seed, "seconds": seconds, "tokens_per_s": speed, "accuracy": {}}
        for method in args.methods:
            run = root / f"seed{seed}-{method}"
            seconds[method] = finetune(base, run, args, seed, method, log)
            speed[method] = tokens_per_second(run)
            models = attack(run, plain, args, seed, log)
            row["accuracy"][method] = accuracies(models[run.name])
            row["accuracy"]["plain"] = accuracies(models[plain.name])  # the same examples and attacks each time
        results.append(row)
        print(f"seed {seed}: " + "; ".join(f"{name} {json.dumps({k: round(v, 3) for k, v in acc.items()})}"
                                            for name, acc in row["accuracy"].items())
              + f"; fine-tuning seconds {json.dumps({k: round(v, 1) for k, v in seconds.items()})}, tokens/s "
              + json.dumps({k: round(v) for k, v in speed.items()}), flush=True)

    names = ["plain", *args.methods]
    keys = list(results[0]["accuracy"]["plain"])
    print(f"\nmedians over seeds {args.seeds} ({args.examples} test examples each; attack epsilon "
          f"{args.attack_epsilon}, training epsilon {args.train_epsilon}, {args.train_steps} ascent steps)")
    print("| model | " + " | ".join(keys) + " | fine-tuning wall time | training step time |")
    print("|---|" + "---:|" * (len(keys) + 2))
    medians = {}
    for name in names:
        acc = {k: statistics.median(r["accuracy"][name][k] for r in results) for k in keys}
        ratio = statistics.median(r["seconds"][name] / r["seconds"]["plain"] for r in results)
        step = statistics.median(r["tokens_per_s"]["plain"] / r["tokens_per_s"][name] for r in results)
        medians[name] = {"accuracy": acc, "time_ratio": ratio, "step_time_ratio": step}
        print(f"| {name} | " + " | ".join(f"{acc[k]:.3f}" for k in keys) + f" | {ratio:.2f}x | {step:.2f}x |")
    for name in args.methods:
        gain = {k: medians[name]["accuracy"][k] - medians["plain"]["accuracy"][k] for k in keys}
        print(f"{name} - plain: " + ", ".join(f"{k} {v:+.3f}" for k, v in gain.items()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                                         "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                                                     "torch": torch.__version__},
                                         "seeds": results, "medians": medians}, indent=2))
    if args.keep is None:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
