"""RunDir: the one place that knows where every artifact of a run lives (paths only; which stages are done
is the pipeline's business).

runs/<name>/
  recipe.yaml              the resolved recipe of the latest invocation
  stages.json              finished stages and the fingerprint of the config they ran with (pipeline.py)
  <stage>/                 what each stage writes, with a summary.json of its headline figures:
    curate/                train.jsonl, val.jsonl, stats.json, summary.md
    tokenizer/             tokenizer.json
    pack/{train,val}/      memory-mapped token shards + index.json
    train/                 checkpoints/step_N/ (model.safetensors, optimizer.safetensors, state.json),
                           metrics.jsonl (one JSON object per logged event: train steps, evaluations)
    eval/                  results.json: validation loss, perplexity, bits per byte before and after training
    sample/                samples.json: generated samples
    tune/  optimizers/     hyperparameter study, optimizer comparison
  summary.json             the end-of-run summary
"""

from __future__ import annotations

import re
from pathlib import Path

from lmforge.core.atomic import remove_stale_temporaries

_CKPT = re.compile(r"^step_(\d{8})$")
SUMMARY_FILE = "summary.json"


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def stage_dir(self, stage: str) -> Path:
        """Where ``stage`` writes its outputs."""
        return self.root / stage

    def stage_summary(self, stage: str) -> Path:
        """The stage's headline figures (what the run report reads)."""
        return self.stage_dir(stage) / SUMMARY_FILE

    # --- files at the top -------------------------------------------------------------------
    @property
    def recipe(self) -> Path:
        return self.root / "recipe.yaml"

    @property
    def stages_file(self) -> Path:
        return self.root / "stages.json"

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY_FILE

    # --- what the stages write ---------------------------------------------------------------
    @property
    def curated(self) -> Path:
        return self.stage_dir("curate")

    @property
    def train_docs(self) -> Path:
        return self.curated / "train.jsonl"

    @property
    def val_docs(self) -> Path:
        return self.curated / "val.jsonl"

    @property
    def data_stats(self) -> Path:
        return self.curated / "stats.json"

    @property
    def tokenizer(self) -> Path:
        return self.stage_dir("tokenizer") / "tokenizer.json"

    def tokens(self, split: str) -> Path:
        return self.stage_dir("pack") / split

    @property
    def checkpoints(self) -> Path:
        return self.stage_dir("train") / "checkpoints"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step_{step:08d}"

    @property
    def metrics(self) -> Path:
        return self.stage_dir("train") / "metrics.jsonl"

    @property
    def eval_results(self) -> Path:
        return self.stage_dir("eval") / "results.json"

    @property
    def selection(self) -> Path:
        """Which kept checkpoint ``eval.select`` chose (the later stages' default checkpoint)."""
        return self.stage_dir("eval") / "selection.json"

    @property
    def finetuned_model(self) -> Path:
        """The fine-tuned model (LoRA merged), an exported file: ``--checkpoint finetuned``."""
        return self.stage_dir("finetune") / "model.safetensors"

    @property
    def merged_model(self) -> Path:
        """The merged model (``lmforge merge``), an exported file: ``--checkpoint merged``."""
        return self.stage_dir("merge") / "model.safetensors"

    @property
    def samples(self) -> Path:
        return self.stage_dir("sample") / "samples.json"

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
