"""Shared fixtures: run the CLI in-process or as a real subprocess, and a prepared debug run directory."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmforge.cli import main


def run_cli(*args: str) -> tuple[int, str, str]:
    """Run ``lmforge ARGS`` in this process; returns (exit code, stdout, stderr)."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main([*args, "--quiet"] if args and not args[0].startswith("-") else list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def lmforge_process(*args: str, cwd: Path | None = None, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "lmforge", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def lmforge_run(*args: str, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    proc = lmforge_process(*args, **kwargs)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="session")
def debug_data_run(tmp_path_factory) -> Path:
    """A run directory of the debug recipe with its data stages done (curate, tokenizer, pack)."""
    root = tmp_path_factory.mktemp("prepared") / "debug"
    code, out, err = run_cli("data", "debug", "--run-dir", str(root))
    assert code == 0, err
    return root


@pytest.fixture(scope="session")
def trained_base(debug_data_run, tmp_path_factory) -> Path:
    """The debug run trained 10 steps: the base every fine-tuning test starts from (copy it before use)."""
    root = tmp_path_factory.mktemp("finetune") / "base"
    shutil.copytree(debug_data_run, root)
    code, _, err = run_cli("train", "--run-dir", str(root), "--set", "train.max_steps=10")
    assert code == 0, err
    return root


@pytest.fixture
def data_run(debug_data_run, tmp_path) -> Path:
    """A private copy of the prepared debug run directory."""
    target = tmp_path / "run"
    shutil.copytree(debug_data_run, target)
    return target


# the single-process run every parallel layout is compared with: the debug model, 10 updates of 8 x 64 tokens,
# gradients clipped at every step (norms are 0.7-1.1), so that clipping by the global norm is tested too
PARALLEL_BASE = ["train.max_steps=10", "train.batch_size=8", "train.eval_every=5", "train.checkpoint_every=5",
                 "train.keep_checkpoints=3", "train.grad_clip=0.5"]


def _single_process_run(debug_data_run: Path, folder: Path, *extra: str) -> Path:
    root = folder / "run"
    shutil.copytree(debug_data_run, root)
    overrides = [arg for assignment in (*PARALLEL_BASE, *extra) for arg in ("--set", assignment)]
    code, _, err = run_cli("train", "--run-dir", str(root), *overrides)
    assert code == 0, err
    return root


@pytest.fixture(scope="session")
def parallel_reference(debug_data_run, tmp_path_factory) -> Path:
    """The uninterrupted single-process run of PARALLEL_BASE (safetensors checkpoints at steps 5 and 10)."""
    return _single_process_run(debug_data_run, tmp_path_factory.mktemp("reference"))


@pytest.fixture(scope="session")
def parallel_reference_bf16(debug_data_run, tmp_path_factory) -> Path:
    """The same single-process run in bf16 autocast (``train.precision=bf16``): the reference of the bf16
    sharded modes."""
    return _single_process_run(debug_data_run, tmp_path_factory.mktemp("reference_bf16"), "train.precision=bf16")


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp-" in p.name]


def train_losses(run_dir: Path) -> list[tuple[int, float]]:
    """(step, loss) of every training step in a run's metrics.jsonl."""
    from lmforge.core.metrics import read_metrics

    return [(r["step"], r["loss"]) for r in read_metrics(run_dir / "train" / "metrics.jsonl") if r["kind"] == "train"]


def kill_when(proc: subprocess.Popen, condition, timeout: float = 300.0) -> None:
    """SIGKILL ``proc`` as soon as ``condition()`` holds; fail if the process ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the process ended before the kill point: {proc.stderr.read()}")
        if condition():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        time.sleep(0.0005)
    proc.kill()
    raise AssertionError("kill point never reached")


def uninterrupted_losses(data_run: Path, reference: Path, settings: list[str], steps: int) -> list[tuple[int, float]]:
    """Train a copy of ``data_run`` at ``reference`` without interruption; its (step, loss) for every step."""
    shutil.copytree(data_run, reference)
    done = lmforge_run("train", "--run-dir", str(reference), *settings)
    assert done.returncode == 0, done.stderr
    expected = train_losses(reference)
    assert [s for s, _ in expected] == list(range(1, steps + 1))
    return expected


def assert_resumes_bit_identically(run_dir: Path, settings: list[str], expected: list[tuple[int, float]]) -> None:
    """``--resume`` an interrupted run to its end: every step's loss equals the uninterrupted run's, bit for bit,
    and no temporary file is left."""
    final = lmforge_run("train", "--run-dir", str(run_dir), "--resume", *settings)
    assert final.returncode == 0, final.stderr
    assert "resuming from" in final.stderr
    assert train_losses(run_dir) == expected  # bit-identical floats, every step
    assert temporaries(run_dir) == []
