"""Several trainings in one torchrun process group, so a test pays for process start-up once.

    python -m torch.distributed.run --standalone --nproc-per-node N train_jobs.py JOBS.json

JOBS.json is a list of {"run_dir": DIR, "set": ["key=value", ...], "resume": bool, "poison": {"rank": R,
"call": C}}. Each job trains exactly as ``lmforge train --worker`` does (the recipe stored in DIR plus the
overrides, ``lmforge.train.loop.train`` in this process group). ``poison`` makes rank R's C-th training
forward return NaN: a non-finite loss on one rank only.
"""

import contextlib
import json
import sys
from pathlib import Path

import torch.distributed as dist

from lmforge.core import progress
from lmforge.distributed.context import init_distributed
from lmforge.model.decoder import Decoder
from lmforge.recipe import apply_override, build_config, read_yaml
from lmforge.rundir import RunDir
from lmforge.train.loop import train


@contextlib.contextmanager
def poisoned(poison: dict | None, rank: int):
    if poison is None or poison["rank"] != rank:
        yield
        return
    original, calls = Decoder.forward, {"n": 0}

    def forward(self, tokens, targets=None):
        out = original(self, tokens, targets)
        if self.training and targets is not None:
            calls["n"] += 1
            if calls["n"] == poison["call"]:
                return out * float("nan")
        return out

    Decoder.forward = forward
    try:
        yield
    finally:
        Decoder.forward = original


def main() -> None:
    jobs = json.loads(Path(sys.argv[1]).read_text())
    ctx = init_distributed("cpu")
    progress.set_enabled(False)
    for job in jobs:
        run = RunDir(job["run_dir"])
        raw = read_yaml(run.recipe)
        for assignment in job["set"]:
            apply_override(raw, assignment)
        cfg = build_config(raw, str(run.recipe))
        with poisoned(job.get("poison"), ctx.rank):
            train(run, cfg, ctx, resume=job.get("resume", False))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
