"""Pruning on tiny seeded models: sparsity exactly as asked (per layer for magnitude, per row for Wanda, two of
every four for 2:4), the kept weights the highest-scoring ones (against a plain loop), calibration norms equal to
the layers' inputs, and structured pruning's smaller model giving the logits of the masked full model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmforge.compress.calibration import block_linears, calibration_windows, input_norms
from lmforge.compress.config import MagnitudeVariant, TwoFourVariant, WandaVariant
from lmforge.compress.prune import magnitude_mask, prune, row_mask, two_four_mask, wanda_score
from lmforge.compress.structured import kept_channels, kept_heads, mask_parts, prune_structured
from lmforge.errors import CompressError
from lmforge.model.config import SIZES, ModelDims
from lmforge.model.decoder import Decoder, count_parameters

DIMS = ModelDims(vocab_size=64, **SIZES["debug"])


def model() -> Decoder:
    torch.manual_seed(0)
    m = Decoder(DIMS)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m.eval()


WINDOWS = np.random.default_rng(0).integers(0, 64, (6, 32))


def test_masks_drop_exactly_what_is_asked():
    w = torch.randn(12, 40, generator=torch.Generator().manual_seed(1))
    keep = magnitude_mask(w, 0.3)
    assert int((~keep).sum()) == int(0.3 * w.numel())
    assert w.abs()[~keep].max() <= w.abs()[keep].min()
    rows = row_mask(w.abs(), 0.5)
    assert ((~rows).sum(1) == 20).all()
    for r in range(12):  # the lowest 20 of each row: a plain loop
        lowest = sorted(range(40), key=lambda j: (w[r, j].abs().item(), j))[:20]
        assert sorted(torch.nonzero(~rows[r]).flatten().tolist()) == sorted(lowest)
    groups = two_four_mask(w.abs()).reshape(12, 10, 4)
    assert (groups.sum(2) == 2).all()
    kept, dropped = w.abs().reshape(12, 10, 4)[groups].reshape(12, 10, 2), w.abs().reshape(12, 10, 4)[~groups].reshape(12, 10, 2)
    assert (kept.min(2).values >= dropped.max(2).values).all()


def test_calibration_norms_are_the_sums_of_each_layers_squared_inputs():
    m = model()
    norms = input_norms(m, WINDOWS, batch_size=4)
    seen = {}
    handles = [layer.register_forward_pre_hook(lambda mod, args, name=name: seen.setdefault(name, []).append(args[0]))
               for name, layer in block_linears(m).items()]
    with torch.no_grad():
        m(torch.from_numpy(WINDOWS).long())
    for h in handles:
        h.remove()
    for name, xs in seen.items():
        expected = torch.cat([x.reshape(-1, x.shape[-1]) for x in xs]).double().pow(2).sum(0)
        assert torch.allclose(norms[name], expected, rtol=1e-6), name


@pytest.mark.parametrize("variant", [MagnitudeVariant(name="m", method="magnitude", sparsity=0.5),
                                     WandaVariant(name="w", method="wanda", sparsity=0.5),
                                     TwoFourVariant(name="t", method="two_four")], ids=["magnitude", "wanda", "2:4"])
def test_pruning_leaves_half_of_every_block_linear_layer(variant):
    m = model()
    norms = input_norms(m, WINDOWS, 4)
    before = {n: l.weight.clone() for n, l in block_linears(m).items()}
    embed = m.embed_tokens.weight.clone()
    prune(m, variant, norms)
    for name, layer in block_linears(m).items():
        w = layer.weight
        assert int((w == 0).sum()) == w.numel() // 2, name
        if variant.method == "wanda":
            assert ((w == 0).sum(1) == w.shape[1] // 2).all()
            score = wanda_score(before[name], norms[name])
            assert score[w == 0].max() <= score[w != 0].max()
        assert torch.equal(w[w != 0], before[name][w != 0])  # the kept weights are untouched
    assert torch.equal(m.embed_tokens.weight, embed)


def test_structured_pruning_gives_the_masked_full_models_logits_with_fewer_parameters():
    m = model()
    norms = input_norms(m, WINDOWS, 4)
    small, keep, heads = prune_structured(m, 0.25, 0, norms)
    n = kept_channels(DIMS.ffn_hidden, 0.25)
    assert heads is None and small.dims.ffn_hidden == n == 129 and all(len(k) == n for k in keep)
    assert count_parameters(m) - count_parameters(small) == DIMS.n_layers * 3 * DIMS.d_model * (DIMS.ffn_hidden - n)
    mask_parts(m, keep, None)
    ids = torch.from_numpy(WINDOWS[:2]).long()
    with torch.no_grad():
        assert (small(ids) - m(ids)).abs().max().item() < 1e-5


@pytest.mark.parametrize("n_heads, n_kv_heads, fraction, left", [
    (4, 2, 0.5, (2, 2)),  # grouped-query: one of the two query heads of each group goes
    (4, 4, 0.25, (3, 3)),  # multi-head: a whole group (query, key and value head) goes
    (8, 2, 0.25, (6, 2)),  # groups of four keep three
])
def test_head_removal_keeps_groups_consistent_and_gives_the_masked_models_logits(n_heads, n_kv_heads, fraction, left):
    dims = ModelDims(vocab_size=64, **(SIZES["debug"] | {"n_heads": n_heads, "n_kv_heads": n_kv_heads}))
    torch.manual_seed(0)
    m = Decoder(dims).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    norms = input_norms(m, WINDOWS, 4)
    small, channels, heads = prune_structured(m, 0.25, fraction, norms)
    assert kept_heads(dims, fraction) == left == (small.dims.n_heads, small.dims.n_kv_heads)
    assert small.dims.head_dim == dims.head_dim and small.dims.explicit_head_dim == dims.head_dim
    group = n_heads // n_kv_heads
    for kept in heads:  # every surviving group keeps the same number of query heads
        per_group = torch.bincount(kept // group, minlength=n_kv_heads)
        assert set(per_group[per_group > 0].tolist()) == {left[0] // left[1]}
    removed = (n_heads - left[0]) * dims.head_dim * 2 + (n_kv_heads - left[1]) * dims.head_dim * 2
    mlp_removed = 3 * (dims.ffn_hidden - small.dims.ffn_hidden)
    assert count_parameters(m) - count_parameters(small) == dims.n_layers * dims.d_model * (removed + mlp_removed)
    mask_parts(m, channels, heads)
    ids = torch.from_numpy(WINDOWS[:2]).long()
    with torch.no_grad():
        assert (small(ids) - m(ids)).abs().max().item() < 1e-5
        # and with the KV cache: the smaller model generates what the masked one does
        from lmforge.model.generate import generate
        prompt = WINDOWS[0, :8].tolist()
        assert generate(small, prompt, 6, temperature=0) == generate(m, prompt, 6, temperature=0)


def test_the_most_important_heads_stay():
    m = model()
    norms = input_norms(m, WINDOWS, 4)
    with torch.no_grad():  # head 1 of block 0 writes nothing: it is the one of its group (heads 0, 1) to go
        m.layers[0].attn.out_proj.weight.view(-1, 4, 16)[:, 1] = 0
    _, _, heads = prune_structured(m, 0, 0.5, norms)
    assert heads[0][0].item() == 0 and len(heads[0]) == 2


def test_an_empty_calibration_set_is_refused():
    class Shards:
        def num_windows(self, seq_len):
            return 0
    with pytest.raises(CompressError, match=r"^compress.calibration: the training shards hold fewer than 65 tokens"):
        calibration_windows(Shards(), 64, 8, 8, 0)


def test_recovery_training_keeps_the_pruned_weights_at_zero():
    from lmforge.compress.prune import holding_zeros, pruned_weights
    from lmforge.train.loop import lm_loss

    m = model()
    prune(m, WandaVariant(name="w", method="wanda", sparsity=0.5), input_norms(m, WINDOWS, 4))
    keep = pruned_weights(m)
    assert set(keep) == {f"{n}.weight" for n in block_linears(m)}
    adapt, loss_fn = holding_zeros(keep, lm_loss)
    adapt(m)
    optimizer = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    batch = torch.from_numpy(WINDOWS).long()
    m.train()
    for _ in range(3):
        optimizer.zero_grad()
        loss_fn(m, batch).backward()
        optimizer.step()
    for name, p in m.named_parameters():
        if name in keep:  # AdamW with no gradient there leaves exact zeros; the kept weights trained
            assert torch.equal(p == 0, ~keep[name]) and not torch.equal(p, before[name]), name
    w = m.layers[0].mlp.down_proj.weight
    zero = (~keep["layers.0.mlp.down_proj.weight"]).nonzero()[0]
    with torch.no_grad():  # an optimizer that moves them (Muon mixes entries) is undone before the next forward
        w[tuple(zero)] = 1.0
    loss_fn(m, batch)
    assert w[tuple(zero)].item() == 0.0
