"""HotFlip-style token substitution (Ebrahimi et al. 2018) with TextFooler-style constraints (Jin et al. 2020).

The gradient of the loss with respect to the input embeddings ranks every swap of an attacked, not yet changed
position i to a candidate token v by its first-order gain ``(E[v] - E[x_i]) . g_i``; the best ``candidates``
swaps are scored exactly and the best one is kept if it raises the loss. Greedy, until the attack succeeds, the
budget of changed tokens is spent, or no swap raises the loss. A position's candidates are the ``neighbours``
nearest tokens (cosine) to its original token in the model's own embedding table, protected tokens excluded, so
nothing is downloaded; protected positions are never changed. Every forward pass counts as a query.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lmforge.attack.config import TokenAttack
from lmforge.attack.objective import Example, Outcome, embed, loss_and_gradient, scores
from lmforge.model.decoder import Decoder


def nearest_neighbours(table: torch.Tensor, tokens: list[int], k: int, banned: set[int]) -> dict[int, list[int]]:
    """Each of ``tokens``' ``k`` nearest other tokens by cosine similarity of the rows of ``table`` (V, C),
    ``banned`` ones left out; nearest first."""
    unit = F.normalize(table.float(), dim=-1)  # (V, C)
    wanted = sorted(set(tokens))
    similarity = unit[wanted] @ unit.T  # (W, V)
    excluded = torch.tensor(sorted(banned), dtype=torch.long, device=table.device)
    similarity[:, excluded] = -math.inf
    similarity[torch.arange(len(wanted), device=table.device), torch.tensor(wanted, device=table.device)] = -math.inf
    k = min(k, table.shape[0] - len(banned) - 1)  # the tokens left: all but the banned ones and itself
    top = similarity.topk(k, dim=-1).indices  # (W, k)
    return {t: [int(v) for v in row] for t, row in zip(wanted, top)}


def budget(spec: TokenAttack, example: Example) -> int:
    """The most tokens the attack may change: ``max_changed`` of the example's own tokens (a verbalizer
    classifier's template left out), rounded down."""
    return math.floor(spec.max_changed * example.text_tokens + 1e-9)


def hotflip(model: Decoder, example: Example, spec: TokenAttack, neighbours: dict[int, list[int]],
            succeeded: Callable[[int, float], bool]) -> Outcome:
    """The greedy substitution of ``example``'s attacked tokens; ``succeeded(prediction, loss)`` says when to
    stop."""
    device = model.rope_cos.device
    table = model.embed_tokens.weight.detach()  # (V, C)
    ids = list(example.ids)
    changed: list[int] = []
    loss, prediction, grad = loss_and_gradient(model, example, embed(model, torch.tensor([ids], device=device)))
    queries = 1
    limit = budget(spec, example)
    while len(changed) < limit and not succeeded(prediction, loss):
        swaps = [(i, v) for i in example.attackable if i not in changed for v in neighbours[example.ids[i]]]
        if not swaps:
            break
        positions = torch.tensor([i for i, _ in swaps], device=device)
        tokens = torch.tensor([v for _, v in swaps], device=device)
        current = torch.tensor(ids, device=device)[positions]
        gain = ((table[tokens] - table[current]) * grad[0, positions]).sum(-1)  # (S,): first-order loss change
        chosen = gain.topk(min(spec.candidates, len(swaps))).indices.tolist()
        rows = torch.tensor([ids] * len(chosen), device=device)  # (K, T)
        for row, s in enumerate(chosen):
            rows[row, swaps[s][0]] = swaps[s][1]
        with torch.no_grad():
            exact, predicted = scores(model, example, embed(model, rows))  # (K,), (K,)
        queries += len(chosen)
        best = int(exact.argmax())
        if float(exact[best]) <= loss:
            break
        i, v = swaps[chosen[best]]
        ids[i] = v
        changed.append(i)
        loss, prediction = float(exact[best]), int(predicted[best])
        if len(changed) < limit and not succeeded(prediction, loss):  # the gradient at the new input
            loss, prediction, grad = loss_and_gradient(model, example, embed(model, torch.tensor([ids], device=device)))
            queries += 1
    return Outcome(loss, ids, None, changed, queries)
