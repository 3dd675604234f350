"""``lmforge tune`` end to end on the prepared debug run: a study with pruning and failing trials, its report,
a rerun that continues it, and bad input rejected before any work."""

import copy
import csv
import json
import sqlite3

import pytest
import yaml

from cli_errors import assert_error_line
from conftest import run_cli
from lmforge.recipe import BUILTIN_RECIPES, load_recipe, read_yaml

pytestmark = pytest.mark.integration

# very short trials of the debug model: 4 steps of 2 x 32 tokens, validation every 2 steps
SHORT = {"max_steps": 4, "batch_size": 2, "seq_len": 32, "warmup_steps": 0, "eval_every": 2, "eval_batches": 1,
         "checkpoint_every": 4}


def tune_recipe(path, tune: dict, **train):
    """The debug recipe (same data, so the prepared shards are reused) with short training and ``tune``."""
    raw = copy.deepcopy(read_yaml(BUILTIN_RECIPES / "debug.yaml"))
    raw["train"].update({**SHORT, **train})
    raw["tune"] = tune
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def trial_states(db) -> list[tuple[int, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT number, state FROM trials ORDER BY number").fetchall()


def test_study_prunes_records_failures_and_writes_its_report(data_run, tmp_path):
    # grid, in this order: lr 1e-2 learns, lr 1e-6 does not (pruned at step 2 by the median of finished
    # trials); seq_len 256 exceeds the debug context length (128): that trial fails and the study goes on
    recipe = tune_recipe(tmp_path / "tune.yaml", {
        "sampler": {"kind": "grid"},
        "pruner": {"kind": "median", "n_startup_trials": 1},
        "space": {"train.lr": {"type": "categorical", "choices": [1.0e-2, 1.0e-6]},
                  "train.seq_len": {"type": "categorical", "choices": [32, 256]},
                  "train.weight_decay": {"type": "categorical", "choices": [0.0], "when": {"train.seq_len": 32}}}})
    code, out, err = run_cli("tune", str(recipe), "--run-dir", str(data_run))
    assert code == 0, err
    tune_dir = data_run / "tune"
    rows = list(csv.DictReader((tune_dir / "trials.csv").open()))
    got = [(r["train.lr"], r["train.seq_len"], r["state"]) for r in rows]
    assert got == [("0.01", "32", "COMPLETE"), ("0.01", "256", "FAIL"), ("1e-06", "32", "PRUNED"),
                   ("1e-06", "256", "FAIL")]
    assert rows[1]["reason"] == rows[3]["reason"] == "train.seq_len: 256 exceeds the model context length 128"
    assert rows[2]["reason"].startswith("pruned at step 2 by median (val_loss ")
    assert [r["steps"] for r in rows] == ["4", "0", "2", "0"]
    assert int(rows[0]["tokens"]) == 4 * 2 * 32
    # the conditional parameter is set only where it is active
    assert rows[0]["train.weight_decay"] == "0.0" and rows[1]["train.weight_decay"] == ""
    trial0 = load_recipe(tune_dir / "trial_00000" / "recipe.yaml")
    assert trial0.train.weight_decay == 0.0 and trial0.train.lr == 1e-2
    assert not (tune_dir / "trial_00000" / "train" / "checkpoints").exists()  # trials keep no checkpoint by default
    assert not (tune_dir / "trial_00000" / "pack").exists()  # trials read the parent run's shards
    # the report
    best = load_recipe(tune_dir / "best.yaml")
    assert best.name == "debug-best" and best.train.lr == 1e-2 and best.train.seq_len == 32
    summary = json.loads((tune_dir / "summary.json").read_text())
    assert summary["counts"] == {"COMPLETE": 1, "PRUNED": 1, "FAIL": 2, "RUNNING": 0, "WAITING": 0}
    assert summary["best"]["value"] == pytest.approx(float(rows[0]["value"]))
    for name in ("history.png", "parallel_coordinates.png"):
        assert (tune_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "importances" in json.loads((tune_dir / "importances.json").read_text())
    assert "trials: 4 (1 complete, 1 pruned, 2 failed)" in out
    assert f"study: 'debug' in sqlite:///{(tune_dir / 'study.db').resolve()}" in out
    assert "best recipe: " in out and "optuna-dashboard sqlite:///" in out

    # a rerun continues the finished study: nothing is trained again
    code, out, err = run_cli("tune", str(recipe), "--run-dir", str(data_run))
    assert code == 0, err
    assert len(trial_states(tune_dir / "study.db")) == 4
    # the same study with another space is refused, not mixed
    other = tune_recipe(tmp_path / "other.yaml", {"space": {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-2}}})
    code, _, err = run_cli("tune", str(other), "--run-dir", str(data_run))
    db = (tune_dir / "study.db").resolve()
    assert_error_line(code, err, f"error: tune.study_name: study 'debug' in sqlite:///{db} was started with a "
                                 "different recipe or search space; set tune.study_name to start a new study, or "
                                 "delete the old one (optuna delete-study --study-name debug --storage URL)")
    assert len(trial_states(tune_dir / "study.db")) == 4


@pytest.mark.parametrize("tune, message", [
    ({"space": {}}, "error: tune.space: the search space is empty; add a parameter, e.g. "
                    "train.lr: {{type: float, low: 1.0e-4, high: 1.0e-2, log: true}}"),
    ({"space": {"train.lrr": {"type": "float", "low": 1e-3, "high": 1e-2}}},
     "error: tune.space.train.lrr: not a recipe key (did you mean train.lr?)"),
    ({"space": {"train.lr": {"type": "float", "low": 1e-2, "high": 1e-3}}},
     "error: recipe {recipe}: tune.space.train.lr: low (0.01) is greater than high (0.001)"),
    ({"space": {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-2}}, "storage": "sqlite:////nonexistent/x.db"},
     "error: tune.storage: cannot connect to sqlite:////nonexistent/x.db: unable to open database file"),
])
def test_bad_input_is_rejected_before_any_work(tmp_path, tune, message):
    recipe = tune_recipe(tmp_path / "bad.yaml", tune)
    run_dir = tmp_path / "run"
    code, out, err = run_cli("tune", str(recipe), "--run-dir", str(run_dir))
    assert_error_line(code, err, message.format(recipe=recipe))
    assert not run_dir.exists()
