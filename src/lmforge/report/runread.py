"""What the report reads from a run directory: its stages' ``summary.json`` files, the recipe, the training
metrics; a run that is not there or a file that cannot be read is one error line naming the file."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import yaml

from lmforge.core.metrics import read_metrics
from lmforge.errors import LmforgeError
from lmforge.rundir import RunDir

# The stages in the order of the pipeline's table. The report cannot import the pipeline (it sits above the
# report), so the command and the report stage pass pipeline.NAMES; this is the default for library callers.
STAGE_ORDER = ("curate", "tokenizer", "pack", "train", "eval", "sample", "finetune", "merge", "compress",
               "explain", "attack", "secure", "report")


def read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LmforgeError(f"{path}: not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LmforgeError(f"{path}: cannot read ({exc.__class__.__name__}: {exc})") from None
    except json.JSONDecodeError as exc:
        raise LmforgeError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None


@dataclasses.dataclass
class RunData:
    run: RunDir
    stages: tuple[str, ...]  # every stage, in pipeline order
    summaries: dict[str, dict]  # the stages that ran: their summary.json
    recipe: dict  # recipe.yaml as written (empty if missing)
    recipe_text: str
    metrics: list[dict]  # train/metrics.jsonl

    def summary(self, stage: str) -> dict:
        return self.summaries.get(stage, {})

    def warnings(self) -> list[tuple[str, str]]:
        """(stage, message) for every warning of every stage, in stage order."""
        return [(s, str(w)) for s in self.stages for w in (self.summaries.get(s, {}).get("warnings") or [])]


def check_run(root: Path) -> RunDir:
    if not root.exists():
        raise LmforgeError(f"{root}: no such run directory")
    if not root.is_dir():
        raise LmforgeError(f"{root}: not a directory (give a run directory)")
    run = RunDir(root)
    if not (run.recipe.exists() or run.stages_file.exists()):
        raise LmforgeError(f"{root}: not a run directory (no recipe.yaml or stages.json)")
    return run


def load_run(root: Path, stages=STAGE_ORDER) -> RunData:
    """Everything the report shows of the run at ``root`` (each stage's summary.json that is there)."""
    run = check_run(Path(root))
    summaries = {}
    for stage in stages:
        path = run.stage_summary(stage)
        if path.exists():
            data = read_json(path)
            if not isinstance(data, dict):
                raise LmforgeError(f"{path}: not a JSON object")
            summaries[stage] = data
    recipe, text = {}, ""
    if run.recipe.exists():
        try:
            text = run.recipe.read_text(encoding="utf-8")
            recipe = yaml.safe_load(text) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise LmforgeError(f"{run.recipe}: cannot read ({exc.__class__.__name__})") from None
        if not isinstance(recipe, dict):
            raise LmforgeError(f"{run.recipe}: not a recipe (a YAML mapping)")
    return RunData(run, tuple(stages), summaries, recipe, text, read_metrics(run.metrics))


def flat(tree, prefix: str = "") -> dict[str, object]:
    """A nested recipe as dotted keys (``train.lr``); lists stay whole values."""
    if not isinstance(tree, dict) or (prefix and not tree):
        return {prefix: tree}
    out = {}
    for key, value in tree.items():
        out.update(flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out
