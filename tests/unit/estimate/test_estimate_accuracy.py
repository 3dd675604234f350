"""Predicted peak training memory against the measured peak on CPU, within 5%, on all 15 configurations of
BENCHMARKS.md (which claims a largest error of 4.0%), and model states alone failing that bound on every one.

Like is compared with like: the estimator predicts allocated tensor bytes (what torch.cuda.max_memory_allocated
reports on a GPU) and the measurement is the peak of live tensor storage bytes during a real training
update (``train/measure.py``), not the process RSS, which also holds the interpreter and libraries.

Each row is measured once and serves both checks; no row is left to the benchmark only. The 15 take about
13 s on one idle core (19-23 s for the file on a busy shared one), most of it the real training steps of
the three tiny x 256 rows, which cannot be made cheaper without measuring something else.
"""

import pytest

from lmforge.train.measure import BENCH_CASES, TESTED_CASES, LiveTensorBytes

CASES = TESTED_CASES + BENCH_CASES  # the 15 rows of bench/estimator_accuracy.py and BENCHMARKS.md
BOUND = 0.05


def case_id(c) -> str:
    extra = "".join(f"-{k}{v}" for k, v in c.overrides.items())
    return (f"{c.size}{extra}-b{c.micro_batch}-t{c.seq_len}-{'ac' if c.checkpointing else 'noac'}-{c.precision}-"
            f"{c.optimizer}-acc{c.accumulation}")


def test_the_rows_are_the_fifteen_claimed():
    assert len(CASES) == 15 and len({case_id(c) for c in CASES}) == 15


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_predicted_peak_within_5_percent_and_model_states_alone_are_not(case):
    predicted, measured = case.predicted_and_measured()
    error = predicted.peak / measured - 1
    assert abs(error) <= BOUND, f"predicted {predicted.peak:,} B, measured {measured:,} B ({error:+.1%})"
    # the same estimate without activations (weights, gradients, optimizer state, rotary tables and the
    # batch): what model-state estimators predict. It is 9% to 94% low on these rows, so the bound above
    # cannot be met by an estimator that dropped activations, the loss's buffers or the step's temporaries.
    states = predicted.weights + predicted.gradients + predicted.optimizer_state + predicted.overhead
    states_error = states / measured - 1
    assert abs(states_error) > BOUND, f"model states alone: {states:,} B, measured {measured:,} B ({states_error:+.1%})"


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
