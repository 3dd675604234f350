"""The merge methods on random tensors against direct transcriptions of the papers' formulas: linear of two is the
elementwise mean, TIES trims each delta to its largest-magnitude share, elects each entry's sign by the sum and
averages the agreeing deltas (Yadav et al. 2023), DARE drops with probability p and rescales by 1/(1-p) (Yu et
al. 2024), SLERP interpolates on the sphere; every method gives identical inputs back bit for bit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lmforge.merge import methods


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_linear_of_two_is_the_elementwise_mean():
    a, b = rand(7, 5, seed=1), rand(7, 5, seed=2)
    assert torch.equal(methods.linear([a, b], [1.0, 1.0]), (a + b) / 2)
    c = rand(7, 5, seed=3)
    assert torch.allclose(methods.linear([a, b, c], [1.0, 2.0, 1.0]), (a + 2 * b + c) / 4, atol=1e-6)


def test_task_arithmetic_adds_scaled_deltas():
    base, a, b = rand(4, 6, seed=1), rand(4, 6, seed=2), rand(4, 6, seed=3)
    expected = base + 0.7 * (0.5 * (a - base) + 2.0 * (b - base))
    assert torch.allclose(methods.task_arithmetic(base, [a, b], [0.5, 2.0], 0.7), expected, atol=1e-6)


def ties_reference(base: np.ndarray, models: list[np.ndarray], density: float, scale: float) -> np.ndarray:
    """TIES-Merging, entry by entry: trim, elect, disjoint merge."""
    deltas = []
    for m in models:
        tau = (m - base).ravel()
        k = math.ceil(density * tau.size)
        threshold = np.sort(np.abs(tau))[::-1][k - 1]
        deltas.append(np.where(np.abs(tau) >= threshold, tau, 0.0))
    merged = np.zeros(base.size)
    for j in range(base.size):
        gamma = np.sign(sum(d[j] for d in deltas))
        agreeing = [d[j] for d in deltas if d[j] != 0 and np.sign(d[j]) == gamma]
        merged[j] = sum(agreeing) / len(agreeing) if agreeing else 0.0
    return base + scale * merged.reshape(base.shape)


@pytest.mark.parametrize("density", [0.2, 0.5, 1.0])
def test_ties_equals_the_papers_formula(density):
    base = rand(6, 9, seed=10)
    models = [base + rand(6, 9, seed=s) for s in (11, 12, 13)]
    ours = methods.ties(base, models, [1.0, 1.0, 1.0], 0.8, density)
    theirs = ties_reference(base.double().numpy(), [m.double().numpy() for m in models], density, 0.8)
    assert np.allclose(ours.numpy(), theirs, atol=1e-5)


def test_trim_keeps_the_largest_magnitudes():
    delta = torch.tensor([[0.1, -3.0, 0.5], [2.0, -0.2, 0.0]])
    assert methods.trim(delta, 0.34).tolist() == [[0.0, -3.0, 0.5], [2.0, 0.0, 0.0]]  # ceil(0.34 * 6) = 3 kept
    assert methods.trim(delta, 0.3).tolist() == [[0.0, -3.0, 0.0], [2.0, 0.0, 0.0]]  # ceil(1.8) = 2


def dare_reference(delta: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """DARE: m ~ Bernoulli(p) drops (the same uniform draws), the rest rescaled by 1 / (1 - p)."""
    dropped = torch.rand(delta.shape, generator=generator) >= 1 - p
    return torch.where(dropped, torch.zeros_like(delta), delta) / (1 - p)


@pytest.mark.parametrize("density", [0.1, 0.5, 0.9])
def test_dare_drops_and_rescales_as_the_paper(density):
    delta = rand(50, 40, seed=4)
    ours = methods.dare(delta, density, torch.Generator().manual_seed(9))
    theirs = dare_reference(delta, 1 - density, torch.Generator().manual_seed(9))
    assert torch.allclose(ours, theirs, atol=1e-6)
    kept = (ours != 0).float().mean().item()
    assert abs(kept - density) < 0.03  # about 1 - p of the entries survive


def test_dare_preserves_the_delta_in_expectation():
    delta = rand(20, 20, seed=5)
    mean = torch.stack([methods.dare(delta, 0.3, torch.Generator().manual_seed(s)) for s in range(400)]).mean(0)
    assert (mean - delta).abs().mean().item() < 0.1 * delta.abs().mean().item()


def test_dare_linear_and_dare_ties_compose_the_drop_with_each_merge():
    base = rand(5, 5, seed=6)
    models = [base + rand(5, 5, seed=s) for s in (7, 8)]
    gens = lambda: [torch.Generator().manual_seed(s) for s in (1, 2)]  # noqa: E731
    dropped = [methods.dare(m - base, 0.6, g) for m, g in zip(models, gens())]
    assert torch.allclose(methods.dare_linear(base, models, [1.0, 1.0], 0.5, 0.6, gens()),
                          base + 0.5 * (dropped[0] + dropped[1]), atol=1e-6)
    assert torch.allclose(methods.dare_ties(base, models, [1.0, 1.0], 0.5, 0.6, gens()),
                          base + 0.5 * methods.disjoint_mean(dropped, [1.0, 1.0]), atol=1e-6)


def test_slerp_follows_the_great_circle_and_is_linear_when_parallel():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    half = math.sqrt(0.5)
    assert torch.allclose(methods.slerp(a, b, 0.5), torch.tensor([half, half]), atol=1e-6)
    assert torch.allclose(methods.slerp(a, b, 0.0), a) and torch.allclose(methods.slerp(a, b, 1.0), b, atol=1e-6)
    x = rand(3, 4, seed=1)
    assert torch.allclose(methods.slerp(x, 2 * x, 0.25), 1.25 * x, atol=1e-6)  # parallel: linear
    y = rand(3, 4, seed=2)
    out = methods.slerp(x, y, 0.3)
    omega = torch.arccos(torch.dot(x.flatten(), y.flatten()) / (x.norm() * y.norm()))
    expected = (torch.sin(0.7 * omega) * x + torch.sin(0.3 * omega) * y) / torch.sin(omega)
    assert torch.allclose(out, expected, atol=1e-5)


def test_identical_inputs_are_the_result_bit_for_bit():
    x = rand(8, 3, seed=3) * 1e-3 + 1 / 3
    g = [torch.Generator().manual_seed(0)] * 3
    assert methods.same([x, x.clone(), x.clone()])
    for out in (methods.linear([x, x, x], [1.0, 1.0, 1.0]), methods.ties(x, [x, x], [1.0, 1.0], 1.0, 0.5),
                methods.task_arithmetic(x, [x, x], [1.0, 1.0], 0.3), methods.dare_ties(x, [x, x], [1.0, 1.0], 1.0, 0.5, g)):
        assert torch.allclose(out, x, atol=1e-6)  # mathematically x; the stage returns x itself (test_stream)
