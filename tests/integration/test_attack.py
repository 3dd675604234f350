"""``lmforge attack`` end to end on the debug run trained 10 steps: the language-model loss of validation
continuations, a fine-tuned classifier's task examples and the language model as the evaluation stage's verbalizer
classifier under FGSM, PGD and HotFlip, every adversarial example within its budget (checked again on the loaded
model), the summary in TextAttack's shape, the same report from the same recipe, a model compared with itself
(attack.compare) giving the same row; bad input refused in one line with nothing written."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil

import pytest
import torch

from cli_errors import assert_error_line, snapshot
from conftest import run_cli
from lmforge.attack.hotflip import nearest_neighbours
from lmforge.attack.objective import Example, embed, scores
from lmforge.checkpoint.load import LABELS, load_model, pick
from lmforge.command import resolve
from lmforge.evaluate.task_eval import fitting, score_task
from lmforge.rundir import RunDir
from lmforge.transfer.classify import builtin_classification

pytestmark = pytest.mark.integration

LM = ["--set", "attack.examples=3", "--set", "attack.context_tokens=16", "--set", "attack.continuation_tokens=4",
      "--set", "attack.protected_ids=[10, 11]", "--set",
      "attack.attacks=[{name: fgsm, epsilon: 0.5}, {name: pgd, epsilon: 0.5, steps: 4}, "
      "{name: pgd, norm: l2, epsilon: 0.5, scale: token, steps: 4}, {name: hotflip, max_changed: 0.25, neighbours: 8}, "
      "{name: gcg, target: 'return None', suffix_tokens: 3, top_k: 8, candidates: 8, steps: 3}]"]
FINETUNE = ["--set", "finetune.objective=classification", "--set", "finetune.task=which_package", "--set",
            "finetune.max_steps=6", "--set", "train.eval_every=6", "--set", "train.checkpoint_every=6"]
CLASSIFIER = ["--checkpoint", "finetuned", "--set", "attack.examples=4", "--set",
              "attack.attacks=[{name: pgd, epsilon: 5.0, steps: 10}, {name: hotflip, max_changed: 0.5, candidates: 4}]"]
VERBALIZER = ["--task", "which_package", "--set", "attack.target=verbalizer", "--set", "attack.examples=4", "--set",
              "attack.attacks=[{name: pgd, epsilon: 5.0, steps: 4}, {name: hotflip, max_changed: 0.5, candidates: 4}]"]


@pytest.fixture(scope="module")
def attacked(trained_base, tmp_path_factory):
    """The language model attacked (twice: the report of the second run is compared with the first's) and a
    fine-tuned classifier attacked, each in its own copy of the trained debug run."""
    folder = tmp_path_factory.mktemp("attack")
    lm, cls = folder / "lm", folder / "cls"
    shutil.copytree(trained_base, lm)
    code, out, err = run_cli("attack", "--run-dir", str(lm), *LM)
    assert code == 0, err
    first = {name: (lm / "attack" / name).read_bytes() for name in ("report.json", "report.md", "summary.json")}
    code, _, err = run_cli("attack", "--run-dir", str(lm), *LM)
    assert code == 0, err
    shutil.copytree(trained_base, cls)
    code, _, err = run_cli("finetune", "--run-dir", str(cls), *FINETUNE)
    assert code == 0, err
    adv = folder / "adv"  # the same fine-tuning, adversarially: compared with the plain classifier
    shutil.copytree(trained_base, adv)
    code, _, err = run_cli("finetune", "--run-dir", str(adv), *FINETUNE, "--set", "finetune.adversarial.method=pgd",
                           "--set", "finetune.adversarial.epsilon=0.05", "--set", "finetune.adversarial.steps=2")
    assert code == 0, err
    code, cls_out, err = run_cli("attack", "--run-dir", str(cls), *CLASSIFIER, "--set",
                                 f"attack.compare=[finetuned, {adv / 'finetune' / 'model.safetensors'}]")
    assert code == 0, err
    verb = folder / "verb"
    shutil.copytree(trained_base, verb)
    code, _, err = run_cli("attack", "--run-dir", str(verb), *VERBALIZER)
    assert code == 0, err
    return {"lm": lm, "cls": cls, "adv": adv, "verb": verb, "first": first, "out": out, "cls_out": cls_out}


def report(root):
    return json.loads((root / "attack" / "report.json").read_text())


def rescored(loaded, e: dict) -> tuple[float, int]:
    """The loss and prediction of the loaded model on an entry's adversarial tokens and its fixed ones."""
    label = None if e["label"] is None else loaded.labels.index(e["label"])
    ex = Example(e["example"], tuple(e["adversarial_ids"]), tuple(e["suffix_ids"]), label, ())
    with torch.no_grad():
        loss, prediction = scores(loaded.model, ex, embed(loaded.model, torch.tensor([ex.ids])))
    return float(loss[0]), int(prediction[0])


def check_budgets(root, rep: dict) -> None:
    """Every example under every attack within its budget: embedding perturbations inside their balls, PGD's loss
    never below the clean one, HotFlip's changes within its share, off protected tokens, among the original
    token's embedding neighbours, and its reported loss the loaded model's on the adversarial tokens."""
    loaded = load_model(rep["model"])
    model = loaded.model
    protected = {loaded.eos_id or 0, *rep["settings"]["protected_ids"], *loaded.tokenizer.get_added_tokens_decoder()}
    for key, a in rep["attacks"].items():
        spec = a["settings"]
        for e in a["examples"]:
            if e["skipped"]:
                continue
            if spec["name"] in ("fgsm", "pgd"):
                assert e["budget_used"] <= 1 + 1e-5 and e["adversarial_ids"] == e["original_ids"]
                assert all(e["original_ids"][i] not in protected for i in e["changed"])
                if spec["name"] == "pgd":
                    assert e["attacked_loss"] >= e["clean_loss"]
                continue
            if spec["name"] == "gcg":  # the context kept, the suffix after it free of protected tokens
                n = len(e["original_ids"])
                assert e["adversarial_ids"][:n] == e["original_ids"] and e["changed"] == list(range(n, n + 3))
                assert len(e["adversarial_ids"]) == e["tokens"] == n + 3
                assert not protected & set(e["adversarial_ids"][n:])
                assert e["suffix_ids"] == loaded.tokenizer.encode(spec["target"], add_special_tokens=False).ids
                continue
            changed = [i for i, (a_, b) in enumerate(zip(e["original_ids"], e["adversarial_ids"])) if a_ != b]
            assert sorted(e["changed"]) == changed
            assert len(changed) <= math.floor(spec["max_changed"] * e["tokens"])
            near = nearest_neighbours(model.embed_tokens.weight.detach(), e["original_ids"], spec["neighbours"],
                                      protected)
            for i in changed:
                assert e["original_ids"][i] not in protected and e["adversarial_ids"][i] not in protected
                assert e["adversarial_ids"][i] in near[e["original_ids"][i]]
            assert e["attacked_loss"] >= e["clean_loss"]


def test_the_language_model_attacked(attacked):
    root = attacked["lm"]
    assert {p.name for p in (root / "attack").iterdir()} == {"report.json", "report.md", "summary.json"}
    rep = report(root)
    summary = json.loads((root / "attack" / "summary.json").read_text())
    assert summary["target"] == "language_model" and summary["examples"] == 3
    assert set(summary["attacks"]) == {"fgsm_linf", "pgd_linf", "pgd_l2", "hotflip", "gcg"}
    check_budgets(root, rep)
    loaded = load_model(pick(RunDir(root)))
    for key, a in rep["attacks"].items():
        s = summary["attacks"][key]
        assert s["skipped_attacks"] == 0 and s["successful_attacks"] + s["failed_attacks"] == 3
        for e in a["examples"]:
            if key == "gcg":  # success: the target is the greedy continuation after the suffix
                loss, hits = rescored(loaded, e)
                assert loss == pytest.approx(e["attacked_loss"], rel=1e-5)
                assert e["success"] == (hits == len(e["suffix_ids"])) and e["attacked_correct"] == hits / len(e["suffix_ids"])
                continue
            assert s["average_tokens_per_input"] == 16 and s["clean_loss"] == summary["clean_loss"]
            assert e["success"] == (e["attacked_loss"] - e["clean_loss"] >= rep["settings"]["success_margin"])
            if key == "hotflip":  # the reported loss is the loaded model's on the adversarial tokens
                assert rescored(loaded, e)[0] == pytest.approx(e["attacked_loss"], rel=1e-5)
    assert summary["attacks"]["hotflip"]["attacked_loss"] > summary["clean_loss"]  # swaps kept only if they raise it
    assert summary["attacks"]["pgd_linf"]["attacked_loss"] >= summary["clean_loss"]
    md = (root / "attack" / "report.md").read_text()
    assert "| Attack success rate |" in md and "## hotflip" in md and "[[" in md
    assert "pgd_linf: accuracy under attack" in attacked["out"]


def test_the_same_recipe_gives_the_same_report(attacked):
    for name, data in attacked["first"].items():
        assert (attacked["lm"] / "attack" / name).read_bytes() == data, name


def test_a_classifier_attacked(attacked):
    root = attacked["cls"]
    rep = report(root)
    assert rep["target"] == "classifier" and rep["examples"] == 4
    check_budgets(root, rep)
    loaded = load_model(root / "finetune" / "model.safetensors")
    for key, a in rep["attacks"].items():
        s = a["summary"]
        assert s["accuracy_under_attack"] <= s["original_accuracy"] == rep["clean_accuracy"]
        for e in a["examples"]:
            assert e["skipped"] == (e["clean_prediction"] != e["label"])  # already wrong: not attacked
            assert e["success"] == (not e["skipped"] and e["attacked_prediction"] != e["label"])
            if key == "hotflip" and not e["skipped"]:  # the adversarial tokens, scored again
                loss, prediction = rescored(loaded, e)
                assert loss == pytest.approx(e["attacked_loss"], rel=1e-5)
                assert loaded.labels[prediction] == e["attacked_prediction"]
    assert rep["attacks"]["pgd_linf"]["summary"]["successful_attacks"] >= 1  # epsilon 5 fools it
    summary = json.loads((root / "attack" / "summary.json").read_text())
    main, again, hardened = summary["models"]  # attack.compare: itself (the same examples, seeds), the adversarial one
    assert main == again == rep["models"][0] and main["adversarial"] is None and rep["models"] == summary["models"]
    assert (main["model"], main["clean_accuracy"], main["attacks"]) == (rep["model"], rep["clean_accuracy"],
                                                                         summary["attacks"])
    assert hardened["model"] == str(attacked["adv"] / "finetune" / "model.safetensors")
    assert hardened["adversarial"] == load_model(hardened["model"]).adversarial
    assert (hardened["adversarial"]["method"], hardened["adversarial"]["epsilon"]) == ("pgd", 0.05)
    assert set(hardened["attacks"]) == {"pgd_linf", "hotflip"} and hardened["attacks"] != main["attacks"]
    for m in summary["models"]:
        assert all(s["accuracy_under_attack"] <= s["original_accuracy"] == m["clean_accuracy"]
                   for s in m["attacks"].values())
    md = (root / "attack" / "report.md").read_text()

    def row(m, training):
        return (f"| {m['model']} | {training} | {m['clean_accuracy']:.4g} | " +
                " | ".join(f"{m['attacks'][k]['accuracy_under_attack']:.4g}" for k in ("pgd_linf", "hotflip")) + " |\n")
    assert md.count(row(main, "no adversarial training")) == 2
    assert row(hardened, "adversarial training: pgd eps=0.05") in md
    assert "| model | training | clean accuracy | accuracy under pgd_linf | accuracy under hotflip |" in md


def test_the_language_model_attacked_as_the_evaluation_stages_verbalizer_classifier(attacked):
    root = attacked["verb"]
    rep = report(root)
    assert rep["target"] == "verbalizer" and rep["examples"] == 4 and len(rep["models"]) == 1
    check_budgets(root, rep)
    loaded = load_model(rep["model"])
    cfg, _ = resolve(None, root, ())
    task, _ = fitting(builtin_classification(RunDir(root), "which_package", cfg.seed, cfg.eval.builtin_examples),
                      loaded.tokenizer, loaded.model.dims.context_length)
    names = {f"which_package-{re.sub(r'[^A-Za-z0-9._-]+', '_', ex.id)}": ex for ex in task.examples}
    chosen = [names[e["example"]] for e in rep["attacks"]["pgd_linf"]["examples"]]
    scored = score_task(loaded.model, loaded.tokenizer, dataclasses.replace(task, examples=tuple(chosen), lines=()))
    tail = "\n# package:"  # the template after the text: its tokens are never changed
    for key, a in rep["attacks"].items():
        s = a["summary"]
        assert s["accuracy_under_attack"] <= s["original_accuracy"] == rep["clean_accuracy"]
        for e, p in zip(a["examples"], scored.predictions):  # the clean figures: the evaluation stage's scores
            ll = torch.tensor(list(p["loglikelihoods"].values()), dtype=torch.float64)
            gold = list(p["loglikelihoods"]).index(p["gold"])
            assert e["clean_loss"] == pytest.approx(float(-ll.log_softmax(0)[gold]), abs=1e-5)
            assert (e["clean_prediction"], e["label"]) == (p["prediction"], p["gold"])
            k = next(k for k in range(1, 8) if loaded.tokenizer.decode(e["original_ids"][-k:]) == tail)
            n = len(e["original_ids"])
            assert e["adversarial_ids"][-k:] == e["original_ids"][-k:] and all(i < n - k for i in e["changed"])
            assert e["tokens"] <= n - k and e["suffix_ids"] == []
    # the 10-step model's verbalizer scores hang on the template more than the text: PGD raises the loss, no more
    assert all(e["attacked_loss"] > e["clean_loss"] for e in rep["attacks"]["pgd_linf"]["examples"] if not e["skipped"])


LONG_TEXT = "def f(x):\n    return x + 1\n\n" * 30
STEP = "train/checkpoints/step_00000010"


@pytest.mark.parametrize("args, line", [
    (["--set", "attack.attacks=[{name: pgd, epsilon: 0}]"],
     "error: recipe {root}/recipe.yaml: attack.attacks.0.pgd.epsilon: Input should be greater than 0 (got 0)"),
    (["--set", "attack.attacks=[{name: hotflip, max_changed: 1.5}]"],
     "error: recipe {root}/recipe.yaml: attack.attacks.0.hotflip.max_changed: Input should be less than or equal "
     "to 1 (got 1.5)"),
    (["--set", "attack.attacks=[{name: hotflip, max_changed: 0}]"],
     "error: recipe {root}/recipe.yaml: attack.attacks.0.hotflip.max_changed: Input should be greater than 0 "
     "(got 0)"),
    (["--set", "attack.attacks=[{name: pgd, steps: 0}]"],
     "error: recipe {root}/recipe.yaml: attack.attacks.0.pgd.steps: Input should be greater than or equal to 1 "
     "(got 0)"),
    (["--set", "attack.attacks=[{name: deepfool}]"],
     "error: recipe {root}/recipe.yaml: attack.attacks: unknown attack 'deepfool' at position 0 (known: fgsm, pgd, "
     "hotflip, gcg)"),
    (["--set", "attack.target=classifier"],
     "error: attack.target=classifier: the model {root}/" + STEP + " has no classification head (a language "
     "model); attack a classifier (lmforge finetune with finetune.objective=classification) or set "
     "attack.target=language_model"),
    (["--text", LONG_TEXT],
     "error: attack.texts[0]: the text is {long} tokens, longer than the model's context of 128 tokens"),
    (["--set", "attack.context_tokens=120", "--set", "attack.attacks=[{name: gcg, target: import os}]"],
     "error: attack.attacks[0] gcg: a context, the suffix and the target 'import os' are 120 + 5 + {target} tokens, "
     "longer than the model's context of 128 tokens"),
    (["--set", "attack.protected_ids=[999999]"],
     "error: attack.protected_ids: 999999 is not a token of the model's vocabulary of {vocab}"),
    (["--set", "attack.context_tokens=200"],
     "error: attack: context_tokens + continuation_tokens = 208 tokens, longer than the model's context of 128 "
     "tokens"),
])
def test_bad_input_is_one_line_and_writes_nothing(attacked, args, line):
    root = attacked["lm"]
    loaded = load_model(pick(RunDir(root)))
    long, target = (len(loaded.tokenizer.encode(t, add_special_tokens=False).ids) for t in (LONG_TEXT, "import os"))
    before = snapshot(root)
    code, _, err = run_cli("attack", "--run-dir", str(root), *args)
    vocab = loaded.model.dims.vocab_size
    assert_error_line(code, err, line.format(root=root, long=long, target=target, vocab=vocab))
    assert snapshot(root) == before


@pytest.mark.parametrize("args, line", [
    (["--set", "attack.target=language_model"],
     "error: attack.target=language_model: the model {model} is a classifier (labels asyncio, ctypes), without a "
     "language-model head"),
    (["--set", "attack.attacks=[{name: gcg}]"],
     "error: attack.attacks[0] gcg: a suffix search makes a language model's continuation likely; the model {model} "
     "is a classifier"),
])
def test_a_classifier_has_no_language_model_loss_to_attack(attacked, args, line):
    root = attacked["cls"]
    before = snapshot(root)
    code, _, err = run_cli("attack", "--run-dir", str(root), "--checkpoint", "finetuned", *args)
    assert_error_line(code, err, line.format(model=root / "finetune" / "model.safetensors"))
    assert snapshot(root) == before


@pytest.mark.parametrize("args, line", [
    (["--set", "attack.target=verbalizer"],
     "error: attack.task: a classifier is attacked on a classification task's examples; give one (built-in: "
     "which_package, or a task YAML)"),
    (["--set", "attack.target=verbalizer", "--task", "docstring_to_name"],
     "error: attack.task: 'docstring_to_name' is a multiple_choice task, not a classification one"),
    (["--set", "attack.target=verbalizer", "--task", "which_package", "--set", "attack.attacks=[{name: gcg}]"],
     "error: attack.attacks[0] gcg: a suffix search makes a language model's continuation likely; "
     "attack.target=verbalizer attacks the label its verbalizers score"),
    (["--set", "attack.compare=[finetuned]"],
     "error: attack.compare[0]: {root}/finetune/model.safetensors: no fine-tuned model; run lmforge finetune first"),
])
def test_bad_verbalizer_or_compare_input_is_one_line_and_writes_nothing(attacked, args, line):
    root = attacked["lm"]
    before = snapshot(root)
    code, _, err = run_cli("attack", "--run-dir", str(root), *args)
    assert_error_line(code, err, line.format(root=root))
    assert snapshot(root) == before


def relabelled(source, folder, labels):
    """A copy of the classifier file with other label names in its metadata (the same head)."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(source), "pt") as f:
        meta, weights = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    path = folder / "relabelled.safetensors"
    save_file(weights, str(path), metadata={**meta, LABELS: json.dumps(labels)})
    return path


def test_a_classifier_is_compared_only_with_a_classifier_of_its_labels(attacked, tmp_path):
    root = attacked["cls"]
    model = root / "finetune" / "model.safetensors"
    other = relabelled(model, tmp_path, ["asyncio", "json"])
    step = root / STEP
    for args, line in [
        (["--set", "attack.target=verbalizer", "--task", "which_package"],
         f"error: attack.target=verbalizer: the model {model} is a classifier (labels asyncio, ctypes), without a "
         "language-model head to score verbalizers"),
        (["--set", f"attack.compare=[finetuned, {other}]"],
         f"error: attack.compare[1]: the model {other} is a classifier (labels asyncio, json); the attacked model "
         f"{model} has labels asyncio, ctypes"),
        (["--set", "attack.compare=[latest]"],
         f"error: attack.compare[0]: the model {step} is a language model; the attacked model {model} is attacked "
         "as classifier"),
    ]:
        before = snapshot(root)
        code, _, err = run_cli("attack", "--run-dir", str(root), "--checkpoint", "finetuned", *args)
        assert_error_line(code, err, line)
        assert snapshot(root) == before


def exported_decoder(path, vocab_size: int, context_length: int):
    """A seeded debug decoder of the given vocabulary and context, written as an exported model file."""
    from lmforge.checkpoint.export import write_exported
    from lmforge.model.config import SIZES, ModelDims
    from lmforge.model.decoder import Decoder
    from lmforge.model.fused_layout import to_canonical
    torch.manual_seed(0)
    m = Decoder(ModelDims(vocab_size=vocab_size, **{**SIZES["debug"], "context_length": context_length}))
    weights = {k: v.clone() for k, v in to_canonical(m.state_dict(), m.dims).items()
               if not (k == "lm_head.weight" and m.dims.tie_embeddings)}  # a tied head is the embedding table
    write_exported(path, weights, m.dims.to_dict(), 0, None, "test")
    return path


def test_a_compared_model_of_another_vocabulary_or_a_shorter_context_is_refused(attacked, tmp_path):
    root = attacked["lm"]
    main = pick(RunDir(root))
    loaded = load_model(main)
    vocab, tokens = loaded.model.dims.vocab_size, loaded.tokenizer.get_vocab_size()
    other = exported_decoder(tmp_path / "other.safetensors", vocab + 8, 128)
    short = exported_decoder(tmp_path / "short.safetensors", vocab, 16)
    windows = ["--set", "attack.context_tokens=16", "--set", "attack.continuation_tokens=4", "--set",
               "attack.attacks=[{name: fgsm}]"]
    for compared, line in [
        (other, f"error: attack.compare[0]: the model {other} reads another vocabulary ({vocab + 8} embeddings, a "
                f"tokenizer of {tokens} tokens) than the attacked model {main} ({vocab}, {tokens})"),
        (short, f"error: attack.compare[0]: the model {short} reads 16 tokens at most; the attacked examples need 20"),
    ]:
        before = snapshot(root)
        code, _, err = run_cli("attack", "--run-dir", str(root), *windows, "--set", f"attack.compare=[{compared}]")
        assert_error_line(code, err, line)
        assert snapshot(root) == before
