"""Merging two fine-tunes of one base, by every method of ``lmforge merge``, on the built-in corpus.

One base is pretrained on the Python standard library without two of its parts (``lmforge data`` +
``lmforge train``; both parts and their tests are left out, and so is any other file with the same text as a
part's file). The base is then fine-tuned (``lmforge finetune``, mode full) on each part on its own, through
``finetune.sources`` (a ``kind: files`` source over a temporary copy of the part's files, curated with the
recipe's ``data:`` steps into its own seeded train / validation split and packed with the base's tokenizer):

- ``net``: networking and e-mail: email/, http/, urllib/, xmlrpc/, smtplib, imaplib, poplib, ftplib, mailbox,
  socketserver;
- ``conc``: concurrency: asyncio/, concurrent/, multiprocessing/, threading, queue, sched, selectors,
  subprocess.

The two fine-tunes (``finetune/model.safetensors`` of each) are merged with every method through the CLI
(``lmforge merge --input NET --input CONC --method M --set merge.base=BASE --set merge.evaluate=false``),
at a few settings each (``SETTINGS`` below). Every model (base, each fine-tune, each merge, and the two
fine-tunes' ensemble: mean next-token probabilities, ``lmforge.model.ensemble.Ensemble``) is then scored here
with ``lmforge.train.validation.window_losses`` on each part's packed validation tokens (the fine-tunes'
``finetune/tokens/val``) and on the pretraining run's validation tokens (``general``), all at the training
sequence length, every window. Figures: the mean window loss (nats per token) and its standard error over
windows, and the share of the fine-tuning gains a model keeps: for part p, (L_base,p - L_model,p) /
(L_base,p - L_ft_p,p), 1 being as good on p as the fine-tune of p itself; averaged over the two parts
(the analogue of the "normalized accuracy" of the merging literature).

    OMP_NUM_THREADS=1 python bench/merge_experiment.py [--pretrain-steps 800] [--finetune-steps 200] \\
        [--json bench/out/merge_experiment.json] [--keep DIR [--resume]]
    OMP_NUM_THREADS=1 python bench/merge_experiment.py --quick     # a smoke run in a few minutes

Losses are deterministic for a seed (single-threaded CPU kernels); timing is not a figure here. The two
fine-tunes run at the same time (``--jobs``), each in its own copy of the pretraining run directory; so do the
merges (in copies without the checkpoints) and the scoring (one single-threaded process per model).

Greedy soup is run twice: as ``lmforge merge`` runs it (its held-out set: the run's validation tokens, here the
pretraining corpus' ``general`` windows), and on a run directory whose validation shards are the two parts'
(so its choice sees the very tokens it is then scored on: with two inputs it picks one fine-tune or the uniform
soup).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import math
import os
import platform
import queue
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import yaml

from lmforge.rundir import RunDir

PARTS = {
    "net": ["email", "http", "urllib", "xmlrpc", "smtplib.py", "imaplib.py", "poplib.py", "ftplib.py",
            "mailbox.py", "socketserver.py"],
    "conc": ["asyncio", "concurrent", "multiprocessing", "threading.py", "queue.py", "sched.py", "selectors.py",
             "subprocess.py"],
}
MODEL = dict(size="tiny", d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, ffn_hidden=344, context_length=128)

# (label, method, --set overrides); dare_* are run at every --dare-seeds seed (label gets "/seed N")
SETTINGS = [
    ("linear", "linear", {}),
    ("greedy_soup", "greedy_soup", {}),
    ("task_arithmetic l=0.5", "task_arithmetic", {"scale": 0.5}),
    ("task_arithmetic l=0.75", "task_arithmetic", {"scale": 0.75}),
    ("task_arithmetic l=1.0", "task_arithmetic", {"scale": 1.0}),
    ("ties d=0.5 l=1.0", "ties", {"density": 0.5, "scale": 1.0}),
    ("ties d=0.7 l=1.0", "ties", {"density": 0.7, "scale": 1.0}),
    ("ties d=0.2 l=1.0", "ties", {"density": 0.2, "scale": 1.0}),
    ("dare_linear d=0.5 l=0.5", "dare_linear", {"density": 0.5, "scale": 0.5}),
    ("dare_linear d=0.5 l=1.0", "dare_linear", {"density": 0.5, "scale": 1.0}),
    ("dare_ties d=0.5 l=1.0", "dare_ties", {"density": 0.5, "scale": 1.0}),
    ("slerp t=0.5", "slerp", {"t": 0.5}),
]
ANCHORS = ("Context from the literature (other models, data and metrics; not targets): TIES 72.4 vs weight "
           "averaging 65.8 mean accuracy on the 8-task ViT-B/32 benchmark (Yadav et al. 2023); greedy soup 81.03% "
           "vs uniform soup 79.97% ImageNet top-1 (Wortsman et al. 2022, CLIP ViT-B/32 fine-tunes).")


# --- the corpora ---------------------------------------------------------------------------------------

def _stems() -> dict[str, str]:
    return {entry.removesuffix(".py"): part for part, entries in PARTS.items() for entry in entries}


def part_of(rel: Path) -> str | None:
    """The part a stdlib file belongs to: its package or module, or its tests (``test/test_<name>...``,
    ``test/_test_multiprocessing.py``); None for the rest."""
    stems, parts = _stems(), rel.parts
    if parts[0] in stems:
        return stems[parts[0]]
    if len(parts) == 1 and rel.stem in stems:
        return stems[rel.stem]
    if len(parts) > 1 and parts[0] == "test":
        name = parts[1].removesuffix(".py").lstrip("_")
        for stem, part in stems.items():
            if name.startswith(f"test_{stem}"):
                return part
    return None


def build_corpora(folder: Path) -> dict:
    """Copy the stdlib's ``.py`` files into ``folder/pretrain`` (all but the parts and their tests) and each
    part's library files into ``folder/<part>``."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in ("site-packages", "dist-packages", "__pycache__"))
        files += [Path(dirpath, n).relative_to(root) for n in sorted(names) if n.endswith(".py")]
    digest = lambda p: hashlib.sha256((root / p).read_bytes()).hexdigest()  # noqa: E731
    chosen: dict[str, list[Path]] = {part: [] for part in PARTS}
    held = set()
    for rel in files:
        part = part_of(rel)
        if part is None:
            continue
        held.add(rel)
        if rel.parts[0] != "test":  # fine-tuning reads the library code, not its tests
            chosen[part].append(rel)
    part_texts = {digest(p) for ps in chosen.values() for p in ps if (root / p).stat().st_size >= 64}
    pretrain = [p for p in files if p not in held]
    same_text = [p for p in pretrain if digest(p) in part_texts]
    pretrain = [p for p in pretrain if p not in set(same_text)]
    chosen["pretrain"] = pretrain
    for name, rels in chosen.items():
        for rel in rels:
            (folder / name / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / rel, folder / name / rel)
    for part in PARTS:  # no part's file (or its tests) reached pretraining
        assert not any(part_of(p.relative_to(folder / "pretrain")) for p in (folder / "pretrain").rglob("*.py"))
    size = lambda ps: sum((root / p).stat().st_size for p in ps)  # noqa: E731
    return {"stdlib": str(root), "held_out_of_pretraining": len(held) + len(same_text),
            **{f"{name}_files": len(rels) for name, rels in chosen.items()},
            **{f"{name}_bytes": size(rels) for name, rels in chosen.items()},
            "same_text_dropped": [str(p) for p in same_text]}


def recipe(folder: Path, args) -> dict:
    steps = args.pretrain_steps
    return {
        "name": "merge-experiment",
        "seed": 1337,
        "data": {"sources": [{"kind": "files", "path": str(folder / "pretrain"), "pattern": "**/*.py"}],
                 "min_chars": 64, "max_chars": 200000, "val_fraction": args.val_fraction},
        "tokenizer": {"vocab_size": args.vocab, "max_train_bytes": 16_000_000},
        "model": MODEL,
        "train": {"max_steps": steps, "batch_size": args.batch, "seq_len": args.seq_len, "lr": args.pretrain_lr,
                  "warmup_steps": max(1, steps // 20), "eval_every": 100, "eval_batches": 8,
                  "checkpoint_every": steps, "keep_checkpoints": 1},
        "finetune": {"mode": "full", "max_steps": args.finetune_steps, "lr": args.finetune_lr,
                     "warmup_steps": max(1, args.finetune_steps // 20)},
        "eval": {"tasks": [], "max_tokens": args.general_tokens},  # greedy soup's criterion: that many val tokens
    }


# --- running lmforge -----------------------------------------------------------------------------------

def child_env(args) -> dict:
    return dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))


def lmforge(argv: list[str], args, log: Path, retry: list[str] | None = None, attempts: int = 3) -> float:
    """``lmforge ARGV`` in a fresh process (as a user runs it); returns its wall seconds. Started again (with
    ``retry`` added: the runs are deterministic) when something outside killed it by a signal, as happens on a
    machine shared with other jobs."""
    start = time.perf_counter()
    for attempt in range(attempts):
        command = argv + (retry or [] if attempt else [])
        with open(log, "a") as out:
            out.write(f"\n$ lmforge {' '.join(command)}\n")
            out.flush()
            done = subprocess.run([sys.executable, "-m", "lmforge", *command], env=child_env(args), stdout=out,
                                  stderr=subprocess.STDOUT)
        if done.returncode >= 0:
            break
        print(f"  (lmforge {argv[0]} was killed by signal {-done.returncode} from outside; starting it again)",
              flush=True)
    if done.returncode:
        raise SystemExit(f"lmforge {' '.join(argv)} failed (exit {done.returncode}); see {log}:\n"
                         + log.read_text()[-3000:])
    return time.perf_counter() - start


def finetune(part: str, folder: Path, run: Path, base: Path, args) -> dict:
    """Fine-tune ``base`` on ``part`` in its own copy of the run directory; returns where its model and
    validation tokens were kept (``folder/finetuned/<part>``, reused with ``--resume``) and its summary."""
    kept = folder / "finetuned" / part
    model = run / "models" / f"finetuned-{part}.safetensors"
    if not (args.resume and (kept / "summary.json").is_file()):
        shutil.rmtree(kept, ignore_errors=True)
        ft_run = folder / f"run-{part}"
        shutil.rmtree(ft_run, ignore_errors=True)
        shutil.copytree(run, ft_run, ignore=shutil.ignore_patterns("finetune", "merge", "models"))
        source = json.dumps([{"kind": "files", "path": str(folder / part), "pattern": "**/*.py"}])
        seconds = lmforge(["finetune", str(folder / "recipe.yaml"), "--run-dir", str(ft_run), "--quiet",
                           "--base", str(ft_run / base.relative_to(run)), "--set", f"finetune.sources={source}"],
                          args, folder / f"finetune-{part}.log", retry=["--redo"])
        kept.mkdir(parents=True)
        shutil.copyfile(ft_run / "finetune" / "model.safetensors", kept / "model.safetensors")
        shutil.copytree(ft_run / "finetune" / "tokens" / "val", kept / "val")
        summary = json.loads((ft_run / "finetune" / "summary.json").read_text())
        (kept / "summary.json").write_text(json.dumps({**summary, "seconds": seconds}))
        shutil.rmtree(ft_run)  # the copy's checkpoints are not needed any more
    summary = json.loads((kept / "summary.json").read_text())
    shutil.copyfile(kept / "model.safetensors", model)
    return {"model": model, "val": kept / "val", "seconds": summary.pop("seconds"), "summary": summary}


def merge(label: str, method: str, settings: dict, inputs: list[Path], base: Path, folder: Path, runs: queue.Queue,
          args, run: Path | None = None) -> dict:
    """``lmforge merge`` of ``inputs`` in a free merge run directory (from ``runs``, or ``run``); the output is
    copied to ``folder/run/models``."""
    own = run is None
    run = runs.get() if own else run
    try:
        argv = ["merge", str(folder / "recipe.yaml"), "--run-dir", str(run), "--quiet", "--method", method,
                "--set", "merge.evaluate=false"]
        for path in inputs:
            argv += ["--input", str(path)]
        if method in ("task_arithmetic", "ties", "dare_linear", "dare_ties"):
            argv += ["--set", f"merge.base={base}"]
        for key, value in settings.items():
            argv += ["--set", f"{key if '.' in key else 'merge.' + key}={value}"]
        seconds = lmforge(argv, args, folder / f"merge-{run.name}.log")
        out = folder / "run" / "models" / f"merge-{label.replace(' ', '_').replace('/', '_')}.safetensors"
        shutil.copyfile(run / "merge" / "model.safetensors", out)
        summary = json.loads((run / "merge" / "summary.json").read_text())
    finally:
        if own:
            runs.put(run)
    return {"label": label, "method": method, "settings": settings, "model": out, "seconds": seconds,
            "soup": summary.get("soup")}


def merge_run(run: Path, to: Path) -> Path:
    """A copy of the pretraining run directory to merge in (its checkpoints, training shards and models left out)."""
    skip = (RunDir(run).checkpoints, RunDir(run).tokens("train"), run / "models")
    shutil.copytree(run, to, ignore=lambda d, names: [n for n in names if (Path(d) / n) in skip])
    return to


def union_val(vals: list[Path], to: Path) -> Path:
    """One packed folder holding every shard of ``vals`` (the parts' validation tokens together)."""
    indexes = [json.loads((v / "index.json").read_text()) for v in vals]
    to.mkdir(parents=True)
    shards = []
    for v, index in zip(vals, indexes):
        for shard in index["shards"]:
            name = f"shard_{len(shards):05d}.bin"
            shutil.copyfile(v / shard["file"], to / name)
            shards.append({**shard, "file": name})
    first = indexes[0]
    assert all((i["dtype"], i["eos_id"], i["vocab_size"]) == (first["dtype"], first["eos_id"], first["vocab_size"])
               for i in indexes)
    (to / "index.json").write_text(json.dumps({
        **{k: first[k] for k in ("dtype", "eos_id", "vocab_size")}, "shards": shards,
        **{k: sum(i[k] for i in indexes) for k in ("num_tokens", "num_documents", "num_bytes")}}, indent=2))
    return to


# --- scoring -------------------------------------------------------------------------------------------

def score_one(what, vals: dict[str, Path], seq_len: int, max_windows: dict[str, int | None]) -> dict:
    """{val set: {"loss", "stderr", "windows"}} of one model (a path) or ensemble (a list of paths), each set
    scored on every window (the first ``max_windows[set]`` where given). Runs in a worker process."""
    import torch

    from lmforge.checkpoint.load import load_model
    from lmforge.data.packing import TokenShards
    from lmforge.model.ensemble import Ensemble
    from lmforge.train.validation import window_losses

    torch.set_num_threads(1)
    model = (Ensemble([load_model(p).model for p in what], "probabilities") if isinstance(what, list)
             else load_model(what).model)
    out = {}
    for val, path in vals.items():
        losses = window_losses(model, TokenShards(path), seq_len, batch_size=8, max_windows=max_windows.get(val),
                               device="cpu")
        out[val] = {"loss": float(losses.mean()), "stderr": float(losses.std(ddof=1) / math.sqrt(len(losses))),
                    "windows": len(losses), "losses": losses.tolist()}
    return out


def score_all(models: dict[str, object], vals: dict[str, Path], seq_len: int, jobs: int,
              max_windows: dict[str, int | None]) -> dict:
    """{model: {val set: figures}} for every model, ``jobs`` single-threaded processes at a time."""
    import multiprocessing

    out = {}
    for attempt in range(3):  # a worker killed from outside breaks the pool: the rest are scored again
        try:
            with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = {name: pool.submit(score_one, what, vals, seq_len, max_windows)
                           for name, what in models.items() if name not in out}
                for name, future in futures.items():
                    out[name] = future.result()
                    print(f"  scored {name}: " + ", ".join(f"{v} {r['loss']:.4f}" for v, r in out[name].items()),
                          flush=True)
            break
        except concurrent.futures.process.BrokenProcessPool:
            if attempt == 2:
                raise
            print("  (a scoring process was killed from outside; scoring the rest again)", flush=True)
    return out


def paired(scores: dict, name: str, other: str) -> tuple[float, float]:
    """Mean-of-the-two-parts loss of ``name`` minus ``other``'s, and the standard error of that difference
    (paired over the same windows of each part)."""
    import numpy as np

    diff, var = 0.0, 0.0
    for part in PARTS:
        a, b = np.array(scores[name][part]["losses"]), np.array(scores[other][part]["losses"])
        d = a - b
        diff += d.mean() / len(PARTS)
        var += d.var(ddof=1) / len(d) / len(PARTS) ** 2
    return float(diff), float(math.sqrt(var))


def gains(scores: dict, name: str) -> dict:
    """The share of each part's fine-tuning gain over the base that model ``name`` keeps, and their mean."""
    out = {}
    for part in PARTS:
        base, ft = scores["base"][part]["loss"], scores[f"finetuned {part}"][part]["loss"]
        out[part] = (base - scores[name][part]["loss"]) / (base - ft)
    out["mean"] = statistics.mean(out[p] for p in PARTS)
    return out


def table(scores: dict, rows: list[str]) -> str:
    head = ("| model | loss net | loss conc | mean of the two | vs linear (paired) | loss general | share of gains kept: "
            "net / conc / mean |\n|---|---:|---:|---:|---:|---:|---|")
    lines = [head]
    for name in rows:
        s = scores[name]
        mean = statistics.mean(s[p]["loss"] for p in PARTS)
        g = gains(scores, name)
        diff, err = paired(scores, name, "linear")
        lines.append(f"| {name} | {s['net']['loss']:.4f} ± {s['net']['stderr']:.4f} | "
                     f"{s['conc']['loss']:.4f} ± {s['conc']['stderr']:.4f} | **{mean:.4f}** | "
                     f"{'—' if name == 'linear' else f'{diff:+.4f} ± {err:.4f}'} | "
                     f"{s['general']['loss']:.4f} | {g['net']:.3f} / {g['conc']:.3f} / **{g['mean']:.3f}** |")
    return "\n".join(lines)


def dare_summary(scores: dict, labels: list[str], seeds: list[int]) -> str:
    """Medians and ranges over the DARE seeds."""
    lines = ["| DARE setting (seeds) | mean of the two: median [min, max] | share of gains kept: median [min, max] |",
             "|---|---:|---:|"]
    for label in labels:
        names = [f"{label} / seed {s}" for s in seeds]
        means = [statistics.mean(scores[n][p]["loss"] for p in PARTS) for n in names]
        kept = [gains(scores, n)["mean"] for n in names]
        lines.append(f"| {label} ({len(seeds)}) | {statistics.median(means):.4f} [{min(means):.4f}, {max(means):.4f}] | "
                     f"{statistics.median(kept):.3f} [{min(kept):.3f}, {max(kept):.3f}] |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrain-steps", type=int, default=800)
    parser.add_argument("--pretrain-lr", type=float, default=3e-3)
    parser.add_argument("--finetune-steps", type=int, default=200)
    parser.add_argument("--finetune-lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--val-fraction", type=float, default=0.15,
                        help="data.val_fraction: each part's (and pretraining's) seeded validation share")
    parser.add_argument("--general-tokens", type=int, default=32768,
                        help="eval.max_tokens: the pretraining validation tokens scored ('general'; greedy soup's "
                        "criterion)")
    parser.add_argument("--dare-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--jobs", type=int, default=2, help="fine-tunes, merges and scorings at the same time")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few steps")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    parser.add_argument("--resume", action="store_true", help="with --keep: reuse a finished pretraining run and "
                        "finished fine-tunes there (same recipe); merges and scores are made again")
    args = parser.parse_args()
    if args.quick:
        args.pretrain_steps, args.finetune_steps, args.dare_seeds = 60, 30, [0]

    started = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="merge-experiment-")) if args.keep is None else args.keep
    folder.mkdir(parents=True, exist_ok=True)
    try:
        run = folder / "run"
        base = RunDir(run).checkpoints / f"step_{args.pretrain_steps:08d}"
        pretrained = folder / "pretrained.json"  # corpora, recipe and timings of a finished pretraining
        if args.resume and pretrained.is_file() and base.is_dir() \
                and json.loads(pretrained.read_text())["recipe"] == recipe(folder, args):
            corpora, timings = (json.loads(pretrained.read_text())[k] for k in ("corpora", "timings"))
            print(f"reusing the pretraining run in {folder}", flush=True)
            shutil.rmtree(run / "models", ignore_errors=True)
            for stale in folder.glob("run-merge-*"):
                shutil.rmtree(stale, ignore_errors=True)
        else:
            corpora = build_corpora(folder)
            (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe(folder, args), sort_keys=False))
            timings = {}
            timings["data"] = lmforge(["data", str(folder / "recipe.yaml"), "--run-dir", str(run), "--quiet"], args,
                                      folder / "pretrain.log")
            timings["train"] = lmforge(["train", str(folder / "recipe.yaml"), "--run-dir", str(run), "--quiet"], args,
                                       folder / "pretrain.log")
            pretrained.write_text(json.dumps({"recipe": recipe(folder, args), "corpora": corpora, "timings": timings}))
        print(f"corpora: {json.dumps({k: v for k, v in corpora.items() if k != 'same_text_dropped'})}", flush=True)
        print(f"pretrained: data {timings['data']:.0f} s, train {timings['train']:.0f} s", flush=True)
        assert base.is_dir(), f"{base}: no such checkpoint"
        (run / "models").mkdir()  # every model kept here, in the run directory (whose tokenizer it reads)
        with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = {part: pool.submit(finetune, part, folder, run, base, args) for part in PARTS}
            tuned = {part: f.result() for part, f in futures.items()}
        for part, t in tuned.items():
            timings[f"finetune {part}"] = t["seconds"]
            print(f"fine-tuned {part}: {t['seconds']:.0f} s, summary "
                  f"{json.dumps({k: v for k, v in t['summary'].items() if not isinstance(v, (dict, list))})}",
                  flush=True)
        inputs = [tuned[p]["model"] for p in PARTS]
        runs: queue.Queue = queue.Queue()
        for i in range(args.jobs):
            runs.put(merge_run(run, folder / f"run-merge-{i}"))
        # greedy soup with the parts' validation tokens as its held-out set: a run directory whose
        # validation shards are both parts' (the figures below are then not held out from its choice)
        soup_run = merge_run(run, folder / "run-merge-soup-parts")
        shutil.rmtree(RunDir(soup_run).tokens("val"))
        union_val([tuned[p]["val"] for p in PARTS], RunDir(soup_run).tokens("val"))
        jobs, dare_labels = [], []
        for label, method, settings in SETTINGS:
            seeds = args.dare_seeds if method.startswith("dare") else [None]
            if method.startswith("dare"):
                dare_labels.append(label)
            for seed in seeds:
                name = label if seed is None else f"{label} / seed {seed}"
                jobs.append((name, method, settings if seed is None else {**settings, "seed": seed}, None))
        jobs.append(("greedy_soup (held out: the parts' val)", "greedy_soup", {"eval.max_tokens": "null"}, soup_run))
        with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = [pool.submit(merge, name, method, settings, inputs, base, folder, runs, args, own_run)
                       for name, method, settings, own_run in jobs]
            merges = []
            for future in futures:
                merges.append(future.result())
                print(f"merged {merges[-1]['label']}: {merges[-1]['seconds']:.1f} s", flush=True)
        timings["merges"] = sum(m["seconds"] for m in merges)

        models = {"base": base, **{f"finetuned {p}": tuned[p]["model"] for p in PARTS},
                  "ensemble (mean probabilities)": inputs, **{m["label"]: m["model"] for m in merges}}
        vals = {**{p: tuned[p]["val"] for p in PARTS}, "general": RunDir(run).tokens("val")}
        t0 = time.perf_counter()
        general_windows = max(1, args.general_tokens // args.seq_len)  # the windows greedy soup reads
        scores = score_all(models, vals, args.seq_len, args.jobs, {"general": general_windows})
        timings["scoring"] = time.perf_counter() - t0
        val_info = {}
        from lmforge.data.packing import TokenShards

        for name, path in vals.items():
            shards = TokenShards(path)
            val_info[name] = {"tokens": shards.num_tokens, "documents": shards.num_documents,
                              "windows": shards.num_windows(args.seq_len),
                              "scored_windows": scores["base"][name]["windows"]}

        single = ["base", "finetuned net", "finetuned conc", "ensemble (mean probabilities)"]
        merged_rows = [m["label"] for m in merges]
        print()
        print(f"Validation loss (nats/token, mean over every {args.seq_len}-token window ± its standard error):")
        for name, info in val_info.items():
            print(f"  {name}: {info['documents']} documents, {info['tokens']:,} tokens, {info['windows']} windows, "
                  f"{info['scored_windows']} scored")
        print()
        print(table(scores, single + merged_rows))
        if dare_labels:
            print()
            print(dare_summary(scores, dare_labels, args.dare_seeds))
        for m in merges:
            if m["soup"]:
                names = list(PARTS)
                first, *rest = m["soup"]
                print(f"\n{m['label']}: starts from {names[first['input']]} (held-out loss {first['loss']:.4f}); "
                      + "; ".join(f"with {names[s['input']]} added the soup's held-out loss is {s['loss']:.4f}: "
                                  f"{'kept' if s['kept'] else 'left out'}" for s in rest))
        print()
        print(ANCHORS)
        timings["total"] = time.perf_counter() - started
        print(f"\nwall time: {json.dumps({k: round(v) for k, v in timings.items()})}")
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({
                "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "machine": {"platform": platform.platform(), "python": platform.python_version(),
                            "cpus": os.cpu_count()},
                "corpora": corpora, "validation": val_info, "timings": timings,
                "finetune": {p: t["summary"] for p, t in tuned.items()},
                "merges": [{k: v for k, v in m.items() if k != "model"} for m in merges],
                "scores": {n: {v: {k: x for k, x in r.items() if k != "losses"} for v, r in sc.items()}
                           for n, sc in scores.items()}, "gains": {n: gains(scores, n) for n in scores}}, indent=2, default=str))
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
