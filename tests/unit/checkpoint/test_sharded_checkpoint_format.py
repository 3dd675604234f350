"""The canonical checkpoint layout (fused q/k/v and gate/up split into views), the tensor-parallel row
order, and the DCP checkpoint format in one process: round trip, integrity manifest, and the one-line
errors for a corrupt, truncated, incomplete or tampered checkpoint. (Several processes: tests/distributed.)"""

import json

import pytest
import torch
from safetensors.torch import load_file

from lmforge.checkpoint.export import export_checkpoint
from lmforge.checkpoint.formats import read_state, save_checkpoint
from lmforge.checkpoint.load import consolidated_weights, load_checkpoint
from lmforge.checkpoint.sharded import DCP_FORMAT, load_safetensors_into_sharded, save_sharded
from lmforge.checkpoint.training import load_training_checkpoint
from lmforge.distributed.context import DistContext
from lmforge.model.fused_layout import model_views, permute_for_tp, split_fused, tp_row_order
from lmforge.errors import CheckpointError
from lmforge.model.config import ModelConfig
from lmforge.model.decoder import Decoder
from lmforge.train.config import TrainConfig
from lmforge.train.optim import build_optimizer

DIMS = ModelConfig(size="debug").dims(96)  # H=4, K=2, D=16, F=172
H, K, D, F, C = 4, 2, 16, 172, 64


def trained(seed=0, steps=2):
    torch.manual_seed(seed)
    model = Decoder(DIMS)
    opt = build_optimizer(model, TrainConfig())
    for i in range(steps):
        tokens = torch.randint(0, 96, (2, 17), generator=torch.Generator().manual_seed(i))
        model(tokens[:, :-1], tokens[:, 1:]).backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def test_canonical_views_split_fused_rows_and_share_storage():
    model, _ = trained(steps=0)
    views = model_views(model, DIMS)
    qkv = model.layers[1].attn.qkv_proj.weight
    assert views["layers.1.attn.q_proj.weight"].shape == (H * D, C)
    assert views["layers.1.attn.k_proj.weight"].shape == (K * D, C)
    assert torch.equal(views["layers.1.attn.v_proj.weight"], qkv[(H + K) * D:])
    assert views["layers.0.mlp.up_proj.weight"].shape == (F, C)
    assert "layers.0.attn.qkv_proj.weight" not in views and "lm_head.weight" not in views  # tied: stored once
    views["layers.1.attn.k_proj.weight"].fill_(7.0)  # a load writes straight into the fused parameter
    assert bool((qkv[H * D:(H + K) * D] == 7.0).all()) and not bool((qkv[:H * D] == 7.0).any())


def test_tensor_parallel_row_order_gives_each_shard_its_own_heads():
    rows = [H * D, K * D, K * D]
    fused = torch.arange(sum(rows)).float()[:, None].expand(-1, 3).clone()  # row i holds i
    tp = 2
    permuted = fused[tp_row_order(rows, tp)]
    for t, shard in enumerate(permuted.chunk(tp)):
        q, k, v = split_fused(shard, [("q", H * D // tp), ("k", K * D // tp), ("v", K * D // tp)])
        assert torch.equal(q[1][:, 0], torch.arange(t * H * D // tp, (t + 1) * H * D // tp).float())
        assert torch.equal(k[1][:, 0], H * D + torch.arange(t * K * D // tp, (t + 1) * K * D // tp).float())
        assert torch.equal(v[1][:, 0], (H + K) * D + torch.arange(t * K * D // tp, (t + 1) * K * D // tp).float())
    model, _ = trained(steps=0)
    before = model.layers[0].mlp.gate_up_proj.weight.clone()
    permute_for_tp(model, DIMS, 2)
    after = model.layers[0].mlp.gate_up_proj.weight
    assert torch.equal(after[:F // 2], before[:F // 2]) and torch.equal(after[F // 2:F], before[F:F + F // 2])


def test_dcp_round_trip_and_resume_across_formats(tmp_path):
    model, opt = trained()
    save_sharded(tmp_path / "dcp", model, opt, {"step": 2, "resume_key": {"model": DIMS.to_dict()}}, DistContext())
    state = json.loads((tmp_path / "dcp" / "state.json").read_text())
    assert state["format"] == DCP_FORMAT
    assert sorted(state["files"]) == ["shard-00001-model-00001-of-00001.safetensors"]
    assert not list(tmp_path.glob("*.tmp-*"))

    fresh, fresh_opt = trained(seed=1, steps=0)
    assert load_checkpoint(tmp_path / "dcp", fresh, fresh_opt)["step"] == 2  # DCP into a plain model
    for (name, a), b in zip(model.named_parameters(), fresh.parameters()):
        assert torch.equal(a, b), name
    saved, loaded = opt.state_dict(), fresh_opt.state_dict()
    assert saved["param_groups"] == loaded["param_groups"]
    for pid, entry in saved["state"].items():
        for key, value in entry.items():
            assert torch.equal(value, loaded["state"][pid][key]), (pid, key)

    # the same weights as safetensors: export gives identical canonical tensors from both formats
    save_checkpoint(tmp_path / "st", model, opt, {"step": 2, "resume_key": {"model": DIMS.to_dict()}})
    a, _ = consolidated_weights(tmp_path / "dcp")
    b, _ = consolidated_weights(tmp_path / "st")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    export_checkpoint(tmp_path / "dcp", tmp_path / "out" / "model.safetensors")
    exported = load_file(tmp_path / "out" / "model.safetensors")
    assert exported.keys() == a.keys() and all(torch.equal(exported[k], a[k]) for k in a)

    # a safetensors checkpoint goes through the loader of sharded models: canonical views, copied in place
    again, again_opt = trained(seed=2, steps=0)
    load_safetensors_into_sharded(tmp_path / "st", read_state(tmp_path / "st"), again, again_opt)
    assert all(torch.equal(x, y) for x, y in zip(model.parameters(), again.parameters()))
    for pid, entry in saved["state"].items():
        for key, value in entry.items():
            assert torch.equal(value, again_opt.state_dict()["state"][pid][key]), (pid, key)
    assert load_training_checkpoint(tmp_path / "st", trained(seed=3, steps=0)[0], None, DistContext())["step"] == 2


@pytest.fixture
def dcp_checkpoint(tmp_path):
    model, opt = trained()
    path = tmp_path / "step_00000002"
    save_sharded(path, model, opt, {"step": 2, "resume_key": {"model": DIMS.to_dict()}}, DistContext())
    return path


def _fails(path, message):
    fresh, fresh_opt = trained(seed=1, steps=0)
    before = [p.clone() for p in fresh.parameters()]
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path, fresh, fresh_opt)
    assert message in str(exc.value) and "\n" not in str(exc.value)
    assert all(torch.equal(a, b) for a, b in zip(before, fresh.parameters()))  # nothing read before the check
    with pytest.raises(CheckpointError, match="checkpoint "):
        export_checkpoint(path, path.parent / "export.safetensors")
    assert not (path.parent / "export.safetensors").exists()
    assert not list(path.parent.glob("export.safetensors*"))


def test_truncated_shard_is_refused(dcp_checkpoint):
    shard = dcp_checkpoint / "shard-00001-model-00001-of-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    _fails(dcp_checkpoint, f"checkpoint {shard}: corrupt or truncated (SHA-256 does not match state.json)")


def test_corrupt_shard_is_refused(dcp_checkpoint):
    shard = dcp_checkpoint / "shard-00001-model-00001-of-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    _fails(dcp_checkpoint, "corrupt or truncated")


def test_missing_or_extra_shard_is_refused(dcp_checkpoint):
    shard = dcp_checkpoint / "shard-00001-model-00001-of-00001.safetensors"
    extra = dcp_checkpoint / "shard-00002-model-00001-of-00001.safetensors"
    extra.write_bytes(shard.read_bytes())
    _fails(dcp_checkpoint, "unexpected file shard-00002-model-00001-of-00001.safetensors (not in the integrity manifest")
    extra.unlink()
    shard.unlink()
    _fails(dcp_checkpoint, f"checkpoint {shard}: file is missing")


def test_incomplete_checkpoint_without_manifest_is_refused(dcp_checkpoint):
    (dcp_checkpoint / "state.json").unlink()
    _fails(dcp_checkpoint, "state.json is missing (incomplete checkpoint)")
