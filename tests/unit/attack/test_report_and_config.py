"""The robustness summary in TextAttack's shape, counted by hand on made-up records; the changed tokens marked;
the models' table labelled with their adversarial training; the attack section's bad budgets and names refused with
their reason."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lmforge.attack.config import AttackConfig
from lmforge.attack.report import Record, attack_summary, marked, markdown, training_label


def record(name, skipped=False, success=False, clean=1.0, attacked=1.0, changed=(), queries=10, tokens=10):
    return Record(name, skipped, success, 0.5, 0.9 if success else 0.6, clean, attacked, "a", "b", tokens,
                  list(changed), queries, None, "x", "y", [1, 2], [1, 3], [0], "a")


def test_summary_counts_as_textattack_does():
    records = [record("ok", success=True, attacked=0.0, changed=(1, 2), queries=12),
               record("held", queries=30),
               record("wrong", skipped=True, clean=0.0, attacked=0.0, queries=0),
               record("ok2", success=True, attacked=0.0, changed=(4,), queries=6, tokens=5)]
    s = attack_summary(records)
    assert (s["successful_attacks"], s["failed_attacks"], s["skipped_attacks"]) == (2, 1, 1)
    assert s["original_accuracy"] == 0.75 and s["accuracy_under_attack"] == 0.25
    assert s["attack_success_rate"] == pytest.approx(2 / 3)
    assert s["average_perturbed_token_share"] == pytest.approx((0.2 + 0.2) / 2)  # over successful attacks
    assert s["average_queries"] == pytest.approx((12 + 30 + 6) / 3)  # over attacked examples
    assert s["average_tokens_per_input"] == pytest.approx(35 / 4)
    assert s["clean_loss"] == 0.5 and s["attacked_loss"] == pytest.approx((0.9 + 0.6 + 0.6 + 0.9) / 4)
    models = [{"model": "m", "adversarial": None, "clean_accuracy": 0.75, "attacks": {"hotflip": s}},
              {"model": "hard", "adversarial": {"method": "pgd", "epsilon": 0.05, "steps": 3},
               "clean_accuracy": 0.5, "attacks": {"hotflip": {**s, "accuracy_under_attack": 0.5}}}]
    table = markdown({"model": "m", "target": "classifier", "examples": 4, "seed": 0, "attacks": {"hotflip": s},
                      "models": models}, {"hotflip": records}, shown=2)
    assert "| Attack success rate | 0.6667 |" in table and table.count("- **") == 2
    assert ("| model | training | clean accuracy | accuracy under hotflip |\n|---|---|---|---|\n"
            "| m | no adversarial training | 0.75 | 0.25 |\n"
            "| hard | adversarial training: pgd eps=0.05 | 0.5 | 0.5 |\n") in table


def test_a_training_label_names_the_method_and_epsilon():
    assert training_label(None) == "no adversarial training"
    assert training_label({"name": "freelb", "epsilon": 0.1, "steps": 2}) == "adversarial training: freelb eps=0.1"
    assert training_label({"epsilon": 0.2, "steps": 2}) == "adversarial training: epsilon=0.2 steps=2"


def test_changed_tokens_are_marked():
    assert marked(["def", " f", "(", "x", ")"], [1, 3]) == "def[[ f]]([[x]])"


@pytest.mark.parametrize("attack, message", [
    ({"name": "pgd", "epsilon": 0}, "greater than 0"),
    ({"name": "fgsm", "epsilon": -0.1}, "greater than 0"),
    ({"name": "pgd", "steps": 0}, "greater than or equal to 1"),
    ({"name": "hotflip", "max_changed": 0}, "greater than 0"),
    ({"name": "hotflip", "max_changed": 1.5}, "less than or equal to 1"),
    ({"name": "deepfool"}, "unknown attack 'deepfool' at position 0 (known: fgsm, pgd, hotflip, gcg)"),
])
def test_bad_budgets_and_names_are_refused(attack, message):
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        AttackConfig(attacks=[attack])


def test_an_attack_listed_twice_is_refused():
    with pytest.raises(ValidationError, match="pgd_l2 is listed twice"):
        AttackConfig(attacks=[{"name": "pgd", "norm": "l2"}, {"name": "pgd", "norm": "l2", "epsilon": 0.5}])
