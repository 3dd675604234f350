"""Attention maps, rollout, the logit lens and the anatomy on tiny seeded decoders: maps that are the model's own
(rows summing to 1, and reproducing the attention output the model computed with SDPA), the lens's last layer
equal to the model's logits, singular values equal to torch.linalg.svdvals, and the power-law fit recovering a
known exponent and equal to a plain loop over candidate lower bounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmforge.explain.anatomy import anatomy, matrix_facts, parameters_per_module, power_law_fit, verdict_of
from lmforge.explain.attention import attention_maps, attention_outputs, rollout
from lmforge.explain.internals import trace
from lmforge.explain.lens import lens_logits, top_tokens
from lmforge.model.config import SIZES, ModelDims
from lmforge.model.decoder import Decoder, count_parameters

TOKENS = [5, 17, 3, 42, 8, 8, 61, 0, 29, 13, 7, 50]


def decoder(**changes) -> Decoder:
    torch.manual_seed(0)
    m = Decoder(ModelDims(vocab_size=64, **(SIZES["debug"] | changes)))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return m.eval()


@pytest.mark.parametrize("heads", [(4, 2), (4, 4), (4, 1)], ids=["gqa", "mha", "one-kv"])
def test_attention_maps_are_the_models_own(heads):
    m = decoder(n_heads=heads[0], n_kv_heads=heads[1])
    t = trace(m, TOKENS)
    maps = attention_maps(m, t.attention_inputs)
    assert len(maps) == m.dims.n_layers and maps[0].shape == (heads[0], len(TOKENS), len(TOKENS))
    for a in maps:
        assert torch.allclose(a.sum(-1), torch.ones(a.shape[:2]), atol=1e-6)
        assert (a.triu(1) == 0).all()  # causal: no weight on later tokens
    for ours, model in zip(attention_outputs(m, t.attention_inputs, maps), t.attention_outputs):
        assert (ours - model).abs().max().item() < 1e-5


def test_rollout_rows_are_distributions_and_compose_the_blocks():
    m = decoder()
    maps = attention_maps(m, trace(m, TOKENS).attention_inputs)
    r = rollout(maps)
    assert torch.allclose(r.sum(-1), torch.ones(len(TOKENS)), atol=1e-6) and (r.triu(1).abs() < 1e-12).all()
    eye = torch.eye(len(TOKENS))
    by_hand = eye
    for a in maps:  # a plain loop of the formula
        step = (0.5 * a.mean(0) + 0.5 * eye)
        by_hand = (step / step.sum(-1, keepdim=True)) @ by_hand
    assert torch.allclose(r, by_hand)
    assert torch.equal(rollout(maps[:1])[0], torch.tensor([1.0] + [0.0] * (len(TOKENS) - 1)))


def test_logit_lens_ends_at_the_models_logits():
    m = decoder()
    t = trace(m, TOKENS)
    lens = lens_logits(m, t.residuals)
    assert len(lens) == m.dims.n_layers + 1
    with torch.no_grad():
        assert torch.allclose(lens[-1], m(torch.tensor([TOKENS]))[0], atol=1e-6)
        assert torch.allclose(t.logits, lens[-1], atol=1e-6)
        assert torch.allclose(lens[0], m.lm_head(m.final_norm(m.embed_tokens(torch.tensor(TOKENS)))))
    ids, probs = top_tokens(lens[-1], 3)
    assert ids.shape == (len(TOKENS), 3) and (probs[:, :-1] >= probs[:, 1:]).all()
    assert torch.equal(ids[:, 0], lens[-1].argmax(-1))


def plain_fit(x):
    """Clauset et al.'s procedure written as a loop: (alpha, xmin, KS distance)."""
    x = sorted(v for v in x if v > 0)
    best = None
    for i in range(len(x) - 1):
        tail = x[i:]
        s = sum(np.log(v / tail[0]) for v in tail)
        if s <= 0:
            continue
        alpha = 1 + len(tail) / s
        d = max(abs((1 - (v / tail[0]) ** (1 - alpha)) - j / len(tail)) for j, v in enumerate(tail))
        if best is None or d < best[2]:
            best = (alpha, tail[0], d)
    return best


def test_power_law_fit_recovers_a_known_exponent_and_equals_a_plain_loop():
    rng = np.random.default_rng(0)
    sample = (1 - rng.random(4000)) ** (-1 / (3.0 - 1))  # Pareto, alpha 3, xmin 1
    fit = power_law_fit(sample)
    assert abs(fit.alpha - 3.0) < 0.15 and fit.tail > 1000
    small = rng.random(300) ** -0.7
    fast, slow = power_law_fit(small), plain_fit(small)
    assert fast.alpha == pytest.approx(slow[0], rel=1e-9) and fast.xmin == slow[1]
    assert fast.ks_distance == pytest.approx(slow[2], rel=1e-9)
    assert power_law_fit(np.ones(5)) is None
    assert [verdict_of(a) for a in (None, 1.5, 4.0, 7.0)] == ["no fit", "over-trained", "ok", "under-trained"]


def test_anatomy_counts_every_parameter_once_and_its_spectra_are_svdvals():
    m = decoder(tie_embeddings=True)
    facts = anatomy(m)
    assert sum(facts["parameters"].values()) == count_parameters(m)
    assert set(facts["parameters"]) == {"embed_tokens", "final_norm"} | {
        f"layers.{i}.{part}" for i in range(2) for part in ("attn", "mlp", "attn_norm", "mlp_norm")}
    names = [f.name for f in facts["matrices"]]
    assert "lm_head.weight" not in names and "embed_tokens.weight" in names  # tied: one table
    w = m.layers[0].mlp.down_proj.weight
    f = matrix_facts("down", w)
    expected = torch.linalg.svdvals(w.detach().double())
    assert torch.allclose(torch.tensor(f.singular_values, dtype=torch.float64), expected)
    assert f.spectral_norm == pytest.approx(float(expected[0])) and f.shape == (64, 172)
    assert f.frobenius_norm == pytest.approx(float(w.detach().double().norm()))
    assert set(facts["flagged"]) <= set(names)
    assert parameters_per_module(decoder(tie_embeddings=False))["lm_head"] == 64 * 64


def test_alpha_is_weightwatchers():
    import logging
    import warnings

    import weightwatcher

    m = decoder()
    logging.disable(logging.WARNING)  # weightwatcher logs every layer
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = weightwatcher.WeightWatcher(model=m).analyze()
    finally:
        logging.disable(logging.NOTSET)
    ours = {f.name.removesuffix(".weight"): f for f in anatomy(m)["matrices"]}
    compared = 0
    for _, row in theirs.iterrows():
        name = "embed_tokens" if row["longname"] == "lm_head" else row["longname"]  # tied: one table
        assert ours[name].alpha == pytest.approx(row["alpha"], rel=1e-6), name  # the issue asks within 5%
        assert ours[name].xmin == pytest.approx(row["xmin"], rel=1e-6), name
        compared += 1
    assert compared == 4 * m.dims.n_layers + 2  # every block projection, the embedding and the head tied to it
