"""Scoring a task: every figure traced back to the scorer on the same requests, independent of batch size;
metrics equal scikit-learn; examples that do not fit are refused with file and line (a built-in task drops
them instead)."""

import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score
from test_scoring import model, tokenizer  # noqa: F401 (the tiny seeded model and tokenizer fixtures)

from lmforge.errors import DataError
from lmforge.evaluate.scoring import greedy_continuations, loglikelihoods, rolling_loglikelihood
from lmforge.evaluate.task_eval import EvalSettings, fitting, score_task, summarize
from lmforge.evaluate.tasks import load_task

MC = [{"id": f"q{i}", "context": c, "choices": ch, "answer": a} for i, (c, ch, a) in enumerate([
    ("The cat sat on the", [" mat.", " log.", " dog"], 0),
    ("Question: what is two plus two? Answer:", [" four.", " five.", " A"], 0),
    ("def add(a, b):\n", ["    return a + b", "    pass"], 0),
    ("the quick brown fox jumps over the lazy", [" dog", " cat", " mat."], 0),
    ("The dog sat on the", [" log.", " mat."], 0),
    ("The cat", [" sat on the mat.", " jumps"], 1),
] * 2)]
for i, record in enumerate(MC):
    record["id"] = f"q{i}"
CLS = [{"id": i, "text": t, "label": lab} for i, (t, lab) in enumerate([
    ("The cat sat on the mat.", "animal"), ("def add(a, b): return a + b", "code"),
    ("The dog sat on the log.", "animal"), ("return a + b", "code"), ("the lazy dog", "animal"),
    ("def f(): pass", "code"), ("the quick brown fox", "animal"), ("two plus two", "code")] * 2)]


def write_task(tmp_path, name, spec, records):
    (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / f"{name}.yaml").write_text(json.dumps({"name": name, "path": f"{name}.jsonl", **spec}))
    return load_task(tmp_path / f"{name}.yaml")


def test_multiple_choice_is_lm_eval_scoring(tmp_path, model, tokenizer):
    task = write_task(tmp_path, "mc", {"kind": "multiple_choice"}, MC)
    scored = score_task(model, tokenizer, task)
    for record, p in zip(MC, scored.predictions):
        want = [s.logprob for s in loglikelihoods(model, tokenizer, [(record["context"], c) for c in record["choices"]],
                                                    batch_size=1, share_context=False)]
        assert p["loglikelihoods"] == pytest.approx(want, abs=1e-5)
        assert p["prediction"] == int(np.argmax(want))
        norm = np.array(want) / np.array([len(c) for c in record["choices"]])
        assert p["prediction_norm"] == int(np.argmax(norm))
        probs = np.exp(np.array(want) - max(want))
        assert p["probabilities"] == pytest.approx(list(probs / probs.sum()), abs=1e-6)
    entry = summarize(scored, EvalSettings())
    gold = [r["answer"] for r in MC]
    assert entry["metrics"]["acc"]["estimate"] == accuracy_score(gold, [p["prediction"] for p in scored.predictions])
    assert entry["metrics"]["acc_norm"]["estimate"] == accuracy_score(
        gold, [p["prediction_norm"] for p in scored.predictions])
    m = entry["metrics"]["acc"]
    assert m["low"] <= m["estimate"] <= m["high"]


@pytest.mark.parametrize("kind", ["multiple_choice", "classification"])
def test_batch_size_does_not_change_scores(tmp_path, model, tokenizer, kind):
    if kind == "multiple_choice":
        task = write_task(tmp_path, "mc", {"kind": kind}, MC)
    else:
        task = write_task(tmp_path, "cls", {"kind": kind, "labels": ["animal", "code"],
                                            "verbalizers": {"animal": " animal", "code": " code"}}, CLS)
    one = score_task(model, tokenizer, task, EvalSettings(batch_size=1))
    eight = score_task(model, tokenizer, task, EvalSettings(batch_size=8))
    for a, b in zip(one.predictions, eight.predictions):
        assert a["prediction"] == b["prediction"]
        la, lb = (np.array(list(p["loglikelihoods"].values()) if isinstance(p["loglikelihoods"], dict)
                           else p["loglikelihoods"]) for p in (a, b))
        assert np.abs(la - lb).max() < 1e-5


def test_classification_scores_the_verbalizer_after_the_template(tmp_path, model, tokenizer):
    spec = {"kind": "classification", "labels": ["animal", "code"], "template": "Text: {text}\nKind:",
            "verbalizers": {"animal": " animal", "code": " code"}}
    task = write_task(tmp_path, "cls", spec, CLS)
    scored = score_task(model, tokenizer, task)
    for record, p in zip(CLS, scored.predictions):
        prompt = f"Text: {record['text']}\nKind:"
        want = [s.logprob for s in loglikelihoods(model, tokenizer, [(prompt, " animal"), (prompt, " code")])]
        assert list(p["loglikelihoods"].values()) == pytest.approx(want, abs=1e-5)
        assert p["prediction"] == ["animal", "code"][int(np.argmax(want))]
    entry = summarize(scored, EvalSettings())
    gold, pred = [r["label"] for r in CLS], [p["prediction"] for p in scored.predictions]
    assert entry["metrics"]["f1_macro"]["estimate"] == pytest.approx(
        f1_score(gold, pred, labels=["animal", "code"], average="macro", zero_division=0))
    assert np.array(entry["confusion"]["matrix"]).sum() == len(CLS)
    cal = entry["calibration"]
    assert cal["temperature"] > 0 and cal["fit_examples"] == 8 and cal["heldout_examples"] == 8
    assert cal["accuracy_before"] == cal["accuracy_after"]


def test_generation_and_perplexity(tmp_path, model, tokenizer):
    records = [{"id": i, "prompt": p, "answer": a} for i, (p, a) in enumerate(
        [("The cat sat on", " the mat."), ("def add(a, b):", " return"), ("the quick", " brown")])]
    task = write_task(tmp_path, "gen", {"kind": "generation", "max_new_tokens": 6, "stop": ["\n"]}, records)
    scored = score_task(model, tokenizer, task)
    texts = greedy_continuations(model, tokenizer, [r["prompt"] for r in records], 6, ["\n"])
    assert [p["prediction"] for p in scored.predictions] == texts
    assert [p["exact_match"] for p in scored.predictions] == [t.strip() == r["answer"].strip()
                                                             for t, r in zip(texts, records)]
    docs = [{"id": i, "text": t} for i, t in enumerate(["The cat sat on the mat. " * 6, "def add(a, b): return a"])]
    task = write_task(tmp_path, "ppl", {"kind": "perplexity"}, docs)
    scored = score_task(model, tokenizer, task, EvalSettings(rolling_stride=16))
    for d, p in zip(docs, scored.predictions):
        ids = tokenizer.encode(d["text"], add_special_tokens=False).ids
        assert p["logprob"] == pytest.approx(rolling_loglikelihood(model, ids, stride=16).logprob, abs=1e-5)
    entry = summarize(scored, EvalSettings())
    lp, n = sum(p["logprob"] for p in scored.predictions), sum(p["tokens"] for p in scored.predictions)
    assert entry["metrics"]["loss"]["estimate"] == pytest.approx(-lp / n)


def test_an_example_longer_than_the_context_is_refused_by_line(tmp_path, model, tokenizer):
    long = MC[:2] + [{"id": "long", "context": "The cat sat on the mat. " * 40, "choices": [" a", " b"], "answer": 0}]
    task = write_task(tmp_path, "mc", {"kind": "multiple_choice"}, long)
    with pytest.raises(DataError, match=r"mc\.jsonl:3: example 'long' is \d+ tokens .* longer than the model's "
                                        r"context of 64 tokens"):
        score_task(model, tokenizer, task)
    kept, dropped = fitting(task, tokenizer, 64)
    assert dropped == 1 and [e.id for e in kept.examples] == ["q0", "q1"] and kept.where(1).endswith("mc.jsonl:2")
