"""YAML recipe -> typed config tree (strict), with dotted command-line overrides (``train.lr=3e-4``)."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import yaml
from pydantic import Field, ValidationError

from lmforge.attack.config import AttackConfig
from lmforge.compress.config import CompressConfig
from lmforge.explain.config import ExplainConfig
from lmforge.core.config import StrictModel
from lmforge.data.config import DataConfig, PackConfig, TokenizerConfig
from lmforge.distributed.config import ParallelConfig
from lmforge.errors import RecipeError
from lmforge.evaluate.config import EvalConfig, GenerateConfig
from lmforge.merge.config import MergeConfig
from lmforge.secure.config import SecureConfig
from lmforge.model.config import ModelConfig
from lmforge.train.config import TrainConfig
from lmforge.transfer.config import FinetuneConfig
from lmforge.tune.config import TuneConfig

BUILTIN_RECIPES = Path(__file__).parent / "recipes"


class RunConfig(StrictModel):
    """A whole recipe: one typed config per stage."""

    name: str = Field(default="default", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    seed: int = 1337
    out_dir: str = "runs"
    data: DataConfig
    tokenizer: TokenizerConfig = TokenizerConfig()
    pack: PackConfig = PackConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    parallel: ParallelConfig = ParallelConfig()
    eval: EvalConfig = EvalConfig()
    generate: GenerateConfig = GenerateConfig()
    tune: TuneConfig = TuneConfig()
    # the later stages: lmforge run runs those whose section is present (absent: their commands use the defaults)
    finetune: FinetuneConfig | None = None
    merge: MergeConfig | None = None
    compress: CompressConfig | None = None
    explain: ExplainConfig | None = None
    attack: AttackConfig | None = None
    secure: SecureConfig | None = None
    stages: list[str] | None = Field(default=None, description="the stages lmforge run runs (and what they need), "
                                     "in the table's order; default: curate to sample, the later stages whose "
                                     "section is here, and the report")

    def section_hash(self, *sections: str) -> str:
        """A fingerprint of some sections, to tell whether a finished stage is still valid."""
        payload = {s: self.model_dump(mode="json")[s] for s in sections}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def resolve_recipe_path(recipe: str | None) -> Path:
    """``None`` -> the built-in default; a bare name like ``debug`` -> a built-in recipe; else a path."""
    if recipe is None:
        return BUILTIN_RECIPES / "default.yaml"
    path = Path(recipe)
    if path.exists():
        if path.is_dir():
            raise RecipeError(f"recipe {recipe}: is a directory, expected a YAML file")
        return path
    builtin = BUILTIN_RECIPES / f"{recipe}.yaml"
    if "/" not in recipe and builtin.exists():
        return builtin
    names = ", ".join(sorted(p.stem for p in BUILTIN_RECIPES.glob("*.yaml")))
    raise RecipeError(f"recipe {recipe}: no such file (built-in recipes: {names})")


def read_yaml(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(f"recipe {where}: invalid YAML: {problem}") from None
    except UnicodeDecodeError:
        raise RecipeError(f"recipe {path}: not UTF-8 text") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe {path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    return raw


def apply_override(tree: dict, assignment: str) -> None:
    """Apply ``a.b.c=value`` to a raw recipe dict; the value is parsed as YAML (``3e-4``, ``true``, ``[1, 2]``)."""
    if "=" not in assignment:
        raise RecipeError(f"--set {assignment}: expected KEY=VALUE with a dotted key, e.g. train.lr=3e-4")
    key, _, text = assignment.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        raise RecipeError(f"--set {assignment}: empty part in key {key!r}")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    node = tree
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError(f"--set {assignment}: {'.'.join(parts[: i + 1])} is not a valid list index")
            node = node[int(part)]
            continue
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, (dict, list)):
            raise RecipeError(f"--set {assignment}: {'.'.join(parts[: i + 1])} is a value, not a section")
        node = child
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise RecipeError(f"--set {assignment}: {last} is not a valid list index")
        node[int(last)] = value
    else:
        node[last] = value


def format_validation_error(exc: ValidationError, where: str, what: str = "recipe") -> str:
    """One line naming every problem by its key path: ``<what> <where>: key: problem; ...`` (a task file's
    checks use it with ``what=""``)."""
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            problems.append(f"{loc}: unknown key")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
        problems.append(f"{loc}: {msg}{shown}")
    return f"{what} {where}: ".lstrip() + "; ".join(problems)


def build_config(raw: dict, where: str) -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(format_validation_error(exc, where)) from None


def load_recipe(recipe: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Read a recipe file (or a built-in name), apply ``--set`` overrides, validate everything."""
    path = resolve_recipe_path(None if recipe is None else str(recipe))
    raw = copy.deepcopy(read_yaml(path))
    for assignment in overrides:
        apply_override(raw, assignment)
    return build_config(raw, str(path))
