"""The classification objective (finetune.objective: classification) on a tiny seeded model: the head's loss
is the plain cross-entropy of each unpadded text's last-position logits, padding changes nothing, the test set
is scored with the evaluation stage's metrics (equal to scikit-learn's), and labelled documents without a
label or with an unseen one are one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score

from lmforge.errors import FinetuneError
from lmforge.evaluate.task_eval import EvalSettings
from lmforge.model.config import SIZES, ModelDims
from lmforge.model.decoder import Decoder
from lmforge.model.fused_ops import IGNORE_INDEX
from lmforge.transfer.classify import (
    ClassBatches,
    LabelledExample,
    class_logits,
    classification_head,
    classifier_loss,
    documents_task,
    pad_labelled,
    score_classifier,
)

DIMS = ModelDims(vocab_size=50, **SIZES["debug"])
SEQ = 16
LABELS = ["a", "b", "c"]


def labelled(n: int = 12, seed: int = 3) -> list[LabelledExample]:
    rng = np.random.default_rng(seed)
    return [LabelledExample(np.array([*rng.integers(1, 50, int(rng.integers(1, SEQ))), 0], dtype=np.int64),
                            int(rng.integers(0, 3)), f"t:{i}") for i in range(n)]


def classifier() -> Decoder:
    torch.manual_seed(0)
    model = Decoder(DIMS)
    classification_head(len(LABELS))(model)
    return model.eval()


def test_targets_hold_the_label_at_the_end_of_text_only():
    examples = labelled(4)
    batch = pad_labelled(examples, SEQ, pad_id=7)
    for row, e in enumerate(examples):
        n = len(e.ids)
        assert batch[row, 0, :n].tolist() == e.ids.tolist() and (batch[row, 0, n:] == 7).all()
        assert batch[row, 1, n - 1] == e.label and (np.delete(batch[row, 1], n - 1) == IGNORE_INDEX).all()


def test_loss_is_the_cross_entropy_of_each_unpadded_texts_last_logits():
    model, examples = classifier(), labelled()
    assert model.lm_head.weight.shape == (3, DIMS.d_model)
    assert model.lm_head.weight.data_ptr() != model.embed_tokens.weight.data_ptr()  # untied by the new head
    with torch.no_grad():
        loss = classifier_loss(model, torch.from_numpy(pad_labelled(examples, SEQ, pad_id=9)))
        reference = torch.stack([F.cross_entropy(model(torch.from_numpy(e.ids)[None])[0, -1], torch.tensor(e.label))
                                 for e in examples]).mean()
    assert abs(loss.item() - reference.item()) < 1e-5


def test_test_set_metrics_are_the_evaluation_stages_and_equal_sklearns():
    model, examples = classifier(), labelled(30)
    from lmforge.evaluate.task_examples import ClassificationExample
    from lmforge.evaluate.tasks import Task, TaskSpec

    test = tuple(ClassificationExample(e.where, "x", LABELS[e.label]) for e in examples)
    task = Task(TaskSpec(name="labels", kind="classification", path="test.jsonl", labels=LABELS), None, test)
    batches = ClassBatches(examples[:2], examples[:2], examples, LABELS, pad_id=0)
    _, entry = score_classifier(model, batches, task, EvalSettings(resamples=50), SEQ, "cpu")
    pred = class_logits(model, examples, SEQ, 0, 8, "cpu").argmax(1)
    gold = [e.label for e in examples]
    assert entry["metrics"]["acc"]["estimate"] == pytest.approx(accuracy_score(gold, pred))
    assert entry["metrics"]["f1_macro"]["estimate"] == pytest.approx(f1_score(gold, pred, average="macro",
                                                                              labels=[0, 1, 2], zero_division=0))
    assert entry["confusion"]["labels"] == LABELS and sum(map(sum, entry["confusion"]["matrix"])) == 30


def test_validation_reports_loss_and_accuracy_of_the_held_out_examples():
    model, examples = classifier(), labelled(10)
    figures = ClassBatches(examples, examples, examples, LABELS, 0).evaluate(model, SEQ, batch_size=4,
                                                                               max_windows=None, device="cpu")
    logits = class_logits(model, examples, SEQ, 0, 4, "cpu")
    gold = np.array([e.label for e in examples])
    nll = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(gold)).item()
    assert figures["loss"] == pytest.approx(nll) and figures["tokens"] == 10
    assert figures["accuracy"] == pytest.approx((logits.argmax(1) == gold).mean())


def write_docs(folder, train, val):
    for name, records in (("train", train), ("val", val)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_labelled_documents_make_the_task_and_bad_labels_are_one_line(tmp_path):
    write_docs(tmp_path, [{"id": "1", "text": "x", "label": "b"}, {"id": "2", "text": "y", "label": "a"}],
               [{"id": "3", "text": "z", "label": "a"}])
    task = documents_task(tmp_path)
    assert task.spec.labels == ["a", "b"] and [e.label for e in task.train_examples] == ["b", "a"]
    assert [e.id for e in task.examples] == ["3"]
    write_docs(tmp_path, [{"id": "1", "text": "x", "label": "b"}, {"id": "2", "text": "y"}], [])
    with pytest.raises(FinetuneError, match=rf"^finetune.objective=classification: {tmp_path}/train.jsonl:2 has no "
                                            r"label \(give the source a label_field, or set finetune.task\)$"):
        documents_task(tmp_path)
    write_docs(tmp_path, [{"id": "1", "text": "x", "label": "b"}, {"id": "2", "text": "y", "label": "a"}],
               [{"id": "3", "text": "z", "label": "c"}])
    with pytest.raises(FinetuneError, match=r"val.jsonl: label 'c' \(document 3\) is not among the training labels"):
        documents_task(tmp_path)
