"""One line per stage for the end-of-run summary: each stage's headline figure, read from its summary.json."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def _n(value, spec: str = ",") -> str:
    return "-" if value is None else format(value, spec)


def _interval(metric: dict | None) -> str:
    if not isinstance(metric, dict) or "estimate" not in metric:
        return "-"
    return f"{metric['estimate']:.3f} [{metric['low']:.3f}, {metric['high']:.3f}]"


def _first_metric(metrics: dict) -> str:
    for name in ("acc", "f1_macro", "exact_match", "prefix_match", "perplexity", "bits_per_byte"):
        if name in metrics:
            return f"{name} {_interval(metrics[name])}"
    return ""


def curate(s: dict) -> str:
    return (f"{_n(s.get('documents_read'))} documents read, {_n(s.get('documents_kept'))} kept, "
            f"{_n(s.get('documents_dropped'))} dropped")


def tokenizer(s: dict) -> str:
    return f"vocabulary of {_n(s.get('vocab_size'))}"


def pack(s: dict) -> str:
    return f"{_n(s.get('train_tokens'))} train tokens, {_n(s.get('val_tokens'))} validation"


def train(s: dict) -> str:
    return (f"{_n(s.get('parameters'))} parameters, {_n(s.get('steps'))} steps at {_n(s.get('tokens_per_s'), ',.0f')} "
            f"tokens/s, val loss {_n(s.get('val_loss_initial'), '.4f')} -> {_n(s.get('val_loss_final'), '.4f')}")


def eval_(s: dict) -> str:
    before, after = s.get("before") or {}, s.get("after") or {}
    out = f"val loss {_n(before.get('loss'), '.4f')} -> {_n(after.get('loss'), '.4f')}"
    tasks = [f"{name} {_first_metric(m)}" for name, m in (s.get("tasks") or {}).items() if _first_metric(m)]
    return "; ".join([out, *tasks])


def sample(s: dict) -> str:
    return f"{_n(s.get('samples'))} sample(s), {_n(s.get('tokens'))} tokens"


def finetune(s: dict) -> str:
    out = f"{s.get('mode')} {s.get('objective')}: val loss {_n(s.get('base_val_loss'), '.4f')} -> " \
          f"{_n(s.get('final_val_loss'), '.4f')}"
    test = (s.get("test") or {}).get("metrics") or s.get("test") or {}
    if _first_metric(test):
        out += f"; test {_first_metric(test)}"
    base = (s.get("base_test") or {}).get("metrics") or s.get("base_test") or {}
    if _first_metric(base):
        out += f" (base model prompted: {_first_metric(base)})"
    return out


def merge(s: dict) -> str:
    out = f"{s.get('method')} of {len(s.get('inputs') or [])} models"
    if s.get("soup"):
        out += f" ({sum(1 for step in s['soup'] if step.get('kept'))} kept)"
    models = (s.get("evaluation") or {}).get("models") or {}
    merged = (models.get("merged") or {}).get("val") or {}
    inputs = [m["val"]["loss"] for name, m in models.items() if name.startswith("input") and "val" in m]
    if "loss" in merged:
        out += f": val loss {merged['loss']:.4f}"
        if inputs:
            out += f" (best input {min(inputs):.4f})"
    return out


def compress(s: dict) -> str:
    rows = [f"{name} {row['perplexity']:.2f} ({row['ratio_to_dense']['nonzero_parameters']:.2f}x nonzero)"
            for name, row in (s.get("variants") or {}).items() if name != "dense" and "perplexity" in row]
    dense = ((s.get("variants") or {}).get("dense") or {}).get("perplexity")
    return f"perplexity: dense {_n(dense, '.2f')}; " + ", ".join(rows)


def explain(s: dict) -> str:
    """The mean log-probability AOPC comprehensiveness of each method against random orders (higher: removing the
    tokens a method ranks first hurts the target more than removing tokens at random)."""
    examples = s.get("examples") or {}
    parts = []
    for method in s.get("methods") or []:
        pairs = [ex[method]["log_prob"] for ex in examples.values()
                 if isinstance(ex.get(method), dict) and "log_prob" in ex[method]]
        if pairs:
            ours = sum(p["comprehensiveness"] for p in pairs) / len(pairs)
            random = sum(p["random_comprehensiveness"] for p in pairs) / len(pairs)
            parts.append(f"{method} {ours:.3g} (random {random:.3g})")
    return f"{len(examples)} example(s); log-prob AOPC comprehensiveness: " + ", ".join(parts)


def attack(s: dict) -> str:
    parts = []
    for model in s.get("models") or []:
        under = [a["accuracy_under_attack"] for a in (model.get("attacks") or {}).values()
                 if a.get("accuracy_under_attack") is not None]
        label = "hardened" if model.get("adversarial") else "model"
        parts.append(f"{label}: clean accuracy {_n(model.get('clean_accuracy'), '.3f')}, under attack "
                     f"{_n(sum(under) / len(under) if under else None, '.3f')} (mean of {len(under)} attacks)")
    return f"{s.get('examples')} examples; " + "; ".join(parts)


def secure_actions(s: dict) -> str:
    """``signed and encrypted`` (or one of them) from the secure stage's summary."""
    return " and ".join(w for w, key in (("signed", "signature"), ("encrypted", "encrypted")) if s.get(key))


def secure(s: dict) -> str:
    out = f"{secure_actions(s) or 'nothing done'}; {'verified' if s.get('verified') else 'NOT verified'}"
    keys = [k for k in (s.get("private_key"), s.get("signing_public_key")) if k]
    if keys:  # the private keys lie beside the public ones
        out += f"; the private keys are kept in the run directory: {Path(keys[0]).parent.parent}/ (move them)"
    return out


def report(s: dict) -> str:
    return str(s.get("report"))


HEADLINES: dict[str, Callable[[dict], str]] = {
    "curate": curate, "tokenizer": tokenizer, "pack": pack, "train": train, "eval": eval_, "sample": sample,
    "finetune": finetune, "merge": merge, "compress": compress, "explain": explain, "attack": attack,
    "secure": secure, "report": report}


def headline(stage: str, summary: dict) -> str:
    """The stage's line; a summary missing what the line shows still gives one (with ``-``), never an error."""
    try:
        return HEADLINES[stage](summary)
    except (KeyError, TypeError, ValueError, AttributeError):
        return "done (summary.json has no headline figures)"
