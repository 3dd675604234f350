"""The labelled inputs of permutation importance and the model's accuracy on them.

Two kinds of features: the segments of a classification task's texts (the i-th line or sentence), and the columns
of a table (a CSV or Parquet file, or the run's cleaned validation table ``curate/tabular/val.parquet``), each row
read by the model as one line per column, ``name: value``. A fine-tuned classifier labels a text by its head at
the end-of-text after it; a language model by the likeliest label word after the task's prompt, as the evaluation
stage scores classification. Everything is read and checked before anything is written (``permutation_input``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from lmforge.checkpoint.load import classifier_ids
from lmforge.core.progress import track
from lmforge.errors import ExplainError
from lmforge.evaluate.scoring import encode_pair, score_token_pairs
from lmforge.evaluate.task_eval import EvalSettings
from lmforge.evaluate.task_examples import ClassificationExample
from lmforge.evaluate.tasks import Task
from lmforge.explain.permutation import joined, permutation_importance, segment_matrix
from lmforge.explain.targets import hidden_states
from lmforge.rundir import RunDir

KEY = "explain.permutation"


@dataclasses.dataclass
class PermutationInput:
    X: np.ndarray  # (n, features) object: segments, or table values
    y: np.ndarray  # (n,) the gold labels
    features: list[str]
    columns: list[str] | None  # a table's column names (rows rendered "name: value" per line); None: segments
    task: Task | None  # the prompt of a language model
    source: str  # what the rows are, in words
    ids: list[str]  # each row's id (a language model's few-shot demonstrations are seeded by it)

    def texts(self, X: np.ndarray) -> list[str]:
        if self.columns is None:
            return joined(X)
        return ["".join(f"{c}: {v}\n" for c, v in zip(self.columns, row)) for row in X]


def permutation_input(run: RunDir, cfg, p, task: Task | None, labels: list[str] | None) -> PermutationInput | None:
    """The features to permute: a table's columns (``explain.permutation.table``) or a classification task's
    segments; None when there is neither (or ``explain.permutation`` is null)."""
    if p is None:
        return None
    if p.table is not None:
        if labels is None and (task is None or task.kind != "classification"):
            raise ExplainError(f"{KEY}.table: a language model labels rows through a classification task's prompt; "
                               "give --task (a classification task), or explain a fine-tuned classifier")
        return table_input(run, cfg, p, task, labels)
    if task is None or task.kind != "classification":
        return None
    examples = task.examples[:p.examples]
    X = segment_matrix([ex.text for ex in examples], p.segments)
    if X.shape[1] > p.max_segments:  # the rest of a long text stays together as the last feature
        rest = np.array(joined(X[:, p.max_segments - 1:]), dtype=object)[:, None]
        X = np.concatenate([X[:, :p.max_segments - 1], rest], axis=1)
    unit = p.segments.removesuffix("s")
    names = [f"{unit} {j + 1}" for j in range(X.shape[1])]
    if X.shape[1] == p.max_segments:
        names[-1] += "+"
    y = np.array([ex.label for ex in examples], dtype=object)
    return PermutationInput(X, y, names, None, task, f"{len(examples)} examples of {task.name}, by {p.segments}",
                            [ex.id for ex in examples])


def table_input(run: RunDir, cfg, p, task: Task | None, labels: list[str] | None) -> PermutationInput:
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    t = p.table
    path = run.curated / "tabular" / "val.parquet" if t.path == "run" else Path(t.path).expanduser()
    if not path.is_file():
        hint = " (the run's cleaned table: data.tabular, lmforge data)" if t.path == "run" else ""
        raise ExplainError(f"{KEY}.table.path: no such file: {path}{hint}")
    try:
        table = pq.read_table(path) if path.suffix.lower() in (".parquet", ".pq") else pa_csv.read_csv(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ExplainError(f"{KEY}.table.path: cannot read {path}: {' '.join(str(exc).split())[:200]}") from None
    label = t.label or (cfg.data.tabular.label if cfg.data.tabular is not None else None)
    if label is None:
        raise ExplainError(f"{KEY}.table.label: which column holds the labels? (none set, and data.tabular.label "
                           "is not set)")
    columns = t.columns or [c for c in table.column_names if c != label]
    missing = next((c for c in [label, *columns] if c not in table.column_names), None)
    if missing is not None:
        raise ExplainError(f"{KEY}.table: {path} has no column {missing!r} (it has {', '.join(table.column_names)})")
    if label in columns:
        raise ExplainError(f"{KEY}.table.columns: the label column {label!r} cannot be a feature")
    n = min(p.examples, table.num_rows)
    X = np.empty((n, len(columns)), dtype=object)
    for j, c in enumerate(columns):
        X[:, j] = table.column(c).to_pylist()[:n]
    y = np.array([str(v) for v in table.column(label).to_pylist()[:n]], dtype=object)
    known = labels if labels is not None else task.spec.labels
    unknown = next((v for v in y if v not in known), None)
    if unknown is not None:
        whose = "the classifier's" if labels is not None else f"the task {task.name}'s"
        raise ExplainError(f"{KEY}.table: {path}: label {unknown!r} is not one of {whose} labels {list(known)}")
    if n < 2:
        raise ExplainError(f"{KEY}.table: {path} has {n} row(s); shuffling needs at least 2")
    return PermutationInput(X, y, list(columns), list(columns), task, f"{n} rows of {path}, by column",
                            [f"row {i}" for i in range(n)])


def importance(inputs: PermutationInput, model, tokenizer, eos: int, labels: list[str] | None, seq_len: int,
               repeats: int, seed: int, device) -> dict:
    """Permutation importance of ``inputs``' features for the model's accuracy."""
    with track("permutation importance", total=1 + len(inputs.features) * repeats, unit="scorings") as bar:
        def accuracy(X: np.ndarray, y: np.ndarray) -> float:
            texts = inputs.texts(X)
            if labels is not None:
                predicted = classifier_predictions(model, tokenizer, eos, labels, seq_len, texts, device)
            else:
                predicted = prompted_predictions(model, tokenizer, inputs.task, inputs.ids, texts, y, device)
            bar.advance()
            return float(np.mean(predicted == y))

        result = permutation_importance(accuracy, inputs.X, inputs.y, repeats, seed, inputs.features)
    return result.to_dict() | {"rows": len(inputs.y), "source": inputs.source, "score": "accuracy"}


@torch.no_grad()
def classifier_predictions(model, tokenizer, eos: int, labels: list[str], seq_len: int, texts: list[str],
                           device) -> np.ndarray:
    """The classifier's label for each text (its head at the end-of-text after the text)."""
    out = []
    for text in texts:
        ids = classifier_ids(tokenizer.encode(text, add_special_tokens=False).ids, eos, seq_len)
        out.append(labels[int(model.lm_head(hidden_states(model, torch.tensor([ids], device=device))[:, -1]).argmax())])
    return np.array(out, dtype=object)


def prompted_predictions(model, tokenizer, task: Task, ids: list[str], texts: list[str], gold: np.ndarray,
                         device) -> np.ndarray:
    """A language model's label for each text: the likeliest label word after the task's prompt (few-shot
    demonstrations included), as the evaluation stage scores classification; a prompt that shuffling made longer
    than the context keeps its last tokens, as lm-eval truncates."""
    n = model.dims.context_length
    pairs = []
    for id_, text, label in zip(ids, texts, gold):
        prompt = task.prompt(ClassificationExample(id_, text, label))
        for word in task.verbalizers.values():
            context, continuation = encode_pair(tokenizer, prompt, word)
            pairs.append((context[-(n + 1 - len(continuation)):], continuation))
    scores = score_token_pairs(model, pairs, EvalSettings().batch_size, device)
    lls = np.array([s.logprob for s in scores]).reshape(len(texts), len(task.verbalizers))
    words = list(task.verbalizers)
    return np.array([words[i] for i in lls.argmax(axis=1)], dtype=object)
