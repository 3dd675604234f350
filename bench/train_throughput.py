"""Training throughput of lmforge's decoder against Hugging Face ``LlamaForCausalLM``, fp32 on CPU.

Both models have the same dimensions (our ``tiny`` size), start from the SAME weights (ours are copied
into the HF model and the logits are checked to match), see the same batches and use the same optimizer
(torch.optim.AdamW, default foreach). One timed step is the full training step a user runs:
forward + loss + backward + clip_grad_norm + optimizer step + zero_grad. Rounds alternate between the
contenders, warm-up steps are excluded, and the figure is the median step time over all rounds.

    python bench/train_throughput.py --steps 10 --warmup 3 --repeats 3 [--compile] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lmforge.model.config import SIZES, ModelDims
from lmforge.model.decoder import Decoder, count_parameters


def hf_llama_like(dims: ModelDims) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=dims.vocab_size, hidden_size=dims.d_model, intermediate_size=dims.ffn_hidden,
        num_hidden_layers=dims.n_layers, num_attention_heads=dims.n_heads, num_key_value_heads=dims.n_kv_heads,
        max_position_embeddings=dims.context_length, rms_norm_eps=dims.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": dims.rope_theta},
        tie_word_embeddings=dims.tie_embeddings, attention_bias=False, mlp_bias=False, hidden_act="silu",
        attn_implementation="sdpa", use_cache=False,
    )
    return LlamaForCausalLM(config)


@torch.no_grad()
def copy_weights_into_hf(ours: Decoder, hf: LlamaForCausalLM) -> None:
    """Split our fused projections into HF's separate ones so both models start identical."""
    d = ours.dims
    q_dim, kv_dim = d.n_heads * d.head_dim, d.n_kv_heads * d.head_dim
    hf.model.embed_tokens.weight.copy_(ours.embed_tokens.weight)
    hf.model.norm.weight.copy_(ours.final_norm.weight)
    hf.lm_head.weight.copy_(ours.lm_head.weight)
    for src, dst in zip(ours.layers, hf.model.layers):
        q, k, v = src.attn.qkv_proj.weight.split([q_dim, kv_dim, kv_dim])
        dst.self_attn.q_proj.weight.copy_(q)
        dst.self_attn.k_proj.weight.copy_(k)
        dst.self_attn.v_proj.weight.copy_(v)
        dst.self_attn.o_proj.weight.copy_(src.attn.out_proj.weight)
        gate, up = src.mlp.gate_up_proj.weight.chunk(2)
        dst.mlp.gate_proj.weight.copy_(gate)
        dst.mlp.up_proj.weight.copy_(up)
        dst.mlp.down_proj.weight.copy_(src.mlp.down_proj.weight)
        dst.input_layernorm.weight.copy_(src.attn_norm.weight)
        dst.post_attention_layernorm.weight.copy_(src.mlp_norm.weight)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per contender per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per contender before the rounds")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=4096, help="4096: the built-in run's tokenizer")
    parser.add_argument("--repeats", type=int, default=6, help="rounds; contenders alternate within each")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(ours)")
    parser.add_argument("--json", metavar="OUT", help="write the figures to this JSON file")
    args = parser.parse_args()

    torch.manual_seed(0)
    dims = ModelDims(vocab_size=args.vocab, **SIZES["tiny"])
    ours = Decoder(dims).train()
    hf = hf_llama_like(dims).train()
    copy_weights_into_hf(ours, hf)
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
        torch.manual_seed(0)
        compiled = Decoder(dims).train()
        compiled.load_state_dict(ours.state_dict())
        contenders["lmforge compiled"] = make_trainer(torch.compile(compiled), ours_loss)

    for name, step in contenders.items():
        for i in range(args.warmup):
            step(*batches[i % len(batches)])
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.repeats):
        for name, step in contenders.items():
            for i in range(args.steps):
                start = time.perf_counter()
                step(*batches[i % len(batches)])
                times[name].append(time.perf_counter() - start)

    tokens = args.batch * args.seq
    rows = {name: {"median_step_s": statistics.median(t), "tokens_per_s": tokens / statistics.median(t)}
            for name, t in times.items()}
    hf_rate = rows["hf LlamaForCausalLM"]["tokens_per_s"]
    print(f"tiny decoder ({count_parameters(ours) / 1e6:.2f}M params, vocab {dims.vocab_size}), "
          f"batch {args.batch} x seq {args.seq}, fp32, {torch.get_num_threads()} CPU threads, "
          f"torch {torch.__version__}, median of {args.steps * args.repeats} steps")
    print(f"{'contender':<22}{'step (ms)':>11}{'tokens/s':>11}{'vs HF':>8}")
    for name, row in rows.items():
        row["ratio_vs_hf"] = row["tokens_per_s"] / hf_rate
        print(f"{name:<22}{row['median_step_s'] * 1e3:>11.1f}{row['tokens_per_s']:>11.0f}{row['ratio_vs_hf']:>7.2f}x")
    if args.json:
        meta = dict(vars(args), torch=torch.__version__, threads=torch.get_num_threads(), machine=platform.processor())
        with open(args.json, "w") as f:
            json.dump({"args": meta, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
