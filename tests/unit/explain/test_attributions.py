"""Attributions, faithfulness and permutation importance on tiny seeded decoders: Integrated Gradients complete
(|delta| within 1% of F(x) - F(baseline) at the default settings) for every kind of target and both layers,
occlusion equal to a plain loop over tokens, gradient x input equal to autograd by hand, Shapley sampling
efficient, the head-at-the-scored-positions score equal to the full logits', AOPC equal to a transcription of
ferret's definition, and permutation importance equal to scikit-learn's."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.inspection import permutation_importance as sklearn_permutation_importance

from lmforge.explain.attributions import AttributionSettings, attribute, attribution_layer
from lmforge.explain.faithfulness import faithfulness, ranking, thresholds
from lmforge.explain.permutation import joined, permutation_importance, segment_matrix, split_segments
from lmforge.explain.targets import continuation_target, label_target, log_prob, log_probs_of_contexts, next_token_target
from lmforge.model.config import SIZES, ModelDims
from lmforge.model.decoder import Decoder

CONTEXT = [5, 17, 3, 42, 8, 8, 61, 1, 29, 13, 7, 50]
START = 0


def decoder(noise: float = 0.1, labels: int | None = None, **dims) -> Decoder:
    torch.manual_seed(0)
    m = Decoder(ModelDims(vocab_size=64, **(SIZES["debug"] | dims)))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * noise)
        if labels is not None:  # a classifier's head: one logit per label
            m.lm_head = torch.nn.Linear(m.dims.d_model, labels, bias=False)
            m.lm_head.weight.normal_(0, 0.5)
    return m.eval()


def targets(m: Decoder, classifier: Decoder):
    return {"next_token": (m, next_token_target(m, CONTEXT, None, str)),
            "continuation": (m, continuation_target(CONTEXT, [4, 9, 33], "x")),
            "label": (classifier, label_target(classifier, CONTEXT, START, ["a", "b", "c"], None))}


@pytest.fixture(scope="module")
def models():
    return decoder(), decoder(labels=3)


def full_logits_log_prob(m: Decoder, ids: list[int], target) -> float:
    """The target's log-probability from the model's own full (T, V) logits."""
    with torch.no_grad():
        logp = m(torch.tensor([ids]))[0].log_softmax(-1)
    return float(sum(logp[p, t] for p, t in zip(target.positions(len(ids) - len(target.suffix)), target.scored)))


@pytest.mark.parametrize("kind", ["next_token", "continuation", "label"])
def test_the_score_is_the_models_log_probability(models, kind):
    m, t = targets(*models)[kind]
    with torch.no_grad():
        ours = float(log_prob(m, torch.tensor([t.ids]), t))
        assert abs(ours - full_logits_log_prob(m, t.ids, t)) < 1e-5
        shorter = list(t.context[3:])
        batch = log_probs_of_contexts(m, [list(t.context), shorter, []], t, START, batch_size=2)
    assert abs(batch[0] - ours) < 1e-5  # right-padded rows score as alone
    assert abs(batch[1] - full_logits_log_prob(m, [*shorter, *t.suffix], t)) < 1e-5
    assert abs(batch[2] - full_logits_log_prob(m, [START, *t.suffix], t)) < 1e-5  # empty: the start token


@pytest.mark.parametrize("layer", ["embeddings", "layers.1"])
@pytest.mark.parametrize("kind", ["next_token", "continuation", "label"])
def test_integrated_gradients_is_complete_at_the_default_settings(models, kind, layer):
    m, t = targets(*models)[kind]
    a = attribute(m, t, "integrated_gradients", AttributionSettings(layer=layer, baseline_token=START))
    gap = a.f_input - a.f_baseline
    assert abs(gap) > 0.05 and len(a.scores) == len(CONTEXT)
    assert abs(a.delta) <= 0.01 * abs(gap)
    assert abs(sum(a.scores) + sum(a.suffix_scores) - gap - a.delta) < 1e-4  # the delta is what it says
    assert len(a.suffix_scores) == len(t.suffix)
    if layer == "embeddings":  # the suffix's embeddings are the baseline's: nothing to attribute
        assert a.suffix_scores == [0.0] * len(t.suffix)
    assert a.settings["steps"] >= 50 and a.settings["baseline_token"] == START


def test_integrated_gradients_doubles_its_steps_until_complete():
    m = decoder(noise=0.3)  # a rough model: 50 points are not enough
    t = next_token_target(m, CONTEXT, None, str)
    fixed = attribute(m, t, "integrated_gradients", AttributionSettings(ig_tolerance=None))
    assert fixed.settings["steps"] == 50 and abs(fixed.delta) > 0.01 * abs(fixed.f_input - fixed.f_baseline)
    adaptive = attribute(m, t, "integrated_gradients", AttributionSettings())
    assert adaptive.settings["steps"] > 50
    assert abs(adaptive.delta) <= 0.01 * abs(adaptive.f_input - adaptive.f_baseline)
    capped = attribute(m, t, "integrated_gradients", AttributionSettings(ig_tolerance=1e-9, ig_max_steps=100))
    assert capped.settings["steps"] == 100


@pytest.mark.parametrize("kind", ["next_token", "continuation", "label"])
def test_occlusion_equals_a_plain_loop_over_tokens(models, kind):
    m, t = targets(*models)[kind]
    a = attribute(m, t, "occlusion", AttributionSettings(baseline_token=START, perturbations_per_eval=5))
    whole = full_logits_log_prob(m, t.ids, t)
    with torch.no_grad():
        for i in range(len(t.context)):
            ids = t.ids
            ids[i] = START
            assert abs(a.scores[i] - (whole - full_logits_log_prob(m, ids, t))) < 1e-5, i


def test_gradient_x_input_equals_autograd_by_hand(models):
    m, t = targets(*models)["continuation"]
    a = attribute(m, t, "gradient_x_input")
    assert all(p.grad is None and p.requires_grad for p in m.parameters())  # none kept; the flags given back
    emb = m.embed_tokens(torch.tensor([t.ids])).detach().requires_grad_(True)
    x = emb
    cos, sin = m.rope_cos[:emb.shape[1]], m.rope_sin[:emb.shape[1]]
    for layer in m.layers:
        x = layer(x, cos, sin)
    logp = m.lm_head(m.final_norm(x))[0].log_softmax(-1)
    f = sum(logp[p, tok] for p, tok in zip(t.positions(len(t.context)), t.scored))
    f.backward()
    by_hand = (emb.grad * emb)[0].sum(-1)[:len(t.context)]
    assert torch.allclose(torch.tensor(a.scores, dtype=torch.float32), by_hand, atol=1e-5)


def test_shapley_sampling_is_efficient_and_seeded(models):
    m, t = targets(*models)["next_token"]
    s = AttributionSettings(baseline_token=START, shapley_samples=4)
    a, b = attribute(m, t, "shapley", s), attribute(m, t, "shapley", s)
    assert a.scores == b.scores
    assert abs(sum(a.scores) - (a.f_input - a.f_baseline)) < 1e-4  # every sampled permutation adds up


def test_unknown_method_and_layer(models):
    m, t = targets(*models)["next_token"]
    with pytest.raises(ValueError, match="unknown method 'saliency'"):
        attribute(m, t, "saliency")
    with pytest.raises(ValueError, match=r"unknown layer 'layers.2': embeddings, or layers.<i> with i below 2"):
        attribution_layer(m, "layers.2")


def ferret_aopc(m, t, scores) -> tuple[float, float]:
    """AOPC comprehensiveness and sufficiency transcribed from ferret (remove_tokens, based_on k, k = 1..n)."""
    full = math.exp(full_logits_log_prob(m, t.ids, t))
    order = np.argsort(-np.array(scores), kind="stable")
    compr, suff = [], []
    for k in range(1, len(scores) + 1):
        top = set(order[:k].tolist())
        removed = [tok for i, tok in enumerate(t.context) if i not in top] or [START]
        kept = [tok for i, tok in enumerate(t.context) if i in top]
        compr.append(full - math.exp(full_logits_log_prob(m, [*removed, *t.suffix], t)))
        suff.append(full - math.exp(full_logits_log_prob(m, [*kept, *t.suffix], t)))
    return float(np.mean(compr)), float(np.mean(suff))


@pytest.mark.parametrize("kind", ["next_token", "label"])
def test_aopc_is_ferrets(models, kind):
    m, t = targets(*models)[kind]
    scores = attribute(m, t, "occlusion", AttributionSettings(baseline_token=START)).scores
    with torch.no_grad():
        f = faithfulness(m, t, scores, start=START, points=None, random_orders=2, seed=3)
        compr, suff = ferret_aopc(m, t, scores)
    assert f.thresholds == list(range(1, len(CONTEXT) + 1))
    assert abs(f.comprehensiveness - compr) < 1e-6 and abs(f.sufficiency - suff) < 1e-6
    assert abs(f.deletion[-1] - math.exp(full_logits_log_prob(m, [START, *t.suffix], t))) < 1e-6
    assert abs(f.insertion[-1] - f.full) < 1e-6  # all tokens kept: the input itself
    again = faithfulness(m, t, scores, start=START, points=None, random_orders=2, seed=3)
    assert again.random_deletion == f.random_deletion and len(f.random_insertion) == len(CONTEXT)


def test_thresholds_and_ranking():
    assert thresholds(5, 20) == [1, 2, 3, 4, 5]
    assert thresholds(1000, 4) == [250, 500, 750, 1000]
    assert thresholds(10, None) == list(range(1, 11))
    assert ranking([0.5, 2.0, -1.0, 2.0]) == [1, 3, 0, 2]


class SegmentRule(BaseEstimator, ClassifierMixin):
    """A wrapper estimator over segment matrices: label "yes" when the second line mentions "key"."""

    def fit(self, X, y):
        self.classes_ = np.unique(y)
        return self

    def predict(self, X):
        return np.array(rule(joined(X)), dtype=object)


def rule(texts: list[str]) -> list[str]:
    return ["yes" if "key" in (t.splitlines() + ["", ""])[1] or "lock" in t else "no" for t in texts]


def test_permutation_importance_equals_scikit_learns():
    rng = np.random.default_rng(0)
    texts, labels = [], []
    for i in range(40):
        second = "the key is here\n" if rng.random() < 0.5 else "nothing\n"
        third = "a lock\n" if rng.random() < 0.2 else "plain\n"
        texts.append(f"line {i}\n{second}{third}")
        labels.append("yes" if "key" in second or "lock" in third else "no")
    labels[3] = "no" if labels[3] == "yes" else "yes"  # one the rule gets wrong
    X, y = segment_matrix(texts, "lines"), np.array(labels, dtype=object)
    ours = permutation_importance(lambda X, y: float(np.mean(np.array(rule(joined(X)), dtype=object) == y)),
                                  X, y, repeats=5, seed=7)
    theirs = sklearn_permutation_importance(SegmentRule().fit(X, y), X, y, scoring="accuracy", n_repeats=5,
                                            random_state=7)
    assert np.array_equal(np.array(ours.importances), theirs.importances)
    assert ours.mean == theirs.importances_mean.tolist() and ours.std == theirs.importances_std.tolist()
    assert ours.mean[0] == 0 and ours.mean[1] > ours.mean[2] > 0  # the first line carries nothing


def test_segments_join_back():
    text = "One. Two!  Three?\nFour"
    assert "".join(split_segments(text, "sentences")) == text and len(split_segments(text, "sentences")) == 4
    assert split_segments("a\nb\n", "lines") == ["a\n", "b\n"]
    X = segment_matrix(["a\nb", "c"], "lines")
    assert X.tolist() == [["a\n", "b"], ["c", ""]] and joined(X) == ["a\nb", "c"]


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_a_quantized_model_is_explained_by_occlusion_attention_and_lens(method):
    from lmforge.explain.attention import attention_maps, attention_outputs
    from lmforge.explain.internals import trace
    from lmforge.explain.lens import lens_logits
    from lmforge.model.quantized import quantize

    m = quantize(decoder(ffn_hidden=192), method, 32 if method == "int4" else None).eval()
    t = next_token_target(m, CONTEXT, None, str)
    # one input per forward: int8 quantizes activations per tensor, so a batch of perturbed inputs would share scales
    a = attribute(m, t, "occlusion", AttributionSettings(baseline_token=START, perturbations_per_eval=1))
    with torch.no_grad():
        whole = float(log_prob(m, torch.tensor([t.ids]), t))
        for i in range(len(CONTEXT)):
            ids = t.ids
            ids[i] = START
            assert abs(a.scores[i] - (whole - float(log_prob(m, torch.tensor([ids]), t)))) < 1e-6
    inside = trace(m, t.ids)
    maps = attention_maps(m, inside.attention_inputs)
    assert all(torch.allclose(x.sum(-1), torch.ones(x.shape[:2]), atol=1e-5) for x in maps)
    for ours, theirs in zip(attention_outputs(m, inside.attention_inputs, maps), inside.attention_outputs):
        assert (ours - theirs).abs().max().item() < 1e-3  # activations quantized again per call (int8)
    assert torch.allclose(lens_logits(m, inside.residuals)[-1], inside.logits, atol=1e-5)
