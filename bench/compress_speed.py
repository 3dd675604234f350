"""CPU decode and prefill speed of lmforge's int8 / int4 models against the peer a user would pick: the same
weights exported to transformers' ``LlamaForCausalLM`` and quantized with ``torch.ao.quantization.quantize_dynamic``
(int8), generating at batch 1 with its KV cache, in the same run.

The model is random (speed does not depend on training) at the ``small`` size (d512, 8 layers, vocab 16384, 32M
parameters; ``--size`` for another). Contenders, each greedy-decoding ``--new-tokens`` after a ``--prompt-tokens``
prompt, interleaved in ``--repeats`` rounds, medians: lmforge fp32, lmforge int8, lmforge int4 (``--group-size``),
HF fp32, HF + quantize_dynamic int8. Prefill is timed apart (one forward over the prompt). Quality targets
(perplexity rise) need a trained model: run ``lmforge compress`` on a run for those. Also prints the weight bytes
of each lmforge variant as saved.

    python bench/compress_speed.py [--size small] [--threads 1] [--repeats 5] [--json bench/out/compress.json]

On a shared 2-core machine give ``--threads 1`` (two threads with a busy core run many times slower); the foreign
CPU load during the timed rounds is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_throughput import busy_cpu_seconds, own_cpu_seconds  # noqa: E402

from lmforge.checkpoint.export import write_quantized  # noqa: E402
from lmforge.checkpoint.load import load_model  # noqa: E402
from lmforge.model.config import SIZES, ModelDims  # noqa: E402
from lmforge.model.decoder import Decoder  # noqa: E402
from lmforge.model.generate import generate  # noqa: E402
from lmforge.model.hf_names import hf_llama_config, to_hf_state_dict  # noqa: E402
from lmforge.model.quantized import quantize  # noqa: E402


def random_model(size: str, vocab: int) -> Decoder:
    torch.manual_seed(0)
    model = Decoder(ModelDims(vocab_size=vocab, **SIZES[size]))
    return model.eval()


def hf_copy(model: Decoder):
    import transformers

    hf = transformers.LlamaForCausalLM(hf_llama_config(model.dims, attn_implementation="sdpa")).eval()
    hf.load_state_dict(to_hf_state_dict(model.state_dict(), model.dims), strict=False)
    if model.dims.tie_embeddings:
        hf.tie_weights()
    return hf


def lmforge_runner(model, prompt, new_tokens):
    def prefill():
        with torch.inference_mode():
            model(torch.tensor([prompt]))

    def decode():
        generate(model, prompt, new_tokens, temperature=0.0)
    return prefill, decode


def hf_runner(model, prompt, new_tokens):
    ids = torch.tensor([prompt])

    def prefill():
        with torch.inference_mode():
            model(input_ids=ids)

    def decode():
        with torch.inference_mode():
            model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           use_cache=True, pad_token_id=0)
    return prefill, decode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=sorted(SIZES))
    parser.add_argument("--vocab", type=int, default=16384)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--group-size", type=int, default=32)  # small: ffn 1376 = 43 x 32
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    dense = random_model(args.size, args.vocab)
    prompt = torch.randint(0, args.vocab, (args.prompt_tokens,), generator=torch.Generator().manual_seed(1)).tolist()
    models, sizes = {"lmforge fp32": dense}, {"lmforge fp32": sum(p.numel() * 4 for p in dense.parameters())}
    with tempfile.TemporaryDirectory() as folder:
        for method, group in (("int8", None), ("int4", args.group_size)):
            copy = random_model(args.size, args.vocab)
            path = Path(folder) / f"{method}.safetensors"
            write_quantized(path, quantize(copy, method, group), 0, None, {"method": method, "group_size": group})
            models[f"lmforge {method}"] = load_model(path).model  # as every stage loads it
            sizes[f"lmforge {method}"] = path.stat().st_size
    hf = hf_copy(dense)
    with torch.no_grad():
        probe = torch.tensor([prompt])
        assert (hf(input_ids=probe).logits - dense(probe)).abs().max() < 1e-4, "the HF copy computes another model"
    hf_int8 = torch.ao.quantization.quantize_dynamic(hf_copy(dense), {torch.nn.Linear}, dtype=torch.qint8)
    runners = {name: lmforge_runner(m, prompt, args.new_tokens) for name, m in models.items()}
    runners["hf fp32"] = hf_runner(hf, prompt, args.new_tokens)
    runners["hf quantize_dynamic int8"] = hf_runner(hf_int8, prompt, args.new_tokens)
    for prefill, decode in runners.values():  # warm-up: packing, first-call allocations
        prefill()
        decode()
    times = {name: {"prefill": [], "decode": []} for name in runners}
    machine_before, own_before, wall_before = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
    for _ in range(args.repeats):
        for name, (prefill, decode) in runners.items():
            start = time.perf_counter()
            prefill()
            middle = time.perf_counter()
            decode()
            end = time.perf_counter()
            times[name]["prefill"].append(middle - start)
            times[name]["decode"].append(max(end - middle - (middle - start), 1e-9))  # generate prefills too
    foreign = None
    if machine_before is not None:
        used = busy_cpu_seconds() - machine_before - (own_cpu_seconds() - own_before)
        foreign = max(0.0, used) / ((time.perf_counter() - wall_before) * os.cpu_count())
    rows = {name: {"prefill_tokens_per_s": args.prompt_tokens / statistics.median(t["prefill"]),
                   "decode_tokens_per_s": args.new_tokens / statistics.median(t["decode"])} for name, t in times.items()}
    base = rows["lmforge fp32"]
    print(f"{args.size} ({sum(p.numel() for p in dense.parameters()):,} parameters), batch 1, prompt "
          f"{args.prompt_tokens}, {args.new_tokens} new tokens, {torch.get_num_threads()} thread(s), medians of "
          f"{args.repeats}")
    print(f"{'contender':28s} {'prefill tok/s':>14s} {'decode tok/s':>13s} {'decode vs fp32':>15s} {'weights MB':>11s}")
    for name, row in rows.items():
        row["decode_vs_lmforge_fp32"] = row["decode_tokens_per_s"] / base["decode_tokens_per_s"]
        mb = f"{sizes[name] / 1e6:11.1f}" if name in sizes else " " * 11
        print(f"{name:28s} {row['prefill_tokens_per_s']:14.0f} {row['decode_tokens_per_s']:13.1f} "
              f"{row['decode_vs_lmforge_fp32']:14.2f}x {mb}")
    ours, peer = rows["lmforge int8"]["decode_tokens_per_s"], rows["hf quantize_dynamic int8"]["decode_tokens_per_s"]
    print(f"lmforge int8 / HF quantize_dynamic int8 decode: {ours / peer:.2f}x; HF int8 / HF fp32: "
          f"{peer / rows['hf fp32']['decode_tokens_per_s']:.2f}x")
    print(f"size: int8 {sizes['lmforge fp32'] / sizes['lmforge int8']:.2f}x smaller, int4 "
          f"{sizes['lmforge fp32'] / sizes['lmforge int4']:.2f}x smaller than fp32 (token table and head in int8 for both)")
    if foreign is not None:
        print(f"other processes used {foreign:.0%} of this machine's CPU during the timed rounds"
              + (" (figures are unreliable: rerun on a quiet machine)" if foreign > 0.05 else ""))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "sizes": sizes, "foreign_cpu_load": foreign,
                                         "args": {k: str(v) for k, v in vars(args).items()}}, indent=2))


if __name__ == "__main__":
    main()
