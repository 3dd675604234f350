"""The ``parallel:`` recipe section, the layout checks against world size and model, and how batches are
split over ranks of every mesh: ranks of one tensor-parallel group read the same data, data-parallel
ranks read disjoint slices that together make the whole global batch."""

import numpy as np
import pytest
import torch

from lmforge.distributed.config import ParallelConfig
from lmforge.distributed.layout import Layout, resolve_layout
from lmforge.errors import RecipeError
from lmforge.model.config import ModelConfig
from lmforge.recipe import load_recipe
from lmforge.train.batches import BatchPlan

DEBUG = ModelConfig(size="debug").dims(512)  # 4 heads, 2 kv heads, ffn 172


def test_recipe_section_defaults_auto_and_bad_values():
    cfg = load_recipe("debug")
    assert (cfg.parallel.dp_replicate, cfg.parallel.dp_shard, cfg.parallel.tp) == (-1, 1, 1)
    cfg = load_recipe("debug", ["parallel.dp_shard=auto", "parallel.dp_replicate=2"])
    assert cfg.parallel.dp_shard == -1
    with pytest.raises(RecipeError, match=r"parallel\.tp: must be at least 1, or -1 / auto"):
        load_recipe("debug", ["parallel.tp=0"])
    with pytest.raises(RecipeError, match=r"parallel: only one degree may be -1 / auto \(got dp_replicate, dp_shard\)"):
        load_recipe("debug", ["parallel.dp_shard=-1"])
    with pytest.raises(RecipeError, match=r"parallel\.fsdp: unknown key"):
        load_recipe("debug", ["parallel.fsdp=2"])


@pytest.mark.parametrize("degrees, world, expected", [
    (dict(), 1, Layout()),
    (dict(), 4, Layout(dp_replicate=4)),
    (dict(dp_replicate=1, dp_shard=-1), 4, Layout(dp_shard=4)),
    (dict(dp_replicate=1, dp_shard=-1, tp=2), 4, Layout(dp_shard=2, tp=2)),
    (dict(dp_shard=2, tp=2), 8, Layout(dp_replicate=2, dp_shard=2, tp=2)),
    (dict(dp_replicate=1, tp=-1), 2, Layout(tp=2)),
])
def test_degrees_resolve(degrees, world, expected):
    layout = resolve_layout(ParallelConfig(**degrees), world, dims=DEBUG, batch_size=8, seq_len=64)
    assert layout == expected
    assert layout.world_size == world


def test_layout_modes():
    assert Layout(dp_replicate=2).ddp and not Layout(dp_replicate=2).sharded
    assert Layout(dp_shard=2).fsdp and Layout(dp_shard=2).sharded
    assert Layout(tp=2).sharded and not Layout(tp=2).fsdp  # tensor parallel alone: no FSDP wrapper
    assert Layout(dp_replicate=2, tp=2).fsdp  # replicas of a tensor-parallel model: HSDP
    assert Layout(dp_replicate=2, dp_shard=2, tp=2).describe() == "HSDP replicas x2 . FSDP2 x2 . TP x2 (8 processes)"


@pytest.mark.parametrize("degrees, world, kwargs, message", [
    (dict(dp_replicate=1, dp_shard=3), 2, {},
     "parallel: dp_replicate * dp_shard * tp = 1 * 3 * 1 = 3 does not match the world size 2 "
     "(processes: --nproc x --nnodes)"),
    (dict(dp_shard=3), 2, {},
     "parallel.dp_shard * parallel.tp = 3 does not divide the world size 2 (processes: --nproc x --nnodes); "
     "parallel.dp_replicate=-1 takes what the others leave"),
    (dict(dp_replicate=1, tp=4), 4, {},
     "parallel.tp=4 does not divide model.n_kv_heads (2): tensor parallelism splits it evenly over the tp processes"),
    (dict(dp_replicate=1, tp=2), 2, dict(dims=ModelConfig(size="debug", d_model=48, n_heads=3, n_kv_heads=3).dims(512)),
     "parallel.tp=2 does not divide model.n_heads (3)"),
    (dict(dp_replicate=1, tp=2), 2, dict(dims=ModelConfig(size="debug", ffn_hidden=171).dims(512)),
     "parallel.tp=2 does not divide model.ffn_hidden (171)"),
    (dict(dp_replicate=1, tp=2), 2, dict(dims=ModelConfig(size="debug").dims(511)),
     "parallel.tp=2 does not divide the vocabulary size (511)"),
    (dict(dp_replicate=1, dp_shard=3), 3, dict(batch_size=6),
     "parallel.dp_shard=3 does not divide model.d_model (64): FSDP2 shards the fused q/k/v"),
    (dict(dp_replicate=1, tp=2), 2, dict(seq_len=63),
     "parallel.tp=2 does not divide train.seq_len (63): sequence parallelism"),
    (dict(dp_replicate=-1, tp=2), 6, dict(batch_size=8),
     "train.batch_size: 8 sequences cannot be split evenly over 3 data-parallel ranks "
     "(parallel.dp_replicate x parallel.dp_shard = 3 x 1)"),
    (dict(dp_replicate=1, dp_shard=2), 2, dict(optimizer="muon"),
     "train.optimizer=muon is not supported with sharded parameters"),
    (dict(dp_replicate=1, tp=2), 2, dict(precision="fp16"),
     "train.precision=fp16 is not supported with sharded parameters"),
])
def test_impossible_layouts_are_one_line_errors(degrees, world, kwargs, message):
    kwargs = dict(dict(dims=DEBUG, batch_size=8, seq_len=64), **kwargs)
    with pytest.raises(RecipeError) as exc:
        resolve_layout(ParallelConfig(**degrees), world, **kwargs)
    assert str(exc.value).startswith(message)
    assert "\n" not in str(exc.value)


def test_plain_data_parallelism_keeps_muon_and_fp16():
    assert resolve_layout(ParallelConfig(), 2, optimizer="muon", precision="fp16") == Layout(dp_replicate=2)


@pytest.mark.parametrize("layout", [Layout(dp_replicate=4), Layout(dp_shard=4), Layout(tp=4),
                                    Layout(dp_shard=2, tp=2), Layout(dp_replicate=2, tp=2),
                                    Layout(dp_replicate=2, dp_shard=2, tp=2), Layout(dp_shard=2, pp=2)])
def test_batches_are_split_over_data_ranks_and_shared_within_tp_groups(layout):
    # the coordinates follow init_device_mesh's row-major layout of the ranks over (pp, dp_replicate, dp_shard, tp)
    grid = torch.arange(layout.world_size).reshape(layout.pp, layout.dp_replicate, layout.dp_shard, layout.tp)
    for rank in range(layout.world_size):
        assert int(grid[layout.coordinate(rank)]) == rank
        assert layout.data_rank(rank) == layout.coordinate(rank)[1] * layout.dp_shard + layout.coordinate(rank)[2]

    batch, micro = 8, 1
    plans = [BatchPlan(37, batch, seed=5, rank=layout.data_rank(r), world_size=layout.dp,
                       micro_batch_size=micro if batch // layout.dp > 1 else None) for r in range(layout.world_size)]
    for step in (0, 3, 4, 9):  # 37 windows: steps 4 and 9 cross an epoch boundary
        seen = {r: np.concatenate(plans[r].micro_batches(step)) for r in range(layout.world_size)}
        for r in range(layout.world_size):  # the tp ranks (and stages) of one data-parallel rank: the same windows
            group = [q for q in range(layout.world_size) if layout.data_rank(q) == layout.data_rank(r)]
            assert len(group) == layout.tp * layout.pp
            assert all(np.array_equal(seen[q], seen[r]) for q in group)
        per_dp = [seen[r] for r in range(0, layout.stage_size, layout.tp)]
        together = np.concatenate(per_dp)
        assert len(together) == batch  # nothing lost, nothing read twice
        assert np.array_equal(together, plans[0].global_indices(step))
