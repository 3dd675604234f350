"""The whole default run, as a new user starts it: ``lmforge run`` on the built-in default recipe in a fresh
directory, timed end to end (the process's wall clock) and per stage (``stages.json`` records each stage's seconds).

    python bench/whole_life.py [--runs 3] [--json OUT] [--set KEY=VALUE ...]

Target: at most 8 minutes on 2 CPU cores. There is no peer to compare with (no other tool runs these stages in
one command); the figure is the median of --runs fresh runs, each in its own temporary directory, with the
median seconds of each stage beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 8 * 60


def one_run(extra: list[str]) -> tuple[float, dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="lmforge-whole-life-") as folder:
        run_dir = Path(folder) / "run"
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "lmforge", "run", "--run-dir", str(run_dir), *extra],
                              cwd=folder, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            sys.exit(f"lmforge run failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        stages = json.loads((run_dir / "stages.json").read_text())
        lines = json.loads((run_dir / "summary.json").read_text())["stages"]
        for entry in lines:
            print(f"  {entry['stage']:<10} {entry['headline']}")
        return seconds, {entry["stage"]: stages[entry["stage"]]["seconds"] for entry in lines}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    extra = [arg for value in args.sets for arg in ("--set", value)]
    totals, per_stage = [], []
    for i in range(args.runs):
        total, stages = one_run(extra)
        totals.append(total)
        per_stage.append(stages)
        print(f"run {i + 1}/{args.runs}: {total:.1f} s  " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()),
              flush=True)
    median = statistics.median(totals)
    stages = {name: statistics.median(s[name] for s in per_stage) for name in per_stage[0]}
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}")
    print(f"{'stage':<10} {'median s':>9}")
    for name, value in stages.items():
        print(f"{name:<10} {value:>9.1f}")
    print(f"{'total':<10} {median:>9.1f}  (runs: {', '.join(f'{t:.1f}' for t in totals)}; target {TARGET_S} s: "
          f"{'met' if median <= TARGET_S else 'MISSED'}, {median / TARGET_S:.2f}x of it)")
    if args.json:
        args.json.write_text(json.dumps({"totals_s": totals, "median_s": median, "stages_median_s": stages,
                                         "target_s": TARGET_S}, indent=2))


if __name__ == "__main__":
    main()
