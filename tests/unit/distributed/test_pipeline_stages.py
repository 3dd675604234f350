"""How pipeline stages split the decoder's blocks, where each stage runs, and the checks made before any
process starts (``distributed/stages.py``, ``distributed/layout.py``)."""

import pytest

from lmforge.distributed import layout as layout_module
from lmforge.distributed.config import ParallelConfig
from lmforge.distributed.layout import Layout, resolve_layout
from lmforge.distributed.stages import block_parameters, split_blocks, stages_of, virtual_stages
from lmforge.errors import RecipeError
from lmforge.model.config import ModelDims
from lmforge.model.decoder import Decoder


def dims(n_layers=8, vocab=4096, tie=True):
    return ModelDims(vocab_size=vocab, d_model=64, n_layers=n_layers, n_heads=4, n_kv_heads=2, ffn_hidden=172,
                     context_length=128, tie_embeddings=tie)


def test_even_split_and_looped_placement():
    assert split_blocks(dims(8), 4) == [range(0, 2), range(2, 4), range(4, 6), range(6, 8)]
    assert [stages_of(r, 2, 2) for r in (0, 1)] == [[0, 2], [1, 3]]
    assert virtual_stages("1f1b", None) == 1 and virtual_stages("interleaved_1f1b", None) == 2


def test_block_parameters_are_the_decoders_own():
    d = dims(1)
    model = Decoder(d)
    assert block_parameters(d) == sum(p.numel() for p in model.layers[0].parameters())


def stage_parameters(d, ranges):
    embed = d.vocab_size * d.d_model
    head = d.d_model + (0 if d.tie_embeddings else embed)
    return [len(r) * block_parameters(d) + (embed if i == 0 else 0) + (head if i == len(ranges) - 1 else 0)
            for i, r in enumerate(ranges)]


@pytest.mark.parametrize("n_layers, stages, tie", [(8, 2, True), (8, 4, False), (7, 3, True), (12, 4, False)])
def test_parameter_balanced_split_minimises_the_largest_stage(n_layers, stages, tie):
    import itertools

    d = dims(n_layers, vocab=8192, tie=tie)
    ranges = split_blocks(d, stages, "parameters")
    assert [i for r in ranges for i in r] == list(range(n_layers)) and all(len(r) for r in ranges)
    best = min(max(stage_parameters(d, [range(a, b) for a, b in zip((0, *cuts), (*cuts, n_layers))]))
               for cuts in itertools.combinations(range(1, n_layers), stages - 1))  # every split, brute force
    assert max(stage_parameters(d, ranges)) == best
    assert len(ranges[0]) < len(ranges[1])  # the embedding's stage takes fewer blocks


def test_explicit_split_and_bad_splits():
    assert split_blocks(dims(8), 2, [3, 5]) == [range(0, 3), range(3, 8)]
    for bad in ([3, 4], [8, 0], [1, 2, 5]):
        with pytest.raises(RecipeError, match="parallel.pp_split"):
            split_blocks(dims(8), 2, bad)


def test_layout_puts_the_pipeline_outermost():
    layout = resolve_layout(ParallelConfig(pp=2, dp_replicate=1, dp_shard=2, tp=2), 8)
    assert layout == Layout(dp_replicate=1, dp_shard=2, tp=2, pp=2) and layout.stage_size == 4
    assert [layout.coordinate(r) for r in (0, 3, 4, 7)] == [(0, 0, 0, 0), (0, 0, 1, 1), (1, 0, 0, 0), (1, 0, 1, 1)]
    assert [layout.data_rank(r) for r in range(8)] == [0, 0, 1, 1, 0, 0, 1, 1]  # both stages read the same data
    assert layout.sharded and layout.fsdp and layout.describe() == "PP x2 . FSDP2 x2 . TP x2 (8 processes)"
    assert resolve_layout(ParallelConfig(pp=2), 4).dp_replicate == 2  # auto: what the pipeline leaves
    assert Layout().to_dict() == {"dp_replicate": 1, "dp_shard": 1, "tp": 1}  # as recorded before pipelines


def test_a_schedule_this_torch_lacks_is_one_line(monkeypatch):
    from torch.distributed import pipelining

    monkeypatch.delattr(pipelining, "ScheduleInterleavedZeroBubble")
    cfg = ParallelConfig(pp=2, pp_schedule="zero_bubble")
    with pytest.raises(RecipeError, match=r"^parallel.pp_schedule=zero_bubble: this torch \(.*\) has no "
                                          r"torch.distributed.pipelining.ScheduleInterleavedZeroBubble$"):
        resolve_layout(cfg, 2, dims=dims(4), batch_size=8)
    assert layout_module.SCHEDULE_CLASSES["zero_bubble"] == "ScheduleInterleavedZeroBubble"


def test_unknown_schedule_is_refused_by_the_recipe():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="gpipe"):
        ParallelConfig(pp_schedule="looped")
