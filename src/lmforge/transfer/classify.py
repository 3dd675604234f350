"""``finetune.objective: classification``: a classification head on the last token, trained on labelled texts.

The head replaces the LM head: a new linear layer from the final hidden state to one logit per label
(the embeddings stay; a tied LM head is untied by it). Each text is encoded with the base's tokenizer and
ended with its end-of-text token, whose position is the one classified: a batch is ``(B, 2, T)`` as for sft,
the inputs right-padded and the targets ``IGNORE_INDEX`` everywhere but that position, which holds the label's
index, so the decoder's own loss is the classification loss and parallel wrappers apply unchanged.

Labels come from a classification task of the evaluation stage (``finetune.task``: a built-in one made from the
run's documents, training examples from the training documents and test examples from the validation
documents; or a task YAML with ``train_path``), or from the documents' ``label`` (a source's ``label_field``:
``finetune.sources`` or the run's ``data.sources``), whose validation split is the test set. A seeded
``finetune.val_fraction`` of the training examples is held out for the loop's validation; the test set is
scored at the end with the evaluation stage's metrics (accuracy, per-class F1, calibration, intervals), and the
classifier is written as ``finetune/model.safetensors`` with its labels (``checkpoint.load.load_model`` loads it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lmforge.checkpoint.load import classifier_ids
from lmforge.data.tokenizer import read_tokenizer
from lmforge.distributed.context import DistContext
from lmforge.distributed.gradients import scalar
from lmforge.errors import DataError, FinetuneError
from lmforge.evaluate.builtin_tasks import make_builtin_tasks
from lmforge.evaluate.task_eval import choice_outcome, summarize
from lmforge.evaluate.task_examples import ClassificationExample
from lmforge.evaluate.task_sources import BUILTIN_KINDS
from lmforge.evaluate.tasks import Task, TaskSpec, load_task
from lmforge.model.fused_ops import IGNORE_INDEX
from lmforge.rundir import RunDir
from lmforge.transfer.sft import split_examples

HEAD = "lm_head.weight"


@dataclasses.dataclass(frozen=True)
class LabelledExample:
    ids: np.ndarray  # int64: the text's tokens, then end-of-text (the classified position)
    label: int
    where: str

    @property
    def prompt_tokens(self) -> int:  # split_examples' digest fields, as for sft
        return len(self.ids) - 1


def builtin_classification(run: RunDir, name: str, seed: int, max_examples: int) -> Task:
    """A built-in classification task: the test examples are the evaluation stage's (from the validation
    documents, none of whose texts is in the training ones), the training examples come from the training
    documents, with the test examples' labels."""
    with tempfile.TemporaryDirectory() as folder:
        made = make_builtin_tasks(run.val_docs, folder, "val", seed, max_examples, exclude_docs=run.train_docs)
        test = load_task({t.name: t for t in made}[name].spec)
        made = make_builtin_tasks(run.train_docs, folder, "train", seed, max_examples, packages=test.spec.labels)
        train = load_task({t.name: t for t in made}[name].spec)
    return Task(test.spec, run.val_docs, test.examples, train.examples)  # the task files were temporary


def task_of(run: RunDir, fc, seed: int, max_examples: int, docs: Path | None) -> Task:
    """The labelled examples ``finetune:`` names, as an evaluation-stage classification task (test examples,
    with the training ones as ``train_examples``)."""
    if fc.task is not None:
        if fc.task in BUILTIN_KINDS:
            if BUILTIN_KINDS[fc.task] != "classification":
                raise FinetuneError(f"finetune.task: {fc.task!r} is a {BUILTIN_KINDS[fc.task]} task, not a "
                                    "classification one (built-in: which_package)")
            try:
                return builtin_classification(run, fc.task, seed, max_examples)
            except DataError as exc:
                raise FinetuneError(f"finetune.task {fc.task}: cannot be made from this run's documents: {exc}") from None
        task = load_task(fc.task)
        if task.kind != "classification":
            raise FinetuneError(f"finetune.task {fc.task}: a {task.kind} task; a classification task is needed")
        if not task.train_examples:
            raise FinetuneError(f"finetune.task {fc.task}: no train_path (the training examples of the head)")
        return task
    return documents_task(docs)


def documents_task(docs: Path) -> Task:
    """Labelled documents (``train.jsonl`` / ``val.jsonl`` with a ``label``) as a classification task."""
    splits = {}
    for split in ("train", "val"):
        path, examples = docs / f"{split}.jsonl", []
        with open(path, encoding="utf-8") as f:
            for line, text in enumerate(f, start=1):
                record = json.loads(text)
                if "label" not in record:
                    raise FinetuneError(f"finetune.objective=classification: {path}:{line} has no label (give the "
                                        "source a label_field, or set finetune.task)")
                examples.append(ClassificationExample(record.get("id", f"{split}:{line}"), record["text"],
                                                      record["label"]))
        splits[split] = examples
    labels = sorted({e.label for e in splits["train"]})
    if len(labels) < 2:
        raise FinetuneError(f"finetune.objective=classification: {docs / 'train.jsonl'} has {len(labels)} label(s); "
                            "a classifier needs two or more")
    unknown = next((e for e in splits["val"] if e.label not in labels), None)
    if unknown is not None:
        raise FinetuneError(f"finetune.objective=classification: {docs / 'val.jsonl'}: label {unknown.label!r} "
                            f"(document {unknown.id}) is not among the training labels {labels}")
    spec = TaskSpec(name="labels", kind="classification", path=str(docs / "val.jsonl"), labels=labels)
    return Task(spec, docs / "val.jsonl", tuple(splits["val"]), tuple(splits["train"]))


def encode(examples, labels: list[str], tokenizer, eos: int, seq_len: int, where: str) -> list[LabelledExample]:
    """Text tokens (the last ``seq_len - 1`` kept: the end is nearest the classified position) + end-of-text
    (``checkpoint.load.classifier_ids``, what a loaded classifier reads)."""
    index = {label: i for i, label in enumerate(labels)}
    out = []
    for e in examples:
        ids = classifier_ids(tokenizer.encode(e.text, add_special_tokens=False).ids, eos, seq_len)
        out.append(LabelledExample(np.array(ids, dtype=np.int64), index[e.label], f"{where}:{e.id}"))
    return out


def pad_labelled(examples: list[LabelledExample], seq_len: int, pad_id: int) -> np.ndarray:
    """(B, 2, seq_len) int64: inputs right-padded with ``pad_id``; targets IGNORE_INDEX but the label at the
    end-of-text position."""
    out = np.full((len(examples), 2, seq_len), IGNORE_INDEX, dtype=np.int64)
    out[:, 0] = pad_id
    for row, e in enumerate(examples):
        out[row, 0, :len(e.ids)] = e.ids
        out[row, 1, len(e.ids) - 1] = e.label
    return out


def classifier_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the labels at the classified positions (the head's logits there)."""
    return model(batch[:, 0], batch[:, 1])


@torch.no_grad()
def class_logits(model: nn.Module, examples: list[LabelledExample], seq_len: int, pad_id: int,
                 batch_size: int, device) -> np.ndarray:
    """(N, K) float64: the head's logits at each example's end-of-text position."""
    rows = []
    for i in range(0, len(examples), batch_size):
        part = examples[i:i + batch_size]
        batch = torch.from_numpy(pad_labelled(part, seq_len, pad_id)).to(device)
        logits = model(batch[:, 0])  # (B, T, K)
        ends = torch.tensor([len(e.ids) - 1 for e in part], device=logits.device)
        rows.append(logits[torch.arange(len(part), device=logits.device), ends].double().cpu())
    return torch.cat(rows).numpy()


class ClassBatches:
    """The loop's ``batches`` plug point for labelled texts (``train.loop.BatchSource``)."""

    def __init__(self, train: list[LabelledExample], val: list[LabelledExample], test: list[LabelledExample],
                 labels: list[str], pad_id: int):
        self.train, self.val, self.test, self.labels, self.pad_id = train, val, test, labels, pad_id
        h = hashlib.sha256(json.dumps(labels).encode())
        for part in (train, val):
            for e in part:
                h.update(np.array([e.label, len(e.ids)], dtype=np.int64).tobytes() + e.ids.tobytes())
            h.update(b"|")
        self.digest = "classification-" + h.hexdigest()[:16]

    def num_windows(self, seq_len: int) -> int:
        return len(self.train)

    def windows(self, indices, seq_len: int) -> np.ndarray:
        return pad_labelled([self.train[int(i)] for i in indices], seq_len, self.pad_id)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, seq_len: int, *, batch_size: int, max_windows: int | None,
                 device: torch.device, ctx: DistContext | None = None) -> dict:
        """Cross-entropy and accuracy over the held-out training examples (the first ``max_windows``), each
        rank scoring its share. ``bits_per_byte`` is the loss in bits per example, for the loop's record."""
        ctx = ctx or DistContext(device=device)
        count = len(self.val) if max_windows is None else min(len(self.val), max_windows)
        mine = [self.val[j] for j in range(ctx.dp_rank, count, ctx.dp_size)]
        was_training = model.training
        model.eval()
        logits = class_logits(model, mine, seq_len, self.pad_id, batch_size, device) if mine else np.zeros((0, 1))
        model.train(was_training)
        gold = np.array([e.label for e in mine], dtype=np.int64)
        if mine:
            shifted = logits - logits.max(1, keepdims=True)
            nll = -(shifted[np.arange(len(mine)), gold] - np.log(np.exp(shifted).sum(1)))
            loss_sum, correct = float(nll.sum()), float((logits.argmax(1) == gold).sum())
        else:
            loss_sum = correct = 0.0
        loss_sum, correct, n = (v / ctx.layout.tp for v in ctx.all_reduce_sum([loss_sum, correct, float(len(mine))]))
        loss = loss_sum / n
        return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "bits_per_byte": loss / math.log(2),
                "tokens": int(n), "accuracy": correct / n}


def load_classification(run: RunDir, fc, tokenizer_path: Path, eos: int, seq_len: int, seed: int,
                        max_examples: int, docs: Path | None) -> tuple[ClassBatches, Task]:
    """The labelled examples, encoded and split; the test set as an evaluation task (for its metrics)."""
    task = task_of(run, fc, seed, max_examples, docs)
    labels = list(task.spec.labels)
    tokenizer = read_tokenizer(tokenizer_path)
    training = encode(task.train_examples, labels, tokenizer, eos, seq_len, "train")
    if len(training) < 2:
        raise FinetuneError(f"finetune.objective=classification: {len(training)} training example(s); too few")
    train, val = split_examples(training, fc.val_fraction, seed)
    test = encode(task.examples, labels, tokenizer, eos, seq_len, "test")
    return ClassBatches(train, val, test, labels, eos), task


def classification_head(n_labels: int):
    """The ``adapt`` step that puts a new head of ``n_labels`` logits on the decoder (seeded by the loop's RNG)."""
    def adapt(model: nn.Module) -> None:
        head = nn.Linear(model.dims.d_model, n_labels, bias=False).to(model.embed_tokens.weight.device)
        nn.init.normal_(head.weight, 0.0, model.dims.init_std)
        model.lm_head = head
    return adapt


@torch.no_grad()
def score_classifier(model: nn.Module, batches: ClassBatches, task: Task, settings, seq_len: int, device):
    """The test examples through the head, as the evaluation stage scores a classification task: its
    ``ScoredTask`` and ``results.json`` entry (metrics with intervals, confusion matrix, temperature scaling)."""
    logits = class_logits(model, batches.test, seq_len, batches.pad_id, settings.batch_size, device)
    shifted = logits - logits.max(1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    scored = choice_outcome(task, list(log_probs))
    return scored, summarize(scored, settings)
