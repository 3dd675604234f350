import json

import pytest
import torch

from lmforge.core.atomic import atomic_dir, atomic_write_text, remove_stale_temporaries
from lmforge.errors import CheckpointError
from lmforge.checkpoint.formats import read_state, save_checkpoint
from lmforge.checkpoint.load import load_checkpoint


def make(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    return model, opt


def step(model, opt, seed):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(5, 6, generator=g), torch.randn(5, 3, generator=g)
    loss = torch.nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def test_resume_from_checkpoint_is_bit_identical(tmp_path):
    model, opt = make()
    for s in range(3):
        step(model, opt, s)
    save_checkpoint(tmp_path / "ck", model, opt, {"step": 3})
    reference = [step(model, opt, s) for s in range(3, 8)]

    model2, opt2 = make(seed=99)  # different init: everything must come from the checkpoint
    state = load_checkpoint(tmp_path / "ck", model2, opt2)
    assert state["step"] == 3
    resumed = [step(model2, opt2, s) for s in range(3, 8)]
    assert resumed == reference
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


def test_rng_state_is_restored(tmp_path):
    model, opt = make()
    torch.manual_seed(5)
    save_checkpoint(tmp_path / "ck", model, opt, {"step": 0})
    expected = torch.rand(4)
    torch.manual_seed(123)
    load_checkpoint(tmp_path / "ck", model, opt)
    assert torch.equal(torch.rand(4), expected)


def test_no_pickle_only_safetensors_and_json(tmp_path):
    model, opt = make()
    step(model, opt, 0)
    save_checkpoint(tmp_path / "ck", model, opt, {"step": 1})
    names = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert names == ["model.safetensors", "optimizer.safetensors", "state.json"]
    state = json.loads((tmp_path / "ck" / "state.json").read_text())
    assert set(state["files"]) == {"model.safetensors", "optimizer.safetensors"}


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_corrupt_checkpoint_is_refused(tmp_path, damage):
    model, opt = make()
    save_checkpoint(tmp_path / "ck", model, opt, {"step": 1})
    target = tmp_path / "ck" / "model.safetensors"
    data = target.read_bytes()
    if damage == "truncate":
        target.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        target.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    else:
        target.unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors: (corrupt or truncated|file is missing)"):
        load_checkpoint(tmp_path / "ck", *make())


def test_truncated_state_json_is_refused(tmp_path):
    model, opt = make()
    save_checkpoint(tmp_path / "ck", model, opt, {"step": 1})
    (tmp_path / "ck" / "state.json").write_text('{"step": 1, "fil')
    with pytest.raises(CheckpointError, match="state.json: corrupt or truncated state file"):
        read_state(tmp_path / "ck")
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        read_state(tmp_path / "nothing")


def test_weights_of_another_model_are_refused(tmp_path):
    model, opt = make()
    save_checkpoint(tmp_path / "ck", model, opt, {"step": 1})
    other = torch.nn.Sequential(torch.nn.Linear(6, 8))
    with pytest.raises(CheckpointError, match="weights do not fit this model"):
        load_checkpoint(tmp_path / "ck", other)


def test_failed_directory_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "ck") as tmp:
            (tmp / "a").write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_are_removed(tmp_path):
    atomic_write_text(tmp_path / "keep.txt", "ok")
    (tmp_path / "x.json.tmp-123").write_text("half")
    (tmp_path / "step_00000010.tmp-99").mkdir()
    removed = remove_stale_temporaries(tmp_path)
    assert len(removed) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
