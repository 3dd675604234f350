"""Every new recipe value of the data stage is validated, with a message that names the key."""

import pytest
from pydantic import ValidationError

from lmforge.data.config import DataConfig, SourceConfig

STDLIB = [SourceConfig(kind="python-stdlib")]


@pytest.mark.parametrize("settings, key, fragment", [
    ({"minhash": {"bands": 10}}, "minhash", "set both bands and rows"),
    ({"minhash": {"bands": 20, "rows": 10}}, "minhash", "bands * rows (20 * 10) is more than num_perm (128)"),
    ({"minhash": {"threshold": 1.0}}, "minhash.threshold", "less than 1"),
    ({"minhash": {"ngram": 0}}, "minhash.ngram", "greater than or equal to 1"),
    ({"workers": 0}, "workers", "workers must be 'auto' or at least 1"),
    ({"workers": "many"}, "workers", "'auto'"),
    ({"shard_mb": 0}, "shard_mb", "greater than 0"),
    ({"pii": {"kinds": ["email", "passport"]}}, "pii.kinds.1", "'private_key'"),
    ({"pii": {"secret_min_length": 4}}, "pii.secret_min_length", "greater than or equal to 16"),
    ({"quality": {"code": {"apply_to": "sometimes"}}}, "quality.code.apply_to", "'prose', 'code', 'all' or 'none'"),
    ({"quality": {"gopher_quality": {"min_doc_words": -1}}}, "quality.gopher_quality.min_doc_words", ">= 0"),
    ({"quality": {"gopher_repetition": {"top_n_grams": {2: 1.5}}}}, "quality.gopher_repetition.top_n_grams",
     "each entry must be n (1..100): fraction (0..1), got 2: 1.5"),
    ({"quality": {"c4": {"filter_javascript": "maybe"}}}, "quality.c4.filter_javascript", "valid boolean"),
    ({"quality": {"fineweb": {"unknown_rule": 1}}}, "quality.fineweb.unknown_rule", "Extra inputs"),
    ({"augment": {"fraction": 0}}, "augment.fraction", "greater than 0"),
    ({"augment": {"operations": []}}, "augment.operations", "at least 1 item"),
    ({"augment": {"operations": ["shout"]}}, "augment.operations.0", "'delete', 'swap', 'insert' or 'rename'"),
    ({"tabular": {"path": "t.csv", "missing": {"a": "mode"}}}, "tabular.missing.a", "'drop', 'mean', 'median'"),
    ({"tabular": {"path": "t.csv", "standardize": "some"}}, "tabular.standardize", "'all' or 'none'"),
])
def test_bad_values_are_rejected_naming_the_key(settings, key, fragment):
    with pytest.raises(ValidationError) as err:
        DataConfig(sources=STDLIB, **settings)
    found = [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in err.value.errors()]
    assert any(loc.startswith(key) and fragment.replace(">= 0", "greater than or equal to 0") in msg
               for loc, msg in found), found


def test_defaults_code_rules_on_prose_rules_for_prose():
    cfg = DataConfig(sources=STDLIB)
    assert cfg.quality.code.apply_to == "code" and cfg.quality.gopher_quality.apply_to == "prose"
    assert (cfg.minhash.enabled, cfg.minhash.threshold, cfg.pii.enabled, cfg.augment.enabled) == (True, 0.5, True, False)
    assert DataConfig(sources=STDLIB, workers=3, minhash={"bands": 16, "rows": 8}).minhash.rows == 8
