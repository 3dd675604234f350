"""The vectorized metric groups equal scikit-learn / the scalar metrics on every resample, intervals are
seeded percentile intervals of those values, and the paired difference is the bootstrap of the difference."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from lmforge.evaluate import task_metrics as tm
from lmforge.evaluate.calibration import (brier_score, expected_calibration_error, maximum_calibration_error,
                                          negative_log_likelihood)


def classification_outcome(seed: int, n: int = 120, k: int = 4) -> tuple[dict, np.ndarray]:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(k) * 0.7, size=n)
    gold = rng.integers(0, k, n)
    pred = probs.argmax(1)
    onehot = np.eye(k)[gold]
    conf = probs.max(1)
    outcome = {"gold": gold, "pred": pred, "conf": conf, "correct": (pred == gold).astype(float),
               "brier": ((probs - onehot) ** 2).sum(1), "nll": -np.log(probs[np.arange(n), gold]),
               "bin": tm.ece_bin(conf)}
    return outcome, probs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_group_equals_sklearn_on_resamples(seed):
    outcome, _ = classification_outcome(seed)
    labels = ["a", "b", "c", "d"]
    group = tm.classification_group(labels)
    idx = np.random.default_rng(seed).integers(0, 120, size=(5, 120))
    got = group({k: v[idx] for k, v in outcome.items()})
    for r in range(5):
        g, p = outcome["gold"][idx[r]], outcome["pred"][idx[r]]
        for avg in ("macro", "micro", "weighted"):
            want = precision_recall_fscore_support(g, p, labels=[0, 1, 2, 3], average=avg, zero_division=0)
            for m, w in zip(("precision", "recall", "f1"), want[:3]):
                assert got[f"{m}_{avg}"][r] == pytest.approx(w, abs=1e-12)
        per_class = precision_recall_fscore_support(g, p, labels=[0, 1, 2, 3], average=None, zero_division=0)
        for c, label in enumerate(labels):
            for m, w in zip(("precision", "recall", "f1"), per_class[:3]):
                assert got[f"{m}/{label}"][r] == pytest.approx(w[c], abs=1e-12)
    acc = tm.accuracy_group("pred", "acc")({k: v[idx] for k, v in outcome.items()})["acc"]
    assert acc == pytest.approx([accuracy_score(outcome["gold"][i], outcome["pred"][i]) for i in idx])


@pytest.mark.parametrize("seed", [0, 1])
def test_calibration_group_equals_the_scalar_metrics(seed):
    outcome, probs = classification_outcome(seed)
    idx = np.random.default_rng(seed).integers(0, 120, size=(4, 120))
    got = tm.calibration_group({k: v[idx] for k, v in outcome.items()})
    for r in range(4):
        p, g = probs[idx[r]], outcome["gold"][idx[r]]
        assert got["ece"][r] == pytest.approx(expected_calibration_error(p, g), abs=1e-12)
        assert got["mce"][r] == pytest.approx(maximum_calibration_error(p, g), abs=1e-12)
        assert got["brier"][r] == pytest.approx(brier_score(p, g), abs=1e-12)
        assert got["nll"][r] == pytest.approx(negative_log_likelihood(p, g), abs=1e-12)


def test_ece_equals_torchmetrics():
    import torch
    from torchmetrics.classification import MulticlassCalibrationError

    outcome, probs = classification_outcome(3, n=300)
    ours = tm.calibration_group({k: v[None] for k, v in outcome.items()})["ece"][0]
    theirs = MulticlassCalibrationError(num_classes=4, n_bins=15, norm="l1")(
        torch.tensor(probs), torch.tensor(outcome["gold"]))
    assert ours == pytest.approx(float(theirs), abs=1e-6)


def test_perplexity_group_is_a_ratio_of_sums():
    o = {"logprob": np.array([[-10.0, -30.0]]), "tokens": np.array([[5.0, 15.0]]), "bytes": np.array([[20.0, 60.0]])}
    got = tm.perplexity_group(o)
    assert got["loss"][0] == pytest.approx(2.0)
    assert got["perplexity"][0] == pytest.approx(np.exp(2.0))
    assert got["bits_per_byte"][0] == pytest.approx(40.0 / np.log(2) / 80.0)


def test_intervals_are_seeded_percentiles_of_resampled_values():
    outcome, _ = classification_outcome(4)
    groups = [tm.accuracy_group("pred", "acc")]
    a = tm.metrics_with_intervals(outcome, groups, resamples=1000, confidence=0.9, seed=7)
    b = tm.metrics_with_intervals(outcome, groups, resamples=1000, confidence=0.9, seed=7)
    assert a == b
    correct = (outcome["pred"] == outcome["gold"]).astype(float)
    idx = np.random.default_rng(7).integers(0, len(correct), size=(1000, len(correct)))
    low, high = np.quantile(correct[idx].mean(1), [0.05, 0.95])
    assert a["acc"] == {"estimate": correct.mean(), "low": pytest.approx(low), "high": pytest.approx(high)}


def test_interval_covers_the_true_mean_95_percent_of_the_time():
    rng = np.random.default_rng(11)
    covered = 0
    for rep in range(200):
        correct = (rng.random(150) < 0.7).astype(float)
        m = tm.metrics_with_intervals({"x": correct}, [tm.means_group("x")], resamples=1000, confidence=0.95,
                                      seed=rep)["x"]
        covered += m["low"] <= 0.7 <= m["high"]
    assert 0.92 <= covered / 200 <= 0.98


def test_paired_difference_and_mcnemar():
    rng = np.random.default_rng(5)
    gold = rng.integers(0, 2, 400)
    a = {"gold": gold, "pred": np.where(rng.random(400) < 0.8, gold, 1 - gold)}
    b = {"gold": gold, "pred": np.where(rng.random(400) < 0.6, gold, 1 - gold)}
    d = tm.paired_difference(a, b, [tm.accuracy_group("pred", "acc")], resamples=1000, confidence=0.95,
                             seed=0)["acc"]
    assert d["difference"] == pytest.approx(d["a"] - d["b"])
    assert d["significant"] and d["better"] == "a" and d["low"] > 0
    same = tm.paired_difference(a, a, [tm.accuracy_group("pred", "acc")], resamples=1000, confidence=0.95, seed=0)
    assert same["acc"]["difference"] == 0 and not same["acc"]["significant"]
    test = tm.mcnemar(a, b)
    both = (a["pred"] == gold), (b["pred"] == gold)
    assert test["a_only_correct"] == int((both[0] & ~both[1]).sum()) and test["p_value"] < 1e-6
    with pytest.raises(ValueError, match="different examples"):
        tm.paired_difference(a, {k: v[:10] for k, v in b.items()}, [tm.accuracy_group("pred", "acc")],
                             resamples=1000, confidence=0.95, seed=0)


def test_lower_is_better_sets_the_side_of_a_significant_loss_difference():
    a, b = {"val_loss": np.full(50, 1.0) + np.linspace(0, 0.01, 50)}, {"val_loss": np.full(50, 2.0)}
    d = tm.paired_difference(a, b, [tm.means_group("val_loss")], resamples=1000, confidence=0.95, seed=0)
    assert d["val_loss"]["better"] == "a"
