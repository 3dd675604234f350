"""A run that cannot learn says so: a corpus the quality rules mostly drop, a training split smaller than the run
reads (warned, or with train.strict refused), an empty split (always refused), and a validation loss that rose
(flagged by train and eval). Each on a tiny real run; the warnings are printed and kept in summary.json."""

import io
import json
import shutil
from contextlib import redirect_stderr, redirect_stdout

import pytest

from cli_errors import assert_error_line, snapshot
from conftest import run_cli
from lmforge.cli import main

pytestmark = pytest.mark.integration

PROSE = [
    "The river runs through the old town and past the mill where the farmers bring their grain each autumn. "
    "In the morning the mist lies low over the water, and the fishermen wait on the bank with their nets. "
    "Children walk to the school on the hill, and their voices carry across the fields to the houses below. "
    "When the bells ring at noon, the market fills with people who have come to trade cheese, bread and wool. "
    "By evening the lamps are lit, the shops are closed, and the town settles into a quiet and peaceful rest.",
    "A good garden needs patience more than it needs money, and the best gardeners learn this in their first year. "
    "They plant seeds in the spring and watch the soil for weeks before the first green shoots appear at last. "
    "Water is given in the cool hours of the day, so that the sun does not take it away before the roots drink. "
    "Weeds are pulled by hand, slowly and with care, so that the young plants are not harmed by the work. "
    "At the end of the summer the harvest is shared with friends, and the seeds of the best plants are kept.",
    "The library on the corner was built a long time ago by a teacher who wanted every child to have books. "
    "Its shelves hold novels, histories and maps of distant places that most of the readers will never visit. "
    "On rainy afternoons the reading room is full, and the only sound is the turning of pages and the rain. "
    "The librarian knows the name of every regular visitor and often sets aside a new book for each of them. "
    "Many people in the town say that they learned to love stories in that small and crowded building.",
]
# 3 documents of prose kept; 40 dropped: 25 notes by a quality rule, 15 by the length filter (93.0%)
RECIPE = """name: tiny
seed: 7
data:
  sources:
    - kind: text
      path: {corpus}
  val_fraction: 0.3
tokenizer:
  vocab_size: 300
model:
  size: debug
train:
  max_steps: 3
  batch_size: 8
  seq_len: 32
  warmup_steps: 0
  eval_every: 0
  eval_batches: 1
  checkpoint_every: 3
eval:
  tasks: []
  max_tokens: 256
"""


def run_loud(*args: str) -> tuple[int, str]:
    """``lmforge ARGS`` in this process with its messages on (run_cli passes --quiet); (exit code, stderr)."""
    from lmforge.core import progress

    err, code = io.StringIO(), 0
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            progress.set_enabled(True)
    return code, err.getvalue()


def summary(run_dir, stage: str) -> dict:
    return json.loads((run_dir / stage / "summary.json").read_text())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(recipe, a run directory with its data stages done on the mostly-dropped corpus, their stderr)."""
    root = tmp_path_factory.mktemp("cannot_learn")
    corpus = root / "corpus"
    corpus.mkdir()
    for i, text in enumerate(PROSE):
        (corpus / f"prose{i}.txt").write_text(text + "\n")
    for i in range(25):
        (corpus / f"note{i:02d}.txt").write_text(f"Short note number {i} about the weather and the cats.\n")
    for i in range(15):
        (corpus / f"tiny{i:02d}.txt").write_text(f"hi {i}\n")
    recipe = root / "tiny.yaml"
    recipe.write_text(RECIPE.format(corpus=corpus))
    code, err = run_loud("data", str(recipe), "--run-dir", str(root / "run"))
    assert code == 0, err
    return str(recipe), root / "run", err


@pytest.fixture
def run_dir(tiny, tmp_path):
    shutil.copytree(tiny[1], tmp_path / "run")
    return tmp_path / "run"


def test_curate_says_when_the_filters_drop_most_of_the_corpus(tiny):
    _, run, err = tiny
    curate = summary(run, "curate")
    assert (curate["documents_read"], curate["documents_kept"], curate["documents_dropped"]) == (43, 3, 40)
    [warning] = curate["warnings"]
    assert warning.startswith("curate: the filters dropped 93.0% of the documents (40 of 43 read), more than 90%; "
                              "top reasons: gopher_repetition:top_n_grams 25, length:too_short 15; to keep more: "
                              "if the documents are code, or prose, say so with data.sources[0].content: code | prose")
    assert "data.quality.gopher_repetition.apply_to: none" in warning and warning.endswith("data.min_chars (now 32)")
    assert f"warning: {warning}\n" in err  # printed on one line
    assert summary(run, "pack")["train_tokens"] < 8 * 32 * 3  # fewer than 3 steps' worth


def test_a_split_smaller_than_a_batch_is_warned_about_or_with_strict_refused(tiny, run_dir):
    recipe = tiny[0]
    before = snapshot(run_dir)
    code, _, err = run_cli("train", recipe, "--run-dir", str(run_dir), "--set", "train.batch_size=16",
                           "--set", "train.strict=true")
    tokens = summary(run_dir, "pack")["train_tokens"]
    windows = (tokens - 1) // 32
    message = (f"the training split ({run_dir}/pack/train) holds {tokens:,} tokens, fewer than one batch (16 x 32 = "
               f"512 tokens): 3 steps read 1,536 tokens, {3 * 16 / windows:.1f} epochs of it, so the model memorizes "
               "it instead of learning; give the run more data (data.sources), loosen the data filters, or lower "
               "train.max_steps or train.batch_size")
    assert_error_line(code, err, f"error: train.strict: {message}")
    assert snapshot(run_dir) == before  # refused by the check: nothing written

    code, err = run_loud("train", recipe, "--run-dir", str(run_dir), "--set", "train.batch_size=16")
    assert code == 0, err
    warning = f"train: {message} (train.strict: true makes this an error)"
    assert f"warning: {warning}\n" in err
    train = summary(run_dir, "train")
    assert train["warnings"][0] == warning
    assert (train["train_tokens"], train["epochs"]) == (tokens, 3 * 16 / windows)


def test_strict_refuses_in_a_fresh_run_once_the_split_is_packed(tiny, tmp_path):
    run_dir = tmp_path / "fresh"
    code, _, err = run_cli("run", tiny[0], "--run-dir", str(run_dir), "--set", "train.batch_size=16",
                           "--set", "train.strict=true")
    assert code == 2 and err.strip().startswith("error: train.strict: the training split") and len(err.splitlines()) == 1
    assert (run_dir / "pack" / "train" / "index.json").is_file() and not (run_dir / "train").exists()
    # redoing the data with other settings: the check does not judge the split that the redo replaces
    code, _, err = run_cli("run", tiny[0], "--run-dir", str(run_dir), "--redo", "curate", "--set", "train.batch_size=16",
                           "--set", "train.strict=true", "--set", "data.val_fraction=0.5")
    assert code == 2 and err.strip().startswith("error: train.strict: the training split"), err
    assert json.loads((run_dir / "curate" / "stats.json").read_text())["val_fraction"] == 0.5


def test_an_empty_split_is_always_an_error(run_dir, tiny):
    index = run_dir / "pack" / "train" / "index.json"
    packed = json.loads(index.read_text())
    index.write_text(json.dumps(packed | {"shards": [], "num_tokens": 0, "num_documents": 0, "num_bytes": 0}))
    before = snapshot(run_dir)
    code, _, err = run_cli("train", tiny[0], "--run-dir", str(run_dir))
    assert_error_line(code, err, f"error: the training split ({run_dir}/pack/train) holds no token: nothing to "
                                 "train on; give the run more data (data.sources) or loosen the data filters")
    assert snapshot(run_dir) == before


def test_a_validation_loss_that_rose_is_flagged_by_train_and_eval(tiny, run_dir):
    absurd = ["--set", "train.lr=10", "--set", "train.batch_size=2"]  # 3 steps of 2 x 32: the split read once
    code, err = run_loud("train", tiny[0], "--run-dir", str(run_dir), *absurd)
    assert code == 0, err
    train = summary(run_dir, "train")
    assert train["val_loss_worse_than_initial"] is True and train["val_loss_final"] > train["val_loss_initial"]
    [warning] = train["warnings"]
    assert warning.startswith(f"train: validation loss rose from {train['val_loss_initial']:.4f} to "
                              f"{train['val_loss_final']:.4f}: the model did not learn; try a lower train.lr (now 10)")
    assert f"warning: {warning}\n" in err

    code, err = run_loud("eval", tiny[0], "--run-dir", str(run_dir), *absurd)
    assert code == 0, err
    evaluated = summary(run_dir, "eval")
    assert evaluated["val_loss_worse_than_initial"] is True
    assert evaluated["after"]["loss"] > evaluated["before"]["loss"]
    [warning] = evaluated["warnings"]
    assert warning.startswith(f"eval: the validation loss of {run_dir}/train/checkpoints/step_00000003 (step 3) is "
                              f"{evaluated['after']['loss']:.4f}, worse than the initial model's "
                              f"{evaluated['before']['loss']:.4f}: it did not learn")
    assert f"warning: {warning}\n" in err

    code, out, err = run_cli("run", tiny[0], "--run-dir", str(run_dir), *absurd)  # every stage done: the summary
    assert code == 0, err
    whole = json.loads((run_dir / "summary.json").read_text())
    assert whole["val_loss_worse_than_initial"] is True
    assert whole["warnings"] == [*summary(run_dir, "curate")["warnings"], train["warnings"][0], warning]
    assert "did not learn" in out and "the validation loss is worse than the initial model's" in out


def test_a_run_that_learns_has_no_warning(data_run):
    assert summary(data_run, "curate")["warnings"] == []
    code, _, err = run_cli("train", "--run-dir", str(data_run), "--set", "train.max_steps=6")
    assert code == 0, err
    train = summary(data_run, "train")
    assert train["warnings"] == [] and train["val_loss_worse_than_initial"] is False
    assert train["val_loss_final"] < train["val_loss_initial"]


@pytest.mark.parametrize("setting, problem", [
    ("data.warn_drop_fraction=1.5", "data.warn_drop_fraction: Input should be less than or equal to 1 (got 1.5)"),
    ("data.warn_drop_fraction=-0.1", "data.warn_drop_fraction: Input should be greater than or equal to 0 (got -0.1)"),
    ("train.strict=maybe", "train.strict: Input should be a valid boolean, unable to interpret input (got 'maybe')"),
])
def test_bad_settings_are_one_line_with_nothing_written(tmp_path, setting, problem):
    root = tmp_path / "run"
    code, _, err = run_cli("run", "debug", "--run-dir", str(root), "--set", setting)
    assert code == 2
    assert err.endswith(f": {problem}\n") and err.startswith("error: recipe ") and err.count("\n") == 1, err
    assert not root.exists()
