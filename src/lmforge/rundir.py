"""RunDir: the one place that knows where every artifact of a run lives.

runs/<name>/
  recipe.yaml            the resolved recipe of the latest invocation
  stages.json            finished stages and the fingerprint of the config they ran with
  data/                  train.jsonl, val.jsonl, stats.json (curation)
  tokenizer/             tokenizer.json
  tokens/{train,val}/    memory-mapped token shards + index.json
  checkpoints/step_N/    model.safetensors, optimizer.safetensors, state.json
  metrics.jsonl          one JSON object per logged event (train steps, evaluations)
  eval/results.json      validation loss, perplexity, bits per byte before and after training
  samples.json           generated samples
  summary.json           the end-of-run summary
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from lmforge.core.atomic import atomic_write_json, remove_stale_temporaries

STAGES = ("curate", "tokenizer", "pack", "train", "eval", "sample")
_CKPT = re.compile(r"^step_(\d{8})$")


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    # --- paths -----------------------------------------------------------------------------
    @property
    def recipe(self) -> Path:
        return self.root / "recipe.yaml"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def train_docs(self) -> Path:
        return self.data / "train.jsonl"

    @property
    def val_docs(self) -> Path:
        return self.data / "val.jsonl"

    @property
    def data_stats(self) -> Path:
        return self.data / "stats.json"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer" / "tokenizer.json"

    def tokens(self, split: str) -> Path:
        return self.root / "tokens" / split

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step_{step:08d}"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def eval_results(self) -> Path:
        return self.root / "eval" / "results.json"

    @property
    def samples(self) -> Path:
        return self.root / "samples.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def stages_file(self) -> Path:
        return self.root / "stages.json"

    # --- stage bookkeeping -------------------------------------------------------------------
    def stages(self) -> dict:
        if not self.stages_file.exists():
            return {}
        try:
            return json.loads(self.stages_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {}  # written atomically, so this only happens if edited by hand: treat as not done

    def stage_fingerprint(self, stage: str) -> str | None:
        entry = self.stages().get(stage)
        return entry.get("fingerprint") if isinstance(entry, dict) else None

    def mark_done(self, stage: str, fingerprint: str, **info) -> None:
        stages = self.stages()
        stages[stage] = {"fingerprint": fingerprint, **info}
        atomic_write_json(self.stages_file, stages)

    def invalidate(self, stage: str) -> None:
        """Forget ``stage`` and every stage after it."""
        stages = self.stages()
        later = STAGES[STAGES.index(stage):]
        kept = {k: v for k, v in stages.items() if k not in later}
        if kept != stages:
            atomic_write_json(self.stages_file, kept)

    # --- checkpoints -------------------------------------------------------------------------
    def list_checkpoints(self) -> list[tuple[int, Path]]:
        """Finished checkpoints, oldest first (a write killed half-way never has this name)."""
        if not self.checkpoints.exists():
            return []
        found = []
        for p in self.checkpoints.iterdir():
            m = _CKPT.match(p.name)
            if m and (p / "state.json").exists():
                found.append((int(m.group(1)), p))
        return sorted(found)

    def latest_checkpoint(self) -> tuple[int, Path] | None:
        ckpts = self.list_checkpoints()
        return ckpts[-1] if ckpts else None

    def clean_temporaries(self) -> list[Path]:
        return remove_stale_temporaries(self.root)


class SharedDataRunDir(RunDir):
    """A run directory of its own (recipe, metrics, checkpoints) that reads the tokenizer and token shards
    of ``parent``: a tuning trial or one run of an optimizer comparison."""

    def __init__(self, root: str | Path, parent: RunDir):
        super().__init__(root)
        self.parent = parent

    @property
    def tokenizer(self) -> Path:
        return self.parent.tokenizer

    def tokens(self, split: str) -> Path:
        return self.parent.tokens(split)

