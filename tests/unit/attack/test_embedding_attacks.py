"""Embedding-space FGSM and PGD on tiny seeded decoders (a language model and a classifier): FGSM equal to a
sign-gradient step written by hand through the decoder's own forward; every PGD perturbation inside its ball
(L-infinity and L2, mean and per-token radii), zero at fixed and protected positions, its loss never below the
clean loss and equal to the loss recomputed at it; seeded; the embedding entry equal to the token forward."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attack_models import CONTEXT, decoder
from lmforge.attack.config import EmbeddingAttack
from lmforge.attack.embedding import fgsm, pgd, radii
from lmforge.attack.objective import Example, embed, losses
from lmforge.model.decoder import Decoder


def lm_example(protected_at=()) -> Example:
    attackable = tuple(i for i in range(len(CONTEXT)) if i not in protected_at)
    return Example("lm", CONTEXT, (9, 33, 2, 7), None, attackable)


def classifier_example() -> Example:
    return Example("cls", CONTEXT, (0,), 1, tuple(range(len(CONTEXT))))


def clean_loss(m: Decoder, ex: Example) -> float:
    with torch.no_grad():
        return float(losses(m, ex, embed(m, torch.tensor([ex.ids])))[0])


def hand_loss(m: Decoder, ex: Example, delta: torch.Tensor) -> torch.Tensor:
    """The example's loss with ``delta`` added to the token embeddings, through ``Decoder.forward`` (a hook on the
    embedding) and its own fused cross-entropy, not through the attack's code."""
    handle = m.embed_tokens.register_forward_hook(lambda mod, args, out: out + delta)
    try:
        ids = torch.tensor([ex.ids])
        if ex.label is not None:
            return F.cross_entropy(m(ids)[0, -1:], torch.tensor([ex.label]))
        targets = torch.full_like(ids, -100)
        targets[0, len(ex.context) - 1:-1] = torch.tensor(ex.suffix)
        return m(ids, targets)
    finally:
        handle.remove()


@pytest.mark.parametrize("kind", ["lm", "classifier"])
def test_fgsm_is_the_sign_gradient_step_written_by_hand(kind):
    m = decoder(labels=3 if kind == "classifier" else None)
    ex = classifier_example() if kind == "classifier" else lm_example(protected_at=(2, 7))
    spec = EmbeddingAttack(name="fgsm", norm="linf", epsilon=0.02)
    zero = torch.zeros(len(ex.ids), m.dims.d_model, requires_grad=True)
    (grad,) = torch.autograd.grad(hand_loss(m, ex, zero), zero)
    C = m.dims.d_model
    r = 0.02 * m.embed_tokens.weight.norm(dim=1).mean() / math.sqrt(C)  # the L-infinity half-side
    expected = r * grad.sign()
    expected[[i for i in range(len(ex.ids)) if i not in ex.attackable]] = 0
    got = fgsm(m, ex, spec)
    torch.testing.assert_close(got.delta, expected, rtol=1e-5, atol=1e-7)
    assert got.loss == pytest.approx(float(hand_loss(m, ex, expected)), rel=1e-5)
    assert got.loss > clean_loss(m, ex)  # a small step along the gradient raises the loss (to first order)
    assert got.changed == list(ex.attackable) and got.queries == 2


def test_fgsm_l2_takes_the_whole_radius_along_the_gradient():
    m = decoder()
    ex = lm_example()
    spec = EmbeddingAttack(name="fgsm", norm="l2", epsilon=0.2, scale="token")
    zero = torch.zeros(len(ex.ids), m.dims.d_model, requires_grad=True)
    (grad,) = torch.autograd.grad(hand_loss(m, ex, zero), zero)
    r = 0.2 * m.embed_tokens.weight[list(ex.ids)].norm(dim=1, keepdim=True)  # each token's own row
    expected = r * grad / grad.norm(dim=1, keepdim=True)
    expected[len(ex.context):] = 0
    torch.testing.assert_close(fgsm(m, ex, spec).delta, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("scale", ["mean", "token"])
@pytest.mark.parametrize("kind", ["lm", "classifier"])
def test_pgd_stays_in_its_ball_and_never_below_the_clean_loss(norm, scale, kind):
    m = decoder(labels=3 if kind == "classifier" else None)
    ex = classifier_example() if kind == "classifier" else lm_example(protected_at=(0, 4))
    spec = EmbeddingAttack(name="pgd", norm=norm, epsilon=0.5, scale=scale, steps=6)
    clean = clean_loss(m, ex)
    got = pgd(m, ex, spec, clean, seed=3)
    r = radii(m, ex, spec)[:, 0]  # (T,)
    lengths = got.delta.abs().amax(-1) if norm == "linf" else got.delta.norm(dim=-1)
    assert bool((lengths <= r * (1 + 1e-5)).all())
    fixed = [i for i in range(len(ex.ids)) if i not in ex.attackable]
    assert float(got.delta[fixed].abs().max()) == 0.0
    assert got.loss >= clean
    assert got.loss > clean + 1e-3  # six ascent steps find a perturbation of higher loss
    assert got.loss == pytest.approx(float(hand_loss(m, ex, got.delta)), rel=1e-5)
    assert got.queries == spec.steps + 1
    again = pgd(m, ex, spec, clean, seed=3)
    assert torch.equal(again.delta, got.delta) and again.loss == got.loss
    assert not torch.equal(pgd(m, ex, spec, clean, seed=4).delta, got.delta)  # another random start


def test_pgd_beats_fgsm_at_the_same_radius():
    m = decoder()
    ex = lm_example()
    clean = clean_loss(m, ex)
    one = fgsm(m, ex, EmbeddingAttack(name="fgsm", epsilon=1.0))
    many = pgd(m, ex, EmbeddingAttack(name="pgd", epsilon=1.0, steps=20, random_start=False), clean, seed=0)
    assert many.loss >= one.loss


def test_the_embedding_entry_is_the_token_forward():
    m = decoder()
    ids = torch.tensor([CONTEXT])
    with torch.no_grad():
        torch.testing.assert_close(m.lm_head(m.forward_embeddings(m.embed_tokens(ids))), m(ids))
