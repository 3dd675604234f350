"""A classifier (``finetune.objective: classification``) as an exported file: its head of one row per label
stored apart from the embeddings (a tied base's too) and its labels in the metadata; ``load_model`` rebuilds it
and gives the trained model's logits at the end-of-text position exactly; stages that need a language model
refuse it from its metadata alone."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors import safe_open
from torch import nn

from lmforge.checkpoint.export import write_exported
from lmforge.checkpoint.load import (
    LABELS,
    checkpoint_dims,
    checkpoint_labels,
    classifier_ids,
    load_model,
    require_language_model,
)
from lmforge.errors import CheckpointError
from lmforge.model.config import SIZES, ModelDims
from lmforge.model.decoder import Decoder
from lmforge.model.fused_layout import model_views
from lmforge.transfer.classify import classification_head

SEQ, EOS = 16, 0
LABEL_NAMES = ["neg", "neutral", "pos"]


def trained_classifier(tied: bool) -> tuple[Decoder, ModelDims]:
    """A seeded decoder with a classification head (its weights moved off their initial values), and the
    dimensions its file records (the head untied)."""
    torch.manual_seed(0)
    dims = ModelDims(vocab_size=50, **SIZES["debug"], tie_embeddings=tied)
    model = Decoder(dims)
    classification_head(len(LABEL_NAMES))(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model.eval(), dataclasses.replace(dims, tie_embeddings=False)


def write_classifier(model: Decoder, dims: ModelDims, path) -> None:
    """As ``transfer.stage.write_outputs`` writes it."""
    weights = {name: view.detach().contiguous().clone() for name, view in model_views(model, dims).items()}
    write_exported(path, weights, dims.to_dict(), 30, SEQ, "finetune-full", LABEL_NAMES)


@pytest.mark.parametrize("tied", [True, False], ids=["tied-base", "untied-base"])
def test_a_classifier_file_round_trips_with_its_labels_and_exact_logits(tmp_path, tied):
    model, dims = trained_classifier(tied)
    path = tmp_path / "model.safetensors"
    write_classifier(model, dims, path)
    with safe_open(str(path), framework="pt") as f:
        meta, names = f.metadata(), set(f.keys())
        assert tuple(f.get_tensor("lm_head.weight").shape) == (3, dims.d_model)
        assert tuple(f.get_tensor("embed_tokens.weight").shape) == (50, dims.d_model)
    assert json.loads(meta[LABELS]) == LABEL_NAMES and {"lm_head.weight", "embed_tokens.weight"} <= names
    assert json.loads(meta["lmforge.model"])["tie_embeddings"] is False
    assert checkpoint_labels(path) == LABEL_NAMES and checkpoint_dims(path) == dims

    loaded = load_model(path)
    assert loaded.labels == LABEL_NAMES and loaded.seq_len == SEQ and loaded.step == 30
    head = loaded.model.lm_head
    assert type(head) is nn.Linear and head.bias is None and (head.in_features, head.out_features) == (dims.d_model, 3)
    assert torch.equal(head.weight, model.lm_head.weight)
    assert torch.equal(loaded.model.embed_tokens.weight, model.embed_tokens.weight)
    assert head.weight.data_ptr() != loaded.model.embed_tokens.weight.data_ptr()
    text_ids = [[5, 9, 3], list(range(1, 40)), [7]]
    with torch.no_grad():
        for ids in text_ids:
            x = torch.tensor([classifier_ids(ids, EOS, SEQ)])
            logits = loaded.model(x)
            assert logits.shape == (1, x.shape[1], 3)
            assert torch.equal(logits[0, -1], model(x)[0, -1])


def test_the_classified_input_is_the_texts_last_tokens_then_end_of_text():
    assert classifier_ids([4, 5, 6], EOS, SEQ) == [4, 5, 6, EOS]
    assert classifier_ids(list(range(1, 40)), EOS, SEQ) == [*range(25, 40), EOS]  # seq_len - 1 text tokens


def test_a_language_model_has_no_labels_and_a_classifier_is_refused_where_one_is_needed(tmp_path):
    torch.manual_seed(0)
    dims = ModelDims(vocab_size=50, **SIZES["debug"])
    lm = tmp_path / "lm.safetensors"
    write_exported(lm, {n: v.contiguous().clone() for n, v in model_views(Decoder(dims), dims).items()},
                   dims.to_dict(), 0, SEQ, "safetensors")
    assert checkpoint_labels(lm) is None and load_model(lm).labels is None
    require_language_model(lm, "lmforge eval")  # no error

    model, cdims = trained_classifier(tied=True)
    path = tmp_path / "classifier.safetensors"
    write_classifier(model, cdims, path)
    with pytest.raises(CheckpointError) as err:
        require_language_model(path, "lmforge eval")
    assert str(err.value) == (f"checkpoint {path}: a classifier (lmforge finetune objective classification; labels "
                              "neg, neutral, pos), not a language model; lmforge eval needs a language model")


def test_labels_metadata_that_is_no_list_of_names_is_refused(tmp_path):
    model, dims = trained_classifier(tied=False)
    path = tmp_path / "model.safetensors"
    weights = {name: view.detach().contiguous().clone() for name, view in model_views(model, dims).items()}
    write_exported(path, weights, dims.to_dict(), 0, SEQ, "finetune-full", ["neg", "neutral", "pos"])
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    save_file(load_file(str(path)), str(path), metadata={**meta, LABELS: '"neg"'})
    with pytest.raises(CheckpointError, match="lmforge.labels metadata is not a list of label names"):
        load_model(path)
    save_file(load_file(str(path)), str(path), metadata={**meta, LABELS: json.dumps(["neg", "pos"])})
    with pytest.raises(CheckpointError, match=r"lm_head.weight has shape \(3, 64\), the model \(2, 64\)"):
        load_model(path)
