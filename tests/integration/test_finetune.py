"""``lmforge finetune`` end to end on the debug recipe: a base trained 10 steps, fine-tuned 10 steps fully
and with LoRA (losses below the base's; checkpoints, metrics, summary and the peft adapter under finetune/;
the adapter on the HF export gives the fine-tuned model's logits), resumed bit-identically, and bad input
refused in one line with nothing written; the same for objective sft (prompt -> completion records)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from cli_errors import assert_error_line, snapshot
from conftest import run_cli, temporaries
from lmforge.checkpoint.load import checkpoint_dims, load_checkpoint, load_model
from lmforge.core.metrics import read_metrics
from lmforge.model.decoder import Decoder
from lmforge.rundir import RunDir
from lmforge.transfer.config import LoraSettings
from lmforge.transfer.lora import add_lora
from lmforge.transfer.stage import FinetuneRunDir

pytestmark = pytest.mark.integration

FAST = ["--set", "finetune.max_steps=10", "--set", "train.eval_every=5", "--set", "train.checkpoint_every=5",
        "--set", "train.keep_checkpoints=3"]
LORA = ["--set", "finetune.mode=lora", "--set", "finetune.lr=1e-2", "--set", "finetune.warmup_steps=3",
        "--set", "finetune.lora.rank=16", "--set", "finetune.lora.alpha=32"]


@pytest.fixture
def trained(trained_base) -> Path:
    return trained_base


def copy_of(trained: Path, tmp_path: Path) -> Path:
    shutil.copytree(trained, tmp_path / "run")
    return tmp_path / "run"


def finetune_losses(root: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(root / "finetune" / "metrics.jsonl") if r["kind"] == "train"]


def test_full_finetuning_lowers_the_loss_and_resumes_bit_identically(trained, tmp_path):
    root = copy_of(trained, tmp_path)
    code, out, err = run_cli("finetune", "--run-dir", str(root), "--set", "finetune.lr=3e-3", *FAST)
    assert code == 0, err
    summary = json.loads((root / "finetune" / "summary.json").read_text())
    assert summary["mode"] == "full" and summary["steps"] == 10 and summary["trainable_share"] == 1.0
    assert summary["base"] == str((root / "train" / "checkpoints" / "step_00000010").absolute())
    assert summary["final_val_loss"] < summary["base_val_loss"] - 0.1
    assert [s for s, _ in RunDir(root).list_checkpoints()] == [10]  # pretraining's checkpoints are untouched
    ft = FinetuneRunDir(RunDir(root))
    assert [s for s, _ in ft.list_checkpoints()] == [5, 10]
    assert sorted(p.name for p in ft.checkpoint(10).iterdir()) == ["model.safetensors", "optimizer.safetensors",
                                                                   "state.json"]
    expected = finetune_losses(root)
    assert [s for s, _ in expected] == list(range(1, 11))

    code, _, err = run_cli("finetune", "--run-dir", str(root), *FAST)  # again without --resume: refused
    assert_error_line(code, err, f"error: {root / 'finetune'} already holds fine-tuning checkpoints (latest: step "
                                 "10); pass --resume to continue, or --redo to fine-tune over")

    code, _, err = run_cli("finetune", "--run-dir", str(root), "--redo", "--set", "finetune.mode=frozen")
    assert code == 2 and (root / "finetune" / "summary.json").exists()  # refused (freezes nothing): nothing removed

    shutil.rmtree(ft.checkpoint(10))  # interrupted after step 5's checkpoint
    code, _, err = run_cli("finetune", "--run-dir", str(root), "--set", "finetune.lr=3e-3", "--resume", *FAST)
    assert code == 0, err
    assert finetune_losses(root) == expected  # bit-identical floats, every step
    assert temporaries(root) == []


def test_lora_finetuning_lowers_the_loss_and_its_adapter_loads_onto_the_hf_export(trained, tmp_path):
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    root = copy_of(trained, tmp_path)
    code, _, err = run_cli("finetune", "--run-dir", str(root), *FAST, *LORA)
    assert code == 0, err
    summary = json.loads((root / "finetune" / "summary.json").read_text())
    assert summary["mode"] == "lora" and summary["adapter"] == "finetune/adapter"
    assert 0 < summary["trainable_share"] < 0.25
    assert summary["final_val_loss"] < summary["base_val_loss"] - 0.005  # deterministic: the same windows
    adapter = root / "finetune" / "adapter"
    assert sorted(p.name for p in adapter.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]

    base = root / "train" / "checkpoints" / "step_00000010"
    code, _, err = run_cli("export", "--run-dir", str(root), "--checkpoint", str(base), "--format", "hf",
                           "--output", str(tmp_path / "hf"))
    assert code == 0, err
    ft = FinetuneRunDir(RunDir(root))
    ours = Decoder(checkpoint_dims(ft.checkpoint(10)))
    add_lora(ours, LoraSettings(rank=16, alpha=32))
    load_checkpoint(ft.checkpoint(10), ours, restore_rng_state=False)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True)
    theirs = peft.PeftModel.from_pretrained(hf, adapter).eval()
    ids = torch.randint(0, 512, (2, 48), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = ours.eval()(ids)
        diff = (logits - theirs(input_ids=ids).logits).abs().max().item()
        moved = (logits - load_model(base).model(ids)).abs().max().item()
    assert moved > 1e-3 and diff < 1e-5, (moved, diff)


@pytest.mark.parametrize("settings, line", [
    (["--set", "finetune.mode=lora", "--set", "finetune.lora.target_modules=[q_proj]"],
     "error: finetune.lora.target_modules: 'q_proj' matches no linear layer of the decoder's blocks (they are "
     "qkv_proj, out_proj, gate_up_proj, down_proj, or a full name such as layers.0.attn.qkv_proj)"),
    (["--set", "finetune.mode=frozen", "--set", "finetune.frozen.patterns=[encoder.*]"],
     "error: finetune.frozen.patterns: 'encoder.*' matches no parameter of the base (names such as "
     "layers.0.attn_norm.weight)"),
    (["--set", "finetune.mode=adapters"],
     "error: recipe RUN/recipe.yaml: finetune.mode: Input should be 'full', 'frozen' or 'lora' (got 'adapters')"),
])
def test_bad_settings_are_one_line_and_write_nothing(trained, tmp_path, settings, line):
    root = copy_of(trained, tmp_path)
    before = snapshot(root)
    code, _, err = run_cli("finetune", "--run-dir", str(root), *settings)
    assert_error_line(code, err, line.replace("RUN", str(root)))
    assert snapshot(root) == before


def test_a_base_of_another_vocabulary_is_one_line_and_writes_nothing(trained, tmp_path):
    sys.path.insert(0, str(Path(__file__).parents[1] / "unit" / "checkpoint"))
    from hf_models import lmforge_dims, lmforge_run

    other, _ = lmforge_run(tmp_path / "other", lmforge_dims(True, 4, 2, 2, 97))
    root = copy_of(trained, tmp_path)
    before = snapshot(root)
    code, _, err = run_cli("finetune", "--run-dir", str(root), "--base", str(other))
    assert_error_line(code, err, f"error: finetune.base {other.absolute()}: a model of vocabulary 97, but its "
                                 f"tokenizer {(tmp_path / 'other' / 'tokenizer' / 'tokenizer.json').absolute()} has "
                                 "257 tokens")
    assert snapshot(root) == before


SFT = ["--set", "finetune.objective=sft", "--set", "finetune.val_fraction=0.2"]


def sft_records(path: Path, n: int = 60) -> Path:
    """Prompt -> completion records the base has never seen: sums, answered in one fixed form."""
    with path.open("w") as f:
        for i in range(n):
            a, b = (7 * i) % 23, (5 * i + 3) % 19
            f.write(json.dumps({"prompt": f"# what is {a} + {b}?\n", "completion": f"answer = {a + b}  # done"}) + "\n")
    return path


def sft_evals(root: Path) -> list[tuple[int, float]]:
    records = read_metrics(root / "finetune" / "metrics.jsonl")
    return [(r["step"], r["val_loss"]) for r in records if r["kind"] == "eval"]


@pytest.mark.parametrize("mode", [[], LORA], ids=["full", "lora"])
def test_sft_lowers_the_completion_loss_and_resumes_bit_identically(trained, tmp_path, mode):
    root = copy_of(trained, tmp_path)
    data = sft_records(tmp_path / "sft.jsonl")
    args = ["finetune", "--run-dir", str(root), *FAST, *SFT, "--set", f"finetune.data={data}", *mode]
    code, _, err = run_cli(*args)
    assert code == 0, err
    summary = json.loads((root / "finetune" / "summary.json").read_text())
    assert (summary["objective"], summary["train_records"], summary["val_records"]) == ("sft", 48, 12)
    assert summary["data"] == str(data) and summary["steps"] == 10
    evals = sft_evals(root)
    assert [s for s, _ in evals] == [0, 5, 10] and evals[0][1] == summary["base_val_loss"]
    drop = 0.15 if mode else 0.5  # measured on CPU (held-out / training): full 0.79 / 0.59, lora 0.34 / 0.20
    assert summary["final_val_loss"] < summary["base_val_loss"] - drop, evals  # held-out completions
    losses = [loss for _, loss in finetune_losses(root)]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - drop, losses
    if mode:
        assert 0 < summary["trainable_share"] < 0.25 and (root / "finetune" / "adapter").is_dir()
        return
    expected = finetune_losses(root)
    shutil.rmtree(FinetuneRunDir(RunDir(root)).checkpoint(10))  # interrupted after step 5's checkpoint
    code, _, err = run_cli(*args, "--resume")
    assert code == 0, err
    assert finetune_losses(root) == expected and sft_evals(root) == evals  # bit-identical floats
    assert temporaries(root) == []


@pytest.mark.parametrize("lines, line", [
    (['{"prompt": "a"}'], "error: DATA:1: no 'completion' field (finetune.completion_field)"),
    (['{"prompt": "a", "completion": "b"}', '{"prompt": 1, "completion": "b"}'],
     "error: DATA:2: field 'prompt' is int, not a string"),
    ([], "error: finetune.data DATA: no records"),
    (['{"prompt": "a", "completion": "b"', '{"prompt": "a", "completion": "b"}'], "error: DATA:1: invalid JSON"),
    (None, "error: finetune.objective=sft needs finetune.data: a JSONL file of records with 'prompt' and "
           "'completion' string fields"),
    (["causal_lm"], "error: finetune.data is read by objective sft only (finetune.objective=sft); objective causal_lm "
                    "trains on token shards (the run's, or finetune.sources')"),
])
def test_bad_sft_records_are_one_line_and_write_nothing(trained, tmp_path, lines, line):
    root = copy_of(trained, tmp_path)
    data = tmp_path / "sft.jsonl"
    settings = SFT
    if lines == ["causal_lm"]:
        settings = ["--set", f"finetune.data={sft_records(data)}"]
    elif lines is not None:
        data.write_text("".join(f"{x}\n" for x in lines))
        settings = [*SFT, "--set", f"finetune.data={data}"]
    before = snapshot(root)
    code, _, err = run_cli("finetune", "--run-dir", str(root), *settings)
    assert_error_line(code, err, line.replace("DATA", str(data)))
    assert snapshot(root) == before
