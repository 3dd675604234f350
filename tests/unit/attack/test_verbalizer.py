"""A language model attacked as the evaluation stage's label-verbalizer classifier, on a tiny seeded model and BPE
tokenizer: its clean logits the evaluation stage's own scores of each label's word after the prompt (one- and
multi-token words, few-shot demonstrations), only the example's own text attackable (the template's and the
demonstrations' tokens never), FGSM / PGD / HotFlip leaving every template token as it was, PGD fooling it."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import pre_tokenizers, trainers

from lmforge.attack.config import EmbeddingAttack, TokenAttack
from lmforge.attack.embedding import fgsm, pgd
from lmforge.attack.examples import verbalizer_examples
from lmforge.attack.hotflip import hotflip, nearest_neighbours
from lmforge.attack.objective import embed, scores, verbalizer_logits
from lmforge.data.tokenizer import EOS_ID, EOS_TOKEN, new_tokenizer
from lmforge.evaluate.task_eval import score_task
from lmforge.evaluate.tasks import load_task
from lmforge.model.config import SIZES, ModelDims
from lmforge.model.decoder import Decoder

TEXTS = ["The cat sat on the mat.", "def add(a, b): return a + b", "The dog sat on the log.", "return x",
         "the lazy dog", "def f(): pass", "the quick brown fox", "import os"]
LABELS = ["animal", "code"]
RECORDS = [{"id": i, "text": t, "label": LABELS[("def" in t or "return" in t or "import" in t)]}
           for i, t in enumerate(TEXTS)]
SPEC = {"kind": "classification", "labels": LABELS, "template": "Text: {text}\nKind:",
        "verbalizers": {"animal": " animal", "code": " computer code"}}


@pytest.fixture(scope="module")
def tokenizer():
    tok = new_tokenizer()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=[EOS_TOKEN], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([*TEXTS, "Text: Kind: animal computer code"] * 3, trainer)
    assert tok.token_to_id(EOS_TOKEN) == EOS_ID
    return tok


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    dims = ModelDims(vocab_size=tokenizer.get_vocab_size(),
                     **{**SIZES["debug"], "context_length": 128, "init_std": 0.3})
    return Decoder(dims).eval().requires_grad_(False)


def task_of(tmp_path, few_shot: int = 0):
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    spec = {**SPEC, **({"train_path": "t.jsonl", "few_shot": few_shot} if few_shot else {})}
    (tmp_path / "t.yaml").write_text(json.dumps({"name": "t", "path": "t.jsonl", **spec}))
    return load_task(tmp_path / "t.yaml")


@pytest.mark.parametrize("few_shot", [0, 2])
def test_clean_logits_are_the_evaluation_stages_scores(tmp_path, model, tokenizer, few_shot):
    task = task_of(tmp_path, few_shot)
    examples = verbalizer_examples(task, tokenizer, 128, len(TEXTS), 0, {EOS_ID}, builtin=False)
    scored = score_task(model, tokenizer, task)
    assert [ex.label for ex in examples] == [LABELS.index(r["label"]) for r in RECORDS]
    assert {len(c) for ex in examples for c in ex.choices} == {1, 2}  # " computer code" is two tokens
    for ex, p in zip(examples, scored.predictions):
        with torch.no_grad():
            x = embed(model, torch.tensor([ex.ids]))
            logits = verbalizer_logits(model, ex, x)[0]
            loss, prediction = scores(model, ex, x)
        want = torch.tensor([p["loglikelihoods"][label] for label in LABELS], dtype=torch.float64)
        assert torch.allclose(logits.double(), want, atol=1e-5)
        assert LABELS[int(prediction[0])] == p["prediction"]
        assert float(loss[0]) == pytest.approx(float(-want.log_softmax(0)[ex.label]), abs=1e-5)


@pytest.mark.parametrize("few_shot", [0, 2])
def test_only_the_examples_own_text_is_attackable(tmp_path, tokenizer, few_shot):
    task = task_of(tmp_path, few_shot)
    for ex, record in zip(verbalizer_examples(task, tokenizer, 128, len(TEXTS), 0, {EOS_ID}, False), RECORDS):
        own = sorted(set(range(len(ex.context))) - set(ex.template))
        assert own == list(range(own[0], own[-1] + 1)) and ex.attackable == tuple(own)  # one run of tokens
        assert ex.text_tokens == len(own)
        prompt = task.prompt(task.examples[int(record["id"])])
        before_text = prompt[:prompt.rindex("Text: ") + len("Text: ")]  # the demonstrations and the template's
        front, back = (tokenizer.decode(list(ex.context[s])) for s in (slice(0, own[0]), slice(own[-1] + 1, None)))
        assert front.startswith(before_text) and back.endswith("\nKind:") and front.count("Text: ") == few_shot + 1
        # a token across the text's edge (" return": the template's space and the text's word) is the template's
        edge_front, edge_back = front[len(before_text):], back[:-len("\nKind:")]
        assert edge_front + tokenizer.decode([ex.context[j] for j in own]) + edge_back == record["text"]
        if edge_front:
            assert tokenizer.decode([ex.context[own[0] - 1]]) == " " + edge_front
        assert edge_back == ""


def test_attacks_leave_the_template_as_it_was(tmp_path, model, tokenizer):
    task = task_of(tmp_path)
    examples = verbalizer_examples(task, tokenizer, 128, len(TEXTS), 0, {EOS_ID}, False)
    near = nearest_neighbours(model.embed_tokens.weight, [ex.context[i] for ex in examples for i in ex.attackable],
                              8, {EOS_ID})
    flipped = fooled = 0
    for ex in examples:
        with torch.no_grad():
            clean, gold = (float(v[0]) for v in scores(model, ex, embed(model, torch.tensor([ex.ids]))))
        for spec in (EmbeddingAttack(name="fgsm", epsilon=2.0), EmbeddingAttack(name="pgd", epsilon=2.0, steps=4)):
            o = fgsm(model, ex, spec) if spec.name == "fgsm" else pgd(model, ex, spec, clean, seed=1)
            assert o.delta.shape == (len(ex.context), model.dims.d_model)
            assert float(o.delta[list(ex.template)].abs().max()) == 0 and set(o.changed) <= set(ex.attackable)
            if spec.name == "pgd":
                assert o.loss >= clean
                with torch.no_grad():
                    loss, prediction = scores(model, ex, embed(model, torch.tensor([ex.ids])) + o.delta)
                assert float(loss[0]) == pytest.approx(o.loss, rel=1e-5, abs=1e-6)
                fooled += int(gold) == ex.label != int(prediction[0])
        spec = TokenAttack(name="hotflip", max_changed=0.5, neighbours=8, candidates=4)
        o = hotflip(model, ex, spec, near, succeeded=lambda prediction, loss: prediction != int(gold))
        assert [o.ids[j] for j in ex.template] == [ex.context[j] for j in ex.template]
        assert set(o.changed) <= set(ex.attackable) and len(o.changed) <= int(0.5 * ex.text_tokens)
        with torch.no_grad():
            rescored = float(scores(model, ex, embed(model, torch.tensor([o.ids])))[0][0])
        assert rescored == pytest.approx(o.loss, rel=1e-5, abs=1e-6)
        flipped += len(o.changed) > 0
    assert flipped >= 1 and fooled >= 1  # seeded: PGD turns a right prediction wrong
