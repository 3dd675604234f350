"""The robustness report in TextAttack's summary shape (``attack/summary.json``, ``report.json``, ``report.md``).

Per attack: successful, failed and skipped attacks (a classifier's examples it already gets wrong are skipped, as
TextAttack does: they count as wrong under attack too), the original accuracy and the accuracy under attack, the
attack success rate (successful / attacked), the mean share of tokens changed over successful attacks, the mean
tokens per input and the mean queries over attacked examples; the mean clean and attacked loss beside them. A
language model's accuracy is the share of its continuation tokens that are the argmax after their prefix. For the
GCG suffix search the loss and accuracy are its target's, without a suffix and after the suffix found (the attack
lowers that loss), and it succeeds when the whole target is the greedy continuation. Every model attacked (the main
one, then ``attack.compare``'s) has a row of clean accuracy and accuracy under each attack, labelled with the
adversarial training it had.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Record:
    """One example under one attack."""
    example: str
    skipped: bool
    success: bool
    clean_loss: float
    attacked_loss: float
    clean_correct: float  # a classifier: 1 or 0; the language model: the share of its continuation predicted
    attacked_correct: float
    clean_prediction: str
    attacked_prediction: str
    tokens: int  # the attacked tokens (the context)
    changed: list[int]  # the positions whose input was changed
    queries: int
    budget_used: float | None  # an embedding attack: the largest ||delta_i|| / r_i (at most 1)
    original: str  # the context, changed tokens marked [[...]]
    adversarial: str
    original_ids: list[int]  # the context's tokens
    adversarial_ids: list[int]  # after a token attack (an embedding attack's are the original ones)
    suffix_ids: list[int]  # the fixed tokens after the context: the end-of-text, or the scored continuation
    label: str | None  # a classifier's gold label

    @property
    def changed_share(self) -> float:
        return len(self.changed) / self.tokens if self.tokens else 0.0

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "changed_share": self.changed_share}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def attack_summary(records: list[Record]) -> dict:
    attacked = [r for r in records if not r.skipped]
    successful = [r for r in attacked if r.success]
    n = len(records)
    return {"successful_attacks": len(successful), "failed_attacks": len(attacked) - len(successful),
            "skipped_attacks": n - len(attacked),
            "original_accuracy": _mean([r.clean_correct for r in records]),
            "accuracy_under_attack": _mean([r.attacked_correct for r in records]),
            "attack_success_rate": len(successful) / len(attacked) if attacked else None,
            "average_perturbed_token_share": _mean([r.changed_share for r in successful]),
            "average_tokens_per_input": _mean([float(r.tokens) for r in records]),
            "average_queries": _mean([float(r.queries) for r in attacked]),
            "clean_loss": _mean([r.clean_loss for r in records]),
            "attacked_loss": _mean([r.attacked_loss for r in records])}


def marked(pieces: list[str], changed: list[int]) -> str:
    """The text of ``pieces`` with the pieces at ``changed`` positions in [[double brackets]] (TextAttack's)."""
    where = set(changed)
    return "".join(f"[[{p}]]" if i in where else p for i, p in enumerate(pieces))


ROWS = [("successful_attacks", "Number of successful attacks"), ("failed_attacks", "Number of failed attacks"),
        ("skipped_attacks", "Number of skipped attacks"), ("original_accuracy", "Original accuracy"),
        ("accuracy_under_attack", "Accuracy under attack"), ("attack_success_rate", "Attack success rate"),
        ("average_perturbed_token_share", "Average perturbed token share"),
        ("average_tokens_per_input", "Average tokens per input"), ("average_queries", "Average queries"),
        ("clean_loss", "Clean loss"), ("attacked_loss", "Loss under attack")]


def training_label(adversarial: dict | None) -> str:
    """"adversarial training: pgd eps=0.1" (the method and epsilon of the settings a model was trained with; the
    settings' plain values where it names no method), or "no adversarial training"."""
    if not adversarial:
        return "no adversarial training"
    method = next((adversarial[k] for k in ("method", "name", "attack") if k in adversarial), None)
    eps = adversarial.get("epsilon")
    if method is None:
        return "adversarial training: " + " ".join(f"{k}={v}" for k, v in adversarial.items()
                                                   if isinstance(v, (int, float, str, bool)))
    return f"adversarial training: {method}" + (f" eps={eps:g}" if isinstance(eps, (int, float)) else "")


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _quoted(text: str) -> str:
    return "`" + text.replace("`", "'").replace("\n", "\\n") + "`"


def markdown(summary: dict, records: dict[str, list[Record]], shown: int) -> str:
    """report.md: the summary table (one column per attack) and a few examples of each attack."""
    keys = list(summary["attacks"])
    lines = [f"# Robustness of {summary['model']}", "",
             f"{summary['target'].replace('_', ' ')}, {summary['examples']} examples, seed {summary['seed']}", "",
             "| | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for field, title in ROWS:
        lines.append(f"| {title} | " + " | ".join(_cell(summary["attacks"][k][field]) for k in keys) + " |")
    lines += ["", "## Models", "", "| model | training | clean accuracy | " +
              " | ".join(f"accuracy under {k}" for k in keys) + " |", "|---|---|---|" + "---|" * len(keys)]
    for m in summary["models"]:
        lines.append(f"| {m['model']} | {training_label(m['adversarial'])} | {_cell(m['clean_accuracy'])} | " +
                     " | ".join(_cell(m["attacks"][k]["accuracy_under_attack"]) for k in keys) + " |")
    for key in keys:
        chosen = [r for r in records[key] if not r.skipped][:shown]
        if not chosen:
            continue
        lines += ["", f"## {key}", ""]
        for r in chosen:
            outcome = "succeeded" if r.success else "failed"
            what = "token embeddings perturbed" if r.budget_used is not None else "tokens changed"
            lines += [f"- **{r.example}** ({outcome}; {len(r.changed)} of {r.tokens} {what}, {r.queries} "
                      f"queries): {r.clean_prediction} -> {r.attacked_prediction}, loss {r.clean_loss:.4g} -> "
                      f"{r.attacked_loss:.4g}",
                      f"  - original: {_quoted(r.original)}", f"  - adversarial: {_quoted(r.adversarial)}"]
    return "\n".join(lines) + "\n"
