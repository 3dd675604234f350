import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.model.config import SIZES, ModelDims
from lmforge.model.decoder import Decoder
from lmforge.model.generate import generate, sample_next_token

PROMPT = [5, 17, 42, 9, 100]


@pytest.fixture(scope="module")
def model():
    # a larger init than training uses, so the random model has clear preferences (no near-ties)
    torch.manual_seed(0)
    return Decoder(ModelDims(vocab_size=256, init_std=0.2, **SIZES["debug"]))


def test_greedy_with_and_without_cache_identical(model):
    cached = generate(model, PROMPT, 40, temperature=0)
    uncached = generate(model, PROMPT, 40, temperature=0, use_cache=False)
    assert len(cached) == 40 and cached == uncached
    assert len(set(cached)) > 3  # not a degenerate constant stream


def test_sampling_with_and_without_cache_identical(model):
    kwargs = dict(temperature=0.8, top_k=50, seed=3)
    assert generate(model, PROMPT, 30, **kwargs) == generate(model, PROMPT, 30, use_cache=False, **kwargs)


def test_top_k_1_and_tiny_top_p_are_greedy(model):
    greedy = generate(model, PROMPT, 20, temperature=0)
    assert generate(model, PROMPT, 20, temperature=1.0, top_k=1, seed=7) == greedy
    assert generate(model, PROMPT, 20, temperature=1.0, top_p=1e-6, seed=7) == greedy


def test_seeded_sampling_is_reproducible(model):
    a = generate(model, PROMPT, 30, temperature=1.0, seed=1)
    assert a == generate(model, PROMPT, 30, temperature=1.0, seed=1)
    assert a != generate(model, PROMPT, 30, temperature=1.0, seed=2)


def test_stops_at_eos_and_restores_training_mode(model):
    greedy = generate(model, PROMPT, 20, temperature=0)
    eos = greedy[6]
    first = greedy.index(eos)
    model.train()
    assert generate(model, PROMPT, 20, temperature=0, eos_id=eos) == greedy[:first + 1]
    assert model.training


def test_filters_restrict_the_support():
    logits = torch.tensor([2.0, 1.5, 1.0, 0.0, -1.0]).log_softmax(0)  # probs about .48 .29 .18 .06 .02
    generator = torch.Generator().manual_seed(0)
    draws = lambda **kw: {sample_next_token(logits, 1.0, generator=generator, **kw) for _ in range(300)}  # noqa: E731
    assert draws(top_k=None, top_p=None) == {0, 1, 2, 3, 4}
    assert draws(top_k=2, top_p=None) == {0, 1}
    assert draws(top_k=None, top_p=0.7) == {0, 1}  # .48 < .7, .48 + .29 >= .7
    assert draws(top_k=None, top_p=0.9) == {0, 1, 2}


def test_prompt_too_long_or_empty_is_a_clear_error(model):
    with pytest.raises(LmforgeError, match="prompt of 100 tokens \\+ max_new_tokens 29 exceeds the model "
                                           "context length 128"):
        generate(model, [1] * 100, 29)
    assert len(generate(model, [1] * 100, 28, temperature=0)) == 28
    with pytest.raises(LmforgeError, match="prompt is empty"):
        generate(model, [], 5)
    with pytest.raises(LmforgeError, match="outside the vocabulary"):
        generate(model, [256], 5)
    with pytest.raises(LmforgeError, match=r"^top_p must be in \(0, 1\], got 0\.0$"):
        generate(model, PROMPT, 5, top_p=0.0)
