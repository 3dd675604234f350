"""The explain stage's figures as PNG files (drawn on an Agg canvas, written atomically, as the evaluation
stage's): attention heatmaps per layer and head, faithfulness curves, the anatomy's alphas, permutation
importance."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lmforge.evaluate.plots import new_figure, save_figure


def attention_png(maps: list[np.ndarray], rollout: np.ndarray, labels: list[str], path: Path) -> None:
    """A grid: one row per layer, one column per head, the last column the rollout (on the first row)."""
    layers, heads = len(maps), maps[0].shape[0]
    size = 1.6 if len(labels) > 12 else 2.2
    fig = new_figure((size * (heads + 1) + 0.5, size * layers + 0.6))
    axes = fig.subplots(layers, heads + 1, squeeze=False)
    ticks = len(labels) <= 24
    for i in range(layers):
        for h in range(heads + 1):
            ax = axes[i][h]
            ax.set_xticks([])
            ax.set_yticks([])
            if h == heads:
                if i == 0:
                    ax.imshow(rollout, cmap="magma", vmin=0, vmax=max(float(rollout.max()), 1e-9))
                    ax.set_title("rollout", fontsize=8)
                else:
                    ax.axis("off")
                continue
            ax.imshow(maps[i][h], cmap="viridis", vmin=0, vmax=1)
            if i == 0:
                ax.set_title(f"head {h}", fontsize=8)
            if h == 0:
                ax.set_ylabel(f"layer {i}", fontsize=8)
            if ticks and i == layers - 1:
                ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=5)
            if ticks and h == 0:
                ax.set_yticks(range(len(labels)), labels, fontsize=5)
    fig.suptitle("attention (query rows, key columns)", fontsize=9)
    save_figure(fig, path)


def faithfulness_png(faith: dict[str, dict], n: int, path: Path) -> None:
    """Deletion and insertion curves (log-probability) of each method against the random orders' mean."""
    fig = new_figure((9, 3.4))
    deletion, insertion = fig.subplots(1, 2)
    first = next(iter(faith.values()))
    x = np.array(first["thresholds"]) / n
    for ax, key, title in ((deletion, "deletion", "deletion: top k removed"),
                           (insertion, "insertion", "insertion: top k alone")):
        for method, f in faith.items():
            ax.plot(x, f["log_prob"][key], marker=".", label=method)
        if first["log_prob"][f"random_{key}"]:
            ax.plot(x, first["log_prob"][f"random_{key}"], "k--", label="random order")
        ax.axhline(first["log_prob"]["full"], color="grey", lw=0.8)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("share of context tokens (k / n)")
        ax.set_ylabel("log p(target)")
    deletion.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def anatomy_png(matrices: list[dict], path: Path) -> None:
    """Each weight matrix's power-law alpha, with the 2 and 6 of the rule of thumb."""
    fitted = [m for m in matrices if m["alpha"] is not None]
    fig = new_figure((max(6.0, 0.22 * len(fitted) + 2), 3.8))
    ax = fig.subplots()
    colors = {"ok": "tab:green", "over-trained": "tab:red", "under-trained": "tab:orange"}
    ax.bar(range(len(fitted)), [m["alpha"] for m in fitted], color=[colors[m["verdict"]] for m in fitted])
    for y in (2.0, 6.0):
        ax.axhline(y, color="grey", ls="--", lw=0.8)
    ax.set_xticks(range(len(fitted)), [m["name"].removesuffix(".weight") for m in fitted], rotation=90, fontsize=6)
    ax.set_ylabel("alpha (power-law exponent of the eigenvalues)")
    ax.set_title("weight spectra: alpha < 2 over-trained, > 6 under-trained (WeightWatcher's rule)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def permutation_png(result: dict, path: Path) -> None:
    fig = new_figure((max(5.0, 0.35 * len(result["features"]) + 2), 3.4))
    ax = fig.subplots()
    ax.bar(range(len(result["mean"])), result["mean"], yerr=result["std"], color="tab:blue")
    ax.set_xticks(range(len(result["features"])), result["features"], rotation=90, fontsize=7)
    ax.set_ylabel("accuracy drop when shuffled")
    ax.set_title(f"permutation importance (baseline accuracy {result['baseline']:.3f})", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
