"""The one small real run the report tests read (built once per test session, shared by their modules): the
debug recipe run end to end, then fine-tuned, merged, compressed, explained and attacked at debug size."""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import run_cli

TEXT = "def add(a, b):\n    return a + b\n\n\ndef scale(x, factor):\n    return"
QUICK_EVAL = ["--set", "eval.tasks=[]", "--set", "eval.max_tokens=2048"]
COMMANDS = [
    ["finetune", "--set", "finetune.max_steps=4"],
    ["merge", "--input", "latest", "--input", "finetuned", "--method", "linear", *QUICK_EVAL],
    ["compress", "--set", "compress.variants=[{name: mag50, method: magnitude, sparsity: 0.5}, {name: q8, method: int8}]",
     "--set", "compress.measure.repeats=2", "--set", "compress.measure.new_tokens=8", "--set",
     "compress.measure.memory=false", *QUICK_EVAL],
    ["explain", "--text", TEXT, "--set", "explain.faithfulness.random_orders=2", "--set", "explain.faithfulness.points=8"],
    ["attack", "--set", "attack.examples=2", "--set", "attack.context_tokens=16", "--set",
     "attack.continuation_tokens=4", "--set",
     "attack.attacks=[{name: fgsm, epsilon: 0.5}, {name: hotflip, max_changed: 0.25, neighbours: 8}]"],
]


def build_report_run(debug_data_run: Path, base_temp: Path) -> Path:
    """The run (built on the first call of the session, then reused): every stage but secure."""
    root = base_temp / "report_run" / "run"
    done = root.parent / "built"
    if done.exists():
        return root
    shutil.rmtree(root.parent, ignore_errors=True)
    shutil.copytree(debug_data_run, root)
    code, _, err = run_cli("run", "debug", "--run-dir", str(root))
    assert code == 0, err
    for command in COMMANDS:
        code, _, err = run_cli(command[0], "--run-dir", str(root), *command[1:])
        assert code == 0, (command[0], err)
    done.touch()
    return root


def light_copy(root: Path, target: Path) -> Path:
    """A copy of the run without its model weights and token shards (what the report never reads)."""
    shutil.copytree(root, target, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "checkpoints"))
    return target
