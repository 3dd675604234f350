"""LoRA adapters through peft: merging gives the unmerged model's logits, and the adapter written in peft's
format for the HF export (fused q/k/v and gate/up split by rows) loads onto that export with
``PeftModel.from_pretrained`` and gives lmforge's logits. Random models built here; nothing is downloaded."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import peft
import pytest
import torch
import transformers

sys.path.insert(0, str(Path(__file__).parents[1] / "checkpoint"))
from hf_models import lmforge_dims, lmforge_run, token_ids  # noqa: E402

from lmforge.checkpoint.hf_export import export_hf  # noqa: E402
from lmforge.checkpoint.load import load_model  # noqa: E402
from lmforge.transfer.config import LoraSettings  # noqa: E402
from lmforge.transfer.lora import add_lora, is_lora_parameter, lora_targets, merge_lora, save_hf_adapter  # noqa: E402

TOLERANCE = 1e-5  # fp32, the bound
SHAPES = [(True, 4, 2, 2, 97), (False, 4, 4, 2, 101)]


def adapted(checkpoint: Path, settings: LoraSettings):
    """The checkpoint's decoder with LoRA adapters whose weights are random (B is zero at init: no change)."""
    model = load_model(checkpoint).model
    add_lora(model, settings)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if is_lora_parameter(name):
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_merging_the_adapter_gives_the_unmerged_logits(tmp_path, dora):
    checkpoint, base = lmforge_run(tmp_path / "run", lmforge_dims(*SHAPES[0]))
    model = adapted(checkpoint, LoraSettings(rank=4, alpha=8, use_dora=dora, use_rslora=dora))
    ids = token_ids(SHAPES[0][4])
    with torch.no_grad():
        unmerged, original = model(ids), base(ids)
        merge_lora(model)
        merged = model(ids)
    assert (unmerged - original).abs().max().item() > 1e-2  # the adapters change the model
    assert (merged - unmerged).abs().max().item() < TOLERANCE


@pytest.mark.parametrize("shape", SHAPES, ids=["tied-gqa", "untied-mha"])
@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_adapter_loads_onto_the_hf_export_with_the_same_logits(tmp_path, shape, dora):
    checkpoint, base = lmforge_run(tmp_path / "run", lmforge_dims(*shape))
    settings = LoraSettings(rank=4, use_dora=dora)
    model = adapted(checkpoint, settings)
    export_hf(checkpoint, tmp_path / "hf")
    save_hf_adapter(model, model.dims, settings, lora_targets(model, settings.target_modules), tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["adapter_config.json",
                                                                       "adapter_model.safetensors"]
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["use_dora"] is dora
    assert "model.layers.1.self_attn.k_proj" in config["target_modules"]

    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True)
    theirs = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    ids = token_ids(shape[4])
    with torch.no_grad():
        ours, plain = model(ids), base(ids)
        diff = (ours - theirs(input_ids=ids).logits).abs().max().item()
    assert (ours - plain).abs().max().item() > 1e-2
    assert diff < TOLERANCE, diff
