"""Peak memory of inference with a model, measured in a fresh process: it loads the model through the one loader
and greedily generates, then reports its peak resident set size (``ru_maxrss``); the same process without the
model (torch and lmforge imported, nothing loaded) is the baseline subtracted. A fresh process per model because
a process's peak never comes down: models measured one after another in one process would hide each other."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import json, resource, sys
import torch
from lmforge.checkpoint.load import load_model
from lmforge.model.generate import generate
path, prompt, new = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
if path != "-":
    generate(load_model(path).model, prompt, new, temperature=0.0)
print(json.dumps({"peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def _peak_kib(path: str, prompt: list[int], new_tokens: int) -> int:
    done = subprocess.run([sys.executable, "-c", SCRIPT, path, json.dumps(prompt), str(new_tokens)],
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"measuring the memory of {path} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_kib"]


def peak_memory_mb(paths: dict[str, Path], prompt: list[int], new_tokens: int) -> dict[str, float]:
    """{name: MB} the inference of each model adds to a bare process's peak (Linux: ru_maxrss is in KiB)."""
    baseline = _peak_kib("-", prompt, new_tokens)
    return {name: max(0, _peak_kib(str(path), prompt, new_tokens) - baseline) * 1024 / 1e6
            for name, path in paths.items()}
