import math

import numpy as np
import pytest
import torch

from lmforge.errors import RecipeError
from lmforge.train.batches import BatchPlan
from lmforge.train.config import TrainConfig
from lmforge.train.optim import build_optimizer, parameter_groups
from lmforge.train.schedule import warmup_cosine


def test_schedule_values():
    kw = dict(lr=1.0, max_steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert warmup_cosine(0, **kw) == pytest.approx(0.1)
    assert warmup_cosine(9, **kw) == pytest.approx(1.0)
    assert warmup_cosine(10, **kw) == pytest.approx(1.0)
    assert warmup_cosine(60, **kw) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 2)))
    assert warmup_cosine(110, **kw) == pytest.approx(0.1)
    assert warmup_cosine(500, **kw) == pytest.approx(0.1)
    lrs = [warmup_cosine(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_no_warmup():
    assert warmup_cosine(0, lr=2.0, max_steps=10, warmup_steps=0, min_lr_ratio=0.0) == pytest.approx(2.0)


def test_batches_are_a_pure_function_of_step():
    a, b = BatchPlan(37, 8, seed=3), BatchPlan(37, 8, seed=3)
    assert np.array_equal(a.global_indices(11), b.global_indices(11))
    assert not np.array_equal(a.global_indices(11), BatchPlan(37, 8, seed=4).global_indices(11))


def test_each_epoch_visits_every_window_once():
    plan = BatchPlan(40, 8, seed=0)
    first_epoch = np.concatenate([plan.global_indices(s) for s in range(5)])
    assert sorted(first_epoch.tolist()) == list(range(40))
    second = np.concatenate([plan.global_indices(s) for s in range(5, 10)])
    assert sorted(second.tolist()) == list(range(40))
    assert not np.array_equal(first_epoch, second)


def test_ranks_and_micro_batches_partition_the_global_batch():
    world = 4
    plans = [BatchPlan(100, 16, seed=1, rank=r, world_size=world, micro_batch_size=2) for r in range(world)]
    assert plans[0].accumulation == 2
    for step in (0, 7):
        parts = [np.concatenate(p.micro_batches(step)) for p in plans]
        assert np.array_equal(np.concatenate(parts), plans[0].global_indices(step))
        assert all(len(m) == 2 for p in plans for m in p.micro_batches(step))


def test_bad_splits_are_rejected():
    with pytest.raises(RecipeError, match="batch_size: 10 sequences cannot be split evenly over 4 processes"):
        BatchPlan(100, 10, seed=0, world_size=4)
    with pytest.raises(RecipeError, match="micro_batch_size: 3 must divide the per-process batch of 8"):
        BatchPlan(100, 8, seed=0, micro_batch_size=3)
    with pytest.raises(RecipeError, match="fewer tokens than one sequence"):
        BatchPlan(0, 8, seed=0)


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.attn_norm = torch.nn.Module()
        self.attn_norm.weight = torch.nn.Parameter(torch.ones(4))
        self.proj = torch.nn.Linear(4, 4)


def test_parameter_groups_exclude_norms_biases_embeddings():
    model = Tiny()
    decay, no_decay = parameter_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [p is model.proj.weight for p in decay["params"]] == [True]
    assert {id(p) for p in no_decay["params"]} == {id(model.embed.weight), id(model.attn_norm.weight),
                                                    id(model.proj.bias)}
    opt = build_optimizer(model, TrainConfig(lr=1e-3, beta1=0.8))
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["betas"] == (0.8, 0.95)
