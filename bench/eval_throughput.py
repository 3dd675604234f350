"""Multiple-choice scoring throughput: lmforge's scorer against lm-evaluation-harness's HF backend, same model.

The task is the built-in ``docstring_to_name`` (a function's docstring + "\\ndef " -> which of 4 names is its
own) made from the run's curated validation split, training documents excluded. The model is the run's
checkpoint (``--checkpoint``, default latest): lmforge scores it with ``scoring.loglikelihoods`` (prefix and
shared-context batching, ``--batch-size``; also timed with ``share_context=False``: plain padded batches);
lm-eval scores the same weights copied into a transformers ``LlamaForCausalLM`` (``to_hf_llama``, logits
checked equal first) through its own ``HFLM`` (``hf`` backend, same batch size, the run's tokenizer as a
``PreTrainedTokenizerFast``), on the requests lm-eval would build itself ((context, choice): lmforge's task
format has no target delimiter). Before timing, every request's log-likelihood must agree within 1e-4 and
the accuracy must be identical. Rounds alternate the contenders, each scores every item once (tokenization
included); the figure is the median items/s over ``--repeats`` rounds.

    python bench/eval_throughput.py [--run-dir runs/default] [--examples 200] [--batch-size 8] [--repeats 5] \\
        [--threads 1] [--profile] [--json bench/out/eval.json]

Without a trained run at ``--run-dir`` it first trains the default recipe there (``lmforge run``, 2-4 min).
Timing on a shared machine is only as good as the machine is quiet: the foreign CPU load is reported. On a
2-core machine with other jobs running, give ``--threads 1``: two torch threads with one core taken by
another process run 5-30x slower (each matmul waits for its descheduled second thread).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from lmforge.checkpoint.load import load_model, pick
from lmforge.cli import main as lmforge
from lmforge.data.tokenizer import EOS_TOKEN
from lmforge.evaluate.builtin_tasks import make_builtin_tasks
from lmforge.evaluate.scoring import loglikelihoods
from lmforge.evaluate.tasks import load_task
from lmforge.model.hf_names import to_hf_llama
from lmforge.recipe import build_config, read_yaml
from lmforge.rundir import RunDir

sys.path.insert(0, str(Path(__file__).parent))
from train_throughput import busy_cpu_seconds, own_cpu_seconds  # noqa: E402

TOLERANCE = 1e-4


def trained_run(run_dir: Path) -> RunDir:
    run = RunDir(run_dir)
    if run.latest_checkpoint() is None:
        print(f"no trained run at {run_dir}: training the default recipe there (lmforge run)", flush=True)
        try:
            lmforge(["run", "default", "--run-dir", str(run_dir), "--quiet"])
        except SystemExit as exc:
            if exc.code:
                raise
    return run


def hf_backend(model, tokenizer, batch_size: int):
    """lm-eval's ``hf`` model (HFLM) over a copy of ``model``'s weights and the run's tokenizer."""
    from lm_eval.models.huggingface import HFLM
    from transformers import PreTrainedTokenizerFast

    hf_tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN)
    hf_model = to_hf_llama(model).eval()
    return HFLM(pretrained=hf_model, tokenizer=hf_tokenizer, batch_size=batch_size, device="cpu",
                max_length=model.dims.context_length), hf_model


def check_logits(model, hf_model, tokenizer, text: str) -> float:
    ids = torch.tensor([tokenizer.encode(text, add_special_tokens=False).ids[:model.dims.context_length]])
    with torch.no_grad():
        diff = (model(ids) - hf_model(input_ids=ids).logits).abs().max().item()
    assert diff < TOLERANCE, f"the HF copy's logits differ from lmforge's by {diff}"
    return diff


def accuracy(logprobs: list[float], examples) -> tuple[float, list[int]]:
    predictions, start = [], 0
    for ex in examples:
        scores = logprobs[start:start + len(ex.choices)]
        predictions.append(max(range(len(scores)), key=scores.__getitem__))  # the first of equals, as np.argmax
        start += len(ex.choices)
    return sum(p == ex.answer for p, ex in zip(predictions, examples)) / len(examples), predictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/default"))
    parser.add_argument("--checkpoint", default="latest", help="latest, best or a path")
    parser.add_argument("--examples", type=int, default=200, help="at most this many items (val split)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5, help="rounds; the contenders alternate within each")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--profile", action="store_true", help="also print where lmforge's scorer spends its time")
    parser.add_argument("--json", metavar="OUT", help="write the figures and every round's times to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from lm_eval.api.instance import Instance

    run = trained_run(args.run_dir)
    cfg = build_config(read_yaml(run.recipe), str(run.recipe))
    loaded = load_model(pick(run, args.checkpoint), "cpu")
    model, tokenizer = loaded.model, loaded.tokenizer
    with tempfile.TemporaryDirectory() as folder:
        built = {t.name: t for t in make_builtin_tasks(run.val_docs, folder, "val", cfg.seed, args.examples,
                                                       exclude_docs=run.train_docs)}
        task = load_task(built["docstring_to_name"].spec)
    examples = task.examples
    requests = [(ex.context, choice) for ex in examples for choice in ex.choices]
    instances = [Instance("loglikelihood", {}, request, i) for i, request in enumerate(requests)]

    hflm, hf_model = hf_backend(model, tokenizer, args.batch_size)
    logit_diff = check_logits(model, hf_model, tokenizer, examples[0].context + examples[0].choices[0])

    def ours():
        return [s.logprob for s in loglikelihoods(model, tokenizer, requests, batch_size=args.batch_size)]

    def ours_plain():  # the same scorer without shared contexts: every (context, choice) row a full forward
        return [s.logprob for s in loglikelihoods(model, tokenizer, requests, batch_size=args.batch_size,
                                                  share_context=False)]

    def theirs():
        return [logprob for logprob, _ in hflm.loglikelihood(instances, disable_tqdm=True)]

    contenders = {"lm-eval hf (HFLM)": theirs, "lmforge loglikelihoods": ours,
                  "lmforge, share_context=False": ours_plain}
    # same results first: every item's log-likelihoods within TOLERANCE, the same accuracy
    first = {name: run_once() for name, run_once in contenders.items()}
    a, b = first["lmforge loglikelihoods"], first["lm-eval hf (HFLM)"]
    max_diff = max(abs(x - y) for name in contenders for x, y in zip(first[name], b))
    assert max_diff < TOLERANCE, f"log-likelihoods differ by up to {max_diff}"
    (acc_ours, pred_ours), (acc_theirs, pred_theirs) = accuracy(a, examples), accuracy(b, examples)
    assert pred_ours == pred_theirs and acc_ours == acc_theirs, f"accuracy {acc_ours} vs lm-eval {acc_theirs}"

    times = {name: [] for name in contenders}
    machine_before, own_before, wall_before = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
    for _ in range(args.repeats):
        for name, run_once in contenders.items():
            start = time.perf_counter()
            run_once()
            times[name].append(time.perf_counter() - start)
    foreign_load = None
    if machine_before is not None:
        foreign = busy_cpu_seconds() - machine_before - (own_cpu_seconds() - own_before)
        foreign_load = max(0.0, foreign) / ((time.perf_counter() - wall_before) * os.cpu_count())

    n_tokens = sum(len(tokenizer.encode(c + x, add_special_tokens=False).ids) for c, x in requests)
    rows = {name: {"seconds": statistics.median(t), "items_per_s": len(examples) / statistics.median(t)}
            for name, t in times.items()}
    for row in rows.values():
        row["vs_lm_eval"] = row["items_per_s"] / rows["lm-eval hf (HFLM)"]["items_per_s"]
    ratio = rows["lmforge loglikelihoods"]["vs_lm_eval"]
    print(f"docstring_to_name (val split of {run.root}, training documents excluded): {len(examples)} items x 4 "
          f"choices = {len(requests)} requests, {n_tokens:,} tokens in all; checkpoint {loaded.path.name} "
          f"({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, context {model.dims.context_length})")
    print(f"batch size {args.batch_size}, fp32, {torch.get_num_threads()} CPU threads, torch {torch.__version__}; "
          f"medians of {args.repeats} rounds")
    correct = sum(p == ex.answer for p, ex in zip(pred_ours, examples))
    print(f"same results: HF copy's logits within {logit_diff:.1e}; per-request log-likelihoods within "
          f"{max_diff:.1e}; accuracy {acc_ours:.4f} both ({correct}/{len(examples)})")
    if foreign_load is not None:
        print(f"other processes used {foreign_load:.0%} of this machine's CPU during the timed rounds"
              + (" (figures are unreliable: rerun on a quiet machine)" if foreign_load > 0.05 else ""))
    print(f"{'contender':<30}{'seconds':>9}{'items/s':>10}{'vs lm-eval':>12}")
    for name, row in rows.items():
        print(f"{name:<30}{row['seconds']:>9.2f}{row['items_per_s']:>10.1f}{row['vs_lm_eval']:>11.2f}x")
    print(f"lmforge / lm-eval: {ratio:.2f}x")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            ours()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    if args.json:
        meta = dict(vars(args), run_dir=str(args.run_dir), torch=torch.__version__, threads=torch.get_num_threads(),
                    machine=platform.processor())
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"args": meta, "items": len(examples), "requests": len(requests), "tokens": n_tokens,
                       "accuracy": acc_ours, "max_logprob_diff": max_diff, "foreign_cpu_load": foreign_load,
                       "medians": rows, "ratio": ratio, "rounds": times}, f, indent=1)


if __name__ == "__main__":
    main()
