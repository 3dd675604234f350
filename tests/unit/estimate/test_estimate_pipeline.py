"""``lmforge estimate --pp``: each pipeline rank's share of the parameters, the micro-batches its schedule keeps
in flight, and the bubble (``estimate/pipeline.py``)."""

import pytest

from lmforge.distributed.config import ParallelConfig
from lmforge.distributed.layout import Layout
from lmforge.distributed.pipeline import PipelineParts
from lmforge.distributed.stages import split_blocks, stages_of
from lmforge.estimate.pipeline import bubble, estimate_pipeline, in_flight
from lmforge.model.config import ModelDims
from lmforge.model.decoder import Decoder, count_parameters

DIMS = ModelDims(vocab_size=512, d_model=64, n_layers=8, n_heads=4, n_kv_heads=2, ffn_hidden=172, context_length=128)


def test_in_flight_and_bubble_follow_the_schedules():
    assert [in_flight("1f1b", r, 4, 1, 8) for r in range(4)] == [4, 3, 2, 1]
    assert [in_flight("gpipe", r, 4, 1, 8) for r in range(4)] == [8] * 4
    assert [in_flight("interleaved_1f1b", r, 2, 2, 4) for r in range(2)] == [5, 3]
    assert bubble(4, 1, 8) == pytest.approx(3 / 11) and bubble(4, 2, 8) == pytest.approx(3 / 19)


@pytest.mark.parametrize("schedule, pp, virtual", [("1f1b", 2, None), ("interleaved_1f1b", 2, 2), ("gpipe", 4, None)])
def test_each_rank_holds_the_parameters_of_its_stages(schedule, pp, virtual):
    pcfg = ParallelConfig(pp=pp, pp_schedule=schedule, pp_virtual_stages=virtual)
    report = estimate_pipeline(DIMS, pcfg, Layout(pp=pp), per_rank_batch=8, seq_len=64, optimizer="adamw",
                               momentum=0.9, precision="fp32", activation_checkpointing=False, device="cpu")
    v = report["virtual_stages"]
    ranges = split_blocks(DIMS, pp * v)
    tied_copy = DIMS.vocab_size * DIMS.d_model  # the last stage's copy of the tied table
    assert sum(r["parameters"] for r in report["ranks"]) == count_parameters(DIMS) + tied_copy
    model = Decoder(DIMS)
    for r in report["ranks"]:  # what PipelineParts really keeps on that rank
        mine = stages_of(r["rank"], pp, v)
        parts = PipelineParts(model, [i for s in mine for i in ranges[s]], 0 in mine, pp * v - 1 in mine)
        assert r["parameters"] == sum(p.numel() for p in parts.parameters())
        assert r["optimizer_state"] == 2 * r["weights"] + 4 * len(list(parts.parameters()))  # AdamW: m, v, step
