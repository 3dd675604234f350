"""Fine-tuning data and models beyond the run's own, end to end: new sources curated and packed with the base's
tokenizer; a Hugging Face base with a tokenizer of its own (``</s>`` ends its documents) fine-tuned, evaluated and
sampled with that tokenizer; the fine-tuned model (LoRA merged) loaded by eval and generate as ``finetuned``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from cli_errors import assert_error_line, snapshot
from conftest import run_cli
from lmforge.checkpoint.load import classifier_ids, load_model
from lmforge.command import resolve
from lmforge.data.packing import TokenShards
from lmforge.rundir import RunDir
from lmforge.transfer.classify import builtin_classification, documents_task

pytestmark = pytest.mark.integration

FAST = ["--set", "finetune.max_steps=6", "--set", "train.eval_every=3", "--set", "train.checkpoint_every=3"]
FOREIGN_EOS = "</s>"


def copy_of(base: Path, tmp_path: Path) -> Path:
    shutil.copytree(base, tmp_path / "run")
    return tmp_path / "run"


def generate_json(root: Path, *args: str) -> dict:
    code, out, err = run_cli("generate", "--run-dir", str(root), "--json", "--temperature", "0", *args)
    assert code == 0, err
    return json.loads(out)


def foreign_tokenizer(texts: list[str]) -> Tokenizer:
    """A byte-level BPE of another family: its end-of-text is ``</s>`` (id 1), after ``<unk>``."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", FOREIGN_EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


@pytest.fixture(scope="module")
def hf_base(trained_base, tmp_path_factory) -> Path:
    """A random Llama folder (vocabulary 416 over a 400-token tokenizer whose end-of-text is ``</s>``)."""
    folder = tmp_path_factory.mktemp("hf") / "llama"
    texts = [json.loads(line)["text"] for line in (trained_base / "curate" / "train.jsonl").open()][:40]
    tokenizer = foreign_tokenizer(texts)
    config = transformers.LlamaConfig(vocab_size=416, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      tie_word_embeddings=True, bos_token_id=None, eos_token_id=1)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=FOREIGN_EOS,
                                         unk_token="<unk>").save_pretrained(folder)
    return folder


def test_new_sources_are_curated_and_packed_with_the_base_tokenizer(trained_base, tmp_path):
    root = copy_of(trained_base, tmp_path)
    texts = tmp_path / "domain"
    texts.mkdir()
    rng = np.random.default_rng(0)  # a domain the stdlib base never saw: a shipping log
    words = ["crates", "of", "tea", "barrels", "oil", "harbour", "ship", "left", "arrived", "cargo", "wind",
             "north", "captain", "sailed", "morning", "evening", "rope", "deck", "salt", "fish", "the", "a"]
    for i in range(30):
        (texts / f"log_{i:02d}.txt").write_text("".join(
            " ".join(rng.choice(words, size=12)) + f", {rng.integers(1, 999)} tons.\n" for _ in range(8)))
    code, out, err = run_cli("finetune", "--run-dir", str(root), *FAST, "--set",
                             f"finetune.sources=[{{kind: text, path: '{texts}'}}]")
    assert code == 0, err
    summary = json.loads((root / "finetune" / "summary.json").read_text())
    assert summary["tokenizer"] == str(root / "tokenizer" / "tokenizer.json")
    shards = TokenShards(root / "finetune" / "tokens" / "train")
    assert shards.vocab_size == 512 and summary["train_tokens"] == shards.num_tokens > 0
    kept = [json.loads(line)["text"] for line in (root / "finetune" / "data" / "train.jsonl").open()]
    assert kept and all(t.endswith("tons.") for t in kept)  # the new domain, not the stdlib
    assert summary["final_val_loss"] < summary["base_val_loss"] - 0.2  # measured: 5.71 -> 5.33
    assert (root / "finetune" / "model.safetensors").is_file()
    assert not (root / "finetune" / "tokenizer").exists()  # the run's own tokenizer: nothing to copy


def test_a_missing_new_source_is_one_line_and_writes_nothing(trained_base, tmp_path):
    root = copy_of(trained_base, tmp_path)
    before = snapshot(root)
    code, _, err = run_cli("finetune", "--run-dir", str(root), "--set",
                           f"finetune.sources=[{{kind: text, path: '{tmp_path / 'nothing'}'}}]")
    assert_error_line(code, err, f"error: finetune.sources[0].path: no such file or directory: {tmp_path / 'nothing'}")
    assert snapshot(root) == before


def test_hf_base_is_finetuned_evaluated_and_sampled_with_its_own_tokenizer(trained_base, hf_base, tmp_path):
    root = copy_of(trained_base, tmp_path)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(hf_base, local_files_only=True).eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(hf_base, local_files_only=True)
    # generate: the HF model's greedy continuation in its own tokens
    sample = generate_json(root, "--checkpoint", str(hf_base), "--prompt", "def ", "--max-new-tokens", "8")
    prompt_ids = hf_tokenizer("def ", add_special_tokens=False, return_tensors="pt").input_ids
    expected = theirs.generate(prompt_ids, max_new_tokens=8, do_sample=False, eos_token_id=1, pad_token_id=1)
    assert sample["samples"][0]["completion"] == hf_tokenizer.decode(expected[0, prompt_ids.shape[1]:],
                                                                     skip_special_tokens=True)
    # eval: the run's validation documents packed with its tokenizer, every document ended by </s>
    code, out, err = run_cli("eval", "--run-dir", str(root), "--checkpoint", str(hf_base), "--set", "eval.tasks=[]")
    assert code == 0, err
    results = json.loads((root / "eval" / "results.json").read_text())
    [packed] = list((root / "eval" / "tokens").iterdir())
    val = TokenShards(packed)
    assert val.index["eos_id"] == 1 and val.vocab_size == 400
    assert results["checkpoint"] == str(hf_base) and 5.0 < results["after"]["loss"] < 7.0  # ~ln(416) = 6.03, random
    # finetune: the run's curated documents packed with the base's tokenizer, which the fine-tuned model keeps
    code, _, err = run_cli("finetune", "--run-dir", str(root), "--base", str(hf_base), *FAST, "--set", "finetune.lr=3e-3")
    assert code == 0, err
    summary = json.loads((root / "finetune" / "summary.json").read_text())
    assert summary["final_val_loss"] < summary["base_val_loss"] - 0.3
    assert TokenShards(root / "finetune" / "tokens" / "train").index["eos_id"] == 1
    kept = root / "finetune" / "tokenizer" / "tokenizer.json"
    assert kept.read_bytes() == (hf_base / "tokenizer.json").read_bytes()
    loaded = load_model(root / "finetune" / "model.safetensors")
    assert loaded.tokenizer_path == kept and loaded.tokenizer.eos_id == 1
    tuned = generate_json(root, "--checkpoint", "finetuned", "--prompt", "def ", "--max-new-tokens", "8")
    ids = loaded.tokenizer.encode("def ", add_special_tokens=False).ids
    from lmforge.model.generate import generate
    new = generate(loaded.model, ids, 8, temperature=0.0, eos_id=1)
    assert tuned["samples"][0]["completion"] == loaded.tokenizer.decode(new)
    code, _, err = run_cli("eval", "--run-dir", str(root), "--checkpoint", "finetuned", "--set", "eval.tasks=[]")
    assert code == 0, err
    after = json.loads((root / "eval" / "results.json").read_text())["after"]["loss"]
    assert after < results["after"]["loss"] - 0.3
    # and back to Hugging Face: the fine-tuned weights with the base's tokenizer files and end-of-text
    code, _, err = run_cli("export", "--run-dir", str(root), "--checkpoint", "finetuned", "--format", "hf")
    assert code == 0, err
    exported = root / "finetune" / "model-hf"
    back = transformers.AutoModelForCausalLM.from_pretrained(exported, local_files_only=True).eval()
    assert back.config.eos_token_id == 1
    assert transformers.AutoTokenizer.from_pretrained(exported, local_files_only=True).eos_token == FOREIGN_EOS
    probe = torch.tensor([ids * 4])
    with torch.no_grad():
        assert (back(input_ids=probe).logits - loaded.model(probe)).abs().max().item() < 1e-5


def test_lora_finetune_is_loaded_merged_and_its_checkpoints_are_refused_by_name(trained_base, tmp_path):
    root = copy_of(trained_base, tmp_path)
    code, _, err = run_cli("finetune", "--run-dir", str(root), *FAST, "--set", "finetune.mode=lora",
                           "--set", "finetune.lr=1e-2")
    assert code == 0, err
    summary = json.loads((root / "finetune" / "summary.json").read_text())
    assert summary["model"] == "finetune/model.safetensors"
    code, _, err = run_cli("eval", "--run-dir", str(root), "--checkpoint", "finetuned", "--set", "eval.tasks=[]")
    assert code == 0, err
    results = json.loads((root / "eval" / "results.json").read_text())
    assert abs(results["after"]["loss"] - summary["final_val_loss"]) < 0.1  # the merged model is the fine-tuned one
    checkpoint = root / "finetune" / "checkpoints" / "step_00000006"
    before = snapshot(root)
    code, _, err = run_cli("generate", "--run-dir", str(root), "--checkpoint", str(checkpoint))
    assert_error_line(code, err, f"error: checkpoint {checkpoint}: a LoRA fine-tuning checkpoint (adapters beside "
                                 "the base's weights); load the fine-tuned model, LoRA merged: finetuned (its run's "
                                 "finetune/model.safetensors)")
    assert snapshot(root) == before


CLASSIFY = ["--set", "finetune.objective=classification", "--set", "finetune.max_steps=30", "--set",
            "train.eval_every=10", "--set", "train.checkpoint_every=10"]


def check_classifier_file(root: Path, summary: dict, examples) -> None:
    """``finetune/model.safetensors`` loads as the classifier: its labels, a head of one row per label, and on
    the test examples (text tokens + end-of-text, ``classifier_ids``) the probabilities and accuracy that
    ``classifier_outputs`` measured with the model in memory."""
    loaded = load_model(root / "finetune" / "model.safetensors")
    assert loaded.labels == summary["labels"] and summary["model"] == "finetune/model.safetensors"
    assert loaded.model.lm_head.weight.shape == (len(summary["labels"]), loaded.model.dims.d_model)
    measured = {p["id"]: p for p in map(json.loads, (root / "finetune" / "test" / "predictions.jsonl").open())}
    correct = 0
    with torch.no_grad():
        for e in examples:
            ids = classifier_ids(loaded.tokenizer.encode(e.text, add_special_tokens=False).ids, loaded.eos_id,
                                 loaded.seq_len)
            probs = torch.softmax(loaded.model(torch.tensor([ids]))[0, -1].double(), -1)
            pred = loaded.labels[int(probs.argmax())]
            assert pred == measured[e.id]["prediction"]
            assert max(abs(p - measured[e.id]["probabilities"][label])
                       for label, p in zip(loaded.labels, probs.tolist())) < 1e-5
            correct += pred == e.label
    assert correct / len(examples) == summary["test"]["metrics"]["acc"]["estimate"]


@pytest.mark.parametrize("mode", [[], ["--set", "finetune.mode=lora", "--set", "finetune.lr=1e-2"]],
                         ids=["full", "lora"])
def test_classification_head_on_a_builtin_task_beats_the_prompted_base(trained_base, tmp_path, mode):
    root = copy_of(trained_base, tmp_path)
    code, _, err = run_cli("finetune", "--run-dir", str(root), *CLASSIFY, "--set", "finetune.task=which_package", *mode)
    assert code == 0, err
    summary = json.loads((root / "finetune" / "summary.json").read_text())
    assert summary["labels"] == ["asyncio", "ctypes"] and summary["final_val_loss"] < summary["base_val_loss"]
    test, base = summary["test"], summary["base_test"]
    assert test["examples"] == 96 and sorted(test["files"]) == ["confusion", "predictions", "reliability"]
    assert {"acc", "f1_macro", "ece"} <= set(test["metrics"]) and test["confusion"]["labels"] == summary["labels"]
    cfg, _ = resolve(None, root, ())
    check_classifier_file(root, summary, builtin_classification(RunDir(root), "which_package", cfg.seed,
                                                                cfg.eval.builtin_examples).examples)
    if mode:  # LoRA: the adapters and the new head train, nothing else (a 10-step base: measured acc 0.60)
        assert 0 < summary["trainable_share"] < 0.25
        return
    # measured on CPU: 0.875 [0.80, 0.94]; the prompted base 0.54 on the 48 examples that fit its context
    assert test["metrics"]["acc"]["estimate"] >= 0.75 > base["metrics"]["acc"]["estimate"]
    exported = load_model(root / "finetune" / "model.safetensors")
    checkpoint = load_model(root / "finetune" / "checkpoints" / "step_00000030")  # a checkpoint of it loads too
    probe = torch.tensor([classifier_ids([5, 9, 3], exported.eos_id, exported.seq_len)])
    with torch.no_grad():
        assert torch.equal(checkpoint.model(probe), exported.model(probe))
    assert checkpoint.labels == summary["labels"]


def test_classification_labels_from_a_sources_label_field(trained_base, tmp_path):
    root = copy_of(trained_base, tmp_path)
    rng = np.random.default_rng(1)
    words = {"tea": ["leaves", "cup", "brew", "green", "steep", "pot"], "oil": ["barrel", "crude", "pump", "refine",
                                                                               "well", "drill"]}
    records = tmp_path / "labelled.jsonl"
    with records.open("w") as f:
        for i in range(120):
            label = ["tea", "oil"][i % 2]
            text = " ".join(" ".join(rng.choice(words[label] + ["the", "and", "of", "with", "a", "is"], size=12)).capitalize()
                            + "." for _ in range(6))
            f.write(json.dumps({"body": f"note {i}: {text}", "kind": label}) + "\n")
    source = f"[{{kind: jsonl, path: '{records}', field: body, label_field: kind}}]"
    code, _, err = run_cli("finetune", "--run-dir", str(root), *CLASSIFY, "--set", f"finetune.sources={source}")
    assert code == 0, err
    summary = json.loads((root / "finetune" / "summary.json").read_text())
    assert summary["labels"] == ["oil", "tea"] and "base_test" not in summary
    assert summary["test"]["metrics"]["acc"]["estimate"] >= 0.9  # words of two vocabularies: easy
    check_classifier_file(root, summary, documents_task(root / "finetune" / "data").examples)
    classifier = root / "finetune" / "model.safetensors"
    before = snapshot(root)
    for command in (["eval", "--checkpoint", "finetuned"], ["generate", "--checkpoint", str(classifier)]):
        code, _, err = run_cli(*command, "--run-dir", str(root))
        assert_error_line(code, err, f"error: checkpoint {classifier}: a classifier (lmforge finetune objective "
                                     f"classification; labels oil, tea), not a language model; lmforge "
                                     f"{command[0]} needs a language model")
    assert snapshot(root) == before


@pytest.mark.parametrize("settings, line", [
    (["--set", "finetune.objective=classification"],
     "error: finetune.objective=classification needs labels: data.sources[0] has no label_field (or set "
     "finetune.task, e.g. which_package)"),
    (["--set", "finetune.objective=classification", "--set", "finetune.task=docstring_to_name"],
     "error: finetune.task: 'docstring_to_name' is a multiple_choice task, not a classification one (built-in: "
     "which_package)"),
    (["--set", "finetune.task=which_package"],
     "error: finetune.task is read by objective classification only (finetune.objective=causal_lm)"),
])
def test_bad_classification_settings_are_one_line_and_write_nothing(trained_base, tmp_path, settings, line):
    root = copy_of(trained_base, tmp_path)
    before = snapshot(root)
    code, _, err = run_cli("finetune", "--run-dir", str(root), *settings)
    assert_error_line(code, err, line)
    assert snapshot(root) == before
