import math

import pytest
import torch
import torch.nn.functional as F

from lmforge.model import fused_ops
from lmforge.model.config import SIZES, ModelDims
from lmforge.model.decoder import (Attention, Decoder, KVCache, RMSNorm, count_parameters, rotary_tables,
                                   training_flops_per_token)


def dims(vocab=256, **overrides) -> ModelDims:
    return ModelDims(vocab_size=vocab, **{**SIZES["debug"], **overrides})


def naive_rotary(x, positions, theta=10000.0):
    """Pair i with i + D/2 and rotate each pair by position * theta^(-2i/D), one pair at a time."""
    D = x.shape[-1]
    out = x.clone()
    for i in range(D // 2):
        angle = positions.double() * theta ** (-2 * i / D)  # (T,)
        c, s = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
        a, b = x[..., i], x[..., i + D // 2]
        out[..., i], out[..., i + D // 2] = a * c - b * s, b * c + a * s
    return out


def naive_attention(attn: Attention, x):
    """Explicit softmax(q k^T / sqrt(D) + causal mask) v with k/v heads repeated for GQA."""
    B, T, _ = x.shape
    H, K, D = attn.n_heads, attn.n_kv_heads, attn.head_dim
    q, k, v = (x @ attn.qkv_proj.weight.T).split([H * D, K * D, K * D], dim=-1)
    q, k, v = (t.view(B, T, -1, D).transpose(1, 2) for t in (q, k, v))
    positions = torch.arange(T)
    q, k = naive_rotary(q, positions), naive_rotary(k, positions)
    k, v = k.repeat_interleave(H // K, dim=1), v.repeat_interleave(H // K, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(D)  # (B, H, T, T)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    y = scores.softmax(dim=-1) @ v  # (B, H, T, D)
    return y.transpose(1, 2).reshape(B, T, H * D) @ attn.out_proj.weight.T


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])  # multi-head, grouped, multi-query
def test_attention_equals_naive_reference(n_kv_heads):
    torch.manual_seed(0)
    d = dims(n_kv_heads=n_kv_heads)
    attn = Attention(d)
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(2, 24, d.d_model)
    cos, sin = rotary_tables(d.head_dim, 24, d.rope_theta)
    assert torch.allclose(attn(x, cos, sin), naive_attention(attn, x), atol=1e-5)


def test_rotary_properties():
    torch.manual_seed(0)
    D, L = 16, 64
    cos, sin = rotary_tables(D, L, 10000.0)
    q, k = torch.randn(D, dtype=torch.float64), torch.randn(D, dtype=torch.float64)
    cos, sin = cos.double(), sin.double()
    rotated_q = fused_ops.apply_rotary(q.expand(L, D), cos, sin)  # q placed at every position
    rotated_k = fused_ops.apply_rotary(k.expand(L, D), cos, sin)
    assert torch.allclose(rotated_q.norm(dim=-1), q.norm().expand(L))  # norm preserving
    assert torch.equal(rotated_q[0], q)  # position 0 is the identity
    # <R_m q, R_n k> depends only on m - n
    for offset in (0, 3, 17):
        dots = [rotated_q[m] @ rotated_k[m - offset] for m in range(offset, L)]
        assert torch.allclose(torch.stack(dots), dots[0].expand(len(dots)))
    assert torch.allclose(rotated_q, naive_rotary(q.expand(L, D), torch.arange(L)))


def test_fused_rotary_qkv_matches_plain_formula_and_gradcheck():
    torch.manual_seed(0)
    B, T, H, K, D = 2, 5, 4, 2, 8
    cos, sin = (t[:T].double() for t in rotary_tables(D, 16, 10000.0))
    qkv = torch.randn(B, T, (H + 2 * K) * D, dtype=torch.float64, requires_grad=True)
    q, k, v = fused_ops.rotary_qkv(qkv, cos, sin, H, K)
    heads = qkv.view(B, T, H + 2 * K, D).transpose(1, 2)
    assert torch.allclose(q, fused_ops.apply_rotary(heads[:, :H], cos, sin))
    assert torch.allclose(k, fused_ops.apply_rotary(heads[:, H:H + K], cos, sin))
    assert torch.equal(v, heads[:, H + K:])
    assert torch.autograd.gradcheck(lambda t: fused_ops.rotary_qkv(t, cos, sin, H, K), (qkv,))


def test_rmsnorm_matches_formula_and_gradcheck():
    torch.manual_seed(0)
    norm = RMSNorm(16, eps=1e-5).double()
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(3, 4, 16, dtype=torch.float64, requires_grad=True)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    assert torch.allclose(norm(x), expected)
    assert torch.autograd.gradcheck(norm, (x,))
    assert torch.allclose(norm.float()(x.float()), expected.float(), atol=1e-6)


def test_swiglu_matches_formula_and_gradcheck():
    torch.manual_seed(0)
    gate_up = torch.randn(3, 4, 12, dtype=torch.float64, requires_grad=True)
    gate, up = gate_up.chunk(2, dim=-1)
    assert torch.allclose(fused_ops.swiglu(gate_up), gate * torch.sigmoid(gate) * up)
    assert torch.autograd.gradcheck(fused_ops.swiglu, (gate_up,))


@pytest.mark.parametrize("vocab", [50, 4096])  # one chunk of rows, and several chunks
def test_linear_cross_entropy_values_and_gradients(vocab):
    torch.manual_seed(0)
    x = torch.randn(700, 32, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(vocab, 32, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, vocab, (700,))
    targets[::7] = -100
    loss = fused_ops.linear_cross_entropy(x, weight, targets)
    (2 * loss).backward()
    fused_grads = x.grad, weight.grad
    x.grad = weight.grad = None
    expected = F.cross_entropy(x @ weight.T, targets, ignore_index=-100)
    (2 * expected).backward()
    assert torch.allclose(loss, expected)
    assert torch.allclose(fused_grads[0], x.grad) and torch.allclose(fused_grads[1], weight.grad)
    with torch.no_grad():
        assert torch.allclose(fused_ops.linear_cross_entropy(x, weight, targets), expected)


def test_loss_equals_cross_entropy_of_logits_and_respects_ignore_index():
    torch.manual_seed(0)
    model = Decoder(dims(vocab=300)).double()
    tokens = torch.randint(0, 300, (3, 20))
    targets = torch.randint(0, 300, (3, 20))
    targets[:, :5] = -100
    logits = model(tokens)
    assert logits.shape == (3, 20, 300) and logits.dtype == torch.float64
    loss = model(tokens, targets)
    kept = targets != -100
    assert torch.allclose(loss, F.cross_entropy(logits[kept], targets[kept]))
    # gradients through the fused loss equal those through the logits
    loss.backward()
    fused = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    F.cross_entropy(model(tokens).flatten(0, 1), targets.flatten(), ignore_index=-100).backward()
    for name, p in model.named_parameters():
        assert torch.allclose(fused[name], p.grad), name


def test_sequence_longer_than_context_raises():
    model = Decoder(dims())
    with pytest.raises(ValueError, match="exceeds the context length 128"):
        model(torch.zeros(1, 129, dtype=torch.long))


def test_same_seed_same_init_and_init_scales():
    d = dims()
    torch.manual_seed(3)
    a = Decoder(d)
    torch.manual_seed(3)
    b = Decoder(d)
    torch.manual_seed(4)
    c = Decoder(d)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), name
        if "norm" not in name:
            assert not torch.equal(pa, pc), name
    params = dict(a.named_parameters())
    assert all(torch.all(p == 1) for n, p in params.items() if "norm" in n)
    assert abs(params["embed_tokens.weight"].std().item() - 0.02) < 2e-3
    residual_std = 0.02 / math.sqrt(2 * d.n_layers)
    assert abs(params["layers.0.mlp.down_proj.weight"].std().item() - residual_std) < 1e-3


def test_parameter_names_group_for_weight_decay():
    names = [n for n, _ in Decoder(dims(tie_embeddings=False)).named_parameters()]
    assert not any("bias" in n for n in names)
    assert [n for n in names if "embed" in n] == ["embed_tokens.weight"]
    assert len([n for n in names if "norm" in n]) == 2 * SIZES["debug"]["n_layers"] + 1
    tied = Decoder(dims())
    assert tied.lm_head.weight is tied.embed_tokens.weight


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("tie", [True, False])
def test_count_parameters_from_dims_equals_built_model(size, tie):
    d = ModelDims(vocab_size=1000, tie_embeddings=tie, **SIZES[size])
    with torch.device("meta"):
        model = Decoder(d)
    assert count_parameters(d) == count_parameters(model) == sum(p.numel() for p in model.parameters())
    assert count_parameters(d, non_embedding=True) == count_parameters(model, non_embedding=True)
    assert count_parameters(d) - count_parameters(d, non_embedding=True) == 1000 * d.d_model


@pytest.mark.parametrize("size, vocab, low, high", [
    ("debug", 4096, 0, 1e6), ("tiny", 4096, 4e6, 7e6), ("small", 16384, 25e6, 40e6),
    ("124m", 50257, 120e6, 130e6), ("1b", 32000, 0.9e9, 1.3e9),
])
def test_named_sizes_parameter_counts(size, vocab, low, high):
    assert low <= count_parameters(ModelDims(vocab_size=vocab, **SIZES[size])) <= high


def test_training_flops_per_token_formula():
    d = dims(vocab=256)  # d_model 64, 2 layers, 4 heads, 2 kv heads, head_dim 16, ffn 172
    matmul_params = 2 * (64 * (4 + 2 * 2) * 16 + 64 * 64 + 3 * 64 * 172) + 256 * 64
    assert training_flops_per_token(d, 100) == 6 * matmul_params + 12 * 2 * 64 * 100


def test_kv_cache_matches_full_forward():
    torch.manual_seed(0)
    d = dims()
    model = Decoder(d).eval()
    tokens = torch.randint(0, d.vocab_size, (2, 40))
    cache = KVCache.allocate(d, batch_size=2, max_len=40)
    with torch.no_grad():
        full = model(tokens)
        pieces = [model.forward_cached(tokens[:, :16], cache, 0),  # prompt
                  model.forward_cached(tokens[:, 16:17], cache, 16),  # one token
                  model.forward_cached(tokens[:, 17:40], cache, 17)]  # several tokens after a prefix
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-5)
    with pytest.raises(ValueError, match="exceeds the context length"):
        KVCache.allocate(d, 1, d.context_length + 1)


def test_dropout_only_in_training():
    torch.manual_seed(0)
    model = Decoder(dims(dropout=0.2))
    tokens = torch.randint(0, 256, (2, 16))
    assert not torch.equal(model(tokens), model(tokens))
    model.eval()
    assert torch.equal(model(tokens), model(tokens))


def test_plain_formulas_used_under_compile_match_the_fused_eager_path(monkeypatch):
    torch.manual_seed(0)
    model = Decoder(dims()).double()
    tokens, targets = torch.randint(0, 256, (2, 30)), torch.randint(0, 256, (2, 30))

    def loss_and_grads():
        model.zero_grad()
        loss = model(tokens, targets)
        loss.backward()
        return loss, [p.grad.clone() for p in model.parameters()]

    fused_loss, fused_grads = loss_and_grads()
    monkeypatch.setattr(fused_ops, "_use_plain", lambda *tensors: True)
    plain_loss, plain_grads = loss_and_grads()
    assert torch.allclose(fused_loss, plain_loss)
    assert all(torch.allclose(a, b) for a, b in zip(fused_grads, plain_grads))
