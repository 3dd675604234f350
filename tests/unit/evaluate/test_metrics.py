"""Metrics library: equality with scikit-learn, plain-loop references for calibration,
bootstrap coverage, exact McNemar, and temperature scaling on a synthetic over-confident model."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.stats  # test-only references (scikit-learn and scipy are pinned in requirements-dev.txt)
import sklearn.metrics as skm

from lmforge.evaluate import bootstrap as bs
from lmforge.evaluate import calibration as cal
from lmforge.evaluate import metrics as m



def _labels(seed: int, n: int = 300, k: int = 5):
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, k, n)
    # mostly right, plus noise; class k-1 is never predicted so zero_division paths are hit
    pred = np.where(rng.random(n) < 0.6, gold, rng.integers(0, k - 1, n))
    pred[pred == k - 1] = 0
    return gold, pred


def _probs(seed: int, n: int = 400, k: int = 4, scale: float = 2.0):
    rng = np.random.default_rng(seed)
    probs = cal.softmax(scale * rng.normal(size=(n, k)))
    gold = np.array([rng.choice(k, p=p) for p in probs])
    return probs, gold


# ---------------------------------------------------------------------------- classification

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_accuracy_and_confusion_matrix_match_sklearn(seed):
    gold, pred = _labels(seed)
    assert m.accuracy(gold, pred) == skm.accuracy_score(gold, pred)
    labels = [4, 2, 0, 1, 3, 7]  # caller's order, plus a class (7) absent from the data
    cm = m.confusion_matrix(gold, pred, labels)
    np.testing.assert_array_equal(cm, skm.confusion_matrix(gold, pred, labels=labels))
    assert cm.shape == (6, 6) and cm[5].sum() == 0 and cm[:, 5].sum() == 0
    assert cm.sum() == len(gold)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("average", [None, "macro", "micro", "weighted"])
@pytest.mark.parametrize("labels", [None, [0, 1, 2, 3, 4, 5]])
def test_precision_recall_f1_match_sklearn(seed, average, labels):
    gold, pred = _labels(seed)
    ours = m.precision_recall_f1(gold, pred, labels=labels, average=average)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's UndefinedMetricWarning for the never-predicted class
        ref = skm.precision_recall_fscore_support(gold, pred, labels=labels, average=average)
    for got, want in zip(ours[:3], ref[:3]):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    if average is None:
        np.testing.assert_array_equal(ours[3], ref[3])
        assert ours[0][4] == 0.0  # class 4 never predicted: precision 0 by zero_division
        if labels is not None:
            assert ours[0][5] == ours[1][5] == ours[2][5] == ours[3][5] == 0  # absent class
    else:
        assert ours[3] is None
    if average == "micro" and labels is None:
        assert ours[2] == pytest.approx(m.accuracy(gold, pred), abs=1e-12)


def test_f1_score_and_string_labels():
    gold = np.array(["cat", "dog", "dog", "bird", "cat"])
    pred = np.array(["cat", "dog", "cat", "bird", "dog"])
    assert m.f1_score(gold, pred) == pytest.approx(skm.f1_score(gold, pred, average="macro"), abs=1e-12)
    np.testing.assert_array_equal(m.confusion_matrix(gold, pred, ["dog", "cat", "bird"]),
                                  skm.confusion_matrix(gold, pred, labels=["dog", "cat", "bird"]))


def test_classification_input_errors():
    with pytest.raises(ValueError, match="length mismatch"):
        m.accuracy([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="empty"):
        m.accuracy([], [])
    with pytest.raises(ValueError, match=r"pred contains labels outside the label set .*\[9\]"):
        m.confusion_matrix([0, 1], [0, 9], labels=[0, 1])
    with pytest.raises(ValueError, match="gold contains labels outside"):
        m.confusion_matrix([0, 5], [0, 1], labels=[0, 1])
    with pytest.raises(ValueError, match="duplicates"):
        m.confusion_matrix([0, 1], [0, 1], labels=[0, 1, 1])
    with pytest.raises(ValueError, match="outside the label set"):
        # sklearn accepts a subset of labels and drops the rest; here every label seen must be listed
        m.precision_recall_f1([0, 1, 2], [0, 1, 1], labels=[0, 1], average="macro")
    with pytest.raises(ValueError, match="average must be one of"):
        m.precision_recall_f1([0, 1], [0, 1], average="samples")


# ---------------------------------------------------------------------------- calibration

def _ece_loop(probs, gold, n_bins=15, reduce="ece"):
    """Reference: plain Python over examples and bins, bins (lo, hi], first bin includes 0."""
    edges = [b / n_bins for b in range(n_bins + 1)]
    total, worst, n = 0.0, 0.0, len(gold)
    for b in range(n_bins):
        lo, hi = edges[b], edges[b + 1]
        members = []
        for row, g in zip(probs.tolist(), gold.tolist()):
            conf = max(row)
            if lo < conf <= hi or (b == 0 and conf == 0.0):
                members.append((conf, float(row.index(conf) == g)))
        if members:
            gap = abs(sum(c for _, c in members) / len(members) - sum(c for c, _ in members) / len(members))
            total += len(members) / n * gap
            worst = max(worst, gap)
    return total if reduce == "ece" else worst


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_and_mce_match_plain_loop(seed):
    probs, gold = _probs(seed)
    assert cal.expected_calibration_error(probs, gold) == pytest.approx(_ece_loop(probs, gold), abs=1e-12)
    assert cal.maximum_calibration_error(probs, gold) == pytest.approx(_ece_loop(probs, gold, reduce="mce"),
                                                                       abs=1e-12)
    assert cal.expected_calibration_error(probs, gold, n_bins=7) == pytest.approx(
        _ece_loop(probs, gold, n_bins=7), abs=1e-12)


def test_ece_bin_edges_are_right_closed():
    # confidences exactly on the edges 1/3 and 2/3 (K=3 uniform row has conf 1/3) -> lower bin
    probs = np.array([[1 / 3, 1 / 3, 1 / 3], [2 / 3, 1 / 6, 1 / 6], [1.0, 0.0, 0.0]])
    gold = np.array([0, 1, 0])
    bins = cal.reliability_bins(probs, gold, n_bins=3)
    np.testing.assert_array_equal(bins["count"], [1, 1, 1])
    np.testing.assert_allclose(bins["accuracy"], [1.0, 0.0, 1.0])
    # ECE = (|1 - 1/3| + |0 - 2/3| + 0) / 3
    assert cal.expected_calibration_error(probs, gold, n_bins=3) == pytest.approx(4 / 9, abs=1e-12)
    assert cal.maximum_calibration_error(probs, gold, n_bins=3) == pytest.approx(2 / 3, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_brier_and_nll_match_sklearn(seed):
    probs, gold = _probs(seed, k=2)
    brier = cal.brier_score(probs, gold)
    # sklearn's binary Brier score on the positive class is half the multiclass (summed) score
    assert brier / 2 == pytest.approx(skm.brier_score_loss(gold, probs[:, 1]), abs=1e-12)
    assert cal.negative_log_likelihood(probs, gold) == pytest.approx(skm.log_loss(gold, probs), abs=1e-12)
    probs4, gold4 = _probs(seed, k=4)
    assert cal.negative_log_likelihood(probs4, gold4) == pytest.approx(
        skm.log_loss(gold4, probs4, labels=[0, 1, 2, 3]), abs=1e-12)
    onehot = np.eye(4)[gold4]
    assert cal.brier_score(probs4, gold4) == pytest.approx(float(np.mean(np.sum((probs4 - onehot) ** 2, 1))),
                                                           abs=1e-15)
    assert cal.brier_score(onehot, gold4) == 0.0


def test_nll_clips_zero_probability():
    probs = np.array([[1.0, 0.0], [0.5, 0.5]])
    assert cal.negative_log_likelihood(probs, [1, 0]) == pytest.approx((-math.log(1e-15) + math.log(2)) / 2)


def test_calibration_input_errors():
    probs = np.array([[0.5, 0.5], [0.2, 0.8]])
    with pytest.raises(ValueError, match="length mismatch"):
        cal.brier_score(probs, [0, 1, 1])
    with pytest.raises(ValueError, match="sum to 1 within 1e-06: row 1"):
        cal.expected_calibration_error(np.array([[0.5, 0.5], [0.2, 0.79]]), [0, 1])
    cal.brier_score(np.array([[0.5, 0.5], [0.2, 0.8 + 5e-7]]), [0, 1])  # within tolerance
    with pytest.raises(ValueError, match="outside the label set"):
        cal.negative_log_likelihood(probs, [0, 2])
    with pytest.raises(ValueError, match=r"shape \(N, K\)"):
        cal.brier_score(np.array([0.5, 0.5]), [0, 1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cal.brier_score(np.array([[1.5, -0.5], [0.2, 0.8]]), [0, 1])
    with pytest.raises(ValueError, match="length mismatch"):
        cal.fit_temperature(np.zeros((3, 2)), [0, 1])
    with pytest.raises(ValueError, match="outside the label set 0..1"):
        cal.fit_temperature(np.zeros((2, 2)), [0, 3])


def _overconfident(seed: int, n: int, k: int = 10, scale: float = 3.0):
    """Gold drawn from softmax(z) (a calibrated model); the model reports scale * z."""
    rng = np.random.default_rng(seed)
    z = 1.5 * rng.normal(size=(n, k))
    u = rng.random(n)[:, None]
    gold = (np.cumsum(cal.softmax(z), axis=1) < u).sum(axis=1).clip(max=k - 1)
    return scale * z, gold


def test_temperature_scaling_recovers_temperature_and_lowers_ece():
    logits, gold = _overconfident(0, n=40_000)
    fit_logits, fit_gold, test_logits, test_gold = logits[:20_000], gold[:20_000], logits[20_000:], gold[20_000:]
    temperature, _ = cal.fit_temperature(fit_logits, fit_gold)
    assert temperature == pytest.approx(3.0, rel=0.05)
    before = cal.softmax(test_logits)
    after = cal.softmax(test_logits, temperature)
    ece_before = cal.expected_calibration_error(before, test_gold)
    ece_after = cal.expected_calibration_error(after, test_gold)
    assert ece_before > 0.1 and ece_after < ece_before / 4
    assert cal.negative_log_likelihood(after, test_gold) < cal.negative_log_likelihood(before, test_gold)
    np.testing.assert_array_equal(after.argmax(1), before.argmax(1))
    assert m.accuracy(test_gold, after.argmax(1)) == m.accuracy(test_gold, before.argmax(1))
    # the returned probabilities are softmax(logits / T) and T minimises NLL on the fit split
    t2, probs = cal.fit_temperature(fit_logits, fit_gold)
    assert t2 == temperature
    np.testing.assert_allclose(probs, cal.softmax(fit_logits, temperature), atol=1e-15)
    best = cal.temperature_nll(fit_logits, fit_gold, temperature)
    for other in (temperature * 0.99, temperature * 1.01):
        assert cal.temperature_nll(fit_logits, fit_gold, other) > best


def test_temperature_is_one_for_calibrated_model():
    logits, gold = _overconfident(1, n=20_000, scale=1.0)
    assert cal.fit_temperature(logits, gold)[0] == pytest.approx(1.0, rel=0.05)


# ---------------------------------------------------------------------------- bootstrap

def test_bootstrap_mean_ci_is_seeded_and_brackets_estimate():
    values = np.random.default_rng(0).random(500)
    a = bs.bootstrap_mean_ci(values, seed=3)
    assert a == bs.bootstrap_mean_ci(values, seed=3)
    assert a != bs.bootstrap_mean_ci(values, seed=4)
    assert a.estimate == pytest.approx(values.mean(), abs=1e-15)
    assert a.low < a.estimate < a.high and a.n_resamples == 2000
    # standard error of the mean ~ sd / sqrt(n): interval width close to 2 * 1.96 * se
    se = values.std() / math.sqrt(len(values))
    assert (a.high - a.low) == pytest.approx(2 * 1.96 * se, rel=0.1)


def test_bootstrap_coverage_of_true_mean():
    """200 synthetic data sets of 200 Bernoulli(0.7) correctness values: the 95% interval
    should cover 0.7 in 95% +- 3% of them. 200 x 1000 x 200 index draws, all vectorised."""
    rng = np.random.default_rng(12345)
    data = (rng.random((200, 200)) < 0.7).astype(float)
    covered = [iv.low <= 0.7 <= iv.high
               for iv in (bs.bootstrap_mean_ci(row, n_resamples=1000, seed=i) for i, row in enumerate(data))]
    assert 0.92 <= np.mean(covered) <= 0.98


def test_bootstrap_metric_ci_matches_mean_ci_for_accuracy():
    gold, pred = _labels(0, n=400)
    correct = (gold == pred).astype(float)
    # same seed and same index stream -> identical resamples
    via_metric = bs.bootstrap_metric_ci(m.accuracy, gold, pred, n_resamples=1000, seed=7)
    via_mean = bs.bootstrap_mean_ci(correct, n_resamples=1000, seed=7)
    assert via_metric.estimate == via_mean.estimate
    assert via_metric.low == pytest.approx(via_mean.low, abs=1e-12)
    assert via_metric.high == pytest.approx(via_mean.high, abs=1e-12)
    f1 = bs.bootstrap_metric_ci(m.f1_score, gold, pred, n_resamples=1000, seed=7)
    assert f1.low < f1.estimate < f1.high


def test_paired_bootstrap():
    rng = np.random.default_rng(1)
    gold = rng.integers(0, 3, 600)
    pred_a = np.where(rng.random(600) < 0.8, gold, (gold + 1) % 3)
    pred_b = np.where(rng.random(600) < 0.9, pred_a, (pred_a + 1) % 3)  # b = a, degraded a bit
    ca, cb = (gold == pred_a).astype(float), (gold == pred_b).astype(float)
    diff = bs.paired_bootstrap_ci(ca, cb, seed=0)
    assert diff.estimate == pytest.approx(ca.mean() - cb.mean())
    assert 0 < diff.low < diff.estimate < diff.high
    # pairing: the paired interval is much narrower than one built from independent resamples
    ia, ib = bs.bootstrap_mean_ci(ca, seed=0), bs.bootstrap_mean_ci(cb, seed=1)
    assert diff.high - diff.low < 0.6 * math.hypot(ia.high - ia.low, ib.high - ib.low)
    via_metric = bs.paired_bootstrap_metric_ci(m.accuracy, gold, pred_a, pred_b, n_resamples=1000, seed=5)
    via_mean = bs.paired_bootstrap_ci(ca, cb, n_resamples=1000, seed=5)
    assert via_metric.low == pytest.approx(via_mean.low, abs=1e-12)
    assert via_metric.high == pytest.approx(via_mean.high, abs=1e-12)


def test_bootstrap_input_errors():
    with pytest.raises(ValueError, match=">= 1000"):
        bs.bootstrap_mean_ci([1.0, 2.0], n_resamples=999)
    with pytest.raises(ValueError, match="confidence"):
        bs.bootstrap_mean_ci([1.0, 2.0], confidence=95)
    with pytest.raises(ValueError, match="length mismatch"):
        bs.paired_bootstrap_ci([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="length mismatch"):
        bs.bootstrap_metric_ci(m.accuracy, [0, 1], [0])
    with pytest.raises(ValueError, match="empty"):
        bs.bootstrap_mean_ci([])


# ---------------------------------------------------------------------------- McNemar

def _mcnemar_reference(b: int, c: int) -> float:
    n = b + c
    tail = sum(math.comb(n, k) for k in range(0, min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


@pytest.mark.parametrize("seed", range(5))
def test_mcnemar_matches_binomial_sum(seed):
    rng = np.random.default_rng(seed)
    a = rng.random(300) < 0.75
    b = np.where(rng.random(300) < 0.85, a, ~a) & (rng.random(300) < 0.95)
    res = bs.mcnemar_exact(a, b)
    assert (res.b, res.c) == (int(np.sum(a & ~b)), int(np.sum(~a & b)))
    assert res.p_value == pytest.approx(_mcnemar_reference(res.b, res.c), rel=1e-12)
    assert res.p_value == pytest.approx(scipy.stats.binomtest(res.b, res.b + res.c, 0.5).pvalue, rel=1e-9)


def test_mcnemar_known_values():
    # b=1, c=9: 2 * (1 + 10) / 1024
    a = np.array([1] * 1 + [0] * 9 + [1] * 5, dtype=bool)
    b = np.array([0] * 1 + [1] * 9 + [1] * 5, dtype=bool)
    assert bs.mcnemar_exact(a, b) == bs.McNemarResult(1, 9, 22 / 1024)
    assert bs.mcnemar_exact(a, a).p_value == 1.0  # no discordant pairs
    assert bs.mcnemar_exact([1, 0], [0, 1]).p_value == 1.0  # symmetric: capped at 1
    big = bs.mcnemar_exact(np.r_[np.ones(3000), np.zeros(2000)], np.r_[np.zeros(3000), np.ones(2000)])
    assert big.p_value == pytest.approx(_mcnemar_reference(3000, 2000), rel=1e-9) and big.p_value < 1e-40
    with pytest.raises(ValueError, match="length mismatch"):
        bs.mcnemar_exact([1, 0], [1])
    with pytest.raises(ValueError, match="booleans"):
        bs.mcnemar_exact([1, 2], [1, 0])
