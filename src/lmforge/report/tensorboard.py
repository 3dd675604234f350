"""TensorBoard event files in ``<run>/tensorboard/``, where tensorboard is installed (skipped silently otherwise):
training loss, learning rate and tokens/s by step and validation loss by step from train/metrics.jsonl, and every
stage's headline scalars (the numbers in its summary.json, as ``summary/<stage>.<dotted key>``)."""

from __future__ import annotations

import importlib.util
import math

from lmforge.core.atomic import atomic_dir
from lmforge.report.runread import RunData, flat

FOLDER = "tensorboard"
CURVES = (("train", "loss", "train/loss"), ("train", "lr", "train/lr"), ("train", "tokens_per_s", "train/tokens_per_s"),
          ("eval", "val_loss", "val/loss"))


def available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def headline_scalars(data: RunData) -> dict[str, float]:
    """``summary/<stage>.<dotted key>`` -> value for every finite number in the stages' summaries."""
    return {f"summary/{stage}.{key}": float(value) for stage, summary in data.summaries.items()
            for key, value in flat(summary).items() if _number(value)}


def write_events(data: RunData) -> bool:
    """Replace ``<run>/tensorboard/`` with this run's events; False (nothing written) without tensorboard."""
    if not available():
        return False
    from torch.utils.tensorboard import SummaryWriter

    final_step = data.summary("train").get("steps")
    final_step = final_step if isinstance(final_step, int) else 0
    with atomic_dir(data.run.root / FOLDER) as folder:
        writer = SummaryWriter(log_dir=str(folder))
        try:
            for kind, key, tag in CURVES:
                for record in data.metrics:
                    if record.get("kind") == kind and _number(record.get(key)) and isinstance(record.get("step"), int):
                        writer.add_scalar(tag, float(record[key]), record["step"])
            for tag, value in headline_scalars(data).items():
                writer.add_scalar(tag, value, final_step)
        finally:
            writer.close()
    return True
