"""A greedy-coordinate-gradient suffix search (GCG, Zou et al. 2023) on the language model: tokens appended to a
context so that a target continuation becomes likely after them.

Each step: the gradient of the target's loss with respect to the one-hot suffix tokens, ``g = dL/dx @ E^T``
(S, V), gives each suffix position its ``top_k`` most promising replacements (most negative g, protected tokens
left out); ``candidates`` single-token swaps are drawn from them (seeded), scored exactly, and the best one is kept
if it lowers the loss. It stops early once the target is the greedy continuation (every target token the argmax).
Every forward pass counts as a query.
"""

from __future__ import annotations

import torch

from lmforge.attack.config import SuffixAttack
from lmforge.attack.objective import Example, Outcome, embed, loss_and_gradient, scores
from lmforge.model.decoder import Decoder


def gcg(model: Decoder, example: Example, spec: SuffixAttack, protected: set[int], seed: int) -> Outcome:
    """The suffix search on ``example``: its context ends in the suffix to optimize (its ``attackable``
    positions), its fixed tokens are the target continuation. The outcome's loss is the target's mean
    cross-entropy after the suffix found."""
    device = model.rope_cos.device
    table = model.embed_tokens.weight.detach()  # (V, C)
    positions = torch.tensor(example.attackable, device=device)  # (S,)
    banned = torch.tensor(sorted(protected), dtype=torch.long, device=device)
    generator = torch.Generator().manual_seed(seed)
    ids = list(example.ids)
    loss, matched, grad = loss_and_gradient(model, example, embed(model, torch.tensor([ids], device=device)))
    queries = 1
    for _ in range(spec.steps):
        if matched == len(example.suffix):
            break
        one_hot_grad = grad[0, positions] @ table.T  # (S, V): dL/d(one-hot of each suffix token)
        one_hot_grad[:, banned] = float("inf")
        top = (-one_hot_grad).topk(min(spec.top_k, table.shape[0] - len(banned)), dim=-1).indices  # (S, k)
        where = torch.randint(len(positions), (spec.candidates,), generator=generator).to(device)  # (N,)
        pick = torch.randint(top.shape[1], (spec.candidates,), generator=generator).to(device)  # (N,)
        rows = torch.tensor([ids] * spec.candidates, device=device)  # (N, T)
        rows[torch.arange(spec.candidates, device=device), positions[where]] = top[where, pick]
        with torch.no_grad():
            exact, hits = scores(model, example, embed(model, rows))  # (N,), (N,)
        queries += spec.candidates
        best = int(exact.argmin())
        if float(exact[best]) >= loss:
            continue  # no swap lowered it: draw again at the next step
        ids = rows[best].tolist()
        loss, matched, grad = loss_and_gradient(model, example, embed(model, rows[best:best + 1]))
        queries += 1
    changed = [int(p) for p in example.attackable]
    return Outcome(loss, ids, None, changed, queries)
