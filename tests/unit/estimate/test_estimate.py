"""The estimator's compute, parallel layouts, micro-batch planning and the `lmforge estimate` command."""

import json

import pytest
import torch

from conftest import run_cli
from lmforge.errors import RecipeError
from lmforge.estimate.compute import estimate_compute
from lmforge.estimate.memory import GIB, estimate_memory
from lmforge.distributed.layout import Layout
from lmforge.estimate.parallel import resolve_parallel
from lmforge.model.config import ModelConfig
from lmforge.model.decoder import training_flops_per_token
from lmforge.train.config import TrainConfig
from lmforge.train.memory import _estimate, is_out_of_memory, out_of_memory_error, plan_micro_batch

TINY = ModelConfig(size="tiny").dims(4096)
CPU = torch.device("cpu")


def test_compute_is_6n_plus_attention_and_step_time_follows_peak_and_mfu():
    c = estimate_compute(TINY, seq_len=256, batch_size=16, peak_flops=100e12, mfu=0.5, devices=2)
    matmul = c.parameters - (2 * TINY.n_layers + 1) * TINY.d_model  # tied: the head is the embedding
    assert c.flops_per_token == 6 * matmul + 12 * 6 * 256 * 256 == training_flops_per_token(TINY, 256)
    assert c.step_seconds == pytest.approx(16 * 256 * c.flops_per_token / (100e12 * 0.5 * 2))
    assert c.tokens_per_second == pytest.approx(16 * 256 / c.step_seconds)
    assert estimate_compute(TINY, seq_len=256, batch_size=16, peak_flops=None, mfu=0.5).step_seconds is None


def test_sharding_divides_model_states_and_tensor_parallel_divides_activations():
    base = estimate_memory(TINY, micro_batch=4, seq_len=256, device="cuda")
    fsdp = estimate_memory(TINY, micro_batch=4, seq_len=256, device="cuda", parallel=Layout(dp_shard=4))
    assert fsdp.weights == pytest.approx(base.weights / 4, rel=1e-3)
    assert fsdp.optimizer_state == pytest.approx(base.optimizer_state / 4, rel=1e-3)
    assert fsdp.activations == base.activations
    tp = estimate_memory(TINY, micro_batch=4, seq_len=256, device="cuda", parallel=Layout(tp=2))
    assert base.weights / 2 < tp.weights < base.weights and tp.activations < 0.75 * base.activations
    ddp = estimate_memory(TINY, micro_batch=4, seq_len=256, device="cuda", parallel=Layout(dp_replicate=2))
    assert ddp.overhead - base.overhead == base.gradients  # DDP's gradient buckets
    mixed = estimate_memory(TINY, micro_batch=4, seq_len=256, precision="bf16", device="cuda")
    assert mixed.weights == base.weights and mixed.device_total > mixed.peak


@pytest.mark.parametrize("kwargs, message", [
    (dict(tp=3, world_size=8), "tp=3 does not divide the world size 8"),
    (dict(dp=2, fsdp=2, tp=1, world_size=8), "dp * fsdp * tp = 2*2*1 = 4 does not match the world size 8"),
    (dict(tp=8), "tp=8 does not divide model.n_kv_heads (4)"),
    (dict(fsdp=3), "train.batch_size: 16 sequences cannot be split evenly over 3 data-parallel ranks"),
    (dict(fsdp=0), "fsdp: must be at least 1"),
])
def test_impossible_layouts_are_rejected_with_the_reason(kwargs, message):
    with pytest.raises(RecipeError, match=message.replace("*", r"\*").replace("(", r"\(").replace(")", r"\)")):
        resolve_parallel(TINY, 16, **kwargs)
    assert resolve_parallel(TINY, 16, fsdp=2, tp=2, world_size=8) == Layout(dp_replicate=2, dp_shard=2, tp=2)


def test_auto_micro_batch_is_the_largest_divisor_that_fits():
    cfg = TrainConfig(batch_size=8, micro_batch_size="auto")
    fits_two = _estimate(cfg, TINY, 256, 2, 4, CPU, Layout()).device_total
    cfg = cfg.model_copy(update={"memory_limit_gb": (fits_two + 1) / GIB})
    assert plan_micro_batch(cfg, TINY, 256, Layout(), CPU) == 2
    roomy = cfg.model_copy(update={"memory_limit_gb": 64.0})
    assert plan_micro_batch(roomy, TINY, 256, Layout(), CPU) == 8
    fixed = roomy.model_copy(update={"micro_batch_size": 4})
    assert plan_micro_batch(fixed, TINY, 256, Layout(), CPU) == 4


def test_memory_that_cannot_fit_one_sequence_is_refused_before_any_work():
    cfg = TrainConfig(batch_size=8, memory_limit_gb=0.05)
    with pytest.raises(RecipeError, match="even one sequence of 256 tokens per micro-batch needs about"):
        plan_micro_batch(cfg, TINY, 256, Layout(), CPU)


def test_out_of_memory_becomes_one_line_with_a_suggestion():
    with pytest.raises(RuntimeError) as failed:  # the CPU allocator's own failure: 2**60 bytes exceed any machine
        torch.empty(2**60, dtype=torch.uint8)
    assert is_out_of_memory(failed.value), failed.value
    with pytest.raises(MemoryError) as failed:
        bytearray(2**60)
    assert is_out_of_memory(failed.value)
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory")) and not is_out_of_memory(ValueError())
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    err = out_of_memory_error(TrainConfig(batch_size=16), TINY, 256, 16, Layout(), CPU)
    text = str(err)
    assert "\n" not in text and "out of memory on cpu at micro-batch 16 x 256 tokens" in text
    assert "try train.micro_batch_size=8" in text and "train.activation_checkpointing=true" in text


def test_estimate_command_table_and_json(tmp_path):
    code, out, err = run_cli("estimate", "debug", "--gpu", "H100", "--device-memory-gb", "80")
    assert code == 0, err
    for text in ("training FLOPs per token", "optimizer state", "activations, checkpointing on", "fp16",
                 "step time at", "micro-batch up to"):
        assert text in out
    code, out, err = run_cli("estimate", "debug", "--json", "--set", "train.optimizer=muon", "--fsdp", "2",
                             "--set", "train.precision=bf16", "--device", "cuda", "--device-memory-gb", "16")
    assert code == 0, err
    report = json.loads(out)
    assert report["optimizer"] == "muon" and report["parallel"]["fsdp"] == 2 and report["device"] == "cuda"
    assert set(report["memory"]) == {"fp32", "bf16", "fp16"}
    on, off = report["memory"]["bf16"]["on"], report["memory"]["bf16"]["off"]
    assert on["activations"] < off["activations"] and on["weights"] == off["weights"]
    assert report["fit"]["largest"] >= report["fit"]["largest_divisor"] >= 1


@pytest.mark.parametrize("args, expected", [
    (["--set", "parallel.tp=2", "--set", "parallel.dp_replicate=1"], {"dp": 1, "fsdp": 1, "tp": 2, "world_size": 2}),
    (["--world-size", "4", "--set", "parallel.dp_replicate=1", "--set", "parallel.dp_shard=auto"],
     {"dp": 1, "fsdp": 4, "tp": 1, "world_size": 4}),
    (["--world-size", "4"], {"dp": 4, "fsdp": 1, "tp": 1, "world_size": 4}),  # default: DDP over all
    (["--set", "parallel.tp=2", "--tp", "1"], {"dp": 1, "fsdp": 1, "tp": 1, "world_size": 1}),  # the flag wins
])
def test_estimate_takes_the_recipes_parallel_section(args, expected):
    code, out, err = run_cli("estimate", "debug", "--json", *args)
    assert code == 0, err
    assert json.loads(out)["parallel"] == expected


def test_estimate_reads_the_vocabulary_of_the_runs_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models

    run_dir = tmp_path / "run"
    (run_dir / "tokenizer").mkdir(parents=True)
    Tokenizer(models.WordLevel({f"w{i}": i for i in range(300)}, unk_token="w0")).save(
        str(run_dir / "tokenizer" / "tokenizer.json"))
    code, out, err = run_cli("estimate", "debug", "--run-dir", str(run_dir), "--json")
    assert code == 0, err
    assert json.loads(out)["model"]["vocab_size"] == 300


@pytest.mark.parametrize("args, message", [
    (["--device-memory-gb", "0.01", "--set", "model.size=tiny"], "even one sequence of 64 tokens"),
    (["--tp", "3", "--world-size", "8"], "tp=3 does not divide the world size 8"),
    (["--set", "model.n_heads=3"], "n_heads (3) must divide d_model (64)"),
    (["--mfu", "1.5"], "--mfu: must be in (0, 1]"),
    (["--gpu", "Z80"], "not in the peak FLOP/s table"),
    (["--set", "train.seq_len=4096"], "exceeds the model context length"),
    (["--device-memory-gb", "inf"], "'--device-memory-gb': inf is not in the range"),
    (["--mfu", "nan"], "--mfu: must be in (0, 1], got nan"),
    (["--set", "train.memory_limit_gb=inf"], "train.memory_limit_gb: Input should be a finite number"),
])
def test_bad_estimate_inputs_are_one_line_errors(args, message):
    code, _, err = run_cli("estimate", "debug", *args)
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
