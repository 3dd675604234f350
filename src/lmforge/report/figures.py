"""The report's own plots (the stages' PNGs are inlined as they are): training and validation loss, learning
rate and tokens/s by step from train/metrics.jsonl, drawn with matplotlib into PNG data URIs."""

from __future__ import annotations

import base64
import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _png_uri(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _finite(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    pairs = [(r["step"], r[key]) for r in records
             if isinstance(r.get(key), (int, float)) and math.isfinite(r[key]) and isinstance(r.get("step"), int)]
    return [s for s, _ in pairs], [v for _, v in pairs]


def training_curves(metrics: list[dict]) -> str | None:
    """Loss (train and validation), learning rate and tokens/s by step; None without training records."""
    train = [r for r in metrics if r.get("kind") == "train"]
    evals = [r for r in metrics if r.get("kind") == "eval"]
    if not train and not evals:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    loss_ax, lr_ax, speed_ax = axes
    steps, loss = _finite(train, "loss")
    loss_ax.plot(steps, loss, label="train loss", color="#1f5fa8", linewidth=1.2)
    steps, val = _finite(evals, "val_loss")
    loss_ax.plot(steps, val, label="validation loss", color="#c0392b", marker="o", markersize=4, linewidth=1.4)
    loss_ax.set_title("loss")
    loss_ax.legend(fontsize=8)
    for ax, key, title, color in ((lr_ax, "lr", "learning rate", "#6a3d9a"),
                                  (speed_ax, "tokens_per_s", "tokens/s", "#1e7a3c")):
        steps, values = _finite(train, key)
        ax.plot(steps, values, color=color, linewidth=1.2)
        ax.set_title(title)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png_uri(fig)
