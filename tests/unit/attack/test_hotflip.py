"""HotFlip token substitution on tiny seeded decoders: the changed-token budget kept, protected positions and
tokens never touched, every new token among its original's nearest neighbours (equal to a brute-force cosine
ranking), the loss raised at each kept swap, the queries equal to the rows the model ran, stopping at success."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attack_models import CONTEXT, decoder
from lmforge.attack.config import TokenAttack
from lmforge.attack.hotflip import budget, hotflip, nearest_neighbours
from lmforge.attack.objective import Example, embed, losses, scores

PROTECTED = {0, 8}  # token ids: 8 sits at positions 4 and 5 of CONTEXT


def example(label: int | None = None) -> Example:
    attackable = tuple(i for i, t in enumerate(CONTEXT) if t not in PROTECTED)
    return Example("x", CONTEXT, (0,) if label is not None else (9, 33, 2, 7), label, attackable)


def test_neighbours_are_the_nearest_by_cosine_without_protected_tokens():
    table = decoder().embed_tokens.weight
    found = nearest_neighbours(table, [5, 17, 5], 6, PROTECTED)
    assert set(found) == {5, 17}
    for token, near in found.items():
        ranked = sorted((t for t in range(len(table)) if t != token and t not in PROTECTED),
                        key=lambda t: -float(F.cosine_similarity(table[token], table[t], dim=0)))
        assert near == ranked[:6]


def count_rows(m):
    """A hook counting the rows every forward of ``m`` runs (the final norm runs once per forward)."""
    seen = [0]
    handle = m.final_norm.register_forward_hook(lambda mod, args, out: seen.__setitem__(0, seen[0] + len(out)))
    return seen, handle


@pytest.mark.parametrize("share", [0.1, 0.3, 1.0])
def test_hotflip_keeps_its_constraints_and_raises_the_loss(share):
    m = decoder()
    ex = example()
    spec = TokenAttack(name="hotflip", max_changed=share, neighbours=5, candidates=4)
    near = nearest_neighbours(m.embed_tokens.weight, [CONTEXT[i] for i in ex.attackable], 5, PROTECTED)
    with torch.no_grad():
        clean = float(losses(m, ex, embed(m, torch.tensor([ex.ids])))[0])
    seen, handle = count_rows(m)
    got = hotflip(m, ex, spec, near, succeeded=lambda prediction, loss: False)
    handle.remove()
    assert len(got.changed) <= math.floor(share * len(CONTEXT)) == budget(spec, ex)
    assert len(got.changed) >= 1
    assert got.queries == seen[0]
    for i, (old, new) in enumerate(zip(ex.ids, got.ids)):
        if i in got.changed:
            assert new != old and new in near[old] and new not in PROTECTED
        else:
            assert new == old
    assert all(CONTEXT[i] not in PROTECTED for i in got.changed) and got.ids[len(CONTEXT):] == list(ex.suffix)
    with torch.no_grad():
        assert got.loss == pytest.approx(float(losses(m, ex, embed(m, torch.tensor([got.ids])))[0]), rel=1e-5)
    assert got.loss > clean


def test_hotflip_stops_when_a_classifier_is_fooled():
    m = decoder(labels=3)
    with torch.no_grad():
        gold = int(scores(m, example(0), embed(m, torch.tensor([example(0).ids])))[1][0])
    ex = example(gold)  # the classifier is right on it
    spec = TokenAttack(name="hotflip", max_changed=1.0, neighbours=8, candidates=8)
    near = nearest_neighbours(m.embed_tokens.weight, [CONTEXT[i] for i in ex.attackable], 8, PROTECTED)
    got = hotflip(m, ex, spec, near, succeeded=lambda prediction, loss: prediction != gold)
    with torch.no_grad():
        prediction = int(scores(m, ex, embed(m, torch.tensor([got.ids])))[1][0])
    assert prediction != gold
    undone = list(got.ids)  # the swaps in the order made: the input before the last one still fooled nothing
    undone[got.changed[-1]] = ex.ids[got.changed[-1]]
    with torch.no_grad():
        assert int(scores(m, ex, embed(m, torch.tensor([undone])))[1][0]) == gold
    again = hotflip(m, ex, spec, near, succeeded=lambda prediction, loss: prediction != gold)
    assert again.ids == got.ids and again.queries == got.queries
