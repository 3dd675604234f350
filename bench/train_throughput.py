"""Training throughput of lmforge's decoder against Hugging Face ``LlamaForCausalLM``, fp32 on CPU.

Both models have the same dimensions (our ``tiny`` size), start from the SAME weights (ours are copied
into the HF model and the logits are checked to match), see the same batches and use the same optimizer
(torch.optim.AdamW, default foreach). One timed step is the full training step a user runs:
forward + loss + backward + clip_grad_norm + optimizer step + zero_grad. Rounds alternate between the
contenders, warm-up steps are excluded, and the figure is the median step time over all rounds.

    python bench/train_throughput.py [--compile] [--vocab 8192] [--threads 1] [--json bench/out/train.json]

Timing on a shared machine is only as good as the machine is quiet: the script reports how much CPU
other processes used during the timed rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time

import torch

from lmforge.model.config import SIZES, ModelDims
from lmforge.model.decoder import Decoder, count_parameters, training_flops_per_token
from lmforge.model.hf_names import to_hf_llama


def busy_cpu_seconds() -> float | None:
    """CPU seconds all processes on this machine have run (Linux /proc/stat), to report foreign load."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def sgemm_rate(m: int, k: int, n: int, repeats: int = 20) -> float:
    """This machine's fp32 matmul FLOP/s at one of the step's shapes (median of ``repeats``)."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * m * k * n / statistics.median(times)


def attention_seconds(dims: ModelDims, batch: int, seq: int, repeats: int = 10) -> float:
    """Median seconds of the causal SDPA kernel, forward + backward, over all layers (both models call it)."""
    q = torch.randn(batch, dims.n_heads, seq, dims.head_dim, requires_grad=True)
    k, v = (torch.randn(batch, dims.n_kv_heads, seq, dims.head_dim, requires_grad=True) for _ in range(2))
    grad = torch.randn_like(q)
    times = []
    for i in range(repeats + 2):
        start = time.perf_counter()
        torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).backward(grad)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return statistics.median(times) * dims.n_layers


def make_trainer(model: torch.nn.Module, loss_fn, lr: float = 3e-4):
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        loss = loss_fn(model, x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def ours_loss(model, x, y):
    return model(x, y)


def hf_loss(model, x, y):
    # shift_labels: HF takes our already-shifted targets, so both compute the loss on the same positions
    return model(input_ids=x, shift_labels=y, labels=y, use_cache=False).loss


def time_rounds(contenders: dict, batches: list, steps: int, repeats: int) -> dict[str, dict[str, list[float]]]:
    """Alternate the contenders ``repeats`` times, ``steps`` steps each; per step: wall seconds, CPU
    seconds of this process (all threads), and minor page faults (fresh memory the allocator mapped)."""
    samples = {name: {"wall_s": [], "cpu_s": [], "page_faults": []} for name in contenders}
    for _ in range(repeats):
        for name, step in contenders.items():
            for i in range(steps):
                faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                cpu, start = own_cpu_seconds(), time.perf_counter()
                step(*batches[i % len(batches)])
                samples[name]["wall_s"].append(time.perf_counter() - start)
                samples[name]["cpu_s"].append(own_cpu_seconds() - cpu)
                samples[name]["page_faults"].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2, help="timed steps per contender per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per contender before the rounds")
    parser.add_argument("--repeats", type=int, default=10, help="rounds; contenders alternate within each")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=4096, help="default: the built-in run's tokenizer size")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(ours)")
    parser.add_argument("--json", metavar="OUT", help="write the figures and every step's times to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    dims = ModelDims(vocab_size=args.vocab, **SIZES["tiny"])
    ours = Decoder(dims).train()
    hf = to_hf_llama(ours, attn_implementation="sdpa").train()  # our weights, fused projections split
    assert count_parameters(ours) == sum(p.numel() for p in hf.parameters())

    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, dims.vocab_size, (args.batch, args.seq + 1), generator=g) for _ in range(4)]
    batches = [(b[:, :-1].contiguous(), b[:, 1:].contiguous()) for b in batches]
    with torch.no_grad():  # same math: identical starting logits
        x0 = batches[0][0]
        diff = (ours(x0) - hf(input_ids=x0).logits).abs().max().item()
    assert diff < 1e-4, f"models differ before training: max |logit diff| = {diff}"

    contenders = {"hf LlamaForCausalLM": make_trainer(hf, hf_loss), "lmforge eager": make_trainer(ours, ours_loss)}
    if args.compile:
        compiled = Decoder(dims).train()
        compiled.load_state_dict(ours.state_dict())
        contenders["lmforge compiled"] = make_trainer(torch.compile(compiled), ours_loss)
    warmup_losses = {name: [step(*batches[i % len(batches)]) for i in range(args.warmup)]
                     for name, step in contenders.items()}
    for name, losses in warmup_losses.items():  # same math: the same loss curve, step for step
        reference = warmup_losses["hf LlamaForCausalLM"]
        assert all(abs(a - b) < 1e-3 for a, b in zip(losses, reference)), f"{name}: {losses} vs HF {reference}"

    machine_before, own_before, wall_before = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
    samples = time_rounds(contenders, batches, args.steps, args.repeats)
    foreign_load = None  # CPU used by other processes during the timed rounds, as a share of all cores
    if machine_before is not None:
        foreign = busy_cpu_seconds() - machine_before - (own_cpu_seconds() - own_before)
        foreign_load = max(0.0, foreign) / ((time.perf_counter() - wall_before) * os.cpu_count())

    tokens = args.batch * args.seq
    rows = {name: {key: statistics.median(values) for key, values in s.items()} for name, s in samples.items()}
    for row in rows.values():
        row["tokens_per_s"] = tokens / row["wall_s"]
        row["ratio_vs_hf"] = row["tokens_per_s"] / rows["hf LlamaForCausalLM"]["tokens_per_s"]
    print(f"tiny decoder ({count_parameters(ours) / 1e6:.2f}M params, vocab {dims.vocab_size}), "
          f"batch {args.batch} x seq {args.seq}, fp32, {torch.get_num_threads()} CPU threads, "
          f"torch {torch.__version__}; medians of {args.steps * args.repeats} steps each")
    print("warm-up losses (identical training): "
          + ", ".join(f"{name} {' '.join(f'{v:.4f}' for v in losses)}" for name, losses in warmup_losses.items()))
    if foreign_load is not None:
        print(f"other processes used {foreign_load:.0%} of this machine's CPU during the timed rounds"
              + (" (figures are unreliable: rerun on a quiet machine)" if foreign_load > 0.05 else ""))
    print(f"{'contender':<22}{'step (ms)':>11}{'tokens/s':>10}{'vs HF':>8}{'CPU s/step':>12}{'faults/step':>13}")
    for name, row in rows.items():
        print(f"{name:<22}{row['wall_s'] * 1e3:>11.1f}{row['tokens_per_s']:>10.0f}{row['ratio_vs_hf']:>7.2f}x"
              f"{row['cpu_s']:>12.2f}{row['page_faults']:>13.0f}")
    # The floor: every contender does the same matmuls (6 N FLOPs per token) and calls the same attention
    # kernel; at this machine's sgemm rate those alone take this long, whatever else a step does.
    blocks_and_head = training_flops_per_token(dims, args.seq) - 12.0 * dims.n_layers * dims.d_model * args.seq
    shapes = [(tokens, dims.d_model, 2 * dims.ffn_hidden), (tokens, dims.ffn_hidden, dims.d_model),  # forward, input grad
              (2 * dims.ffn_hidden, tokens, dims.d_model), (tokens, dims.d_model, dims.vocab_size)]  # weight grad, head
    rate = max(sgemm_rate(*shape) for shape in shapes)  # the fastest shape: the floor errs low, never high
    attention_s = attention_seconds(dims, args.batch, args.seq)
    floor_s = blocks_and_head * tokens / rate + attention_s
    print(f"floor: {blocks_and_head * tokens / 1e9:.1f} GFLOP of matmuls per step at {rate / 1e9:.0f} GFLOP/s (this "
          f"machine's best sgemm rate) + {attention_s * 1e3:.0f} ms of SDPA forward + backward = {floor_s * 1e3:.0f} ms: at most "
          f"{rows['hf LlamaForCausalLM']['wall_s'] / floor_s:.2f}x HF for a step that did nothing else")
    if args.json:
        meta = dict(vars(args), torch=torch.__version__, threads=torch.get_num_threads(), machine=platform.processor())
        with open(args.json, "w") as f:
            json.dump({"args": meta, "foreign_cpu_load": foreign_load, "warmup_losses": warmup_losses,
                       "medians": rows, "matmul_floor_s": floor_s,
                       "sgemm_flops": rate, "steps": samples}, f, indent=1)


if __name__ == "__main__":
    main()
