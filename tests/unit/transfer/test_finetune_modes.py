"""Fine-tuning modes on tiny models: which parameters freeze (and stay bit-identical through training),
LoRA's trainable share, and settings that match nothing, refused in one line."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from lmforge.checkpoint.formats import save_checkpoint
from lmforge.distributed.context import DistContext
from lmforge.errors import FinetuneError
from lmforge.model.config import SIZES, ModelDims
from lmforge.model.decoder import Decoder
from lmforge.recipe import load_recipe
from lmforge.rundir import RunDir
from lmforge.train.loop import setup
from lmforge.transfer.config import FinetuneConfig
from lmforge.transfer.lora import add_lora, is_lora_parameter, lora_targets
from lmforge.transfer.stage import FinetuneRunDir, adapter_hook, check_finetune, frozen_names, run_finetune

DIMS = ModelDims(vocab_size=50, **SIZES["debug"])  # d_model 64, 2 layers, 4 heads, 2 kv heads, ffn 172


def meta_decoder() -> Decoder:
    with torch.device("meta"):
        return Decoder(DIMS)


def settings(**values) -> FinetuneConfig:
    return FinetuneConfig.model_validate(values)


def test_frozen_names_are_exactly_the_embeddings_the_first_blocks_and_the_patterns():
    model = meta_decoder()
    frozen = frozen_names(model, settings(mode="frozen", frozen={"embeddings": True, "first_blocks": 1,
                                                                 "patterns": ["layers.1.mlp.*"]}))
    layer0 = {n for n, _ in model.named_parameters() if n.startswith("layers.0.")}
    assert len(layer0) == 6
    assert frozen == {"embed_tokens.weight", *layer0, "layers.1.mlp.gate_up_proj.weight", "layers.1.mlp.down_proj.weight"}


@pytest.mark.parametrize("frozen, message", [
    ({"patterns": ["layers.*.attn.q_proj*"]},
     "finetune.frozen.patterns: 'layers.*.attn.q_proj*' matches no parameter of the base (names such as "
     "layers.0.attn_norm.weight)"),
    ({"first_blocks": 3}, "finetune.frozen.first_blocks: 3 exceeds the base's 2 blocks"),
    ({}, "finetune.mode=frozen freezes nothing: set finetune.frozen.embeddings, first_blocks or patterns"),
    ({"patterns": ["*"]}, "finetune.frozen: every parameter is frozen; nothing would train"),
])
def test_freezing_that_matches_nothing_or_everything_is_refused(frozen, message):
    with pytest.raises(FinetuneError) as exc:
        frozen_names(meta_decoder(), settings(mode="frozen", frozen=frozen))
    assert str(exc.value) == message


def test_lora_trains_exactly_its_adapters_with_the_expected_share():
    model = meta_decoder()
    add_lora(model, settings(mode="lora", lora={"rank": 4}).lora)
    d, qkv, F = DIMS.d_model, (DIMS.n_heads + 2 * DIMS.n_kv_heads) * DIMS.head_dim, DIMS.ffn_hidden
    per_block = 4 * ((d + qkv) + (d + d) + (d + 2 * F) + (F + d))  # r * (in + out) for A and B of each target
    adapters = {n: p.numel() for n, p in model.named_parameters() if is_lora_parameter(n)}
    assert len(adapters) == DIMS.n_layers * 4 * 2 and sum(adapters.values()) == DIMS.n_layers * per_block
    base = {n for n, _ in meta_decoder().named_parameters()}
    assert {n.replace(".base_layer", "") for n, _ in model.named_parameters() if not is_lora_parameter(n)} == base


def test_lora_targets_by_suffix_or_full_name_and_an_unknown_one_is_refused():
    model = meta_decoder()
    assert lora_targets(model, ["down_proj", "layers.0.attn.qkv_proj"]) == [
        "layers.0.mlp.down_proj", "layers.1.mlp.down_proj", "layers.0.attn.qkv_proj"]
    with pytest.raises(FinetuneError) as exc:
        lora_targets(model, ["q_proj"])
    assert str(exc.value) == ("finetune.lora.target_modules: 'q_proj' matches no linear layer of the decoder's "
                              "blocks (they are qkv_proj, out_proj, gate_up_proj, down_proj, or a full name such as "
                              "layers.0.attn.qkv_proj)")


@pytest.fixture
def based_run(debug_data_run, tmp_path):
    """A copy of the prepared debug run with a random base model of its vocabulary (no pretraining)."""
    root = tmp_path / "run"
    shutil.copytree(debug_data_run, root)
    cfg = load_recipe("debug")
    dims = cfg.model.dims(512)
    torch.manual_seed(0)
    base = RunDir(root).checkpoint(1)
    save_checkpoint(base, Decoder(dims), None, {"step": 1, "resume_key": {"model": dims.to_dict(), "seq_len": 64}})
    return RunDir(root), cfg, base


def test_frozen_parameters_do_not_require_grad_and_stay_bit_identical(based_run):
    run, cfg, base = based_run
    cfg = cfg.model_copy(update={"finetune": settings(mode="frozen", max_steps=3, lr=1e-2, frozen={
        "embeddings": True, "patterns": ["layers.0.attn.*"]})})
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"eval_every": 0, "eval_batches": 1})})
    plan = check_finetune(run, cfg, resume=False)
    frozen = {"embed_tokens.weight", "layers.0.attn.qkv_proj.weight", "layers.0.attn.out_proj.weight"}
    trainer = setup(FinetuneRunDir(run), plan.cfg, DistContext(), init_from=plan.base, trainable=plan.trainable)
    assert {n for n, p in trainer.model.named_parameters() if not p.requires_grad} == frozen

    summary = run_finetune(run, cfg, DistContext(), plan, resume=False)
    assert summary["steps"] == 3 and summary["mode"] == "frozen"
    before = load_file(str(base / "model.safetensors"))
    after = load_file(str(FinetuneRunDir(run).checkpoint(3) / "model.safetensors"))
    assert before.keys() == after.keys()
    for name in before:
        same = torch.equal(before[name], after[name])
        assert same is (name in frozen or name == "lm_head.weight"), name  # the LM head is the tied embedding


def test_lora_through_the_loops_adapt_plug_point_optimizes_the_adapters_alone(based_run):
    run, cfg, base = based_run
    fc = settings(mode="lora", lora={"rank": 2, "target_modules": ["qkv_proj", "down_proj"]})
    plan = check_finetune(run, cfg.model_copy(update={"finetune": fc}), resume=False)
    trainer = setup(FinetuneRunDir(run), plan.cfg, DistContext(), init_from=plan.base, trainable=plan.trainable,
                    adapt=adapter_hook(fc, None))
    adapters = {n: p for n, p in trainer.model.named_parameters() if is_lora_parameter(n)}
    optimized = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    assert {id(p) for p in optimized} == {id(p) for p in adapters.values()} and len(adapters) == 2 * 2 * 2
    assert sum(p.numel() for p in optimized) == plan.trainable_parameters
    assert all(p.requires_grad is is_lora_parameter(n) for n, p in trainer.model.named_parameters())
    saved = load_file(str(base / "model.safetensors"))
    assert torch.equal(trainer.model.layers[1].attn.qkv_proj.base_layer.weight, saved["layers.1.attn.qkv_proj.weight"])
