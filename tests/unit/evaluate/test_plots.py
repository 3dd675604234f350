"""Evaluation plots: valid PNGs of the expected size, atomic writes, input checks, no leaked figures."""

from __future__ import annotations

import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest

from lmforge.core.atomic import TMP_MARK
from lmforge.evaluate import calibration as cal
from lmforge.evaluate.plots import write_confusion_png, write_reliability_png

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _confusion(k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    matrix = rng.integers(0, 20, (k, k))
    matrix[np.arange(k), np.arange(k)] += 100
    return matrix


def _bins(temperature: float = 1.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    n, k = 600, 4
    gold = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) * 3.0
    logits[np.arange(n), gold] += 2.0
    probs = cal.softmax(logits, temperature)
    return cal.reliability_bins(probs, gold), cal.expected_calibration_error(probs, gold)


def _check_png(path, shape=None):
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    if shape is not None:
        assert image.shape[:2] == shape  # (height, width) = figsize * dpi
    assert image.std() > 0  # something was drawn
    return image


def _no_leftovers(folder, expected: set[str]):
    names = {p.name for p in folder.iterdir()}
    assert names == expected
    assert not [n for n in names if TMP_MARK in n]
    assert plt.get_fignums() == []


@pytest.mark.parametrize(("k", "shape"), [(2, (480, 630)), (25, (1400, 1550))])
def test_confusion_png_small_and_large(tmp_path, k, shape):
    labels = [f"class_{i}" for i in range(k)]
    path = tmp_path / "sub" / "confusion.png"  # missing parent folder is created
    write_confusion_png(_confusion(k), labels, path, f"{k} classes")
    _check_png(path, shape)
    _no_leftovers(path.parent, {"confusion.png"})


def test_confusion_png_all_zero_and_overwrite(tmp_path):
    path = tmp_path / "c.png"
    write_confusion_png(np.zeros((3, 3), dtype=np.int64), ["a", "b", "c"], path, "empty")
    first = path.read_bytes()
    write_confusion_png(_confusion(3), ["a", "b", "c"], path, "filled")
    assert path.read_bytes() != first
    _check_png(path)
    _no_leftovers(tmp_path, {"c.png"})


@pytest.mark.parametrize(("matrix", "labels", "message"), [
    (np.zeros((2, 3), dtype=int), ["a", "b"], "square"),
    (np.zeros(4, dtype=int), ["a", "b"], "square"),
    (np.zeros((3, 3), dtype=int), ["a", "b"], "labels length mismatch: 2 labels for a 3x3"),
    (np.array([[1, -1], [0, 2]]), ["a", "b"], "non-negative integer counts"),
    (np.array([[1.5, 0], [0, 2]]), ["a", "b"], "non-negative integer counts"),
])
def test_confusion_bad_input_writes_nothing(tmp_path, matrix, labels, message):
    path = tmp_path / "c.png"
    with pytest.raises(ValueError, match=message):
        write_confusion_png(matrix, labels, path, "bad")
    _no_leftovers(tmp_path, set())


def test_reliability_png_raw_and_calibrated(tmp_path):
    bins, ece = _bins(1.0)
    cal_bins, cal_ece = _bins(3.0)
    assert (bins["count"] == 0).any()  # empty bins are present and must be skipped
    raw, both = tmp_path / "raw.png", tmp_path / "both.png"
    write_reliability_png(bins, raw, "raw", ece)
    write_reliability_png(bins, both, "temperature scaled", ece, calibrated_bins=cal_bins,
                          calibrated_ece=cal_ece, temperature=3.0)
    write_reliability_png(bins, tmp_path / "no_t.png", "calibrated", ece, cal_bins, cal_ece)
    for path in (raw, both, tmp_path / "no_t.png"):
        _check_png(path, (700, 650))
    assert not np.array_equal(matplotlib.image.imread(raw), matplotlib.image.imread(both))
    _no_leftovers(tmp_path, {"raw.png", "both.png", "no_t.png"})


def test_reliability_bad_input_writes_nothing(tmp_path):
    bins, ece = _bins()
    path = tmp_path / "r.png"
    short = dict(bins, accuracy=bins["accuracy"][:-1])
    cases = [
        (dict(bins=short, ece=ece), "count/confidence/accuracy of length B"),
        (dict(bins={"edges": bins["edges"]}, ece=ece), "missing"),
        (dict(bins=dict(bins, count=np.zeros_like(bins["count"])), ece=ece), "not all zero"),
        (dict(bins=bins, ece=float("nan")), "ece must be"),
        (dict(bins=bins, ece=ece, calibrated_bins=bins), "calibrated_ece is required"),
        (dict(bins=bins, ece=ece, temperature=2.0), "need calibrated_bins"),
        (dict(bins=bins, ece=ece, calibrated_bins=bins, calibrated_ece=ece, temperature=0.0),
         "temperature must be > 0"),
        (dict(bins=bins, ece=ece, calibrated_bins=cal.reliability_bins([[0.5, 0.5]], [0], n_bins=10),
              calibrated_ece=0.0), "same bin edges"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            write_reliability_png(path=path, title="bad", **kwargs)
    _no_leftovers(tmp_path, set())


def test_failed_draw_leaves_no_file(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def boom(self, fname, *args, **kwargs):
        with open(fname, "wb") as f:  # a half-written file, then the failure
            f.write(PNG_MAGIC)
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        write_confusion_png(_confusion(2), ["a", "b"], tmp_path / "c.png", "x")
    bins, ece = _bins()
    with pytest.raises(RuntimeError, match="disk full"):
        write_reliability_png(bins, tmp_path / "r.png", "x", ece)
    _no_leftovers(tmp_path, set())


def test_many_calls_leave_no_figures(tmp_path):
    before = plt.get_backend()
    for i in range(5):
        write_confusion_png(_confusion(3, seed=i), ["a", "b", "c"], tmp_path / "c.png", str(i))
    assert plt.get_fignums() == []
    assert plt.get_backend() == before  # the caller's backend is left as it was
