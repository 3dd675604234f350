"""PNG figures for evaluation results: confusion-matrix heat map and reliability diagram.

Drawn with ``matplotlib.figure.Figure`` on an Agg canvas, not pyplot: no global figure
registry (nothing to leak or close over many calls) and the caller's chosen backend is left
alone. Every input is checked before anything is drawn, and the file is written atomically,
so a bad input or a failed draw leaves no file behind.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lmforge.core.atomic import atomic_write_with

CELL_TEXT_MAX_CLASSES = 20  # above this many classes the counts are not written in the cells
ROTATE_LABEL_CHARS = 3  # x tick labels longer than this (or many classes) are rotated
BIN_KEYS = ("edges", "count", "confidence", "accuracy")


def new_figure(figsize: tuple[float, float], dpi: int = 100):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # not pyplot: no global state, caller's backend untouched

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: Path) -> None:
    try:
        atomic_write_with(Path(path), lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        fig.clear()


# ---------------------------------------------------------------------------------------------
# confusion matrix


def _check_confusion(matrix, labels) -> tuple[np.ndarray, list[str]]:
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"confusion matrix must be square (K, K), got shape {matrix.shape}")
    if matrix.shape[0] == 0:
        raise ValueError("confusion matrix is empty (K = 0)")
    if not (np.issubdtype(matrix.dtype, np.integer) or np.issubdtype(matrix.dtype, np.floating)):
        raise ValueError(f"confusion matrix must hold counts, got dtype {matrix.dtype}")
    if not np.all(np.isfinite(matrix)) or np.any(matrix < 0) or np.any(np.mod(matrix, 1) != 0):
        raise ValueError("confusion matrix must hold non-negative integer counts")
    labels = [str(label) for label in labels]
    if len(labels) != matrix.shape[0]:
        raise ValueError(f"labels length mismatch: {len(labels)} labels for a "
                         f"{matrix.shape[0]}x{matrix.shape[1]} confusion matrix")
    return matrix.astype(np.int64), labels


def write_confusion_png(matrix: np.ndarray, labels: list[str], path: Path, title: str) -> None:
    """Heat map of a (K, K) confusion matrix: rows are gold labels, columns predicted labels.

    Counts are written in the cells (white on dark cells, black on light ones) for K up to
    ``CELL_TEXT_MAX_CLASSES``; fonts shrink as K grows and long x labels are rotated.
    Raises ValueError (and writes nothing) for a non-square matrix, negative or fractional
    counts, or ``len(labels) != K``.
    """
    matrix, labels = _check_confusion(matrix, labels)
    k = matrix.shape[0]
    side = min(4.0 + 0.4 * k, 16.0)
    fig = new_figure((side + 1.5, side))
    ax = fig.add_subplot()
    tick_size = max(5.0, min(10.0, 200.0 / k))
    top = int(matrix.max())
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(top, 1), interpolation="nearest", aspect="equal")
    colorbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    colorbar.ax.tick_params(labelsize=tick_size)
    rotate = k > 10 or max(len(label) for label in labels) > ROTATE_LABEL_CHARS
    ax.set_xticks(range(k), labels, fontsize=tick_size,
                  rotation=45 if rotate else 0, ha="right" if rotate else "center",
                  rotation_mode="anchor")
    ax.set_yticks(range(k), labels, fontsize=tick_size)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(title)
    if k <= CELL_TEXT_MAX_CLASSES:
        cell_size = max(5.0, min(12.0, 180.0 / k))
        for i in range(k):
            for j in range(k):
                value = int(matrix[i, j])
                dark = top > 0 and value > top / 2
                ax.text(j, i, str(value), ha="center", va="center", fontsize=cell_size,
                        color="white" if dark else "black")
    fig.tight_layout()
    save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# reliability diagram


def _check_bins(bins, name: str) -> dict[str, np.ndarray]:
    if not isinstance(bins, dict) or any(key not in bins for key in BIN_KEYS):
        missing = [key for key in BIN_KEYS if not isinstance(bins, dict) or key not in bins]
        raise ValueError(f"{name} must be a dict from reliability_bins with keys {list(BIN_KEYS)}; "
                         f"missing {missing}")
    out = {key: np.asarray(bins[key], dtype=np.float64) for key in BIN_KEYS}
    n = len(out["count"])
    if any(out[key].ndim != 1 for key in BIN_KEYS) or n == 0:
        raise ValueError(f"{name}: every entry must be a non-empty 1-D array")
    if out["edges"].shape != (n + 1,) or out["confidence"].shape != (n,) or out["accuracy"].shape != (n,):
        raise ValueError(f"{name}: expected edges of length B + 1 and count/confidence/accuracy of "
                         f"length B; got edges {len(out['edges'])}, count {n}, confidence "
                         f"{len(out['confidence'])}, accuracy {len(out['accuracy'])}")
    if not all(np.all(np.isfinite(out[key])) for key in BIN_KEYS):
        raise ValueError(f"{name}: values must be finite")
    if np.any(np.diff(out["edges"]) <= 0):
        raise ValueError(f"{name}: edges must be strictly increasing")
    if np.any(out["count"] < 0) or out["count"].sum() == 0:
        raise ValueError(f"{name}: counts must be non-negative and not all zero")
    return out


def _check_scalar(value, name: str, positive: bool = False) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not np.isfinite(value) or (positive and value <= 0) or (not positive and value < 0):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'} and finite, got {value}")
    return value


def write_reliability_png(bins: dict, path: Path, title: str, ece: float,
                          calibrated_bins: dict | None = None, calibrated_ece: float | None = None,
                          temperature: float | None = None) -> None:
    """Reliability diagram: per-bin accuracy as bars against the diagonal of perfect calibration.

    ``bins`` is the dict from :func:`lmforge.evaluate.calibration.reliability_bins`. The gap
    between each bar and its bin's mean confidence is shaded; bin counts are a histogram in a
    smaller panel below; the legend gives the ECE. With ``calibrated_bins`` (and then
    ``calibrated_ece``, required) the calibrated bins are drawn beside the raw ones, labelled
    with ``T=…`` when ``temperature`` is given. Empty bins are skipped. Raises ValueError (and
    writes nothing) for malformed bins or scores.
    """
    series = [(_check_bins(bins, "bins"), _check_scalar(ece, "ece"), "uncalibrated", "tab:blue")]
    if calibrated_bins is not None:
        if calibrated_ece is None:
            raise ValueError("calibrated_ece is required when calibrated_bins is given")
        label = "calibrated"
        if temperature is not None:
            label = f"temperature-scaled, T={_check_scalar(temperature, 'temperature', positive=True):.3g}"
        cal = _check_bins(calibrated_bins, "calibrated_bins")
        edges = series[0][0]["edges"]
        if cal["edges"].shape != edges.shape or not np.allclose(cal["edges"], edges):
            raise ValueError("calibrated_bins must use the same bin edges as bins")
        series.append((cal, _check_scalar(calibrated_ece, "calibrated_ece"), label, "tab:orange"))
    elif calibrated_ece is not None or temperature is not None:
        raise ValueError("calibrated_ece and temperature need calibrated_bins")

    fig = new_figure((6.5, 7.0))
    acc_ax, count_ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    edges = series[0][0]["edges"]
    lo, width = edges[:-1], np.diff(edges)
    lane = width / len(series)  # side by side when there are two series
    acc_ax.plot([edges[0], edges[-1]], [edges[0], edges[-1]], ls="--", color="gray", lw=1,
                label="perfect calibration")
    for s, (b, score, label, colour) in enumerate(series):
        used = b["count"] > 0
        left = (lo + s * lane)[used]
        acc, conf = b["accuracy"][used], b["confidence"][used]
        acc_ax.bar(left, acc, lane[used], align="edge", color=colour, alpha=0.8, edgecolor="black",
                   linewidth=0.5, label=f"{label} accuracy (ECE {score:.4f})")
        acc_ax.bar(left, conf - acc, lane[used], bottom=acc, align="edge", facecolor=colour, alpha=0.25,
                   edgecolor=colour, hatch="//", linewidth=0.5, label=f"{label} gap to confidence")
        count_ax.bar(left, b["count"][used], lane[used], align="edge", color=colour, alpha=0.8,
                     edgecolor="black", linewidth=0.5, label=label)
    acc_ax.set_xlim(edges[0], edges[-1])
    acc_ax.set_ylim(0.0, 1.0)
    acc_ax.set_ylabel("accuracy")
    acc_ax.set_title(title)
    acc_ax.grid(alpha=0.3)
    acc_ax.legend(loc="upper left", fontsize=8)
    count_ax.set_xlabel("confidence (top-label probability)")
    count_ax.set_ylabel("examples")
    count_ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
