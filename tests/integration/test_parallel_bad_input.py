"""Parallel layouts that cannot work, and bad launch options: one `error:` line naming the keys, a non-zero
exit, no process started and nothing written (the run directory is left as it was)."""

import pytest

from cli_errors import assert_error_line, snapshot
from conftest import run_cli

pytestmark = pytest.mark.integration

SPLITS = "tensor parallelism splits it evenly over the tp processes"


@pytest.mark.parametrize("args, message", [
    (["--nproc", "2", "--set", "parallel.dp_replicate=1", "--set", "parallel.dp_shard=3"],
     "error: parallel: dp_replicate * dp_shard * tp = 1 * 3 * 1 = 3 does not match the world size 2 "
     "(processes: --nproc x --nnodes)"),
    (["--nproc", "2", "--set", "parallel.dp_shard=4"],
     "error: parallel.dp_shard * parallel.tp = 4 does not divide the world size 2 (processes: --nproc x --nnodes); "
     "parallel.dp_replicate=-1 takes what the others leave"),
    (["--nproc", "4", "--set", "parallel.dp_replicate=1", "--set", "parallel.tp=4"],
     f"error: parallel.tp=4 does not divide model.n_kv_heads (2): {SPLITS}"),
    (["--nproc", "2", "--set", "parallel.dp_replicate=1", "--set", "parallel.tp=2", "--set", "model.ffn_hidden=171"],
     f"error: parallel.tp=2 does not divide model.ffn_hidden (171): {SPLITS}"),
    (["--nproc", "2", "--set", "parallel.dp_replicate=1", "--set", "parallel.tp=2", "--set", "model.d_model=48",
      "--set", "model.n_heads=3", "--set", "model.n_kv_heads=3"],
     f"error: parallel.tp=2 does not divide model.n_heads (3): {SPLITS}"),
    (["--nproc", "3"], "error: train.batch_size: 8 sequences cannot be split evenly over 3 data-parallel ranks "
                       "(parallel.dp_replicate x parallel.dp_shard = 3 x 1)"),
    (["--nproc", "2", "--set", "parallel.dp_replicate=1", "--set", "parallel.dp_shard=2",
      "--set", "train.optimizer=adafactor"],
     "error: train.optimizer=adafactor is not supported with sharded parameters (parallel.dp_shard > 1, "
     "parallel.tp > 1 or parallel.pp > 1); use one of adamw, adam, sgd, rmsprop, lion, or plain data parallelism (parallel.dp_replicate)"),
    # pipeline parallelism (the debug model has 2 blocks)
    (["--nproc", "2", "--set", "parallel.pp=2", "--set", "model.n_layers=3"],
     "error: parallel.pp: 2 pipeline stages (pp x virtual stages) do not divide model.n_layers (3); set "
     "parallel.pp_split to parameters or to a list of blocks per stage"),
    (["--nproc", "2", "--set", "parallel.pp=2", "--set", "parallel.pp_schedule=interleaved_1f1b"],
     "error: parallel.pp: 4 pipeline stages (pp x virtual stages) need at least as many blocks; model.n_layers "
     "is 2"),
    (["--nproc", "2", "--set", "parallel.pp=2", "--set", "parallel.pp_microbatches=1"],
     "error: parallel.pp_microbatches=1: the 1f1b schedule needs at least as many micro-batches as pipeline "
     "stages (parallel.pp=2)"),
    (["--nproc", "2", "--set", "parallel.pp=2", "--set", "parallel.pp_microbatches=3"],
     "error: parallel.pp_microbatches=3 does not divide each data-parallel rank's share of train.batch_size "
     "(8 / 1 = 8 sequences)"),
    (["--nproc", "2", "--set", "parallel.pp=2", "--set", "parallel.pp_split=[2, 1]"],
     "error: parallel.pp_split=[2, 1]: needs 2 positive block counts (parallel.pp x virtual stages) that sum to "
     "model.n_layers (2)"),
    (["--nproc", "2", "--set", "parallel.pp=2", "--set", "parallel.pp_virtual_stages=2"],
     "error: parallel.pp_virtual_stages=2: parallel.pp_schedule=1f1b runs one stage per process; use "
     "interleaved_1f1b or zero_bubble for virtual stages"),
    (["--nproc", "4", "--set", "parallel.pp=2", "--set", "parallel.dp_replicate=1", "--set", "parallel.tp=4"],
     "error: parallel: pp * dp_replicate * dp_shard * tp = 2 * 1 * 1 * 4 = 8 does not match the world size 4 "
     "(processes: --nproc x --nnodes)"),
    (["--nproc", "2", "--set", "parallel.pp=4"],
     "error: parallel.pp * parallel.dp_shard * parallel.tp = 4 does not divide the world size 2 (processes: --nproc x --nnodes); "
     "parallel.dp_replicate=-1 takes what the others leave"),
    (["--nproc", "2", "--set", "parallel.pp=2", "--set", "train.micro_batch_size=2"],
     "error: train.micro_batch_size=2: under pipeline parallelism each batch is split into "
     "parallel.pp_microbatches instead"),
    (["--nproc", "2", "--set", "parallel.pp=2", "--set", "train.adversarial.epsilon=0.1"],
     "error: adversarial training does not run under pipeline parallelism (parallel.pp=2)"),
    (["--nproc", "2", "--nnodes", "2"],
     "error: --nnodes 2: give --rdzv-endpoint HOST:PORT (node 0's address and a free port)"),
    (["--nproc", "2", "--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint", "127.0.0.1:29500"],
     "error: --node-rank 2: must be below --nnodes (2)"),
    (["--nproc", "2", "--nnodes", "2", "--rdzv-endpoint", "127.0.0.1"],
     "error: --rdzv-endpoint 127.0.0.1: expected HOST:PORT"),
])
def test_impossible_layout_is_refused_before_anything_runs(data_run, args, message):
    before = snapshot(data_run)
    code, _, err = run_cli("train", "--run-dir", str(data_run), *args)
    assert_error_line(code, err, message)
    assert snapshot(data_run) == before


def test_run_refuses_bad_degrees_before_the_data_stage(tmp_path):
    root = tmp_path / "run"
    code, _, err = run_cli("run", "debug", "--run-dir", str(root), "--nproc", "2", "--set", "parallel.tp=3")
    assert_error_line(code, err, "error: parallel.dp_shard * parallel.tp = 3 does not divide the world size 2 "
                                 "(processes: --nproc x --nnodes); parallel.dp_replicate=-1 takes what the others "
                                 "leave")
    assert not root.exists()
