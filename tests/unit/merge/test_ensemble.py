"""Ensembles: N decoders as one model. Its next-token distribution is the mean of theirs (or the renormalized
geometric mean), the same through every path the evaluation takes (full forward, validation loss, packed task
scoring, generation without a cache); majority vote breaks ties by the voters' probability."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.evaluate.scoring import score_token_pairs
from lmforge.model.ensemble import Ensemble
from lmforge.merge.evaluation import _vote
from lmforge.model.config import SIZES, ModelDims
from lmforge.model.decoder import Decoder
from lmforge.model.generate import generate

DIMS = ModelDims(vocab_size=60, **SIZES["debug"])


def decoders(n: int) -> list[Decoder]:
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        model = Decoder(DIMS)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        out.append(model.eval())
    return out


IDS = torch.randint(0, 60, (2, 24), generator=torch.Generator().manual_seed(3))


def test_probabilities_are_averaged_and_log_probabilities_renormalized():
    models = decoders(3)
    with torch.no_grad():
        probs = torch.stack([F.softmax(m(IDS), -1) for m in models]).mean(0)
        logs = torch.stack([F.log_softmax(m(IDS), -1) for m in models]).mean(0)
        assert torch.allclose(Ensemble(models)(IDS), probs.log(), atol=1e-5)
        assert torch.allclose(Ensemble(models, "log_probabilities")(IDS), F.log_softmax(logs, -1), atol=1e-5)
        one = Ensemble(models[:1])(IDS)
        assert torch.allclose(one, F.log_softmax(models[0](IDS), -1), atol=1e-6)


def test_loss_and_packed_task_scoring_read_the_same_distribution():
    models = decoders(2)
    ensemble = Ensemble(models)
    with torch.no_grad():
        logp = ensemble(IDS[:, :-1])
        nll = -logp.gather(-1, IDS[:, 1:, None]).mean()
        assert math.isclose(ensemble(IDS[:, :-1], IDS[:, 1:]).item(), nll.item(), rel_tol=1e-5)
        context, choices = IDS[0, :10].tolist(), [IDS[0, 10:14].tolist(), IDS[1, 10:13].tolist()]
        packed = score_token_pairs(ensemble, [(context, c) for c in choices])  # one packed row for both choices
        for score, choice in zip(packed, choices):
            full = ensemble(torch.tensor([context + choice]))[0, len(context) - 1:-1]
            assert math.isclose(score.logprob, full.gather(-1, torch.tensor(choice)[:, None]).sum().item(),
                                rel_tol=1e-5)


def test_greedy_generation_follows_the_combined_distribution():
    ensemble = Ensemble(decoders(2))
    prompt = IDS[0, :5].tolist()
    new = generate(ensemble, prompt, 6, temperature=0.0)
    tokens = list(prompt)
    with torch.no_grad():
        for _ in range(6):
            tokens.append(int(ensemble(torch.tensor([tokens]))[0, -1].argmax()))
    assert new == tokens[len(prompt):]


def test_majority_vote_breaks_ties_by_the_voters_probability():
    counts = np.array([[2, 1, 0], [1, 1, 1], [0, 1, 1]])
    mass = np.array([[0.5, 0.9, 0.0], [0.2, 0.7, 0.4], [0.0, 0.3, 0.8]])
    assert _vote(counts, mass).tolist() == [0, 1, 2]
