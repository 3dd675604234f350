"""The ``lmforge`` model of lm-evaluation-harness: lm-eval's numbers are lmforge's scorer's numbers.

A tiny seeded decoder is saved as a checkpoint in a run directory on disk with its tokenizer; a local
multiple-choice task (lm-eval YAML over a JSONL file, ``dataset_path: json``) is evaluated by lm-eval itself
through the registered model. Nothing reaches the network: the Hugging Face libraries are set offline and the
data set is read from the local file into a cache under the test's temporary folder.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # before lm_eval imports datasets, which reads it once
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lm_eval  # noqa: E402  (a dev dependency, pinned in requirements-dev.txt)
import pytest  # noqa: E402
import torch  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window  # noqa: E402

from lmforge.checkpoint.formats import save_checkpoint  # noqa: E402
from lmforge.data.tokenizer import EOS_ID  # noqa: E402
from lmforge.errors import LmforgeError  # noqa: E402
from lmforge.evaluate.lm_eval_model import LmforgeLM, main  # noqa: E402
from lmforge.evaluate.scoring import greedy_continuations, loglikelihoods, rolling_loglikelihood  # noqa: E402
from lmforge.rundir import RunDir  # noqa: E402
from test_scoring import CONTEXT_LENGTH, TEXTS, make_model, make_tokenizer, plain_score  # noqa: E402

TASK = "lmforge_toy_mc"
# (context, choices, answer), choices with their leading space (lm-eval's target_delimiter is "", as lmforge's task
# format has none): several multi-token choices after one context (shared-context batching), one-token choices,
# choices that extend one another, a context ending in whitespace (it moves to the choice), an empty context
ITEMS = [
    ("The cat sat on the", [" mat.", " log.", " dog sat", " fox"], 0),
    ("The dog sat on the", [" log.", " mat.", " cat", " lazy dog"], 0),
    ("Question: what is two plus two? Answer:", [" four.", " five.", " A", " two"], 0),
    ("def add(a, b):\n   ", [" return a + b", " return a - b", " pass", " return"], 0),
    ("the quick brown fox jumps over the", [" lazy dog", " cat", " mat.", " lazy"], 0),
    ("the quick brown", [" fox", " fox jumps", " dog", " cat sat"], 1),
    ("Question: what is", [" two plus two?", " four", " the cat", " A"], 2),
    (" ".join(["the quick brown fox jumps over the lazy dog"] * 2), [" and", " the", " mat.", " fox"], 3),
    ("", ["The cat sat", "def add", "Question", "the"], 0),
    ("x", [" y", " return", " a + b", " sat on"], 1),
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory as training leaves it: tokenizer/tokenizer.json and one checkpoint (no recipe)."""
    run = RunDir(tmp_path_factory.mktemp("lm_eval") / "run")
    tokenizer = make_tokenizer()
    run.tokenizer.parent.mkdir(parents=True)
    tokenizer.save(str(run.tokenizer))
    model = make_model(tokenizer)
    save_checkpoint(run.checkpoint(7), model, None,
                    {"step": 7, "resume_key": {"model": model.dims.to_dict(), "seq_len": CONTEXT_LENGTH}})
    return run.root


@pytest.fixture(scope="module")
def lm(run_dir) -> LmforgeLM:
    return LmforgeLM(run_dir=str(run_dir), batch_size=4)


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    """One examples file; lm-eval's task YAML over it in lm_eval/, lmforge's in lmforge/."""
    folder = tmp_path_factory.mktemp("lm_eval_tasks")
    examples = folder / "items.jsonl"
    examples.write_text("".join(json.dumps({"id": f"item{i}", "context": c, "choices": ch, "answer": a}) + "\n"
                                for i, (c, ch, a) in enumerate(ITEMS)))
    (folder / "lm_eval").mkdir()
    (folder / "lm_eval" / f"{TASK}.yaml").write_text(json.dumps({  # JSON is YAML
        "task": TASK,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(examples)}, "cache_dir": str(folder / "hf_cache")},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{context}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{answer}}",
        "target_delimiter": "",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }, indent=1))
    (folder / "lmforge").mkdir()
    (folder / "lmforge" / f"{TASK}.yaml").write_text(json.dumps(
        {"name": TASK, "kind": "multiple_choice", "path": str(examples)}))
    return folder


def instances(kind, arguments):
    return [Instance(kind, {}, args, i) for i, args in enumerate(arguments)]


def lmforge_predictions(model, tokenizer, batch_size):
    """lmforge's own answer to each item: the argmax over choices of scoring.loglikelihoods' sums."""
    requests = [(context, choice) for context, choices, _ in ITEMS for choice in choices]
    scores = iter(loglikelihoods(model, tokenizer, requests, batch_size=batch_size))
    sums = [[next(scores).logprob for _ in choices] for _, choices, _ in ITEMS]
    return [max(range(len(s)), key=s.__getitem__) for s in sums], sums


def test_lm_eval_accuracy_is_lmforge_accuracy(lm, run_dir, task_dir):
    results = lm_eval.simple_evaluate(
        model="lmforge", model_args={"run_dir": str(run_dir), "batch_size": 3}, tasks=[TASK],
        task_manager=TaskManager(include_path=str(task_dir / "lm_eval"), include_defaults=False), bootstrap_iters=0,
        log_samples=True)
    predictions, sums = lmforge_predictions(lm.model, lm.tokenizer, batch_size=3)
    answers = [answer for _, _, answer in ITEMS]
    accuracy = sum(p == a for p, a in zip(predictions, answers)) / len(ITEMS)
    assert 0 < accuracy < 1  # the items tell the two sides apart: a constant answer would not match
    assert results["results"][TASK]["acc,none"] == accuracy
    samples = sorted(results["samples"][TASK], key=lambda s: s["doc_id"])
    assert len(samples) == len(ITEMS)
    for sample, expected in zip(samples, sums):
        # lm-eval's requests were (context, choice); its log-likelihoods are the scorer's at the same batch
        # size (the scorer orders its batches by content, not by request order): exactly equal
        assert [args[1] for args in sample["arguments"]] == ITEMS[sample["doc_id"]][1]
        got = [float(resp[0]) for resp in sample["filtered_resps"]]
        assert got == expected
        assert sample["acc"] == float(max(range(4), key=got.__getitem__) == sample["target"])
    assert results["config"]["model_step"] == 7


def test_lm_eval_accuracy_is_the_eval_stages(lm, run_dir, task_dir):
    """lm-eval's acc on the task file equals lmforge's task scorer's (``task_eval``) on the same file."""
    from lmforge.evaluate import task_eval
    from lmforge.evaluate.tasks import load_task

    scored = task_eval.score_task(lm.model, lm.tokenizer, load_task(task_dir / "lmforge" / f"{TASK}.yaml"),
                                  task_eval.EvalSettings(batch_size=lm.batch_size))
    results = lm_eval.simple_evaluate(
        model=lm, tasks=[TASK], task_manager=TaskManager(include_path=str(task_dir / "lm_eval"),
                                                         include_defaults=False),
        bootstrap_iters=0, log_samples=True)
    assert results["results"][TASK]["acc,none"] == float(scored.outcome["correct"].mean())
    samples = sorted(results["samples"][TASK], key=lambda s: s["doc_id"])
    assert [[float(r[0]) for r in s["filtered_resps"]] for s in samples] == \
        [p["loglikelihoods"] for p in scored.predictions]
    predictions, _ = lmforge_predictions(lm.model, lm.tokenizer, lm.batch_size)
    assert [p["prediction"] for p in scored.predictions] == predictions


def test_loglikelihood_is_the_scorers(lm):
    requests = [(context, choice) for context, choices, _ in ITEMS for choice in choices]
    got = lm.loglikelihood(instances("loglikelihood", requests))
    expected = loglikelihoods(lm.model, lm.tokenizer, requests, batch_size=4)
    assert got == [(s.logprob, s.is_greedy) for s in expected]  # the same calls: exactly equal
    lm.batch_size, was = 1, lm.batch_size  # batch size changes fp32 rounding only (seen: 1.4e-5 on -37.7)
    try:
        for (a, ga), (b, gb) in zip(lm.loglikelihood(instances("loglikelihood", requests)), got):
            assert a == pytest.approx(b, abs=5e-5) and ga == gb
    finally:
        lm.batch_size = was


def test_loglikelihood_rolling_is_the_scorers_with_disjoint_windows(lm):
    texts = [" ".join(["the quick brown fox jumps over the lazy dog"] * 12), "def add(a, b):\n    return a + b\n",
             "x", ""]
    got = lm.loglikelihood_rolling(instances("loglikelihood_rolling", [(t,) for t in texts]))
    ids = [lm.tokenizer.encode(t, add_special_tokens=False).ids for t in texts]
    assert len(ids[0]) > 2 * CONTEXT_LENGTH  # several windows
    expected = [rolling_loglikelihood(lm.model, i, stride=CONTEXT_LENGTH, batch_size=4).logprob for i in ids]
    assert got == expected
    assert got[-1] == 0.0
    # lm-eval's own definition (HFLM: its rolling windows with context_len=1, made disjoint), one plain forward
    # per window: the stride of the model's context length is that
    for text_ids, logprob in zip(ids, got):
        windows = [make_disjoint_window(w) for w in get_rolling_token_windows(text_ids, EOS_ID, CONTEXT_LENGTH, 1)]
        reference = sum(plain_score(lm.model, context, continuation).logprob for context, continuation in windows)
        assert logprob == pytest.approx(reference, abs=1e-4)
    # and not the longest-context variant (stride 1), which reads more context for most tokens
    shorter = rolling_loglikelihood(lm.model, ids[0], stride=1, batch_size=4).logprob
    assert not math.isclose(got[0], shorter, abs_tol=1e-3)


def test_generate_until_stops_at_until(lm):
    prompt = "The cat sat on the"
    full = greedy_continuations(lm.model, lm.tokenizer, [prompt], 20)[0]
    assert len(full) > 4
    stop = full[2:4]  # a stop string the greedy continuation certainly reaches
    cut = full[:full.find(stop)]
    got = lm.generate_until(instances("generate_until", [
        (prompt, {"until": [stop], "max_gen_toks": 20}),
        (prompt, {"until": stop, "max_gen_toks": 20, "do_sample": False, "temperature": 0.7}),
        (prompt, {"until": ["\u2603"], "max_gen_toks": 20, "temperature": 0}),
        (prompt, {"until": ["\u2603"], "max_new_tokens": 3}),
    ]))
    assert got[:3] == [cut, cut, full]
    assert got[3] == greedy_continuations(lm.model, lm.tokenizer, [prompt], 3)[0] != full


@pytest.mark.parametrize("gen_kwargs, message", [
    ({"until": ["\n"], "do_sample": True, "temperature": 0.8}, "decodes greedily only; got do_sample=True"),
    ({"until": ["\n"], "temperature": 0.8}, "decodes greedily only; got do_sample=True"),
    ({"until": ["\n"], "num_beams": 4}, "generation kwarg 'num_beams' is not supported"),
    ({"until": ["\n"], "max_gen_toks": CONTEXT_LENGTH}, f"max_new_tokens {CONTEXT_LENGTH} leaves no room"),
])
def test_generate_until_refuses_what_it_cannot_do(lm, gen_kwargs, message):
    with pytest.raises(LmforgeError, match="^.*" + message.replace("(", r"\(")):
        lm.generate_until(instances("generate_until", [("The cat", gen_kwargs)]))


def test_registered_and_built_from_an_argument_string(run_dir):
    cls = get_model("lmforge")
    assert cls is LmforgeLM
    assert get_model("hf").__name__ == "HFLM"  # registering ours leaves lm-eval's own models findable
    # lm-eval passes its own defaults (batch size 1, no device); model_args win over them
    lm = cls.create_from_arg_string(f"run_dir={run_dir},checkpoint=latest,batch_size=5,device=cpu",
                                    {"batch_size": 1, "max_batch_size": None, "device": None})
    assert (lm.batch_size, lm.device, lm.step) == (5, torch.device("cpu"), 7)
    assert cls.create_from_arg_string(f"run_dir={run_dir}", {"batch_size": 2}).batch_size == 2
    if not torch.cuda.is_available():  # the CLI's default device, cuda:0, falls back to the CPU; an asked one not
        assert cls.create_from_arg_string(f"run_dir={run_dir}", {"device": "cuda:0"}).device == torch.device("cpu")
        with pytest.raises(LmforgeError, match="^lmforge model_args: device 'cuda': no such CUDA device"):
            cls.create_from_arg_string(f"run_dir={run_dir},device=cuda")


@pytest.mark.parametrize("args, message", [
    ("checkpoint=latest", "lmforge model_args: run_dir is required"),
    ("run_dir={run},batchsize=8", "lmforge model_args: unknown key 'batchsize' (known: run_dir, checkpoint, "
                                  "batch_size, device)"),
    ("run_dir={run}/nowhere", "lmforge model_args: run_dir {run}/nowhere is not a directory"),
    ("run_dir={run},checkpoint=best", "no kept checkpoint has a validation loss"),
    ("run_dir={run},checkpoint={run}/missing", "checkpoint {run}/missing: no such checkpoint folder or file"),
    ("run_dir={run},batch_size=auto", "lmforge model_args: batch_size must be a whole number >= 1, got 'auto'"),
    ("run_dir={run},batch_size=0", "lmforge model_args: batch_size must be a whole number >= 1, got 0"),
    ("run_dir={run},device=tpu9", "lmforge model_args: device 'tpu9' is not a torch device"),
])
def test_bad_model_args_are_one_line(run_dir, args, message):
    with pytest.raises(LmforgeError) as info:
        LmforgeLM.create_from_arg_string(args.format(run=run_dir))
    assert message.format(run=run_dir) in str(info.value)
    assert "\n" not in str(info.value)


def test_checkpoint_of_another_vocabulary_is_refused(run_dir, tmp_path):
    import shutil

    from tokenizers import pre_tokenizers, trainers

    from lmforge.data.tokenizer import EOS_TOKEN, new_tokenizer

    other = tmp_path / "run"
    shutil.copytree(run_dir, other)
    tokenizer = new_tokenizer()
    tokenizer.train_from_iterator(TEXTS, trainers.BpeTrainer(
        vocab_size=290, special_tokens=[EOS_TOKEN], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer.save(str(RunDir(other).tokenizer))
    vocab = make_tokenizer().get_vocab_size()
    with pytest.raises(LmforgeError, match=f"it holds a model over {vocab} tokens, the run's tokenizer has 290$"):
        LmforgeLM(run_dir=str(other))


@pytest.mark.integration
def test_command_line_error_is_one_line(run_dir, task_dir, capsys):
    """The wrapper's error path, in process (lm-eval's CLI indexes its ~15,000 built-in tasks first: 6-16 s)."""
    code = main(["run", "--model", "lmforge", "--model_args", f"run_dir={run_dir},checkpoint=best",
                 "--tasks", TASK, "--include_path", str(task_dir / "lm_eval")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "no kept checkpoint has a validation loss" in err[-1]


@pytest.mark.integration
def test_lmforge_lm_eval_command(lm, run_dir, task_dir, tmp_path):
    """``lmforge-lm-eval`` (the installed console script) runs lm-eval's CLI on the lmforge model."""
    script = Path(sys.executable).with_name("lmforge-lm-eval")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "lmforge.evaluate.lm_eval_model"]
    proc = subprocess.run([*command, "--model", "lmforge", "--model_args", f"run_dir={run_dir},batch_size=8",
                           "--tasks", TASK, "--include_path", str(task_dir / "lm_eval"),
                           "--output_path", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    (written,) = (tmp_path / "out").rglob("results_*.json")
    predictions, _ = lmforge_predictions(lm.model, lm.tokenizer, batch_size=8)
    accuracy = sum(p == a for p, (_, _, a) in zip(predictions, ITEMS)) / len(ITEMS)
    assert json.loads(written.read_text())["results"][TASK]["acc,none"] == accuracy
