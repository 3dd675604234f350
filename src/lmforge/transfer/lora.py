"""LoRA through peft around the decoder's linear layers, and the adapter in peft's own format for the
Hugging Face export (``lmforge export --format hf``).

lmforge fuses q/k/v (``attn.qkv_proj``) and gate/up (``mlp.gate_up_proj``); the HF export splits them by
rows. A LoRA delta ``B @ A`` on a fused weight splits the same way: each part keeps ``A`` (shared) and takes
its rows of ``B`` (and of DoRA's per-row magnitude), so the adapter written for HF computes exactly what the
fused one does.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from lmforge.core.atomic import atomic_dir
from lmforge.errors import FinetuneError
from lmforge.model.config import ModelDims
from lmforge.model.fused_layout import parts_of
from lmforge.model.hf_names import hf_name
from lmforge.transfer.config import LoraSettings

ADAPTER = "default"  # peft's adapter name inside the model
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
LORA_TENSORS = ("lora_A", "lora_B", "lora_magnitude_vector")


def _peft():
    try:
        import peft
    except ImportError:
        raise FinetuneError("finetune.mode=lora needs peft (pip install peft)") from None
    return peft


def adaptable_modules(model: nn.Module) -> list[str]:
    """The linear layers inside the blocks, by name (``layers.0.attn.qkv_proj`` ...), wrapped with LoRA or not."""
    return [name for name, m in model.named_modules()
            if type(getattr(m, "base_layer", m)) is nn.Linear and name.startswith("layers.")
            and not name.endswith(".base_layer") and not any(f".{part}" in name for part in LORA_TENSORS)]


def lora_targets(model: nn.Module, targets: list[str]) -> list[str]:
    """The full names of the modules ``targets`` name (a name or a name suffix, as peft matches them); a
    target that matches none of the blocks' linear layers is refused."""
    candidates = adaptable_modules(model)
    found = []
    for target in targets:
        matched = [n for n in candidates if n == target or n.endswith("." + target)]
        if not matched:
            leaves = ", ".join(dict.fromkeys(n.rsplit(".", 1)[-1] for n in candidates))
            raise FinetuneError(f"finetune.lora.target_modules: {target!r} matches no linear layer of the decoder's "
                                f"blocks (they are {leaves}, or a full name such as {candidates[0]})")
        found += [n for n in matched if n not in found]
    return found


def lora_config(settings: LoraSettings, target_modules: list[str]):
    return _peft().LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                              target_modules=target_modules, use_rslora=settings.use_rslora,
                              use_dora=settings.use_dora, bias="none")


def add_lora(model: nn.Module, settings: LoraSettings) -> None:
    """Wrap the target layers with peft's LoRA layers, in place (the training loop's ``adapt`` plug point)."""
    targets = lora_targets(model, settings.target_modules)
    _peft().inject_adapter_in_model(lora_config(settings, targets), model, adapter_name=ADAPTER)


def is_lora_parameter(name: str, param=None) -> bool:
    return any(f".{part}." in f".{name}." for part in LORA_TENSORS)


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its base weight (peft's own merge), in place."""
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.merge(adapter_names=[ADAPTER])


def unwrapped_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A merged LoRA-wrapped decoder's weights under the plain decoder's names (adapters left out)."""
    return {name.replace(".base_layer.", "."): value for name, value in model.state_dict().items()
            if not is_lora_parameter(name)}


def hf_adapter_tensors(model: nn.Module, dims: ModelDims) -> dict[str, torch.Tensor]:
    """The adapter tensors of a LoRA-wrapped decoder under the names peft saves for the HF export
    (``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``), fused layers split by rows."""
    out = {}
    for name, param in model.named_parameters():
        if not is_lora_parameter(name):
            continue
        module, tensor_name = name.split(f".{ADAPTER}")[0].rsplit(".", 1)  # layers.0.attn.qkv_proj, lora_B
        suffix = name.split(f".{ADAPTER}", 1)[1]  # ".weight" (peft saves DoRA's magnitude as ``.weight`` too)
        parts = parts_of(module + ".weight", dims) or [(module + ".weight", param.shape[0])]
        start = 0
        for part, rows in parts:
            hf_module = hf_name(part).removesuffix(".weight")
            if tensor_name == "lora_A":
                value = param.detach()
            else:  # lora_B (out, r) and the magnitude (out,): the part's rows
                value, start = param.detach()[start:start + rows], start + rows
            out[f"base_model.model.{hf_module}.{tensor_name}{suffix}"] = value.contiguous().clone()
    return out


def save_hf_adapter(model: nn.Module, dims: ModelDims, settings: LoraSettings, targets: list[str], output: Path,
                    base: str | None = None) -> Path:
    """Write the adapter in peft's format for the HF export: ``adapter_config.json`` +
    ``adapter_model.safetensors``, loadable with ``peft.PeftModel.from_pretrained(hf_model, output)``."""
    hf_targets = [hf_name(part).removesuffix(".weight") for module in targets
                  for part, _ in (parts_of(module + ".weight", dims) or [(module + ".weight", 0)])]
    config = lora_config(settings, hf_targets)
    config.base_model_name_or_path = base
    config.task_type = "CAUSAL_LM"
    tensors = hf_adapter_tensors(model, dims)
    with atomic_dir(output) as tmp:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        config.save_pretrained(str(tmp))
    return output
