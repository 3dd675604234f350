"""Evaluation tasks: a YAML spec (``TaskSpec``) plus an examples file (JSONL, CSV or Parquet) -> a ``Task``
with typed examples.

```yaml
name: sentiment                 # letters, digits, . _ -
kind: classification            # multiple_choice | classification | generation | perplexity
path: sentiment.csv             # relative paths are resolved against this YAML's folder
train_path: sentiment_train.jsonl   # optional: examples to draw demonstrations from
labels: [neg, pos]              # classification: the label set (required)
template: "Review: {text}\\nSentiment:"   # classification: {text} is replaced literally
verbalizers: {neg: " bad", pos: " good"}  # classification: label -> word (default: the label)
few_shot: 2                     # classification: demonstrations per prompt (needs train_path)
text_field: review              # field names, each defaulting to its own name
stop: ["\n"]                    # generation: the continuation ends before the first of these [newline]
max_new_tokens: 32              # generation: at most this many tokens are generated [32]
```

Field-name keys, by kind (defaults in brackets): every kind ``id_field`` [id]; multiple_choice
``context_field`` [context], ``choices_field`` [choices], ``answer_field`` [answer] (a choice index or the
choice's text; in CSV, where every cell is text, the choices cell is a JSON list and an answer that is no
choice's text is read as an index); classification ``text_field`` [text], ``label_field``
[label]; generation ``prompt_field`` [prompt], ``answer_field`` [answer]; perplexity ``text_field`` [text].
A key that is not a key of the task's kind is an error, like an unknown key.

Bad input raises ``DataError`` with one line naming the YAML file and key, or the examples file and line
(Parquet: row): a missing field, a non-string text, a label outside the label set, empty choices, an answer out
of range or not among the choices, a duplicate id, an unreadable record.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from lmforge.core.config import StrictModel
from lmforge.errors import DataError
from lmforge.evaluate.config import first_repeat
from lmforge.evaluate.task_examples import (ClassificationExample, Example, GenerationExample,  # noqa: F401
                                            MultipleChoiceExample, PerplexityExample, examples_format,
                                            parse_example, read_task_records)
from lmforge.recipe import format_validation_error

Kind = Literal["multiple_choice", "classification", "generation", "perplexity"]

# the keys only some kinds have (every kind has name, kind, path, train_path, id_field)
KIND_KEYS: dict[str, frozenset[str]] = {
    "multiple_choice": frozenset({"context_field", "choices_field", "answer_field"}),
    "classification": frozenset({"text_field", "label_field", "labels", "template", "verbalizers", "few_shot"}),
    "generation": frozenset({"prompt_field", "answer_field", "stop", "max_new_tokens"}),
    "perplexity": frozenset({"text_field"}),
}
_KIND_ONLY = sorted(set().union(*KIND_KEYS.values()))


class TaskSpec(StrictModel):
    """One task's YAML: what it is, where its examples are, and which fields hold what."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    kind: Kind
    path: str = Field(min_length=1)
    train_path: str | None = None
    id_field: str = "id"
    context_field: str = "context"
    choices_field: str = "choices"
    answer_field: str = "answer"
    text_field: str = "text"
    label_field: str = "label"
    prompt_field: str = "prompt"
    labels: list[str] | None = Field(default=None, min_length=2)
    template: str = "{text}"
    verbalizers: dict[str, str] | None = None
    few_shot: int = Field(default=0, ge=0)
    stop: list[str] = Field(default_factory=lambda: ["\n"])
    max_new_tokens: int = Field(default=32, ge=1)

    @field_validator(*_KIND_ONLY)
    @classmethod
    def _key_of_kind(cls, value, info: ValidationInfo):
        # runs only on keys given explicitly (defaults are not validated), after ``kind``
        kind = info.data.get("kind")
        if kind is not None and info.field_name not in KIND_KEYS[kind]:
            raise ValueError(f"not a key of a {kind} task")
        return value

    @field_validator("labels")
    @classmethod
    def _distinct_labels(cls, labels):
        repeated = first_repeat(labels) if labels else None
        if repeated is not None:
            raise ValueError(f"labels repeat {repeated!r}")
        return labels

    @field_validator("template")
    @classmethod
    def _has_text(cls, template):
        if "{text}" not in template:
            raise ValueError("the template must contain {text}")
        return template

    @field_validator("verbalizers")
    @classmethod
    def _verbalize_labels(cls, verbalizers, info: ValidationInfo):
        if "labels" not in info.data:  # the labels themselves are wrong: reported there
            return verbalizers
        labels = info.data["labels"] or []
        outside = sorted(set(verbalizers) - set(labels))
        if outside:
            raise ValueError(f"{outside[0]!r} is not one of the labels")
        repeated = first_repeat(list(verbalizers.values()))
        if repeated is not None:
            raise ValueError(f"two labels share the word {repeated!r}")
        return verbalizers

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop):
        if any(s == "" for s in stop):
            raise ValueError("an empty stop string would cut every continuation to nothing")
        return stop

    @field_validator("few_shot")
    @classmethod
    def _demonstrations_from(cls, few_shot, info: ValidationInfo):
        if few_shot and info.data.get("train_path") is None:
            raise ValueError("few_shot needs train_path (the examples to draw demonstrations from)")
        return few_shot

    @model_validator(mode="after")
    def _label_set(self):
        if self.kind == "classification" and self.labels is None:
            raise ValueError("a classification task needs labels (its label set)")
        return self

    def fields(self) -> dict[str, str]:
        """{role: field name} of this kind's examples, id first."""
        roles = sorted(k.removesuffix("_field") for k in KIND_KEYS[self.kind] if k.endswith("_field"))
        return {"id": self.id_field, **{role: getattr(self, f"{role}_field") for role in roles}}


@dataclass(frozen=True)
class Task:
    spec: TaskSpec
    path: Path  # the examples file, resolved
    examples: tuple[Example, ...]
    train_examples: tuple[Example, ...] = ()  # from train_path, when given
    lines: tuple[int, ...] = ()  # each example's line in ``path`` (Parquet: row)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        return self.spec.kind

    def where(self, i: int) -> str:
        """"<file>:<line>" of example i."""
        return f"{self.path}:{self.lines[i]}" if self.lines else str(self.path)

    @property
    def verbalizers(self) -> dict[str, str]:
        """Classification: every label's word, in label order (a label without one is its own word)."""
        given = self.spec.verbalizers or {}
        return {label: given.get(label, label) for label in self.spec.labels or []}

    def render(self, text: str) -> str:
        """Classification: the template with ``text`` in place of {text} (other braces are kept)."""
        return self.spec.template.replace("{text}", text)

    def prompt(self, example: ClassificationExample, seed: int = 0) -> str:
        """Classification: ``few_shot`` demonstrations (seeded per example, never the example itself), each
        rendered and followed by its label's word, then the example rendered."""
        pool = [e for e in self.train_examples if e.id != example.id and e.text != example.text]
        shots = random.Random(f"{seed}:{example.id}").sample(pool, min(self.spec.few_shot, len(pool)))
        words = self.verbalizers
        return "".join(f"{self.render(s.text)}{words[s.label]}\n\n" for s in shots) + self.render(example.text)


def load_task(yaml_path: str | Path) -> Task:
    """Read a task YAML and its examples; a bad spec or example is a one-line DataError."""
    yaml_path = Path(yaml_path)
    spec = read_spec(yaml_path)
    path = _resolve(yaml_path, "path", spec.path)
    train = () if spec.train_path is None else read_examples(spec, _resolve(yaml_path, "train_path", spec.train_path))
    lines: list[int] = []
    return Task(spec, path, read_examples(spec, path, lines), train, tuple(lines))


def read_spec(yaml_path: Path) -> TaskSpec:
    try:
        raw = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{yaml_path}: no such task file") from None
    except UnicodeDecodeError:
        raise DataError(f"{yaml_path}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{yaml_path}:{mark.line + 1}:{mark.column + 1}" if mark else str(yaml_path)
        raise DataError(f"{where}: invalid YAML: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(raw, dict):
        raise DataError(f"{yaml_path}: a task is a mapping of keys, got {type(raw).__name__}")
    try:
        return TaskSpec.model_validate(raw)
    except ValidationError as exc:  # the recipe's one-line form: "<file>: <key.path>: <problem>; ..."
        raise DataError(format_validation_error(exc, str(yaml_path), what="")) from None


def _resolve(yaml_path: Path, key: str, path: str) -> Path:
    resolved = Path(path).expanduser()
    if not resolved.is_absolute():
        resolved = yaml_path.parent / resolved
    if not resolved.is_file():
        raise DataError(f"{yaml_path}: {key}: no such file: {resolved}")
    return resolved


def read_examples(spec: TaskSpec, path: Path, lines: list[int] | None = None) -> tuple[Example, ...]:
    """The examples of ``path`` as ``spec`` describes them, checked record by record (``lines``, when given,
    receives each example's line)."""
    from_csv = examples_format(path) == "csv"
    examples, first_line = [], {}
    for line, record in read_task_records(path, list(spec.fields().values())):
        where = f"{path}:{line}"
        example = parse_example(spec, record, where, from_csv)
        if example.id in first_line:
            raise DataError(f"{where}: duplicate id {example.id!r} (first at line {first_line[example.id]})")
        first_line[example.id] = line
        examples.append(example)
        if lines is not None:
            lines.append(line)
    if not examples:
        raise DataError(f"{path}: no examples")
    return tuple(examples)
