"""The training loop's plug points (loss_fn, init_from, trainable) and the one model loader, on the debug
model: each asserts exact values, not just that something ran."""

from __future__ import annotations

import pytest
import torch

from conftest import train_losses
from lmforge.checkpoint.export import export_checkpoint
from lmforge.checkpoint.load import load_model, pick
from lmforge.core.metrics import read_metrics
from lmforge.distributed.context import DistContext
from lmforge.errors import CheckpointError
from lmforge.recipe import load_recipe
from lmforge.rundir import RunDir, SharedDataRunDir
from lmforge.train.loop import build_model, lm_loss, train

SHORT = ["train.max_steps=3", "train.batch_size=4", "train.eval_every=1", "train.checkpoint_every=1",
         "train.keep_checkpoints=3", "train.eval_batches=1", "eval.batch_size=2"]


def _train(data_run, root, overrides=(), **plug):
    cfg = load_recipe("debug", [*SHORT, *overrides])
    run = SharedDataRunDir(root, RunDir(data_run))
    summary = train(run, cfg, DistContext(), resume=False, **plug)
    return run, cfg, summary


def test_loss_fn_replaces_the_loss_and_its_gradients(debug_data_run, tmp_path):
    sgd = ["train.optimizer=sgd", "train.grad_clip=null"]  # plain SGD: twice the loss is twice the step
    plain, _, _ = _train(debug_data_run, tmp_path / "plain", sgd)
    doubled, _, _ = _train(debug_data_run, tmp_path / "doubled", sgd, loss_fn=lambda m, b: 2.0 * lm_loss(m, b))
    first, twice = train_losses(plain.root), train_losses(doubled.root)
    assert twice[0][1] == 2.0 * first[0][1]  # the same seeded weights and batch: exactly twice the loss
    assert twice[1][1] != 2.0 * first[1][1]  # and its gradients moved the weights further


def test_trainable_freezes_every_other_parameter(debug_data_run, tmp_path):
    run, cfg, _ = _train(debug_data_run, tmp_path / "norms", trainable=lambda name, p: "norm" in name)
    trained = load_model(pick(run)).model
    initial = build_model(cfg, trained.dims.vocab_size, torch.device("cpu"))
    changed = {n for (n, a), (_, b) in zip(initial.state_dict().items(), trained.state_dict().items())
               if not torch.equal(a, b)}
    assert changed and all("norm" in n for n in changed)
    assert {n for n in initial.state_dict() if "norm" in n} == changed


def test_init_from_starts_where_another_model_ended(debug_data_run, tmp_path):
    first, _, _ = _train(debug_data_run, tmp_path / "first")
    final_val = [r["val_loss"] for r in read_metrics(first.metrics) if r["kind"] == "eval"][-1]
    second, _, _ = _train(debug_data_run, tmp_path / "second", init_from=pick(first))
    start_val = [r["val_loss"] for r in read_metrics(second.metrics) if r["kind"] == "eval"][0]
    assert start_val == final_val  # step 0 of the second run scores the first run's last weights
    # dropout is a training-only setting: fine-tuning with it starts from the same weights (evaluated without it)
    third, _, _ = _train(debug_data_run, tmp_path / "third", ["model.dropout=0.1"], init_from=pick(first))
    assert [r["val_loss"] for r in read_metrics(third.metrics) if r["kind"] == "eval"][0] == final_val


def test_init_from_another_model_or_nothing_is_one_line_before_training(debug_data_run, tmp_path):
    first, _, _ = _train(debug_data_run, tmp_path / "three_layers", ["model.n_layers=3"])
    with pytest.raises(CheckpointError, match=r"^checkpoint \S+step_00000003 does not fit the recipe's model: it "
                                              r"holds a model with model\.n_layers=3 \(recipe: 2\)$"):
        _train(debug_data_run, tmp_path / "refused", init_from=pick(first))
    with pytest.raises(CheckpointError, match=r"^checkpoint \S+absent: no such checkpoint folder$"):
        _train(debug_data_run, tmp_path / "missing", init_from=tmp_path / "absent")
    for refused in ("refused", "missing"):  # nothing trained, nothing written
        assert not (tmp_path / refused / "train").exists()


def test_load_model_gives_the_same_model_from_every_kind(debug_data_run, tmp_path):
    run, _, _ = _train(debug_data_run, tmp_path / "kinds")
    folder = pick(run)
    exported = export_checkpoint(folder, tmp_path / "model.safetensors")["output"]
    tokens = torch.arange(24).reshape(2, 12)
    logits = [load_model(p).model(tokens) for p in (folder, exported)]
    assert torch.equal(logits[0], logits[1])
    loaded = load_model(exported)
    assert loaded.step == 3 and loaded.seq_len == load_model(folder).seq_len
    assert loaded.tokenizer is None  # an exported file outside a run directory has no tokenizer beside it


def test_pick_latest_best_and_paths(debug_data_run, tmp_path):
    run, _, _ = _train(debug_data_run, tmp_path / "pick", ["train.lr=0.5"])  # a rate that makes later steps worse
    evals = {r["step"]: r["val_loss"] for r in read_metrics(run.metrics) if r["kind"] == "eval" and r["step"]}
    assert pick(run) == run.checkpoint(3) == pick(run, "latest")
    assert pick(run, "best") == run.checkpoint(min(evals, key=evals.get))
    assert pick(run, str(run.checkpoint(2))) == run.checkpoint(2)
    run.metrics.unlink()  # checkpoints copied without the metrics that scored them: best cannot be told
    with pytest.raises(CheckpointError, match=r"^\S+checkpoints: no kept checkpoint has a validation loss in "
                                              r"\S+metrics\.jsonl \(checkpoint steps are not evaluation steps\); "
                                              r"use latest or a path$"):
        pick(run, "best")
    with pytest.raises(CheckpointError, match=r"^\S+checkpoints: no checkpoint; train first \(lmforge train\)$"):
        pick(SharedDataRunDir(tmp_path / "untrained", RunDir(debug_data_run)), "best")


def test_adversarial_settings_join_the_resume_key(debug_data_run, tmp_path):
    """train.adversarial trains (another loss than plain training's) and is recorded in every checkpoint: a run
    resumes only under the same settings, and an exported model carries them."""
    adv = ["train.adversarial.steps=2", "train.adversarial.epsilon=0.5"]
    run, _, _ = _train(debug_data_run, tmp_path / "adv", adv)
    plain, _, _ = _train(debug_data_run, tmp_path / "plain")
    assert train_losses(run.root)[0][1] != train_losses(plain.root)[0][1]
    loaded = load_model(pick(run))
    assert loaded.adversarial == {"method": "pgd", "norm": "linf", "epsilon": 0.5, "steps": 2, "step_size": None,
                                  "random_start": True, "clean_weight": 0.5}
    assert load_model(export_checkpoint(pick(run), tmp_path / "m.safetensors")["output"]).adversarial == loaded.adversarial
    assert load_model(pick(plain)).adversarial is None
    cfg = load_recipe("debug", [*SHORT, "train.max_steps=4"])
    refused = r"^cannot resume from \S+: it was trained with adversarial=\{.clean_weight.: 0.5, .*\} \(recipe: none\)$"
    with pytest.raises(CheckpointError, match=refused):
        train(SharedDataRunDir(tmp_path / "adv", RunDir(debug_data_run)), cfg, DistContext(), resume=True)
