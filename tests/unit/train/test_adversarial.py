"""Adversarial training (``train.adversarial``): equal to a plain PGD / FreeLB loop written out here, every
perturbation inside its ball, exact resume, the settings in the resume key, and bad settings refused."""

import math

import pytest
import torch
import torch.nn.functional as F

from lmforge.checkpoint.formats import save_checkpoint
from lmforge.checkpoint.load import load_checkpoint
from lmforge.distributed.context import DistContext
from lmforge.errors import RecipeError
from lmforge.model.config import ModelConfig
from lmforge.model.decoder import Decoder
from lmforge.recipe import load_recipe
from lmforge.train.adversarial import adversarial_loss, adversarial_terms
from lmforge.train.batches import BatchPlan
from lmforge.train.config import AdversarialSettings, TrainConfig
from lmforge.train.loop import lm_loss, train_step
from lmforge.train.measure import RandomWindows
from lmforge.train.optim import build_optimizer
from lmforge.train.precision import precision_policy

DIMS = ModelConfig(size="debug").dims(97)
CPU = DistContext(device=torch.device("cpu"))


def _model(seed: int = 0) -> Decoder:
    torch.manual_seed(seed)
    return Decoder(DIMS)


def _batch() -> torch.Tensor:
    return torch.randint(0, DIMS.vocab_size, (3, 13), generator=torch.Generator().manual_seed(7))


def _reference_loss(model: Decoder, x: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy from input embeddings, written out (no hook, no fused loss)."""
    logits = model.lm_head(model.forward_embeddings(x))
    return F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())


def _reference(model: Decoder, batch: torch.Tensor, s: AdversarialSettings) -> torch.Tensor:
    """PGD / FreeLB on the embeddings as the papers write them, from the clean input (random_start off)."""
    x = model.embed_tokens(batch[:, :-1])
    n = model.embed_tokens.weight.detach().norm(dim=1).mean()
    r = s.epsilon * n / (math.sqrt(DIMS.d_model) if s.norm == "linf" else 1.0)
    size = r * (s.step_size or 2.5 * s.epsilon / s.steps) / s.epsilon
    delta, iterates = torch.zeros_like(x), []
    for k in range(s.steps):
        delta.requires_grad_(True)
        loss = _reference_loss(model, x + delta, batch)
        iterates.append(loss)
        (g,) = torch.autograd.grad(loss, delta, retain_graph=True)
        with torch.no_grad():
            if s.norm == "linf":
                delta = (delta + size * g.sign()).clamp(-r, r)
            else:
                delta = delta + size * g / g.norm(dim=-1, keepdim=True)
                length = delta.norm(dim=-1, keepdim=True)
                delta = torch.where(length > r, delta * r / length, delta)
    adversarial = torch.stack(iterates).mean() if s.method == "freelb" else _reference_loss(model, x + delta, batch)
    return s.clean_weight * _reference_loss(model, x, batch) + (1 - s.clean_weight) * adversarial


@pytest.mark.parametrize("method", ["pgd", "freelb"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_the_loss_and_its_gradients_equal_a_plain_loop(method, norm):
    s = AdversarialSettings(method=method, norm=norm, epsilon=0.5, steps=3, random_start=False, clean_weight=0.3)
    batch = _batch()
    model = _model()
    loss = adversarial_loss(lm_loss, s)(model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    expected = _reference(model, batch, s)
    expected.backward()
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-7, msg=name)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_every_perturbation_stays_in_its_ball_and_raises_the_loss(norm):
    model, batch = _model(), _batch()
    s = AdversarialSettings(norm=norm, epsilon=0.3, steps=4, clean_weight=0.5)
    torch.manual_seed(3)
    clean, adversarial, delta = adversarial_terms(lm_loss, model, batch, s)
    r = 0.3 * float(model.embed_tokens.weight.detach().norm(dim=1).mean())
    if norm == "linf":
        assert float(delta.abs().max()) <= r / math.sqrt(DIMS.d_model) * (1 + 1e-6)
        assert float(delta.abs().max()) == pytest.approx(r / math.sqrt(DIMS.d_model), rel=1e-5)  # sign steps reach it
    else:
        assert float(delta.norm(dim=-1).max()) <= r * (1 + 1e-6)
    assert delta.shape == (3, 12, DIMS.d_model)
    assert float(adversarial) > float(clean)  # the ascent found a worse input
    assert all(p.grad is None for p in model.parameters())  # the ascent steps never touch the parameters


def test_without_a_clean_term_the_loss_is_the_adversarial_one():
    model, batch = _model(), _batch()
    s = AdversarialSettings(epsilon=0.2, steps=2, clean_weight=0.0, random_start=False)
    clean, adversarial, _ = adversarial_terms(lm_loss, model, batch, s)
    assert clean is None
    assert float(adversarial_loss(lm_loss, s)(model, batch)) == float(adversarial)


def _steps(model, optimizer, loss_fn, start, stop) -> list[float]:
    cfg = TrainConfig(lr=3e-3, max_steps=6, warmup_steps=0, batch_size=4)
    plan, data = BatchPlan(500, 4, seed=3, micro_batch_size=2), RandomWindows(DIMS.vocab_size, seed=5)
    policy = precision_policy("fp32", CPU.device)
    return [train_step(model, model, optimizer, plan, data, s, 16, cfg.lr, 1.0, CPU, policy, loss_fn)[0]
            for s in range(start, stop)]


def test_adversarial_training_resumes_bit_exactly(tmp_path):
    loss_fn = adversarial_loss(lm_loss, AdversarialSettings(steps=2, epsilon=0.5))  # random starts: the RNG matters
    cfg = TrainConfig(lr=3e-3)
    first = _model()
    opt = build_optimizer(first, cfg)
    _steps(first, opt, loss_fn, 0, 2)
    save_checkpoint(tmp_path / "ck", first, opt, {"step": 2})
    expected = _steps(first, opt, loss_fn, 2, 5)
    resumed = _model(seed=99)
    opt2 = build_optimizer(resumed, cfg)
    load_checkpoint(tmp_path / "ck", resumed, opt2)
    assert _steps(resumed, opt2, loss_fn, 2, 5) == expected
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), resumed.parameters()))
    plain = _model()
    assert _steps(plain, build_optimizer(plain, cfg), lm_loss, 0, 2) != _steps(_model(), build_optimizer(_model(), cfg),
                                                                                 loss_fn, 0, 2)


@pytest.mark.parametrize("override, message", [
    ("train.adversarial.epsilon=0", "train.adversarial.epsilon: Input should be greater than 0 (got 0)"),
    ("train.adversarial.steps=0", "train.adversarial.steps: Input should be greater than or equal to 1 (got 0)"),
    ("train.adversarial.clean_weight=1", "train.adversarial.clean_weight: Input should be less than 1 (got 1)"),
    ("train.adversarial.method=fgm", "train.adversarial.method: Input should be 'pgd' or 'freelb' (got 'fgm')"),
    ("finetune.adversarial.norm=l1", "finetune.adversarial.norm: Input should be 'linf' or 'l2' (got 'l1')"),
])
def test_bad_settings_are_one_line(override, message):
    with pytest.raises(RecipeError) as caught:
        load_recipe("debug", [override])
    assert str(caught.value).endswith(message) and "\n" not in str(caught.value)


def test_tensor_parallelism_is_refused():
    from lmforge.train.resume import check_layout

    cfg = load_recipe("debug", ["train.adversarial.steps=2", "parallel.tp=2", "parallel.dp_replicate=1"])
    with pytest.raises(RecipeError, match=r"^adversarial training does not run under tensor parallelism "
                                          r"\(parallel\.tp=2\); use data parallelism or FSDP$"):
        check_layout(cfg, 2, ModelConfig(size="debug").dims(96), 16)
    check_layout(cfg.model_copy(update={"train": TrainConfig()}), 2, ModelConfig(size="debug").dims(96), 16)
