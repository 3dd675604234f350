"""Peak memory of ``lmforge merge`` on three 124m-sized models, against loading every model whole.

Three random models of the ``124m`` size (``model/config.py``: d_model 768, 12 blocks, 12 heads, ffn 2048,
tied embeddings) over a vocabulary of ``--vocab`` tokens (default 50257, GPT-2's: 124.4M parameters, 498 MB
in fp32), and a fourth one as the base of the task methods, are written as exported files (canonical tensors,
``checkpoint.export.write_exported``) into a run-like folder with a tokenizer (``tokenizer/tokenizer.json``: a
small byte-level BPE, the same file for every model, which is all ``lmforge merge`` checks of it with
``merge.evaluate=false``). Each model is the same seeded init plus its own noise, so no two tensors are equal.

Measured, each in a fresh process and ``--repeats`` times (medians quoted):

- ``lmforge merge`` (``python -m lmforge merge debug --run-dir RUN --input A --input B --input C --method M
  --set merge.evaluate=false``) with ``linear`` and with ``ties`` (``merge.base``, density 0.5), and (``--extra``,
  lmforge only) ``task_arithmetic`` and ``dare_ties`` (density 0.5);
- the peer: a plain script that loads every model whole (``safetensors.torch.load_file``, what a naive merge
  script or a merge tool without lazy loading does), merges the state dicts tensor by tensor with the same
  formulas (``lmforge.merge.methods``: so only the loading strategy differs) and saves the result with
  ``safetensors.torch.save_file``;
- a baseline: the same interpreter importing torch, safetensors and lmforge's merge and CLI modules, and
  nothing else.

Peak memory is the process's peak resident set size (``ru_maxrss`` of ``os.wait4`` on that child: the high-water
mark of its RSS, which counts the pages of memory-mapped files it touched while they were mapped as well as
its heap). The figure is that minus the baseline's, against the target: under twice one model's fp32 size
(4 bytes x parameters). Linux starts a child's ``ru_maxrss`` at its parent's RSS (exec keeps the high-water
mark of the image it replaces), so the measuring process stays small: it imports no torch, and the models
are made and the outputs compared in child processes of their own.

    python bench/merge_memory.py [--repeats 3] [--vocab 50257] [--json bench/out/merge_memory.json] [--keep DIR [--resume]]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import shutil
import time
from pathlib import Path

SIZE = "124m"
BASELINE = ("import torch, safetensors, safetensors.torch; import lmforge.cli, lmforge.merge.stage, "
            "lmforge.merge.stream, lmforge.merge.evaluation")

# The peer: every model loaded whole, merged dict by dict, saved whole.
PEER = r"""
import sys
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from lmforge.merge import methods

method, output, *paths = sys.argv[1:]
with safe_open(paths[0], framework="pt") as f:
    metadata = f.metadata()
if method == "ties":
    *paths, base_path = paths
models = [load_file(p) for p in paths]                  # every input whole in memory
base = load_file(base_path) if method == "ties" else None
merged = {}
for name in models[0]:
    tensors = [m[name].float() for m in models]
    if method == "linear":
        merged[name] = methods.linear(tensors, [1.0] * len(tensors))
    else:
        merged[name] = methods.ties(base[name].float(), tensors, [1.0] * len(tensors), 1.0, 0.5)
save_file(merged, output, metadata=metadata)
"""


def make_models(run: Path, vocab: int, count: int, seed: int = 0) -> tuple[list[Path], int]:
    """``count`` exported files of random ``124m`` models under ``run/models`` and the run's tokenizer; returns
    the paths and the parameter count. Run in a child process (``--make``)."""
    import torch

    from lmforge.checkpoint.export import write_exported
    from lmforge.core.atomic import atomic_write_text
    from lmforge.data.tokenizer import EOS_TOKEN, new_tokenizer
    from lmforge.model.config import ModelConfig
    from lmforge.model.decoder import Decoder
    from lmforge.model.fused_layout import model_views
    from lmforge.rundir import RunDir
    from tokenizers import pre_tokenizers, trainers

    tokenizer = new_tokenizer()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=[EOS_TOKEN], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(["def add(a, b):\n    return a + b\n", "the quick brown fox"] * 10, trainer)
    atomic_write_text(RunDir(run).tokenizer, tokenizer.to_str())
    dims = ModelConfig(size=SIZE).dims(vocab)
    torch.manual_seed(seed)
    model = Decoder(dims)
    params = sum(p.numel() for p in model.parameters())
    init = {name: view.detach().clone() for name, view in model_views(model, dims).items()}
    (run / "models").mkdir(parents=True, exist_ok=True)
    paths = []
    generator = torch.Generator().manual_seed(seed + 1)
    for i in range(count):
        weights = {name: (t + 0.01 * torch.randn(t.shape, generator=generator)).contiguous() for name, t in init.items()}
        path = run / "models" / f"model_{i}.safetensors"
        write_exported(path, weights, dims.to_dict(), i, 256, "safetensors")
        paths.append(path)
        del weights
    return paths, params


def compare(ours: Path, theirs: Path) -> float:
    """The largest absolute difference between two safetensors files of the same tensors (``--compare``)."""
    from safetensors.torch import load_file

    a, b = load_file(ours), load_file(theirs)
    assert set(a) == set(b), f"{ours} and {theirs} hold different tensors"
    return max(float((a[k] - b[k]).abs().max()) for k in b)


def largest_tensor(paths: list[Path]) -> dict:
    """Where a streamed merge's peak comes from (``--where``): the merge formulas on the largest tensor alone
    (the tied embedding), read as ``lmforge merge`` reads it; each figure is the peak of live tensor bytes the
    step allocates on top of its inputs (``lmforge.train.measure.LiveTensorBytes``: every storage an op returns,
    not a kernel's internal scratch), in copies of that tensor. Deterministic, unlike RSS deltas in one process
    (freed pages kept by the allocator, file pages of the mapped inputs)."""
    import torch

    from lmforge.merge import methods
    from lmforge.merge.stream import WeightSource
    from lmforge.train.measure import LiveTensorBytes

    sources = [WeightSource(p, str(p)) for p in paths]
    name = max(sources[0]._index, key=lambda n: sources[0].tensor(n).numel())
    *inputs, base = [s.tensor(name) for s in sources]
    one = 4 * base.numel()
    out = {"tensor": name, "shape": list(base.shape), "bytes": one}
    n = len(inputs)
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(n)]  # noqa: E731
    steps = {
        f"linear ({n} inputs)": lambda: methods.linear(inputs, [1.0] * n),
        f"task_arithmetic ({n} inputs + base)": lambda: methods.task_arithmetic(base, inputs, [1.0] * n, 1.0),
        f"ties ({n} inputs + base, density 0.5), in place on its inputs as lmforge merge runs it":
            lambda: methods.ties(base, copies, [1.0] * n, 1.0, 0.5, inplace=True),
        f"dare_ties ({n} inputs + base, density 0.5)": lambda: methods.dare_ties(base, inputs, [1.0] * n, 1.0, 0.5,
                                                                                gens()),
    }
    for label, step in steps.items():
        copies = [t.clone() for t in inputs]  # for the in-place step: its inputs, read for it alone
        with LiveTensorBytes() as counter:
            for t in [*inputs, base, *copies]:  # already there: an in-place op returning one allocates nothing
                counter.track(t)
            start = counter.live
            result = step()
            del result
        out[label] = (counter.peak - start) / one
        del copies
    return out


def child(argv: list[str], env: dict) -> str:
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(argv)} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def measure(argv: list[str], env: dict, attempts: int = 3) -> tuple[int, float]:
    """(peak RSS in bytes, wall seconds) of ``argv`` run as a child process (``os.wait4``'s ``ru_maxrss``, KiB on
    Linux); started again when something outside killed it by a signal (a machine shared with other jobs)."""
    for attempt in range(attempts):
        start = time.perf_counter()
        child = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        err = child.stderr.read()
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        if child.returncode >= 0:
            break
        print(f"  (killed by signal {-child.returncode} from outside; measuring it again)", flush=True)
    if child.returncode:
        raise SystemExit(f"{' '.join(argv)} failed (exit {child.returncode}):\n{err.decode()[-3000:]}")
    return usage.ru_maxrss * 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--extra", nargs="*", default=["task_arithmetic", "dare_ties"],
                        choices=["task_arithmetic", "dare_linear", "dare_ties"],
                        help="task methods also measured (lmforge only, against the target)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    parser.add_argument("--resume", action="store_true", help="with --keep: reuse the measurements made there "
                        "(measurements.jsonl) by an interrupted run of the same command")
    parser.add_argument("--make", type=Path, help=argparse.SUPPRESS)  # child: make the models in this run folder
    parser.add_argument("--compare", type=Path, nargs=2, help=argparse.SUPPRESS)  # child: compare two outputs
    parser.add_argument("--where", type=Path, nargs="+", help=argparse.SUPPRESS)  # child: the largest tensor's peaks
    args = parser.parse_args()
    if args.where is not None:
        print(json.dumps(largest_tensor(args.where)))
        return
    if args.make is not None:
        paths, params = make_models(args.make, args.vocab, 4)
        print(json.dumps({"paths": [str(p) for p in paths], "params": params}))
        return
    if args.compare is not None:
        print(json.dumps(compare(*args.compare)))
        return

    folder = Path(tempfile.mkdtemp(prefix="merge-memory-")) if args.keep is None else args.keep
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    try:
        run = folder / "run"
        t0 = time.perf_counter()
        made_file = run / "models" / "made.json"  # reused from an earlier run in the same --keep folder
        if made_file.is_file() and json.loads(made_file.read_text())["vocab"] == args.vocab:
            made = json.loads(made_file.read_text())
        else:
            made = json.loads(child([sys.executable, __file__, "--make", str(run), "--vocab", str(args.vocab)], env))
            made_file.write_text(json.dumps({**made, "vocab": args.vocab}))
        paths, params = [Path(p) for p in made["paths"]], made["params"]
        *inputs, base = paths
        model_bytes = 4 * params
        print(f"{len(paths)} models of {params:,} parameters ({model_bytes / 2**20:.0f} MiB fp32 each) ready in "
              f"{time.perf_counter() - t0:.0f} s; target: merge peak - baseline < {2 * model_bytes / 2**20:.0f} MiB",
              flush=True)
        py = sys.executable
        cli = [py, "-m", "lmforge", "merge", "debug", "--run-dir", str(run), "--quiet",
               "--set", "merge.evaluate=false"] + [a for p in inputs for a in ("--input", str(p))]
        peer_script = folder / "peer_merge.py"
        peer_script.write_text(PEER)
        contenders = {
            "baseline (imports only)": [py, "-c", BASELINE],
            "lmforge merge linear": cli + ["--method", "linear"],
            "peer linear (whole models)": [py, str(peer_script), "linear", str(folder / "peer.safetensors"),
                                           *map(str, inputs)],
            "lmforge merge ties": cli + ["--method", "ties", "--set", f"merge.base={base}", "--set", "merge.density=0.5"],
            "peer ties (whole models)": [py, str(peer_script), "ties", str(folder / "peer.safetensors"),
                                         *map(str, inputs), str(base)],
            **{f"lmforge merge {m}": cli + ["--method", m, "--set", f"merge.base={base}", "--set", "merge.density=0.5"]
               for m in args.extra},
        }
        results: dict[str, list[tuple[int, float]]] = {name: [] for name in contenders}
        log = folder / "measurements.jsonl"  # each measurement as it is made (--resume reads them back)
        done = {}
        if args.resume and log.is_file():
            for line in log.read_text().splitlines():
                m = json.loads(line)
                done[(m["round"], m["name"])] = (m["rss"], m["seconds"])
        elif log.is_file():
            log.unlink()
        for r in range(args.repeats):  # rounds interleave the contenders
            for name, argv in contenders.items():
                if (r, name) in done:
                    results[name].append(done[(r, name)])
                    note = " (measured earlier: --resume)"
                else:
                    results[name].append(measure(argv, env))
                    with open(log, "a") as f:
                        f.write(json.dumps({"round": r, "name": name, "rss": results[name][-1][0],
                                            "seconds": results[name][-1][1]}) + "\n")
                    note = ""
                rss, sec = results[name][-1]
                print(f"  round {r + 1}: {name}: peak RSS {rss / 2**20:,.0f} MiB, {sec:.1f} s{note}", flush=True)
        # the two outputs agree (same formulas): a check that the peer did the same work
        worst = json.loads(child([sys.executable, __file__, "--compare", str(run / "merge" / "model.safetensors"),
                                  str(folder / "peer.safetensors")], env))
        assert worst < 1e-6, f"lmforge's TIES and the peer's differ by {worst}"

        med = {name: statistics.median(r[0] for r in rs) for name, rs in results.items()}
        secs = {name: statistics.median(r[1] for r in rs) for name, rs in results.items()}
        base_rss = med["baseline (imports only)"]
        print()
        print(f"3 inputs of {params:,} parameters ({model_bytes / 2**20:.0f} MiB fp32 each); medians of {args.repeats} "
              f"fresh processes; baseline peak RSS {base_rss / 2**20:.0f} MiB")
        print()
        print("| method | contender | peak RSS | minus baseline | in model sizes | target < 2 | wall | peer / lmforge (above baseline) |")
        print("|---|---|---:|---:|---:|---|---:|---:|")
        table = {}
        for method in ("linear", "ties"):
            ours_name, peer_name = f"lmforge merge {method}", f"peer {method} (whole models)"
            ours_x, peer_x = med[ours_name] - base_rss, med[peer_name] - base_rss
            table[method] = {"lmforge_bytes": ours_x, "peer_bytes": peer_x, "ratio": peer_x / ours_x,
                             "lmforge_models": ours_x / model_bytes, "peer_models": peer_x / model_bytes,
                             "target_met": ours_x < 2 * model_bytes}
            for name, x in ((ours_name, ours_x), (peer_name, peer_x)):
                met = ("yes" if x < 2 * model_bytes else "**no**") if name == ours_name else ""
                ratio = f"{peer_x / ours_x:.2f}x" if name == peer_name else ""
                print(f"| {method} | {name} | {med[name] / 2**20:,.0f} MiB | {x / 2**20:,.0f} MiB | "
                      f"{x / model_bytes:.2f} | {met} | {secs[name]:.0f} s | {ratio} |")
        for method in args.extra:  # no peer: the other methods of lmforge merge, against the target only
            name = f"lmforge merge {method}"
            x = med[name] - base_rss
            table[method] = {"lmforge_bytes": x, "lmforge_models": x / model_bytes, "target_met": x < 2 * model_bytes}
            print(f"| {method} | {name} | {med[name] / 2**20:,.0f} MiB | {x / 2**20:,.0f} MiB | {x / model_bytes:.2f} | "
                  f"{'yes' if x < 2 * model_bytes else '**no**'} | {secs[name]:.0f} s | |")
        print(f"\nlargest difference between lmforge's TIES output and the peer's: {worst:.2e}")
        where = json.loads(child([sys.executable, __file__, "--where", *map(str, paths)], env))
        print(f"\nWhere the peak comes from: the formulas on the largest tensor alone ({where['tensor']}, "
              f"{where['shape']}, {where['bytes'] / 2**20:.0f} MiB), read as lmforge merge reads it: peak live tensor "
              "bytes allocated by the step on top of its inputs, in copies of that tensor (the streamed merge "
              "also holds the inputs: 3 + base):")
        for label, copies in where.items():
            if label not in ("tensor", "shape", "bytes"):
                print(f"  {label}: {copies:.1f}")
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({
                "machine": {"platform": platform.platform(), "python": platform.python_version()},
                "params": params, "model_bytes": model_bytes, "vocab": args.vocab, "repeats": args.repeats,
                "runs": {n: [{"rss": r[0], "seconds": r[1]} for r in rs] for n, rs in results.items()},
                "median_rss": med, "median_seconds": secs, "table": table, "ties_max_diff": worst,
                "largest_tensor": where}, indent=2))
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
