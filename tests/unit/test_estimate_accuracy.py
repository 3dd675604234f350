"""Predicted peak training memory against the measured peak on CPU, within +-15%.

Like is compared with like: the estimator predicts allocated tensor bytes (what torch.cuda.max_memory_allocated
reports on a GPU) and the measurement is the peak of live tensor storage bytes during a real training
update (``estimate/measure.py``), not the process RSS, which also holds the interpreter and libraries.
"""

import pytest

from lmforge.estimate.measure import LiveTensorBytes, measure_training_peak
from lmforge.estimate.memory import estimate_memory
from lmforge.model.config import ModelConfig

# (size, overrides, vocab, micro-batch, seq len, activation checkpointing, precision, optimizer, accumulation)
CONFIGS = [
    ("debug", {}, 512, 4, 64, False, "fp32", "adamw", 1),
    ("debug", {}, 512, 16, 128, False, "fp32", "adamw", 1),
    ("debug", {}, 512, 16, 128, True, "fp32", "adamw", 1),
    ("tiny", {}, 4096, 2, 64, False, "fp32", "adamw", 1),
    ("tiny", {}, 4096, 4, 128, False, "fp32", "adamw", 1),
    ("tiny", {}, 4096, 4, 128, True, "fp32", "adamw", 1),
    ("debug", {}, 512, 8, 64, False, "bf16", "adamw", 1),
    ("debug", {}, 512, 4, 64, False, "fp32", "adafactor", 2),
    ("debug", {"n_kv_heads": 4, "tie_embeddings": False}, 1000, 8, 96, False, "fp32", "muon", 1),
]


@pytest.mark.parametrize("size, overrides, vocab, micro, seq_len, ac, precision, optimizer, accumulation", CONFIGS,
                         ids=[f"{c[0]}-b{c[3]}-t{c[4]}-{'ac' if c[5] else 'noac'}-{c[6]}-{c[7]}-acc{c[8]}"
                              for c in CONFIGS])
def test_predicted_peak_within_15_percent_of_measured(size, overrides, vocab, micro, seq_len, ac, precision,
                                                      optimizer, accumulation):
    dims = ModelConfig(size=size, **overrides).dims(vocab)
    measured = measure_training_peak(dims, micro_batch=micro, seq_len=seq_len, accumulation=accumulation,
                                     optimizer=optimizer, precision=precision, activation_checkpointing=ac)
    predicted = estimate_memory(dims, micro_batch=micro, seq_len=seq_len, optimizer=optimizer, precision=precision,
                                activation_checkpointing=ac, accumulation=accumulation)
    error = predicted.peak / measured["peak"] - 1
    assert abs(error) <= 0.15, f"predicted {predicted.peak:,} B, measured {measured['peak']:,} B ({error:+.1%})"


def test_live_tensor_bytes_counts_storages_once_and_sees_them_freed():
    import torch

    tracker = LiveTensorBytes()
    with tracker:
        a = torch.zeros(1000)  # 4000 bytes
        view = a[10:]  # a view: no new storage
        b = a * 2
        assert tracker.live == 8000
        del b
        assert tracker.live == 4000
        del a, view
    assert tracker.live == 0 and tracker.peak == 8000
