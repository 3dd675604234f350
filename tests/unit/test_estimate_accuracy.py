"""Predicted peak training memory against the measured peak on CPU, within +-15%.

Like is compared with like: the estimator predicts allocated tensor bytes (what torch.cuda.max_memory_allocated
reports on a GPU) and the measurement is the peak of live tensor storage bytes during a real training
update (``estimate/measure.py``), not the process RSS, which also holds the interpreter and libraries.
"""

import pytest

from lmforge.estimate.measure import TESTED_CASES, LiveTensorBytes


@pytest.mark.parametrize("case", TESTED_CASES, ids=[f"{c.size}-b{c.micro_batch}-t{c.seq_len}-"
                                                    f"{'ac' if c.checkpointing else 'noac'}-{c.precision}-"
                                                    f"{c.optimizer}-acc{c.accumulation}" for c in TESTED_CASES])
def test_predicted_peak_within_15_percent_of_measured(case):
    predicted, measured = case.predicted_and_measured()
    error = predicted.peak / measured - 1
    assert abs(error) <= 0.15, f"predicted {predicted.peak:,} B, measured {measured:,} B ({error:+.1%})"


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
