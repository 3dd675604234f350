"""Every bad input gets one `error:` line naming what and where (asserted whole), its exit code, no traceback,
and leaves no half-written artifact behind; the refusals below that come before any work leave the run
directory exactly as it was."""

import shutil

import pytest
import torch

from cli_errors import assert_error_line, snapshot
from conftest import run_cli, temporaries
from lmforge.recipe import BUILTIN_RECIPES

pytestmark = pytest.mark.integration

DEBUG_RECIPE = BUILTIN_RECIPES / "debug.yaml"


def write_recipe(tmp_path, body: str):
    path = tmp_path / "r.yaml"
    path.write_text(body)
    return str(path)


def test_missing_data_path(tmp_path):
    recipe = write_recipe(tmp_path, f"data:\n  sources:\n    - kind: text\n      path: {tmp_path}/nowhere.txt\n")
    run_dir = tmp_path / "run"
    code, _, err = run_cli("data", recipe, "--run-dir", str(run_dir))
    assert_error_line(code, err, f"error: data.sources[0].path: no such file or directory: {tmp_path}/nowhere.txt")
    assert not (run_dir / "curate").exists() and temporaries(run_dir) == []


def test_empty_corpus_after_filtering(tmp_path):
    (tmp_path / "a.txt").write_text("short text\n")
    recipe = write_recipe(tmp_path, f"data:\n  sources:\n    - kind: text\n      path: {tmp_path}/a.txt\n"
                                    "  min_chars: 1000\n")
    run_dir = tmp_path / "run"
    code, _, err = run_cli("data", recipe, "--run-dir", str(run_dir))
    assert_error_line(code, err, "error: no documents left after filtering: 1 read, dropped: too_short=1")
    assert not (run_dir / "curate" / "train.jsonl").exists() and temporaries(run_dir) == []


@pytest.mark.parametrize("override, message", [
    ("train.max_stepz=3", "train.max_stepz: unknown key"),
    ("train.lr=fast", "train.lr: Input should be a valid number, unable to parse string as a number (got 'fast')"),
    ("train.batch_size=0", "train.batch_size: Input should be greater than or equal to 1 (got 0)"),
    ("model.n_heads=3", "model: n_heads (3) must divide d_model (64)"),
    ("data.val_fraction=1.5", "data.val_fraction: Input should be less than 1 (got 1.5)"),
    ("train.micro_batch_size=16", "train: micro_batch_size (16) must not exceed batch_size (8)"),
    ("train.adversarial.epsilon=0", "train.adversarial.epsilon: Input should be greater than 0 (got 0)"),
])
def test_bad_recipe_values_fail_before_any_work(tmp_path, override, message):
    run_dir = tmp_path / "run"
    code, _, err = run_cli("run", "debug", "--run-dir", str(run_dir), "--set", override)
    assert_error_line(code, err, f"error: recipe {DEBUG_RECIPE}: {message}")
    assert not run_dir.exists()


def test_set_without_a_value(tmp_path):
    code, _, err = run_cli("run", "debug", "--run-dir", str(tmp_path / "run"), "--set", "train.lr")
    assert_error_line(code, err, "error: --set train.lr: expected KEY=VALUE with a dotted key, e.g. train.lr=3e-4")
    assert not (tmp_path / "run").exists()


def test_unknown_key_in_recipe_file(tmp_path):
    recipe = write_recipe(tmp_path, "data:\n  sources:\n    - kind: python-stdlib\nmodle:\n  size: debug\n")
    code, _, err = run_cli("run", recipe, "--run-dir", str(tmp_path / "run"))
    assert_error_line(code, err, f"error: recipe {tmp_path / 'r.yaml'}: modle: unknown key")


def test_missing_recipe_and_bad_arguments(tmp_path):
    code, _, err = run_cli("run", str(tmp_path / "none.yaml"))
    assert_error_line(code, err, f"error: recipe {tmp_path / 'none.yaml'}: no such file (built-in recipes: debug, "
                                 "default, tune)")
    code, _, err = run_cli("run", "debug", "--run-dir", str(tmp_path / "run"), "--redo", "everything")
    assert_error_line(code, err, "error: --redo everything: unknown stage (stages: curate, tokenizer, pack, train, "
                                 "eval, sample, finetune, merge, compress, explain, attack, secure, report)")
    code, _, err = run_cli("train", "--nproc", "0")
    assert_error_line(code, err, "error: Invalid value for '--nproc': 0 is not in the range x>=1.")
    code, _, err = run_cli("eval", "--run-dir", str(tmp_path / "absent"))
    assert_error_line(code, err, f"error: run directory {tmp_path / 'absent'} does not exist (give RECIPE or --run-dir "
                                 "of an existing run)")
    assert sorted(tmp_path.iterdir()) == []


@pytest.fixture
def trained_run(data_run):
    code, _, err = run_cli("train", "--run-dir", str(data_run), "--set", "train.max_steps=4",
                           "--set", "train.checkpoint_every=2")
    assert code == 0, err
    return data_run


@pytest.mark.parametrize("damage", ["truncate", "corrupt"])
def test_corrupt_or_truncated_checkpoint(trained_run, damage):
    target = trained_run / "train" / "checkpoints" / "step_00000004" / "optimizer.safetensors"
    data = target.read_bytes()
    target.write_bytes(data[:100] if damage == "truncate" else data[:-8] + b"\x00" * 8)
    code, _, err = run_cli("train", "--run-dir", str(trained_run), "--resume", "--set", "train.max_steps=6")
    assert_error_line(code, err, f"error: checkpoint {target}: corrupt or truncated (SHA-256 does not match "
                                 "state.json)")
    model_file = trained_run / "train" / "checkpoints" / "step_00000004" / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[:50])
    code, _, err = run_cli("eval", "--run-dir", str(trained_run))
    assert_error_line(code, err, f"error: checkpoint {model_file}: corrupt or truncated (SHA-256 does not match "
                                 "state.json)")
    assert not (trained_run / "eval" / "results.json").exists()


def test_resume_with_incompatible_recipe(trained_run):
    code, _, err = run_cli("train", "--run-dir", str(trained_run), "--resume", "--set", "train.max_steps=6",
                           "--set", "model.n_layers=3")
    checkpoint = trained_run / "train" / "checkpoints" / "step_00000004"
    assert_error_line(code, err, f"error: cannot resume from {checkpoint}: it was trained with model.n_layers=2 "
                                 "(recipe: 3)")
    code, _, err = run_cli("train", "--run-dir", str(trained_run), "--set", "train.max_steps=6",
                           "--set", "train.seq_len=32")
    assert_error_line(code, err, f"error: {trained_run}: the recipe differs from the one the train stage ran with "
                                 "(one of: seed, data, tokenizer, pack, model, train); pass --redo train to redo it "
                                 "and the stages after it, or choose a new run name")


def test_changed_data_recipe_needs_redo(trained_run):
    before = (trained_run / "recipe.yaml").read_text()
    code, _, err = run_cli("data", "--run-dir", str(trained_run), "--set", "data.min_chars=10")
    assert_error_line(code, err, f"error: {trained_run}: the recipe differs from the one the curate stage ran with "
                                 "(one of: seed, data); pass --redo curate to redo it and the stages after it, or "
                                 "choose a new run name")
    assert (trained_run / "recipe.yaml").read_text() == before  # nothing touched


def test_prompt_longer_than_context(trained_run):
    code, _, err = run_cli("generate", "--run-dir", str(trained_run), "--prompt", "x = 1\n" * 400)
    assert_error_line(code, err, "error: prompt of 1600 tokens + max_new_tokens 24 exceeds the model context "
                                 "length 128")
    code, _, err = run_cli("generate", "--run-dir", str(trained_run), "--prompt", "")
    assert_error_line(code, err, "error: --prompt: the prompt is empty")


def test_missing_token_shards(tmp_path, debug_data_run):
    run_dir = tmp_path / "run"
    shutil.copytree(debug_data_run, run_dir)
    shutil.rmtree(run_dir / "pack" / "val")
    code, _, err = run_cli("train", "--run-dir", str(run_dir))
    assert_error_line(code, err, f"error: {run_dir / 'pack' / 'val' / 'index.json'}: not found (the pack stage "
                                 "writes it); run the data stage first (lmforge data)")


# --- refused before anything is written: the run directory is left exactly as it was -------------------------
@pytest.fixture(scope="module")
def runs(debug_data_run, tmp_path_factory):
    """This module's runs, made once (every test below only reads them): ``data`` (data stages done), ``trained``
    (4 steps of the debug model), and ``other``, a 3-layer model trained in another run directory, with its
    checkpoint exported to a file."""
    root = tmp_path_factory.mktemp("bad_input")
    made = {name: root / name for name in ("data", "trained", "other")}
    for path in made.values():
        shutil.copytree(debug_data_run, path)
    assert run_cli("train", "--run-dir", str(made["trained"]), "--set", "train.max_steps=4",
                   "--set", "train.checkpoint_every=2")[0] == 0
    assert run_cli("train", "--run-dir", str(made["other"]), "--set", "train.max_steps=1",
                   "--set", "model.n_layers=3")[0] == 0
    exported = root / "other.safetensors"
    assert run_cli("export", "--run-dir", str(made["other"]), "--output", str(exported))[0] == 0
    return {**made, "other_checkpoint": made["other"] / "train" / "checkpoints" / "step_00000001",
            "other_export": exported}


def assert_refused(run_dir, args, line, exit_code=2):
    """``lmforge ARGS`` prints ``line`` alone, exits with ``exit_code`` and writes nothing under ``run_dir``."""
    before = snapshot(run_dir)
    code, out, err = run_cli(*args)
    assert_error_line(code, err, line, exit_code)
    assert out == "" and snapshot(run_dir) == before


@pytest.mark.parametrize("command", ["eval", "generate"])
def test_checkpoint_that_is_missing(runs, command):
    missing = runs["trained"] / "nowhere"
    assert_refused(runs["trained"], [command, "--run-dir", str(runs["trained"]), "--checkpoint", str(missing)],
                   f"error: checkpoint {missing}: no such checkpoint folder or file (or give latest, best, selected, finetuned, merged)")


@pytest.mark.parametrize("command", ["eval", "generate"])
@pytest.mark.parametrize("kind", ["other", "other_checkpoint", "other_export"])  # run directory, folder, file
def test_checkpoint_of_another_model_does_not_fit(runs, command, kind):
    shown = runs["other_export"] if kind == "other_export" else runs["other_checkpoint"]
    assert_refused(runs["trained"], [command, "--run-dir", str(runs["trained"]), "--checkpoint", str(runs[kind])],
                   f"error: checkpoint {shown} does not fit {runs['trained']}: it holds a model with model.n_layers=3 "
                   "(recipe: 2)")


@pytest.mark.parametrize("option, value, allowed", [
    ("--temperature", "-1", "-1.0 is not in the range x>=0"),
    ("--top-p", "0", "0.0 is not in the range 0<x<=1"),
    ("--top-p", "1.5", "1.5 is not in the range 0<x<=1"),
    ("--top-k", "0", "0 is not in the range x>=1"),
    ("--max-new-tokens", "0", "0 is not in the range x>=1"),
])
def test_sampling_options_out_of_range(runs, option, value, allowed):
    assert_refused(runs["trained"], ["generate", "--run-dir", str(runs["trained"]), option, value],
                   f"error: Invalid value for '{option}': {allowed}.")


@pytest.mark.parametrize("command, line", [
    (["tune", "--workers", "0"], "error: Invalid value for '--workers': 0 is not in the range x>=1."),
    (["estimate", "--dp", "0"], "error: dp: must be at least 1 (got 0)"),
])  # optimizers compare --steps 1: test_optimizers.py; train.micro_batch_size > batch_size: above
def test_bad_options_of_other_commands(runs, command, line):
    assert_refused(runs["data"], [*command, "--run-dir", str(runs["data"])], line)


@pytest.mark.parametrize("command, run", [
    (["train"], "data"), (["train", "--resume", "--set", "train.max_steps=6"], "trained"), (["eval"], "trained"),
    (["generate"], "trained"), (["run"], "data"),
])
def test_cuda_asked_for_on_a_machine_without_it(runs, monkeypatch, command, run):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert_refused(runs[run], [*command, "--run-dir", str(runs[run]), "--set", "train.device=cuda"],
                   "error: train.device: cuda was asked for but no CUDA device is available")


def test_cuda_asked_for_in_a_new_run_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run_cli("run", "debug", "--run-dir", str(tmp_path / "run"), "--set", "train.device=cuda")
    assert_error_line(code, err, "error: train.device: cuda was asked for but no CUDA device is available")
    assert not (tmp_path / "run").exists()
