"""Exact resume for every optimizer and precision: train, checkpoint (safetensors + JSON), train on; a fresh
model and optimizer loaded from the checkpoint give bit-identical losses and weights. Activation
checkpointing changes memory, not results."""

import pytest
import torch

from lmforge.distributed.context import DistContext
from lmforge.train.measure import RandomWindows
from lmforge.model.config import ModelConfig
from lmforge.model.decoder import Decoder
from lmforge.train.batches import BatchPlan
from lmforge.checkpoint.formats import save_checkpoint
from lmforge.checkpoint.load import load_checkpoint
from lmforge.train.config import OPTIMIZERS, TrainConfig
from lmforge.train.loop import train_step
from lmforge.distributed.parallelize import apply_activation_checkpointing
from lmforge.train.optim import build_optimizer
from lmforge.train.precision import precision_policy
from lmforge.train.schedule import learning_rate

DIMS = ModelConfig(size="debug").dims(97)
CPU = DistContext(device=torch.device("cpu"))


class Trainer:
    def __init__(self, optimizer: str, precision: str = "fp32", seed: int = 0, checkpointing: bool = False):
        self.cfg = TrainConfig(optimizer=optimizer, precision=precision, lr=3e-3, max_steps=8, warmup_steps=2,
                               batch_size=4, micro_batch_size=2, schedule="wsd", decay_fraction=0.5)
        torch.manual_seed(seed)
        self.model = Decoder(DIMS)
        if checkpointing:
            apply_activation_checkpointing(self.model)
        self.optimizer = build_optimizer(self.model, self.cfg)
        self.policy = precision_policy(precision, CPU.device)
        self.plan = BatchPlan(500, 4, seed=3, micro_batch_size=2)
        self.data = RandomWindows(DIMS.vocab_size, seed=5)

    def steps(self, start: int, stop: int) -> list[float]:
        return [train_step(self.model, self.model, self.optimizer, self.plan, self.data, s, 16,
                           learning_rate(s, self.cfg), 1.0, CPU, self.policy)[0] for s in range(start, stop)]


# every optimizer in fp32; mixed precision with one torch optimizer and the optimizer chain
CASES = [(name, "fp32") for name in OPTIMIZERS] + [(name, p) for name in ("adamw", "muon") for p in ("bf16", "fp16")]


@pytest.mark.parametrize("optimizer, precision", CASES)
def test_checkpoint_round_trip_is_bit_identical(tmp_path, optimizer, precision):
    first = Trainer(optimizer, precision)
    first.steps(0, 3)
    if first.policy.scaler is not None:  # make the scaler's state matter: a non-default scale and tracker
        first.policy.scaler.update(new_scale=1024.0)
    save_checkpoint(tmp_path / "ck", first.model, first.optimizer,
                    {"step": 3, "grad_scaler": first.policy.state_dict()})
    expected = first.steps(3, 8)

    resumed = Trainer(optimizer, precision, seed=99)  # different init: everything must come from the checkpoint
    state = load_checkpoint(tmp_path / "ck", resumed.model, resumed.optimizer)
    resumed.policy.load_state_dict(state["grad_scaler"])
    assert resumed.steps(3, 8) == expected
    for a, b in zip(first.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    if precision == "fp16":
        assert resumed.policy.scaler.state_dict() == first.policy.scaler.state_dict()
        assert resumed.policy.scaler.get_scale() < 65536.0


def test_fp16_overflow_skips_the_update_and_backs_off_the_scale():
    trainer = Trainer("adamw", "fp16")
    trainer.steps(0, 1)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    scale = trainer.policy.scaler.get_scale()
    original = Decoder.forward
    try:
        Decoder.forward = lambda self, tokens, targets=None: original(self, tokens, targets) * 1e30  # grads overflow
        loss, grad_norm, applied = train_step(trainer.model, trainer.model, trainer.optimizer, trainer.plan,
                                              trainer.data, 1, 16, 1e-3, 1.0, CPU, trainer.policy)
    finally:
        Decoder.forward = original
    assert not applied
    assert trainer.policy.scaler.get_scale() == scale / 2
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_activation_checkpointing_gives_the_same_losses(optimizer):
    plain, checkpointed = Trainer(optimizer), Trainer(optimizer, checkpointing=True)
    assert plain.steps(0, 4) == checkpointed.steps(0, 4)
    assert [n for n, _ in plain.model.state_dict().items()] == list(checkpointed.model.state_dict())
