"""Memory and time of explaining a long context (issue #17): integrated gradients over a ``--tokens`` context on
the ``small`` model, by lmforge (``lmforge.explain.attributions.attribute``) against Captum applied directly to the
same model, same baseline (the context's tokens replaced by token 0), same steps, same internal batch size.

Contenders:

- ``lmforge``: ``attribute(model, next_token_target(...), "integrated_gradients", AttributionSettings(ig_steps=S,
  ig_tolerance=None, internal_batch_size=B))``: Captum's ``LayerIntegratedGradients`` on ``model.embed_tokens``,
  the LM head run only at the scored position.
- ``captum LIG``: ``LayerIntegratedGradients(lambda ids: log_softmax(model(ids)[:, -1])[:, token],
  model.embed_tokens)`` with ``return_convergence_delta=True``: the full (B, T, V) logits, as a user would write it.
- ``captum LLMGradientAttribution``: ``LLMGradientAttribution(LayerIntegratedGradients(wrapper, embed_tokens),
  tokenizer)`` on a ``TextTokenInput``: Captum's LLM API needs a model returning an object with ``.logits`` and a
  Hugging Face-like tokenizer, so the decoder is wrapped in a module returning ``SimpleNamespace(logits=...)`` and
  the "text" is the token ids written out, with a tokenizer stand-in that reads them back. It has no convergence
  delta (``LLMGradientAttribution`` cannot return one).

Memory: each measurement in a fresh process (a process's peak never comes down), its peak resident set size
(``ru_maxrss``) less that of the same process with the model built and nothing run ("added" below). The reference
is one forward + backward of ``B`` sequences of ``--tokens`` tokens (the target's log-probability summed, backward
to the embeddings' output with the parameters frozen), both with the head at the scored position only (what
lmforge runs per chunk of steps) and with the full logits (what Captum direct runs). Time: per explanation at
``--time-steps`` steps, the median of ``--runs`` (``--llm-runs`` for LLMGradientAttribution, the same
LayerIntegratedGradients as captum LIG), each contender in its own process after a warm-up of one chunk
(``B`` steps: the same shapes); the memory of the other step counts is one run each, in its own process, for
``--memory-contenders`` (default lmforge only: at 1,024 tokens on 2 CPU cores one 128-step explanation by
Captum direct takes minutes).

    python bench/explain_scale.py [--tokens 1024] [--internal-batch-size 8] [--steps 32 64 128] [--time-steps 32]
                                  [--runs 3] [--quick] [--json bench/out/explain_scale.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from train_throughput import busy_cpu_seconds  # noqa: E402

CONTENDERS = ("lmforge", "captum_lig", "captum_llm")
NAMES = {"lmforge": "lmforge", "captum_lig": "captum LIG", "captum_llm": "captum LLMGradientAttribution",
         "fwd_bwd": "one fwd+bwd (head at scored pos)", "fwd_bwd_full": "one fwd+bwd (full logits)",
         "fwd_bwd x3": "3 fwd+bwd in a row (scored pos)", "fwd_bwd_full x3": "3 fwd+bwd in a row (full logits)",
         "bare": "model built, nothing run"}


# ----------------------------------------------------------------------------------------------- the worker
def build(job: dict):
    import torch

    from lmforge.model.config import SIZES, ModelDims
    from lmforge.model.decoder import Decoder

    torch.manual_seed(0)
    dims = dict(SIZES[job["size"]])
    dims["context_length"] = max(dims["context_length"], job["tokens"])
    model = Decoder(ModelDims(vocab_size=job["vocab"], **dims)).eval().requires_grad_(False)
    context = torch.randint(1, job["vocab"], (job["tokens"],), generator=torch.Generator().manual_seed(1)).tolist()
    return model, context


class IdTokenizer:
    """A tokenizer stand-in for Captum's LLM API: the "text" is the token ids written out, space-separated."""

    def encode(self, text, return_tensors=None, add_special_tokens=True):
        import torch

        ids = [int(w) for w in text.split()]
        return torch.tensor([ids]) if return_tensors == "pt" else ids

    def decode(self, ids):
        ids = ids.tolist() if hasattr(ids, "tolist") else ids
        return " ".join(str(int(i)) for i in (ids if isinstance(ids, list) else [ids]))

    def convert_ids_to_tokens(self, ids):
        return [str(int(i)) for i in ids]

    def __call__(self, text, return_offsets_mapping=False, add_special_tokens=True, **_):
        ids, offsets, at = [], [], 0
        for word in text.split(" "):
            ids.append(int(word))
            offsets.append((at, at + len(word)))
            at += len(word) + 1
        return {"input_ids": ids, "offset_mapping": offsets}


def worker(job: dict) -> dict:
    import torch
    from captum.attr import LayerIntegratedGradients

    from lmforge.explain.attributions import AttributionSettings, attribute
    from lmforge.explain.targets import log_prob, next_token_target

    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    model, context = build(job)
    target = next_token_target(model, context, None, str)
    token = target.scored[0]
    ibs = job["ibs"]
    ids = torch.tensor([context])
    baseline = torch.zeros_like(ids)  # the baseline token 0 at every context position

    def fwd_bwd(full: bool):
        def keep_grad(module, inputs, output):
            return output.requires_grad_()
        handle = model.embed_tokens.register_forward_hook(keep_grad)
        try:
            batch = ids.expand(ibs, -1).contiguous()
            if full:
                value = torch.log_softmax(model(batch)[:, -1], -1)[:, token].sum()
            else:
                value = log_prob(model, batch, target).sum()
            value.backward()
        finally:
            handle.remove()
        return {}

    def run_lmforge(steps):
        a = attribute(model, target, "integrated_gradients",
                      AttributionSettings(ig_steps=steps, ig_tolerance=None, internal_batch_size=ibs))
        return {"scores": a.scores, "delta": a.delta, "f_input": a.f_input, "f_baseline": a.f_baseline}

    def run_captum_lig(steps):
        lig = LayerIntegratedGradients(lambda x: torch.log_softmax(model(x)[:, -1], -1)[:, token],
                                       model.embed_tokens)
        raw, delta = lig.attribute(ids, baselines=baseline, n_steps=steps, internal_batch_size=ibs,
                                   return_convergence_delta=True)
        return {"scores": raw[0].sum(-1).double().tolist(), "delta": float(delta[0])}

    def run_captum_llm(steps):
        from types import SimpleNamespace

        from captum.attr import LLMGradientAttribution, TextTokenInput

        class WithLogits(torch.nn.Module):  # Captum's LLM API reads ``model(input_ids).logits``
            def __init__(self, decoder):
                super().__init__()
                self.decoder = decoder

            def forward(self, input_ids, **_):
                return SimpleNamespace(logits=self.decoder(input_ids))

        tokenizer = IdTokenizer()
        llm = LLMGradientAttribution(LayerIntegratedGradients(WithLogits(model), model.embed_tokens), tokenizer)
        inp = TextTokenInput(" ".join(map(str, context)), tokenizer, baselines=0)
        result = llm.attribute(inp, target=torch.tensor([token]), n_steps=steps, internal_batch_size=ibs)
        return {"scores": result.seq_attr.double().tolist(), "delta": None}

    run = {"bare": lambda _: {}, "fwd_bwd": lambda _: fwd_bwd(False), "fwd_bwd_full": lambda _: fwd_bwd(True),
           "lmforge": run_lmforge, "captum_lig": run_captum_lig, "captum_llm": run_captum_llm}[job["kind"]]
    if job.get("warmup"):  # first-call costs (allocations, kernels' packing): one chunk of the same shapes
        run(job["warmup"])
    seconds, out = [], {}
    for _ in range(job["runs"]):
        start = time.perf_counter()
        out = run(job["steps"])
        seconds.append(time.perf_counter() - start)
    out |= {"seconds": seconds, "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "threads": torch.get_num_threads(), "token": token}
    return out


# ----------------------------------------------------------------------------------------------- the parent
def measure(job: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True,
                          timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"{job} failed:\n{done.stderr.strip()[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine() -> str:
    try:
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        return f"{names[0]}, {os.cpu_count()} cores" if names else f"{os.cpu_count()} cores"
    except OSError:
        return f"{os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small")
    parser.add_argument("--vocab", type=int, default=16384)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--internal-batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, nargs="+", default=[32, 64, 128], help="step counts for memory")
    parser.add_argument("--time-steps", type=int, default=None, help="steps for the timed runs (default: the "
                        "smallest of --steps)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per contender, after one warm-up")
    parser.add_argument("--llm-runs", type=int, default=1, help="timed runs of captum LLMGradientAttribution "
                        "(the same LayerIntegratedGradients as captum LIG, without the delta's forwards)")
    parser.add_argument("--memory-contenders", nargs="+", default=["lmforge"],
                        choices=CONTENDERS, help="contenders measured at every step count")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: debug size, 64 tokens, few steps")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.quick:
        args.size, args.vocab, args.tokens, args.internal_batch_size = "debug", 4096, 64, 4
        args.steps, args.runs, args.llm_runs = [8, 16, 32], 1, 1
        args.memory_contenders = ["lmforge", "captum_lig"]
    time_steps = args.time_steps or min(args.steps)
    base = {"size": args.size, "vocab": args.vocab, "tokens": args.tokens, "ibs": args.internal_batch_size,
            "threads": args.threads}
    wall, busy, children = time.perf_counter(), busy_cpu_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN)

    def job(kind, steps=0, runs=1, warmup=0):  # noqa: E306
        print(f"  {NAMES[kind]}" + (f", {steps} steps" if steps else "") + f", {runs} run(s)"
              + (f" after a warm-up at {warmup} steps" if warmup else "") + " ...", file=sys.stderr, flush=True)
        return measure(base | {"kind": kind, "steps": steps, "runs": runs, "warmup": warmup})

    bare = job("bare")
    added = lambda r: max(0, r["peak_kib"] - bare["peak_kib"]) * 1024 / 1e6  # noqa: E731  MB
    refs = {kind: job(kind) for kind in ("fwd_bwd", "fwd_bwd_full")}
    # the same, three times in one process: the allocator's steady state (glibc keeps freed chunks, so a
    # process's peak after several fwd+bwd is above that of the first, whatever runs them)
    refs |= {f"{kind} x3": job(kind, runs=3) for kind in ("fwd_bwd", "fwd_bwd_full")}
    runs = {"lmforge": args.runs, "captum_lig": args.runs, "captum_llm": args.llm_runs}
    timed = {kind: job(kind, time_steps, runs[kind], warmup=args.internal_batch_size) for kind in CONTENDERS}
    memory = {kind: {time_steps: timed[kind]} for kind in CONTENDERS}
    for kind in args.memory_contenders:
        for steps in args.steps:
            if steps not in memory[kind]:
                memory[kind][steps] = job(kind, steps)
    foreign = None
    if busy is not None:
        ours = resource.getrusage(resource.RUSAGE_CHILDREN)
        ours = ours.ru_utime + ours.ru_stime - children.ru_utime - children.ru_stime
        foreign = max(0.0, busy_cpu_seconds() - busy - ours) / ((time.perf_counter() - wall) * os.cpu_count())

    print(f"{args.size}, vocab {args.vocab}, {args.tokens}-token context, internal batch size "
          f"{args.internal_batch_size}, {bare['threads']} thread(s), {machine()}")
    print(f"bare process (torch, the model built): peak RSS {bare['peak_kib'] / 1024:.0f} MiB; 'added' below is "
          f"peak RSS above it, in MB")
    print(f"{'measurement':34s} {'steps':>5s} {'peak RSS MB':>12s} {'added MB':>9s}")
    for kind, r in refs.items():
        print(f"{NAMES[kind]:34s} {'':>5s} {r['peak_kib'] * 1024 / 1e6:12.0f} {added(r):9.0f}")
    for kind in CONTENDERS:
        for steps, r in sorted(memory[kind].items()):
            print(f"{NAMES[kind]:34s} {steps:5d} {r['peak_kib'] * 1024 / 1e6:12.0f} {added(r):9.0f}")
    print(f"\ntime per explanation at {time_steps} steps: median of the runs, after a warm-up of one chunk "
          f"({args.internal_batch_size} steps) in the same process")
    print(f"{'contender':34s} {'median s':>9s} {'runs s':>24s} {'delta':>10s}")
    medians = {}
    for kind in CONTENDERS:
        secs = timed[kind]["seconds"]
        medians[kind] = statistics.median(secs)
        delta = timed[kind]["delta"]
        print(f"{NAMES[kind]:34s} {medians[kind]:9.2f} {' '.join(f'{s:.2f}' for s in secs):>24s} "
              f"{'' if delta is None else f'{delta:.2e}':>10s}")
    ours = timed["lmforge"]["scores"]
    agree = {}
    for kind in ("captum_lig", "captum_llm"):
        theirs = timed[kind]["scores"]
        scale = max(abs(v) for v in ours) or 1.0
        agree[kind] = max(abs(a - b) for a, b in zip(ours, theirs)) / scale
    fb, fb_full = added(refs["fwd_bwd"]), added(refs["fwd_bwd_full"])
    lm = {s: added(r) for s, r in memory["lmforge"].items()}
    lo, hi = min(lm), max(lm)
    ratios = {
        "lmforge_peak_over_fwd_bwd": {s: v / fb for s, v in sorted(lm.items())},
        "lmforge_peak_over_3_fwd_bwd": {s: v / added(refs["fwd_bwd x3"]) for s, v in sorted(lm.items())},
        "lmforge_peak_max_steps_over_min_steps": lm[hi] / lm[lo],
        "lmforge_time_over_captum_lig_time": medians["lmforge"] / medians["captum_lig"],
        "lmforge_time_over_captum_llm_time": medians["lmforge"] / medians["captum_llm"],
        "captum_lig_peak_over_lmforge_peak": {s: added(memory["captum_lig"][s]) / lm[s]
                                              for s in sorted(memory["captum_lig"]) if s in lm},
        "captum_lig_peak_over_its_fwd_bwd_full": {s: added(r) / fb_full for s, r in sorted(memory["captum_lig"].items())},
    }
    print("\nratios (memory: added MB)")
    print("  lmforge IG peak / one fwd+bwd (head at scored pos): "
          + ", ".join(f"{v:.2f}x at {s}" for s, v in ratios["lmforge_peak_over_fwd_bwd"].items()) + " (target <= ~2)")
    print("  lmforge IG peak / 3 fwd+bwd in a row (head at scored pos): "
          + ", ".join(f"{v:.2f}x at {s}" for s, v in ratios["lmforge_peak_over_3_fwd_bwd"].items()))
    print(f"  lmforge peak at {hi} steps / at {lo} steps: {ratios['lmforge_peak_max_steps_over_min_steps']:.2f}x "
          f"(bounded: ~1)")
    print(f"  lmforge time / captum LIG time: {ratios['lmforge_time_over_captum_lig_time']:.2f}x; / captum "
          f"LLMGradientAttribution time: {ratios['lmforge_time_over_captum_llm_time']:.2f}x (at {time_steps} steps)")
    print("  captum LIG peak / lmforge peak: "
          + ", ".join(f"{v:.2f}x at {s}" for s, v in ratios["captum_lig_peak_over_lmforge_peak"].items()))
    print("  captum LIG peak / one fwd+bwd with full logits: "
          + ", ".join(f"{v:.2f}x at {s}" for s, v in ratios["captum_lig_peak_over_its_fwd_bwd_full"].items()))
    print(f"  same attributions: max |lmforge - captum LIG| {agree['captum_lig']:.1e}, max |lmforge - captum "
          f"LLMGradientAttribution| {agree['captum_llm']:.1e} (of lmforge's max |score|)")
    if foreign is not None:
        print(f"other processes used {foreign:.0%} of this machine's CPU during the run"
              + (" (timings are unreliable: rerun on a quiet machine)" if foreign > 0.05 else ""))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        strip = lambda r: {k: v for k, v in r.items() if k != "scores"}  # noqa: E731
        args.json.write_text(json.dumps({
            "bare": bare, "references": refs, "ratios": ratios, "agreement": agree, "foreign_cpu_load": foreign,
            "memory": {k: {s: strip(r) | {"added_mb": added(r)} for s, r in v.items()} for k, v in memory.items()},
            "median_seconds": medians, "machine": machine(), "args": {k: str(v) for k, v in vars(args).items()},
        }, indent=2))


if __name__ == "__main__":
    main()
