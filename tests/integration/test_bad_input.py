"""Every bad input gets one `error:` line naming what and where, a non-zero exit, no traceback, and
leaves no half-written artifact behind."""

import shutil

import pytest

from conftest import run_cli, temporaries

pytestmark = pytest.mark.integration


def assert_clean_error(code, err, *fragments):
    assert code != 0
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])


def write_recipe(tmp_path, body: str):
    path = tmp_path / "r.yaml"
    path.write_text(body)
    return str(path)


def test_missing_data_path(tmp_path):
    recipe = write_recipe(tmp_path, f"data:\n  sources:\n    - kind: text\n      path: {tmp_path}/nowhere.txt\n")
    run_dir = tmp_path / "run"
    code, _, err = run_cli("data", recipe, "--run-dir", str(run_dir))
    assert_clean_error(code, err, "data.sources[0].path", "nowhere.txt")
    assert not (run_dir / "curate").exists() and temporaries(run_dir) == []


def test_empty_corpus_after_filtering(tmp_path):
    (tmp_path / "a.txt").write_text("short text\n")
    recipe = write_recipe(tmp_path, f"data:\n  sources:\n    - kind: text\n      path: {tmp_path}/a.txt\n"
                                    "  min_chars: 1000\n")
    run_dir = tmp_path / "run"
    code, _, err = run_cli("data", recipe, "--run-dir", str(run_dir))
    assert_clean_error(code, err, "no documents left after filtering")
    assert not (run_dir / "curate" / "train.jsonl").exists() and temporaries(run_dir) == []


@pytest.mark.parametrize("override, fragments", [
    ("train.max_stepz=3", ["train.max_stepz: unknown key"]),
    ("train.lr=fast", ["train.lr: Input should be a valid number"]),
    ("train.batch_size=0", ["train.batch_size: Input should be greater than or equal to 1"]),
    ("model.n_heads=3", ["model: n_heads (3) must divide d_model (64)"]),
    ("data.val_fraction=1.5", ["data.val_fraction"]),
    ("train.lr", ["expected KEY=VALUE"]),
])
def test_bad_recipe_values_fail_before_any_work(tmp_path, override, fragments):
    run_dir = tmp_path / "run"
    code, _, err = run_cli("run", "debug", "--run-dir", str(run_dir), "--set", override)
    assert_clean_error(code, err, *fragments)
    assert not run_dir.exists()


def test_unknown_key_in_recipe_file(tmp_path):
    recipe = write_recipe(tmp_path, "data:\n  sources:\n    - kind: python-stdlib\nmodle:\n  size: debug\n")
    code, _, err = run_cli("run", recipe, "--run-dir", str(tmp_path / "run"))
    assert_clean_error(code, err, "r.yaml", "modle: unknown key")


def test_missing_recipe_and_bad_arguments(tmp_path):
    code, _, err = run_cli("run", str(tmp_path / "none.yaml"))
    assert_clean_error(code, err, "none.yaml: no such file")
    code, _, err = run_cli("run", "debug", "--redo", "everything")
    assert_clean_error(code, err, "--redo")
    code, _, err = run_cli("train", "--nproc", "0")
    assert_clean_error(code, err, "--nproc")
    code, _, err = run_cli("eval", "--run-dir", str(tmp_path / "absent"))
    assert_clean_error(code, err, "absent does not exist")


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
    assert_clean_error(code, err, "optimizer.safetensors", "corrupt or truncated")
    model_file = trained_run / "train" / "checkpoints" / "step_00000004" / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[:50])
    code, _, err = run_cli("eval", "--run-dir", str(trained_run))
    assert_clean_error(code, err, "model.safetensors", "corrupt or truncated")
    assert not (trained_run / "eval" / "results.json").exists()


def test_resume_with_incompatible_recipe(trained_run):
    code, _, err = run_cli("train", "--run-dir", str(trained_run), "--resume", "--set", "train.max_steps=6",
                           "--set", "model.n_layers=3")
    assert_clean_error(code, err, "cannot resume from", "model.n_layers=2 (recipe: 3)")
    code, _, err = run_cli("train", "--run-dir", str(trained_run), "--set", "train.max_steps=6",
                           "--set", "train.seq_len=32")
    assert_clean_error(code, err, "the recipe differs from the one the train stage ran with", "--redo train")


def test_changed_data_recipe_needs_redo(trained_run):
    before = (trained_run / "recipe.yaml").read_text()
    code, _, err = run_cli("data", "--run-dir", str(trained_run), "--set", "data.min_chars=10")
    assert_clean_error(code, err, "curate stage", "--redo curate")
    assert (trained_run / "recipe.yaml").read_text() == before  # nothing touched


def test_prompt_longer_than_context(trained_run):
    code, _, err = run_cli("generate", "--run-dir", str(trained_run), "--prompt", "x = 1\n" * 400)
    assert_clean_error(code, err, "exceeds the model context length 128")
    code, _, err = run_cli("generate", "--run-dir", str(trained_run), "--prompt", "")
    assert_clean_error(code, err, "prompt")


def test_missing_token_shards(tmp_path, debug_data_run):
    run_dir = tmp_path / "run"
    shutil.copytree(debug_data_run, run_dir)
    shutil.rmtree(run_dir / "pack" / "val")
    code, _, err = run_cli("train", "--run-dir", str(run_dir))
    assert_clean_error(code, err, "pack/val", "run the data stage first")
