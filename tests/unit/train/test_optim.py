"""The seven optimizers: torch's own where torch has one, correct parameter groups, Lion and Muon against
their formulas, the optimizer chain's state, and the learning-rate schedules."""

import math

import pytest
import torch
import torch.optim._muon as torch_muon

from lmforge.model.config import ModelConfig
from lmforge.model.decoder import Decoder
from lmforge.train.config import OPTIMIZERS, TrainConfig
from lmforge.train.lion import Lion
from lmforge.train.muon import Muon, newton_schulz
from lmforge.train.optim import OptimizerChain, build_optimizer
from lmforge.train.schedule import learning_rate, warmup_linear, warmup_stable_decay


def debug_model(seed=0, tie=True):
    torch.manual_seed(seed)
    return Decoder(ModelConfig(size="debug", tie_embeddings=tie).dims(97))


def torch_optimizers(opt):
    return opt.optimizers if isinstance(opt, OptimizerChain) else [opt]


@pytest.mark.parametrize("name, kind", [
    ("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam), ("rmsprop", torch.optim.RMSprop),
    ("sgd", torch.optim.SGD), ("lion", Lion), ("adafactor", torch.optim.Adafactor), ("muon", torch.optim.Muon),
])
def test_each_name_builds_torchs_optimizer_where_torch_has_one(name, kind):
    opt = build_optimizer(debug_model(), TrainConfig(optimizer=name, lr=1e-3))
    assert isinstance(torch_optimizers(opt)[0], kind)
    assert all(group["lr"] == 1e-3 for group in opt.param_groups)


def test_per_optimizer_settings_reach_torch():
    model = debug_model()
    sgd = build_optimizer(model, TrainConfig(optimizer="sgd", sgd={"momentum": 0.8, "nesterov": True}))
    assert sgd.param_groups[0]["momentum"] == 0.8 and sgd.param_groups[0]["nesterov"] is True
    plain = build_optimizer(model, TrainConfig(optimizer="sgd", sgd={"momentum": 0.0}))
    assert plain.param_groups[0]["nesterov"] is False  # torch refuses Nesterov without momentum
    lion = build_optimizer(model, TrainConfig(optimizer="lion", lion={"beta1": 0.95, "beta2": 0.98}))
    assert lion.param_groups[0]["betas"] == (0.95, 0.98)
    muon = build_optimizer(model, TrainConfig(optimizer="muon", beta1=0.8, muon={"momentum": 0.9, "ns_steps": 3}))
    assert muon.optimizers[0].param_groups[0]["ns_steps"] == 3 and muon.optimizers[0].param_groups[0]["momentum"] == 0.9
    assert muon.optimizers[1].param_groups[0]["betas"] == (0.8, 0.95)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_no_weight_decay_on_norms_embeddings_and_biases(name):
    model = debug_model()
    names = {id(p): n for n, p in model.named_parameters()}
    opt = build_optimizer(model, TrainConfig(optimizer=name, weight_decay=0.1))
    seen = []
    for group in opt.param_groups:
        for p in group["params"]:
            n = names[id(p)]
            seen.append(n)
            assert group["weight_decay"] == (0.1 if p.ndim == 2 and "norm" not in n and "embed" not in n else 0.0), n
    assert sorted(seen) == sorted(names.values())  # every parameter exactly once (the tied head once)


@pytest.mark.parametrize("tie", [True, False])
def test_muon_orthogonalizes_block_matrices_only(tie):
    model = debug_model(tie=tie)
    muon, adamw = build_optimizer(model, TrainConfig(optimizer="muon")).optimizers
    names = {id(p): n for n, p in model.named_parameters()}
    in_muon = sorted(names[id(p)] for g in muon.param_groups for p in g["params"])
    in_adamw = sorted(names[id(p)] for g in adamw.param_groups for p in g["params"])
    expected = sorted(n for n, p in model.named_parameters() if n.startswith("layers.") and p.ndim == 2)
    assert in_muon == expected and len(expected) == 4 * model.dims.n_layers
    assert "embed_tokens.weight" in in_adamw and ("lm_head.weight" in in_adamw) == (not tie)
    assert all("norm" in n or "embed" in n or "lm_head" in n for n in in_adamw)


def test_muon_cpu_step_is_torchs_algorithm_with_an_fp32_iteration(monkeypatch):
    torch.manual_seed(0)
    ours, theirs = torch.nn.Parameter(torch.randn(12, 5)), torch.nn.Parameter(torch.randn(12, 5))
    theirs.data.copy_(ours.data)
    a = Muon([ours], lr=0.02, adjust_lr_fn="match_rms_adamw", weight_decay=0.1)
    b = torch.optim.Muon([theirs], lr=0.02, adjust_lr_fn="match_rms_adamw", weight_decay=0.1)
    monkeypatch.setattr(torch_muon, "_zeropower_via_newtonschulz", newton_schulz)  # torch's, minus the bf16 cast
    for _ in range(3):
        grad = torch.randn(12, 5)
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        a.step()
        b.step()
    assert torch.equal(ours, theirs)
    assert torch.equal(a.state[ours]["momentum_buffer"], b.state[theirs]["momentum_buffer"])
    # the update is (nearly) orthogonal: singular values of NS(G) sit near 1
    s = torch.linalg.svdvals(newton_schulz(torch.randn(12, 5), (3.4445, -4.775, 2.0315), 5, 1e-7))
    assert 0.5 < float(s.min()) and float(s.max()) < 1.5


def newton_schulz_loops(g: list[list[float]], coefficients, steps: int, eps: float) -> list[list[float]]:
    """The quintic iteration X <- a X + b (X X^T) X + c (X X^T)^2 X from X = G / ||G||_F, in Python floats
    (fp64) with plain loops. No transposition: for a tall G the iteration on G^T, transposed back (what
    torch and ``newton_schulz`` do, for speed), is the same matrix, since (X X^T) X = X (X^T X)."""
    a, b, c = coefficients
    rows, cols = len(g), len(g[0])

    def matmul(p, q):
        return [[sum(p[i][k] * q[k][j] for k in range(len(q))) for j in range(len(q[0]))] for i in range(len(p))]

    norm = max(math.sqrt(sum(v * v for row in g for v in row)), eps)
    x = [[v / norm for v in row] for row in g]
    for _ in range(steps):
        gram = matmul(x, [list(col) for col in zip(*x)])  # X X^T
        gx = matmul(gram, x)
        ggx = matmul(gram, gx)
        x = [[a * x[i][j] + b * gx[i][j] + c * ggx[i][j] for j in range(cols)] for i in range(rows)]
    return x


@pytest.mark.parametrize("shape", [(12, 5), (5, 12), (7, 7)])
@pytest.mark.parametrize("coefficients, steps", [((3.4445, -4.775, 2.0315), 5), ((2.0, -1.5, 0.5), 3)])
def test_newton_schulz_is_the_quintic_iteration(shape, coefficients, steps):
    """Against the loops above, in fp64 to 1e-12 (seen: 2e-15), wide, tall and square; torch's default
    coefficients and a set where swapping b and c, or a missing normalization, would show."""
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape) + steps), dtype=torch.float64)
    reference = torch.tensor(newton_schulz_loops(g.tolist(), coefficients, steps, 1e-7), dtype=torch.float64)
    ours = newton_schulz(g, coefficients, steps, 1e-7)
    assert ours.dtype == torch.float64 and ours.shape == g.shape
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-12)
    # fp32 (what the CPU step runs) is the same iteration to fp32 rounding
    torch.testing.assert_close(newton_schulz(g.float(), coefficients, steps, 1e-7).double(), reference,
                               rtol=0, atol=1e-5)
    assert torch.equal(newton_schulz(torch.zeros(shape), coefficients, steps, 1e-7), torch.zeros(shape))  # eps


def test_lion_follows_its_formula():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(7))
    start = p.detach().clone()
    opt = Lion([p], lr=0.1, betas=(0.9, 0.99), weight_decay=0.5)
    grads = [torch.randn(7) for _ in range(3)]
    m, expected = torch.zeros(7), start.clone()
    for g in grads:
        p.grad = g.clone()
        opt.step()
        update = torch.sign(0.9 * m + 0.1 * g)
        expected = expected * (1 - 0.1 * 0.5) - 0.1 * update
        m = 0.99 * m + 0.01 * g
    assert torch.allclose(p.detach(), expected, atol=1e-6)
    assert torch.allclose(opt.state[p]["exp_avg"], m, atol=1e-6)


def test_optimizer_chain_state_dict_round_trip():
    model = debug_model()
    opt = build_optimizer(model, TrainConfig(optimizer="muon"))
    tokens = torch.randint(0, 97, (2, 17))
    model(tokens[:, :-1], tokens[:, 1:]).backward()
    opt.step()
    sd = opt.state_dict()
    ids = sorted(i for g in sd["param_groups"] for i in g["params"])
    assert ids == list(range(len(list(model.parameters()))))  # numbered across the chain, like one optimizer
    other = build_optimizer(debug_model(seed=1), TrainConfig(optimizer="muon"))
    other.load_state_dict(sd)
    again = other.state_dict()
    assert again["param_groups"] == sd["param_groups"]
    assert all(torch.equal(again["state"][i][k], v) for i, entry in sd["state"].items() for k, v in entry.items())
    with pytest.raises(ValueError, match="parameter groups"):
        other.load_state_dict({"state": {}, "param_groups": sd["param_groups"][:1]})


def test_linear_and_wsd_schedules():
    kw = dict(lr=1.0, max_steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert warmup_linear(0, **kw) == pytest.approx(0.1)
    assert warmup_linear(10, **kw) == pytest.approx(1.0)
    assert warmup_linear(55, **kw) == pytest.approx(1.0 - 0.9 * 0.5)
    assert warmup_linear(100, **kw) == pytest.approx(0.1)
    wsd = [warmup_stable_decay(s, decay_fraction=0.2, **kw) for s in range(100)]
    assert wsd[9] == pytest.approx(1.0) and all(v == 1.0 for v in wsd[10:80])
    assert wsd[80] == pytest.approx(1.0 - 0.9 / 20) and wsd[99] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(wsd[80:], wsd[81:]))
    cfg = TrainConfig(lr=2.0, max_steps=100, warmup_steps=0, min_lr_ratio=0.0, schedule="cosine")
    assert learning_rate(50, cfg) == pytest.approx(1.0)
    assert learning_rate(50, cfg.model_copy(update={"schedule": "linear"})) == pytest.approx(1.0)
    assert learning_rate(50, cfg.model_copy(update={"schedule": "wsd"})) == pytest.approx(2.0)
    assert math.isclose(learning_rate(99, cfg.model_copy(update={"schedule": "wsd"})), 0.0, abs_tol=1e-12)
