"""Transfer: fine-tuning a pretrained base against training from scratch on a held-out domain, and LoRA
against full fine-tuning (share of the loss improvement, training memory).

The domain is one package of this Python's standard library held out of pretraining (``--holdout``,
default ``asyncio``). Pretraining reads every other ``.py`` file of the stdlib, copied into a temporary
folder (a ``kind: files`` source): the package and its tests (``test/test_<package>*``) are left out, and so
is any other file with the text of a domain file (checked). ``lmforge data`` trains the tokenizer on that
corpus and ``lmforge train`` pretrains a small decoder on it. The domain is the package's own files
(``--domain-tests``: and its tests), given as ``finetune.sources``: curated with the recipe's ``data:``
steps and packed with the base's tokenizer, with its own seeded train / validation split
(``--domain-val-fraction``). On it, every run has the same steps, batch, warm-up and cosine schedule:

1. ``lmforge finetune`` (mode full) from the pretrained base, against the same architecture trained from
   its seeded random init on the same tokens: the training loop's ``train()`` without ``init_from``, on
   fine-tuning's run directory (a ``FinetuneRunDir`` whose checkpoints and metrics go elsewhere). Each gets
   its best learning rate of a small sweep on the first seed (by final validation loss). The figure: the
   tokens fine-tuning needs to reach the from-scratch model's final validation loss, located by linear
   interpolation between evaluation points (every ``--eval-every`` steps), as a share of the tokens the
   scratch model trained on (target <= 1/4). The scratch model's loss halfway is printed too, to show it has
   flattened.
2. ``lmforge finetune`` mode lora (rank ``--lora-rank`` on every block projection, alpha = 2 x rank: <= 2%
   of the parameters) against mode full after the same steps: LoRA's share of full fine-tuning's
   validation-loss improvement over the base (target >= 90%), and training memory (target >= 30% less).
   A diagnostic run fine-tunes everything but the embeddings (and the LM head tied to them): roughly the
   most that adapters on the blocks can get.

Memory is measured in a fresh process per run, through the same ``lmforge finetune`` (its ``main()`` run
in-process with the loop's ``train_step`` wrapped), over ``--memory-steps`` steps: on CPU the peak of
allocated tensor bytes (the parameters' storages plus the peak of every tensor made during the steps, counted
by ``lmforge.train.measure.LiveTensorBytes``: what ``torch.cuda.max_memory_allocated`` counts, which is used
instead on a GPU), and, for reference, the process's RSS: its high-water mark over the steps (VmHWM, reset
just before the first step) and that minus the RSS just before it (the interpreter, torch, peft and the
loaded base are in that baseline). Cases: the benchmark's model, and a larger one (d_model 512 x 8 blocks,
~25M parameters, whose weights, gradients and optimizer state are not swamped by activations) at the
benchmark's batch, at a quarter of it per micro-batch (gradient accumulation, same batch), and with
activation checkpointing. Memory does not depend on the weights: those bases are one pretraining step in.

Losses are deterministic for a seed (single-threaded CPU kernels), so runs go ``--jobs`` at a time, each in
its own copy of the data-stage run directory (timing is not a figure here). ``--seeds``: each further seed
replicates parts 1 and 2 (the domain's split, the batch order, the scratch model's init; the pretrained base
is the same) at the learning rates the first seed's sweeps chose; the table gives each seed and medians.

    OMP_NUM_THREADS=1 python bench/finetune_transfer.py [--seeds 0 1] [--jobs 2] [--holdout asyncio] \\
        [--domain-tests] [--pretrain-steps 2400] [--steps 400] [--lora-rank 3] [--json bench/out/transfer.json]
    OMP_NUM_THREADS=1 python bench/finetune_transfer.py --quick      # a smoke run of every part

About 45 minutes of a 2-core CPU with the defaults (two runs at a time; ``--seeds 0`` took 25.5 with one
rate fewer in the full and LoRA sweeps). Temporary folders are removed unless ``--keep DIR``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import inspect
import json
import os
import platform
import queue
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

import yaml

BENCH = Path(__file__).absolute()
MODEL = dict(size="tiny", d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, ffn_hidden=344, context_length=128)
MEMORY_MODEL = dict(size="small", d_model=512, n_layers=8, n_heads=8, n_kv_heads=4, ffn_hidden=1376,
                    context_length=128)
TARGET_TOKENS, TARGET_SHARE, TARGET_MEMORY, MAX_LORA_SHARE = 0.25, 0.90, 0.30, 0.02


# --- the corpora ---------------------------------------------------------------------------------------

def held_out(rel: Path, package: str) -> bool:
    """``package/...`` and its tests (``test/test_<package>/...``, ``test/test_<package>*.py``)."""
    parts = rel.parts
    return parts[0] == package or (len(parts) > 1 and parts[0] == "test" and parts[1].startswith(f"test_{package}"))


def build_corpora(package: str, folder: Path, with_tests: bool) -> dict:
    """Copy the stdlib's ``.py`` files into ``folder/pretrain`` (all but the package and its tests) and
    ``folder/domain`` (the package, and its tests if ``with_tests``)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    if not (root / package).is_dir():
        raise SystemExit(f"--holdout {package}: no such package in {root}")
    files = []
    for dirpath, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in ("site-packages", "dist-packages", "__pycache__"))
        files += [Path(dirpath, n).relative_to(root) for n in sorted(names) if n.endswith(".py")]
    digest = lambda p: hashlib.sha256((root / p).read_bytes()).hexdigest()  # noqa: E731
    domain = [p for p in files if held_out(p, package) and (with_tests or p.parts[0] == package)]
    domain_texts = {digest(p) for p in domain if (root / p).stat().st_size >= 64}
    pretrain = [p for p in files if not held_out(p, package)]  # the tests of the package are left out too
    same_text = [p for p in pretrain if digest(p) in domain_texts]  # a copy of a domain file elsewhere
    pretrain = [p for p in pretrain if p not in set(same_text)]
    for name, chosen in (("pretrain", pretrain), ("domain", domain)):
        for rel in chosen:
            (folder / name / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / rel, folder / name / rel)
    assert not {p.as_posix() for p in pretrain} & {p.as_posix() for p in domain}
    assert not any(held_out(p.relative_to(folder / "pretrain"), package) for p in (folder / "pretrain").rglob("*.py"))
    size = lambda ps: sum((root / p).stat().st_size for p in ps)  # noqa: E731
    return {"stdlib": str(root), "package": package, "pretrain_files": len(pretrain), "pretrain_bytes": size(pretrain),
            "domain_files": len(domain), "domain_bytes": size(domain), "same_text_dropped": [str(p) for p in same_text]}


def recipe(folder: Path, args, model: dict) -> dict:
    return {
        "name": "finetune-transfer",
        "seed": 1337,
        "data": {"sources": [{"kind": "files", "path": str(folder / "pretrain"), "pattern": "**/*.py"}],
                 "min_chars": 64, "max_chars": 200000, "val_fraction": 0.02},
        "tokenizer": {"vocab_size": args.vocab, "max_train_bytes": 16_000_000},
        "model": model,
        "train": {"max_steps": args.pretrain_steps, "batch_size": args.pretrain_batch, "seq_len": args.seq_len,
                  "lr": args.pretrain_lr, "warmup_steps": max(1, args.pretrain_steps // 20), "eval_every": 100,
                  "eval_batches": 8, "checkpoint_every": args.pretrain_steps, "keep_checkpoints": 1},
        "finetune": {"sources": [{"kind": "files", "path": str(folder / "domain"), "pattern": "**/*.py"}],
                     "lora": {"rank": args.lora_rank, "alpha": 2.0 * args.lora_rank}},
    }


# --- running lmforge -----------------------------------------------------------------------------------

def child_env(args) -> dict:
    return dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))


def run_process(argv: list[str], args, log: Path, attempts: int = 3) -> subprocess.CompletedProcess:
    """``argv`` with its output appended to ``log``; started again (from scratch: the runs are deterministic)
    if something outside killed it by a signal, as happens on a machine shared with other jobs."""
    for attempt in range(attempts):
        with open(log, "a") as out:
            done = subprocess.run(argv, env=child_env(args), stdout=out, stderr=subprocess.STDOUT)
        if done.returncode >= 0 or attempt == attempts - 1:
            return done
        print(f"  (a run was killed by signal {-done.returncode} from outside; starting it again)", flush=True)
    return done


def run_cli(argv: list[str], args, log: Path) -> float:
    """``lmforge ARGV`` in a fresh process (as a user runs it); returns its wall seconds."""
    start = time.perf_counter()
    done = run_process([sys.executable, "-m", "lmforge", *argv], args, log)
    if done.returncode:
        raise SystemExit(f"lmforge {' '.join(argv)} failed (exit {done.returncode}); see {log}:\n"
                         + log.read_text()[-3000:])
    return time.perf_counter() - start


def sets(overrides: dict) -> list[str]:
    return [a for key, value in overrides.items() for a in ("--set", f"{key}={value}")]


def domain_overrides(args, seed: int, mode: str, lr: float) -> dict:
    """What a fine-tuning (or scratch) run sets on top of the stored recipe."""
    return {"seed": seed, "train.batch_size": args.batch, "finetune.mode": mode, "finetune.lr": lr,
            "finetune.max_steps": args.steps,
            "finetune.warmup_steps": args.warmup, "train.eval_every": args.eval_every,
            "train.eval_batches": args.eval_batches, "train.checkpoint_every": args.steps,
            "data.val_fraction": args.domain_val_fraction}


def read_evals(metrics: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return [(r["step"], r["val_loss"]) for r in records if r.get("kind") == "eval"]


def finetune_job(run: Path, out: Path, args, seed: int, mode: str, lr: float, base: Path) -> dict:
    start = time.perf_counter()
    overrides = dict(domain_overrides(args, seed, mode, lr), **{"finetune.base": base})
    if mode == "frozen":  # the diagnostic: full fine-tuning of the blocks, the embeddings (tied LM head) frozen
        overrides["finetune.frozen.embeddings"] = "true"
    run_cli(["finetune", "--run-dir", str(run), "--redo", "--quiet", *sets(overrides)], args, out / "log.txt")
    for name in ("metrics.jsonl", "summary.json"):
        shutil.copyfile(run / "finetune" / name, out / name)
    summary = json.loads((out / "summary.json").read_text())
    return {"evals": read_evals(out / "metrics.jsonl"), "summary": summary, "wall_s": time.perf_counter() - start}


def scratch_job(run: Path, out: Path, args, seed: int, lr: float, base: Path) -> dict:
    """``base`` only names the model's shape and tokenizer for ``check_finetune``: training starts from the
    seeded random init."""
    start = time.perf_counter()
    argv = [sys.executable, str(BENCH), "--worker", "scratch", "--run-dir", str(run), "--out", str(out),
            *sets(dict(domain_overrides(args, seed, "full", lr), **{"finetune.base": base}))]
    done = run_process(argv, args, out / "log.txt")
    if done.returncode:
        raise SystemExit(f"scratch run failed; see {out / 'log.txt'}:\n" + (out / "log.txt").read_text()[-3000:])
    return {"evals": read_evals(out / "metrics.jsonl"), "summary": json.loads((out / "summary.json").read_text()),
            "wall_s": time.perf_counter() - start}


def scratch_worker(run_dir: Path, out: Path, overrides: list[str]) -> None:
    """Train the base's architecture from its seeded random init on fine-tuning's tokens (the domain), with
    fine-tuning's steps, learning rate, warm-up and schedule: the training loop without ``init_from``."""
    import torch

    from lmforge.command import resolve
    from lmforge.distributed.context import init_distributed, shutdown
    from lmforge.train.loop import train
    from lmforge.transfer.data import prepare_data
    from lmforge.transfer.stage import STAGE, FinetuneRunDir, check_finetune

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cfg, run = resolve(None, run_dir, tuple(overrides))
    plan = check_finetune(run, cfg, resume=False, redo=True)

    class ScratchRunDir(FinetuneRunDir):
        """Fine-tuning's tokens and tokenizer; checkpoints and metrics of its own."""

        @property
        def checkpoints(self) -> Path:
            return out / "checkpoints"

        @property
        def metrics(self) -> Path:
            return out / "metrics.jsonl"

    scratch = ScratchRunDir(run, plan.data)
    figures = prepare_data(run, scratch.stage_dir(STAGE), cfg, plan.data)  # reused when fine-tuning packed them
    for stale in (scratch.checkpoints, scratch.metrics):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    ctx = init_distributed(cfg.train.device)
    try:
        result = train(scratch, plan.cfg, ctx, resume=False)  # no init_from: the seeded random init
    finally:
        shutdown(ctx)
    shutil.rmtree(scratch.checkpoints, ignore_errors=True)
    (out / "summary.json").write_text(json.dumps({**result, **figures, "lr": plan.cfg.train.lr,
                                                  "seed": plan.cfg.seed}, indent=1))


# --- memory --------------------------------------------------------------------------------------------

def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def memory_worker(run_dir: Path, overrides: list[str]) -> None:
    """``lmforge finetune`` in this process with the loop's ``train_step`` wrapped to measure each step; prints
    one JSON line. Run in a fresh process per mode."""
    import torch

    import lmforge.train.loop as loop
    from lmforge.cli import main as cli_main
    from lmforge.train.measure import LiveTensorBytes

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    original, signature = loop.train_step, inspect.signature(loop.train_step)
    tracker, state = LiveTensorBytes(), {"steps": 0, "hwm": 0}

    def measured_step(*a, **kw):
        bound = signature.bind(*a, **kw)
        model, ctx = bound.arguments["model"], bound.arguments["ctx"]
        cuda = ctx.device.type == "cuda"
        if state["steps"] == 0:
            gc.collect()
            storages = {}
            for t in [*model.parameters(), *model.buffers()]:
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            state.update(weights=sum(storages.values()), rss_before=rss_bytes(), hwm_reset=reset_hwm(),
                         trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
                         parameters=sum(p.numel() for p in model.parameters()))
            if cuda:
                torch.cuda.reset_peak_memory_stats(ctx.device)
        with contextlib.nullcontext() if cuda else tracker:
            out = original(*a, **kw)
        state["steps"] += 1
        state["hwm"] = max(state["hwm"], hwm_bytes())
        state["allocated_peak"] = (torch.cuda.max_memory_allocated(ctx.device) if cuda
                                   else state["weights"] + tracker.peak)
        return out

    loop.train_step = measured_step
    try:
        cli_main(["finetune", "--run-dir", str(run_dir), "--redo", "--quiet", *overrides])
    except SystemExit as exc:
        if exc.code:
            raise
    state["rss_peak"] = state.pop("hwm")
    state["rss_growth"] = state["rss_peak"] - state["rss_before"]
    print("MEMORY " + json.dumps(state))


def memory_cases(batch: int) -> list[tuple[str, str, dict]]:
    """(label, model, what the recipe sets); each runs in mode full and in mode lora."""
    micro = max(1, batch // 4)
    return [(f"benchmark model, batch {batch}", "benchmark", {}),
            (f"larger model, batch {batch}", "larger", {}),
            (f"larger model, micro-batch {micro} (x{batch // micro} accumulation)", "larger",
             {"train.micro_batch_size": micro}),
            (f"larger model, batch {batch}, activation checkpointing", "larger",
             {"train.activation_checkpointing": "true"})]


def memory_job(run: Path, out: Path, args, mode: str, base: Path | None, extra: dict) -> dict:
    overrides = {"train.batch_size": args.batch, "finetune.mode": mode, "finetune.max_steps": args.memory_steps,
                 "finetune.warmup_steps": 0,
                 "train.eval_every": 0, "train.eval_batches": 1, "train.checkpoint_every": args.memory_steps,
                 "data.val_fraction": args.domain_val_fraction, **extra}
    if base is not None:
        overrides["finetune.base"] = base
    argv = [sys.executable, str(BENCH), "--worker", "memory", "--run-dir", str(run), *sets(overrides)]
    start = time.perf_counter()
    log = out / "log.txt"
    log.unlink(missing_ok=True)
    done = run_process(argv, args, log)
    lines = [line for line in log.read_text().splitlines() if line.startswith("MEMORY ")]
    if done.returncode or not lines:
        raise SystemExit(f"memory run ({mode}) failed; see {log}:\n{log.read_text()[-3000:]}")
    return dict(json.loads(lines[-1][len("MEMORY "):]), wall_s=time.perf_counter() - start)


# --- figures -------------------------------------------------------------------------------------------

def crossing_step(evals: list[tuple[int, float]], target: float) -> float | None:
    """The first step at which the validation loss reaches ``target``, linearly interpolated between the two
    evaluation points around it (0 if the first evaluation is already there; None if never)."""
    if evals[0][1] <= target:
        return float(evals[0][0])
    for (s0, l0), (s1, l1) in zip(evals, evals[1:]):
        if l1 <= target:
            return s0 + (l0 - target) / (l0 - l1) * (s1 - s0)
    return None


def final(job: dict) -> float:
    return job["evals"][-1][1]


def median(values):
    return statistics.median(values) if values else None


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def fmt(value, spec=".4f", none="—") -> str:
    return none if value is None else format(value, spec)


# --- the benchmark -------------------------------------------------------------------------------------

class Job:
    """One run: ``function(run, out)`` gets a free copy of the data-stage run directory (fine-tuning writes under
    it) and its own output folder; it starts once the jobs named in ``needs`` are done."""

    def __init__(self, name: str, function, needs: tuple[str, ...] = (), group: str | None = None):
        self.name, self.function, self.needs, self.group = name, function, needs, group


def run_jobs(jobs: list[Job], slots: "queue.Queue[Path]", args, results: Path, done: dict) -> dict:
    """Run ``jobs`` ``--jobs`` at a time, each worker taking the first job in the list whose needs are met
    (a need is a job's name or a group, done when all its jobs are); results go into ``done`` as they come.
    A job whose ``result.json`` is there already (``--keep DIR`` of an earlier run) is not run again, unless it
    ran at a learning rate its sweep no longer chooses."""
    pending, lock = list(jobs), threading.Condition()
    groups: dict[str, set] = {}
    for job in jobs:
        groups.setdefault(job.name, set()).add(job.name)
        if job.group:
            groups.setdefault(job.group, set()).add(job.name)
    failure = []

    def ready(job):
        return all(groups[n] <= done.keys() for n in job.needs)

    def worker():
        while True:
            with lock:
                while not failure and pending and not any(ready(j) for j in pending):
                    lock.wait()
                if failure or not pending:
                    return
                job = next(j for j in pending if ready(j))
                pending.remove(job)
            out = results / job.name
            out.mkdir(parents=True, exist_ok=True)
            saved = out / "result.json"
            kept = json.loads(saved.read_text()) if saved.is_file() else None
            rate = getattr(job.function, "rate", None)
            if kept is not None and rate is not None and kept.get("lr") != rate():
                print(f"  {job.name}: kept at lr {kept.get('lr'):g}, the sweep now chooses {rate():g}: run again",
                      flush=True)
                kept = None
            if kept is not None:
                with lock:
                    done[job.name] = kept
                    lock.notify_all()
                print(f"  {job.name}: done in an earlier invocation ({saved})", flush=True)
                continue
            run = slots.get()
            try:
                result = job.function(run, out)
                saved.write_text(json.dumps(result, default=str))
            except BaseException as exc:  # noqa: BLE001 - stop the others, raise it in the main thread
                with lock:
                    failure.append(exc)
                    lock.notify_all()
                return
            finally:
                slots.put(run)
            if "evals" in result:
                print(f"  {job.name}: val loss {result['evals'][0][1]:.4f} -> {final(result):.4f} "
                      f"({result['wall_s']:.0f} s)", flush=True)
            elif "allocated_peak" in result:
                print(f"  {job.name}: allocated peak {result['allocated_peak'] / 2**20:.1f} MiB "
                      f"({result['wall_s']:.0f} s)", flush=True)
            with lock:
                done[job.name] = result
                lock.notify_all()

    threads = [threading.Thread(target=worker) for _ in range(args.jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failure:
        raise failure[0]
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--holdout", default="asyncio", help="stdlib package held out of pretraining: the domain")
    parser.add_argument("--domain-tests", action="store_true", help="the domain includes the package's tests "
                        "(test/test_<package>/; they are held out of pretraining either way)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--jobs", type=int, default=2, help="training runs at a time (one thread each)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per training process")
    parser.add_argument("--pretrain-steps", type=int, default=2400)
    parser.add_argument("--pretrain-lr", type=float, default=3e-3)
    parser.add_argument("--steps", type=int, default=400, help="fine-tuning and scratch steps on the domain")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16, help="sequences per step on the domain (and for memory)")
    parser.add_argument("--pretrain-batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--eval-batches", type=int, default=16, help="x eval.batch_size (8) validation windows")
    parser.add_argument("--domain-val-fraction", type=float, default=0.15,
                        help="the domain's validation share (data.val_fraction while fine-tuning)")
    parser.add_argument("--scratch-lrs", type=float, nargs="+", default=[1.5e-3, 3e-3, 6e-3])
    parser.add_argument("--full-lrs", type=float, nargs="+", default=[2.5e-4, 5e-4, 1e-3, 3e-3])
    parser.add_argument("--lora-lrs", type=float, nargs="+", default=[1.5e-2, 3e-2, 6e-2])
    parser.add_argument("--lora-rank", type=int, default=3)
    parser.add_argument("--memory-steps", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="a smoke run: a few steps of everything")
    parser.add_argument("--keep", type=Path, help="work here and keep it (default: a temporary folder, removed)")
    parser.add_argument("--json", type=Path, help="write every figure and curve to this file")
    parser.add_argument("--worker", choices=["scratch", "memory"], help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--set", action="append", default=[], dest="overrides", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "scratch":
        return scratch_worker(args.run_dir, args.out, args.overrides)
    if args.worker == "memory":
        return memory_worker(args.run_dir, [a for o in args.overrides for a in ("--set", o)])
    if args.quick:
        args.pretrain_steps, args.steps, args.warmup, args.eval_every, args.eval_batches = 40, 20, 2, 5, 4
        args.scratch_lrs, args.full_lrs, args.lora_lrs = [3e-3, 6e-3], [1e-3], [3e-2]
        args.memory_steps = 2

    started = time.perf_counter()
    context = tempfile.TemporaryDirectory(prefix="lmforge-transfer-") if args.keep is None else contextlib.nullcontext()
    with context as tmp:
        work = Path(tmp) if args.keep is None else args.keep
        work.mkdir(parents=True, exist_ok=True)
        figures = benchmark(args, work)
    figures["wall_s"] = time.perf_counter() - started
    print(f"\nwall time {figures['wall_s'] / 60:.1f} min")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=1, default=str))


def train_one_step(run: Path, work: Path, name: str, args, model: dict, log: Path) -> Path:
    """A copy of the data-stage run with ``model`` after one training step: a base that names the model's
    shape and tokenizer (the scratch runs do not start from its weights; memory does not depend on them)."""
    copy = work / name
    done = copy / "train" / "checkpoints"
    if done.is_dir() and any(done.iterdir()):
        return next(done.iterdir())  # an earlier invocation with --keep
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(run, copy)
    (work / f"{name}.yaml").write_text(yaml.safe_dump(recipe(work, args, model), sort_keys=False))
    run_cli(["train", str(work / f"{name}.yaml"), "--run-dir", str(copy), "--quiet",
             *sets({"train.max_steps": 1, "train.warmup_steps": 0, "train.eval_every": 0, "train.eval_batches": 1,
                    "train.checkpoint_every": 1})], args, log)
    return next((copy / "train" / "checkpoints").iterdir())


def benchmark(args, work: Path) -> dict:
    import torch

    import lmforge

    log = work / "log.txt"
    corpora = build_corpora(args.holdout, work, args.domain_tests)
    domain = f"{args.holdout}/" + (f" and test/test_{args.holdout}*" if args.domain_tests else "")
    print(f"lmforge from {Path(lmforge.__file__).parent}; held out of pretraining: {args.holdout}/ and its tests; "
          f"the domain: {domain} ({corpora['domain_files']} files, {corpora['domain_bytes'] / 1e6:.2f} MB); "
          f"pretraining corpus: {corpora['pretrain_files']} stdlib files, {corpora['pretrain_bytes'] / 1e6:.1f} MB"
          + (f"; {len(corpora['same_text_dropped'])} files with a domain file's text left out"
             if corpora["same_text_dropped"] else ""), flush=True)
    (work / "recipe.yaml").write_text(yaml.safe_dump(recipe(work, args, MODEL), sort_keys=False))
    run = work / "run"
    t_data = run_cli(["data", str(work / "recipe.yaml"), "--run-dir", str(run), "--quiet"], args, log)
    print(f"data stage (curation, tokenizer, packing of the pretraining corpus): {t_data:.0f} s", flush=True)
    init_base = train_one_step(run, work, "init-run", args, MODEL, log)
    larger_base = train_one_step(run, work, "larger-run", args, MEMORY_MODEL, log)
    slots: queue.Queue[Path] = queue.Queue()
    for i in range(args.jobs):
        copy = work / f"run-{i}"
        if not copy.is_dir():
            shutil.copytree(run, copy, ignore=shutil.ignore_patterns("train"))
        slots.put(copy)
    results = work / "results"
    tokens_per_step = args.batch * args.seq_len
    pretrained = run / "train" / "checkpoints" / f"step_{args.pretrain_steps:08d}"
    s0, lrs, done = args.seeds[0], {}, {}

    def pretrain(_slot, _out):
        t = run_cli(["train", "--run-dir", str(run), "--quiet"], args, log)
        evals = read_evals(run / "train" / "metrics.jsonl")
        print(f"  pretraining {args.pretrain_steps} steps: validation loss (pretraining split) {evals[0][1]:.4f} -> "
              f"{evals[-1][1]:.4f} ({t:.0f} s)", flush=True)
        return {"pretrain_evals": evals, "wall_s": t}

    def best_lr(name, kind, mode):
        if name not in lrs:
            mine = [j for j in done.values() if j.get("kind") == kind and j["mode"] == mode and j["seed"] == s0]
            lrs[name] = min(mine, key=final)["lr"]
        return lrs[name]

    def training(kind, seed, mode, lr=None, sweep=None):
        """A scratch or fine-tuning run; ``lr`` None: the best of the first seed's sweep ``sweep``."""
        def chosen_rate():
            return lr if lr is not None else best_lr(sweep, "scratch" if sweep == "scratch" else "finetune",
                                                     "full" if sweep in ("scratch", "full") else sweep)

        def function(slot, out):
            rate = chosen_rate()
            base = init_base if kind == "scratch" else pretrained
            result = (scratch_job(slot, out, args, seed, rate, base) if kind == "scratch"
                      else finetune_job(slot, out, args, seed, mode, rate, base))
            return dict(result, kind=kind, seed=seed, mode=mode, lr=rate)
        function.rate = chosen_rate  # a kept result at another rate (the sweep grew since) is run again
        return function

    jobs = [Job("pretrain", pretrain)]
    jobs += [Job(f"seed{s0}-scratch-lr{lr:g}", training("scratch", s0, "full", lr), group="sweep-scratch")
             for lr in args.scratch_lrs]
    jobs += [Job(f"seed{s0}-{mode}-lr{lr:g}", training("finetune", s0, mode, lr), ("pretrain",), f"sweep-{mode}")
             for mode, rates in (("full", args.full_lrs), ("lora", args.lora_lrs)) for lr in rates]
    for s in args.seeds[1:]:
        jobs += [Job(f"seed{s}-scratch", training("scratch", s, "full", sweep="scratch"), ("sweep-scratch",)),
                 Job(f"seed{s}-full", training("finetune", s, "full", sweep="full"), ("sweep-full",)),
                 Job(f"seed{s}-lora", training("finetune", s, "lora", sweep="lora"), ("sweep-lora",))]
    # blocks only (embeddings and tied LM head frozen): roughly what adapters on the blocks can reach
    jobs.append(Job(f"seed{s0}-frozen-embeddings", training("finetune", s0, "frozen", sweep="full"), ("sweep-full",)))
    cases = memory_cases(args.batch)
    for i, (label, model, extra) in enumerate(cases):
        for mode in ("full", "lora"):
            base = larger_base if model == "larger" else init_base
            jobs.append(Job(f"memory{i}-{mode}", lambda r, o, m=mode, b=base, e=extra: memory_job(r, o, args, m, b, e)))
    print(f"{len(jobs)} jobs, {args.jobs} at a time: pretraining ({args.pretrain_steps} steps), learning-rate sweeps "
          f"on seed {s0} (scratch {args.scratch_lrs}, full {args.full_lrs}, LoRA {args.lora_lrs}), seeds "
          f"{args.seeds[1:]} at the chosen rates, full fine-tuning with frozen embeddings, {2 * len(cases)} memory "
          f"runs; {args.steps} steps each on the domain", flush=True)
    run_jobs(jobs, slots, args, results, done)
    finished = {name: job for name, job in done.items() if "kind" in job}
    memory = {label: {mode: done[f"memory{i}-{mode}"] for mode in ("full", "lora")} for i, (label, _, _) in enumerate(cases)}
    for name in ("scratch", "full", "lora"):
        best_lr(name, "scratch" if name == "scratch" else "finetune", "full" if name != "lora" else "lora")

    def pick(seed, name):
        kind, mode = ("scratch", "full") if name == "scratch" else ("finetune", name)
        return next(j for j in finished.values() if (j["kind"], j["mode"], j["seed"], j["lr"]) == (kind, mode, seed, lrs[name]))

    per_seed = []
    for s in args.seeds:
        scratch, full, lora = pick(s, "scratch"), pick(s, "full"), pick(s, "lora")
        target = final(scratch)
        cross = crossing_step(full["evals"], target)
        base = full["evals"][0][1]
        assert abs(lora["evals"][0][1] - base) < 1e-6, "LoRA and full fine-tuning start from the same base"
        per_seed.append({"seed": s, "scratch_final": target, "scratch_min": min(v for _, v in scratch["evals"]),
                         "scratch_at_half": dict(scratch["evals"]).get(args.steps // 2),
                         "base": base, "full_final": final(full), "lora_final": final(lora),
                         "crossing_step": cross, "crossing_tokens": None if cross is None else cross * tokens_per_step,
                         "token_ratio": None if cross is None else cross / args.steps,
                         "lora_share": (base - final(lora)) / (base - final(full)),
                         "lora_trainable_share": lora["summary"]["trainable_share"],
                         "lora_trainable": lora["summary"]["trainable_parameters"],
                         "parameters": full["summary"]["parameters"],
                         "domain_train_tokens": full["summary"].get("train_tokens"),
                         "domain_val_tokens": full["summary"].get("val_tokens")})

    pre_evals = done["pretrain"]["pretrain_evals"]
    summary = report(args, corpora, pre_evals, finished, lrs, per_seed, memory, tokens_per_step, torch.__version__)
    return {"args": vars(args), "corpora": corpora, "pretrain_evals": pre_evals, "learning_rates": lrs,
            "per_seed": per_seed, "memory": memory, "summary": summary, "runs": finished, "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(), "data_stage_s": t_data,
            "pretrain_s": done["pretrain"].get("wall_s")}


def report(args, corpora, pre_evals, jobs, lrs, per_seed, memory, tokens_per_step, torch_version) -> dict:
    p = per_seed[0]
    print(f"\n== {args.holdout} held out of pretraining: fine-tuning vs from scratch, LoRA vs full ==")
    print(f"model: d_model {MODEL['d_model']}, {MODEL['n_layers']} blocks, {p['parameters']:,} parameters, vocab "
          f"{args.vocab}; batch {args.batch} x {args.seq_len} = {tokens_per_step:,} tokens per step; torch "
          f"{torch_version}, {args.threads} thread(s) per run")
    print(f"pretraining: {args.pretrain_steps} steps x {args.pretrain_batch} x {args.seq_len} "
          f"({args.pretrain_steps * args.pretrain_batch * args.seq_len:,} tokens) on "
          f"{corpora['pretrain_bytes'] / 1e6:.1f} MB of stdlib code without {args.holdout}; validation loss on its "
          f"own split {pre_evals[-1][1]:.4f}")
    print(f"domain: {p['domain_train_tokens']:,} train / {p['domain_val_tokens']:,} validation tokens (seed "
          f"{p['seed']}); every run {args.steps} steps = {args.steps * tokens_per_step:,} tokens, warm-up "
          f"{args.warmup}, cosine to 0.1x; validation every {args.eval_every} steps on up to "
          f"{args.eval_batches * 8} windows of {args.seq_len}")
    print(f"\nlearning-rate sweep (seed {args.seeds[0]}): validation loss on the domain, start -> final")
    seed0 = [j for j in jobs.values() if j["seed"] == args.seeds[0] and j["mode"] != "frozen"]
    for j in sorted(seed0, key=lambda j: (j["kind"], j["mode"], j["lr"])):
        name = "from scratch" if j["kind"] == "scratch" else f"fine-tune {j['mode']}"
        chosen = " (chosen)" if j["lr"] == lrs["scratch" if j["kind"] == "scratch" else j["mode"]] else ""
        print(f"  {name:<16} lr {j['lr']:<8g} {j['evals'][0][1]:.4f} -> {final(j):.4f}{chosen}")

    print(f"\n{'seed':>4} {'base':>7} {'scratch final':>13} {'(at half)':>9} {'full final':>10} "
          f"{'FT tokens to scratch final':>26} {'of scratch':>10} {'LoRA final':>10} {'LoRA share':>10}")
    for r in per_seed:
        tokens = "not reached" if r["crossing_tokens"] is None else f"{r['crossing_tokens']:,.0f}"
        print(f"{r['seed']:>4} {r['base']:>7.4f} {r['scratch_final']:>13.4f} {fmt(r['scratch_at_half']):>9} "
              f"{r['full_final']:>10.4f} {tokens:>26} {fmt(r['token_ratio'], '.3f'):>10} {r['lora_final']:>10.4f} "
              f"{r['lora_share']:>10.1%}")
    reached = all(r["token_ratio"] is not None for r in per_seed)
    ratio = median([r["token_ratio"] for r in per_seed]) if reached else None
    share = median([r["lora_share"] for r in per_seed])
    print(f"median: fine-tuning reaches the scratch model's final loss after {fmt(ratio, '.3f', 'never (some seed)')} "
          f"of its {args.steps * tokens_per_step:,} tokens; LoRA gets {share:.1%} of full fine-tuning's improvement, "
          f"training {p['lora_trainable']:,} parameters ({p['lora_trainable_share']:.2%}: rank {args.lora_rank} on "
          "qkv/out/gate_up/down)")
    frozen = next(j for j in jobs.values() if j["mode"] == "frozen")
    frozen_share = (p["base"] - final(frozen)) / (p["base"] - p["full_final"])
    print(f"diagnostic (seed {p['seed']}): full fine-tuning with the embeddings and tied LM head frozen (mode frozen, "
          f"{frozen['summary']['trainable_share']:.1%} trainable) ends at {final(frozen):.4f}: {frozen_share:.1%} of "
          "full fine-tuning's improvement, about what adapters on the blocks alone can reach")
    print("(crossing points: linear interpolation between evaluation points; 'at half': the scratch model's loss "
          "halfway, to show how flat its end is)")

    print(f"\nmemory: {args.memory_steps} training steps of lmforge finetune, batch {args.batch} x {args.seq_len}, "
          "fp32 AdamW, a fresh process per run; allocated = parameter storages + peak of tensors made in the steps")
    print(f"  {'case':<56} {'mode':<5} {'params':>11} {'trainable':>9} {'allocated':>11} {'RSS peak':>9} "
          f"{'RSS growth':>10}")
    savings = {}
    for label, modes in memory.items():
        for mode, m in modes.items():
            print(f"  {label:<56} {mode:<5} {m['parameters']:>11,} {m['trainable'] / m['parameters']:>9.2%} "
                  f"{m['allocated_peak'] / 2**20:>7.1f} MiB {m['rss_peak'] / 2**20:>5.0f} MiB "
                  f"{m['rss_growth'] / 2**20:>6.0f} MiB")
        savings[label] = {k: 1 - modes["lora"][k] / modes["full"][k] for k in ("allocated_peak", "rss_peak", "rss_growth")}
        print(f"  {'':<56} LoRA less by: allocated {savings[label]['allocated_peak']:.1%}, RSS peak "
              f"{savings[label]['rss_peak']:.1%}, RSS growth {savings[label]['rss_growth']:.1%}")

    print("\ntargets:")
    print(f"  fine-tuning's tokens to the scratch model's final loss <= {TARGET_TOKENS:.2f} of scratch's: "
          f"{fmt(ratio, '.3f', 'not reached')} -> {verdict(ratio is not None and ratio <= TARGET_TOKENS)}")
    lora_ok = p["lora_trainable_share"] <= MAX_LORA_SHARE
    print(f"  LoRA ({p['lora_trainable_share']:.2%} trainable, <= 2%: {'yes' if lora_ok else 'NO'}) share of full "
          f"fine-tuning's improvement >= {TARGET_SHARE:.0%}: {share:.1%} -> {verdict(lora_ok and share >= TARGET_SHARE)}")
    for label, s in savings.items():
        print(f"  LoRA training memory >= {TARGET_MEMORY:.0%} less, {label} (allocated peak): "
              f"{s['allocated_peak']:.1%} -> {verdict(s['allocated_peak'] >= TARGET_MEMORY)}")
    return {"token_ratio": ratio, "lora_share": share, "frozen_embeddings_share": frozen_share,
            "memory_savings": savings}


if __name__ == "__main__":
    main()
