"""The GCG suffix search on a tiny seeded language model: only the suffix changes, never to a protected token;
its loss never rises and ends below the initial suffix's, equal to the loss recomputed on the tokens found; each
candidate swap is among its position's top-k by the one-hot gradient (computed by hand); the
queries equal the rows the model ran; seeded."""

from __future__ import annotations

import pytest
import torch

from attack_models import CONTEXT, decoder
from lmforge.attack.config import SuffixAttack
from lmforge.attack.objective import Example, embed, losses
from lmforge.attack.suffix import gcg

TARGET = (9, 33, 2, 7)
PROTECTED = {0, 1, 2}
INIT, S = 4, 3


def searched() -> Example:
    n = len(CONTEXT)
    return Example("x", (*CONTEXT, *[INIT] * S), TARGET, None, tuple(range(n, n + S)))


def loss_of(m, ex: Example, ids) -> float:
    with torch.no_grad():
        return float(losses(m, ex, embed(m, torch.tensor([list(ids)])))[0])


def test_gcg_lowers_the_target_loss_by_changing_the_suffix_only():
    m = decoder()
    ex = searched()
    spec = SuffixAttack(name="gcg", suffix_tokens=S, top_k=8, candidates=8, steps=6)
    seen = [0]
    handle = m.final_norm.register_forward_hook(lambda mod, args, out: seen.__setitem__(0, seen[0] + len(out)))
    got = gcg(m, ex, spec, PROTECTED, seed=0)
    handle.remove()
    assert got.ids[:len(CONTEXT)] == list(CONTEXT) and tuple(got.ids[-len(TARGET):]) == TARGET
    assert all(t not in PROTECTED for t in got.ids[len(CONTEXT):len(CONTEXT) + S])
    assert got.loss == pytest.approx(loss_of(m, ex, got.ids), rel=1e-5)
    assert got.loss < loss_of(m, ex, ex.ids)
    assert got.queries == seen[0]
    again = gcg(m, ex, spec, PROTECTED, seed=0)
    assert again.ids == got.ids and again.loss == got.loss


def test_every_candidate_is_among_its_positions_top_k_by_the_one_hot_gradient():
    m = decoder()
    ex = searched()
    x = embed(m, torch.tensor([ex.ids])).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(losses(m, ex, x)[0], x)
    one_hot = grad[0] @ m.embed_tokens.weight.T  # (T, V): by hand, the first step's
    one_hot[:, sorted(PROTECTED)] = float("inf")
    top = (-one_hot).topk(2, dim=-1).indices  # (T, 2)
    rows = []  # what the model is given to embed: the candidates are the batches of several rows
    handle = m.embed_tokens.register_forward_hook(lambda mod, args, out: rows.extend(args[0].tolist())
                                                  if len(args[0]) > 1 else None)
    gcg(m, ex, SuffixAttack(name="gcg", suffix_tokens=S, top_k=2, candidates=6, steps=1), PROTECTED, seed=1)
    handle.remove()
    assert len(rows) == 6
    for row in rows:
        changed = [i for i, (a, b) in enumerate(zip(ex.ids, row)) if a != b]
        assert len(changed) <= 1 and all(i in ex.attackable and row[i] in top[i].tolist() for i in changed)
    assert any(row != list(ex.ids) for row in rows)
