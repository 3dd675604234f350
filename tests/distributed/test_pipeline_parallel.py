"""Pipeline parallelism (``parallel.pp``) on CPU with gloo: each schedule on 2 processes, PP x FSDP2 and PP x TP
on 4, against one process step for step (loss and gradient norm within 1e-5, validation too); checkpoints that
reshard both ways (a single process's checkpoint resumed as PP 2 x TP 2, a PP 2 checkpoint resumed on one
process) and export like any other.

The interleaved schedules need 4 blocks for 2 processes x 2 virtual stages: those runs, and their single-process
reference, use a 4-block model at a lower learning rate (at the debug recipe's, a spike at step 8 makes the
gradient norm differ by 4e-4 between one micro-batch and two in ONE process: summation order, not the pipeline).
"""

import json

import pytest
import torch

from conftest import run_cli
from lmforge.checkpoint.load import consolidated_weights
from lmforge.checkpoint.sharded import DCP_FORMAT
from lmforge.rundir import RunDir
from parallel_support import assert_losses_match, job, run_jobs, settings
from test_parallel import ONE_PROCESS, copy_run, resumed_checkpoints

pytestmark = pytest.mark.distributed

PP = ("parallel.pp=2",)
FOUR_BLOCKS = ("model.n_layers=4", "train.lr=1e-3")
TWO_PROCESS_MODES = {
    "1f1b": PP,
    "gpipe": (*PP, "parallel.pp_schedule=gpipe", "parallel.pp_microbatches=4"),
    "interleaved_1f1b": (*PP, *FOUR_BLOCKS, "parallel.pp_schedule=interleaved_1f1b"),
    "zero_bubble": (*PP, *FOUR_BLOCKS, "parallel.pp_schedule=zero_bubble", "parallel.pp_microbatches=4"),
}
PP_TP = (*PP, "parallel.dp_replicate=1", "parallel.tp=2")
FOUR_PROCESS_MODES = {
    "pp_fsdp": (*PP, "parallel.dp_replicate=1", "parallel.dp_shard=2"),
    "pp_tp": PP_TP,
}


@pytest.fixture(scope="module")
def four_block_reference(debug_data_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("pp_reference") / "run"
    import shutil

    shutil.copytree(debug_data_run, root)
    code, _, err = run_cli("train", "--run-dir", str(root), *settings(*FOUR_BLOCKS))
    assert code == 0, err
    return root


@pytest.fixture(scope="module")
def pipeline_runs(debug_data_run, parallel_reference, tmp_path_factory):
    root = tmp_path_factory.mktemp("pp")
    run_jobs(2, [job(copy_run(debug_data_run, root / name), *extra) for name, extra in TWO_PROCESS_MODES.items()], root)
    run_jobs(4, [
        *[job(copy_run(debug_data_run, root / name), *extra) for name, extra in FOUR_PROCESS_MODES.items()],
        # the single process's safetensors checkpoint at step 5, resumed as PP 2 x TP 2
        job(copy_run(parallel_reference, root / "single_to_pp_tp", keep_through_step=5), *PP_TP, resume=True),
    ], root)
    return root


@pytest.mark.parametrize("mode", ["1f1b", "gpipe", "pp_fsdp", "pp_tp"])
def test_pipeline_matches_one_process(pipeline_runs, parallel_reference, mode):
    assert_losses_match(pipeline_runs / mode, parallel_reference)
    assert_validation_matches(pipeline_runs / mode, parallel_reference)


@pytest.mark.parametrize("mode", ["interleaved_1f1b", "zero_bubble"])
def test_interleaved_schedules_match_one_process(pipeline_runs, four_block_reference, mode):
    assert_losses_match(pipeline_runs / mode, four_block_reference)
    assert_validation_matches(pipeline_runs / mode, four_block_reference)


def assert_validation_matches(run, reference, tol=1e-5):
    def evals(d):
        return [(r["step"], r["val_loss"]) for r in map(json.loads, (d / "train" / "metrics.jsonl").open())
                if r["kind"] == "eval"]

    got, want = evals(run), evals(reference)
    assert [s for s, _ in got] == [s for s, _ in want] == [0, 5, 10]
    assert all(abs(a - b) <= tol for (_, a), (_, b) in zip(got, want)), (got, want)


def test_pipeline_writes_sharded_checkpoints_that_export_like_any_other(pipeline_runs, parallel_reference, tmp_path):
    ckpt = RunDir(pipeline_runs / "1f1b").checkpoint(10)
    state = json.loads((ckpt / "state.json").read_text())
    assert state["format"] == DCP_FORMAT and state["layout"] == {"dp_replicate": 1, "dp_shard": 1, "tp": 1, "pp": 2}
    assert sorted(state["files"]) == [f"shard-0000{r}-model-00001-of-00001.safetensors" for r in (1, 2)]
    exported = {}
    for name, run in (("pp", pipeline_runs / "1f1b"), ("single", parallel_reference)):
        out = tmp_path / f"{name}.safetensors"
        code, _, err = run_cli("export", "--run-dir", str(run), "--output", str(out))
        assert code == 0, err
        from safetensors.torch import load_file

        exported[name] = load_file(str(out))
    assert exported["pp"].keys() == exported["single"].keys()
    for key in exported["pp"]:
        torch.testing.assert_close(exported["pp"][key], exported["single"][key], atol=1e-5, rtol=0)
    weights, _ = consolidated_weights(ckpt, optimizer=True)  # every stage's tensors, the tied table once
    assert "model.embed_tokens.weight" in weights and not any(k.startswith("model.lm_head") for k in weights)


def test_single_process_checkpoint_resumes_as_pp_x_tp(pipeline_runs, parallel_reference):
    assert_losses_match(pipeline_runs / "single_to_pp_tp", parallel_reference)


def test_pipeline_checkpoint_resumes_on_one_process(pipeline_runs, parallel_reference, tmp_path):
    run = copy_run(pipeline_runs / "1f1b", tmp_path / "run", keep_through_step=5)
    code, _, err = run_cli("train", "--run-dir", str(run), "--resume", *ONE_PROCESS)
    assert code == 0, err
    assert [(s, f) for s, f, _ in resumed_checkpoints(run, pipeline_runs / "1f1b")] == [(5, DCP_FORMAT),
                                                                                       (10, "safetensors")]
    assert_losses_match(run, parallel_reference)


MEMORY_CASES = [  # the tiny model (6 blocks), 8 x 128 tokens per step
    {"parallel": {"pp": 2}, "checkpointing": False},
    {"parallel": {"pp": 2, "pp_schedule": "gpipe", "pp_microbatches": 4}, "checkpointing": False},
    {"parallel": {"pp": 2, "pp_schedule": "interleaved_1f1b", "pp_split": "parameters", "pp_microbatches": 4},
     "checkpointing": False},
    {"parallel": {"pp": 2}, "checkpointing": True},
]


def test_estimated_memory_per_stage_is_within_15_percent_of_measured(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    cases = [dict(case, size="tiny", vocab=4096, batch=8, seq=128) for case in MEMORY_CASES]
    spec, out = tmp_path / "cases.json", tmp_path / "measured.json"
    spec.write_text(json.dumps(cases))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(Path(__file__).with_name("pipeline_memory.py")), str(spec), str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for case, ranks in zip(MEMORY_CASES, json.loads(out.read_text())):
        for r in ranks:
            assert abs(r["estimated"] / r["measured"] - 1) <= 0.15, (case, r)
