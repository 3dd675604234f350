"""Launching through torchrun, as a user does: an elastic restart after a worker is killed with SIGKILL,
two torchrun agents on 127.0.0.1 forming one 4-process job (multi-node rendezvous), and the prepared GPU
check's dry run on CPU."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import lmforge_process, train_losses
from parallel_support import assert_losses_match, settings

pytestmark = pytest.mark.distributed
REPO = Path(__file__).resolve().parents[2]


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:  # field 4: the parent's pid
                found.append(int(entry.name))
    return found


def torchrun_workers(launcher_pid: int) -> list[int]:
    """The worker processes of the torchrun agent that ``lmforge train --nproc N`` started."""
    agents = children(launcher_pid)
    return [w for agent in agents for w in children(agent)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("layout", [("parallel.dp_replicate=1", "parallel.dp_shard=2"), ("parallel.pp=2",)],
                         ids=["fsdp", "pipeline"])  # under PP, the process of the last stage is killed
def test_killed_worker_is_restarted_and_resumes(debug_data_run, parallel_reference, tmp_path, layout):
    run = tmp_path / "run"
    shutil.copytree(debug_data_run, run)
    proc = lmforge_process("train", "--run-dir", str(run), "--nproc", "2", "--max-restarts", "1",
                           *settings(*layout, "train.checkpoint_every=2"))
    deadline = time.monotonic() + 300
    victims = []
    while len(victims) < 2:  # found before the kill point, so that the kill itself is immediate
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        victims = torchrun_workers(proc.pid)
    while not any(step >= 3 for step, _ in train_losses(run)):  # after the checkpoint of step 2
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before the kill point"
        time.sleep(0.01)
    killed_at = max(step for step, _ in train_losses(run))
    cmdline = Path(f"/proc/{victims[1]}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    os.kill(victims[1], signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "--worker" in cmdline and killed_at < 10, (killed_at, cmdline)
    resumed = re.search(r"resuming from .*?\(step (\d+)\)", err, re.DOTALL)  # (the console wraps long paths)
    assert resumed, err[-3000:]  # the restarted group resumed from the latest checkpoint
    assert int(resumed.group(1)) in (2, 4, 6, 8) and int(resumed.group(1)) <= killed_at + 1
    assert_losses_match(run, parallel_reference)  # and the curve is the uninterrupted run's


def test_two_agents_on_loopback_form_one_job(debug_data_run, parallel_reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(debug_data_run, run)
    endpoint = f"127.0.0.1:{free_port()}"
    # tensor parallel inside each "node", replicas across the two: 4 processes in all
    layout = settings("parallel.dp_replicate=2", "parallel.tp=2")
    nodes = [lmforge_process("train", "--run-dir", str(run), "--nproc", "2", "--nnodes", "2", "--node-rank", str(rank),
                             "--rdzv-endpoint", endpoint, *layout) for rank in (0, 1)]
    results = [node.communicate(timeout=400) for node in nodes]
    for node, (_, err) in zip(nodes, results):
        assert node.returncode == 0, err[-3000:]
    assert "HSDP replicas x2 . TP x2 (4 processes)" in results[0][1].replace("\n", " ")
    assert_losses_match(run, parallel_reference)
    assert len(list((run / "train" / "checkpoints" / "step_00000010").glob("shard-*.safetensors"))) >= 2


@pytest.mark.parametrize("extra, layout", [((), "FSDP2 x2 (2 processes)"), (("--pp", "2"), "PP x2 (2 processes)")])
def test_gpu_check_dry_run_on_cpu(extra, layout):
    env = dict(os.environ, NGPU="2", PYTHON=sys.executable)
    done = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--dry-run", *extra], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("gpu_check:")]
    assert f"{layout} on cpu (dry run), bf16" in lines[0]
    assert "tokens/s" in lines[-1] and "MFU n/a" in lines[-1]
