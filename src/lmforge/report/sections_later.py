"""The report's sections for the stages after sampling: fine-tuning, merging, compression, explanation, attacks
and the signed, encrypted result. Each is built from the stage's summary.json and the files it writes."""

from __future__ import annotations

import math
from pathlib import Path

from lmforge.report.html import data_uri, esc, figure, figures, fmt, interval, num, table
from lmforge.report.runread import RunData, read_json


def _pairs(s: dict, keys: list[tuple[str, str]]) -> tuple[str, set[str]]:
    rows = [[label, num(s[k]) if isinstance(s[k], (int, float)) and not isinstance(s[k], bool) else fmt(s[k])]
            for k, label in keys if k in s]
    return (table(["", "value"], rows) if rows else ""), {k for k, _ in keys if k in s}


def finetune(data: RunData, s: dict) -> tuple[str, set[str]]:
    return _pairs(s, [("objective", "objective"), ("mode", "mode"), ("base", "base model"), ("model", "written"),
                      ("steps", "steps"), ("base_val_loss", "validation loss of the base"),
                      ("final_val_loss", "validation loss, fine-tuned"), ("final_loss", "final train loss"),
                      ("parameters", "parameters"), ("trainable_parameters", "trainable parameters"),
                      ("trainable_share", "trainable share"), ("tokens_per_s", "tokens/s")])


def _bounds(val: dict, key: str) -> str:
    pair = (val.get("intervals") or {}).get(key)
    value = fmt(val.get(key))
    return f"{value} [{fmt(pair[0])}, {fmt(pair[1])}]" if isinstance(pair, list) and len(pair) == 2 else value


def merge(data: RunData, s: dict) -> tuple[str, set[str]]:
    out, shown = _pairs(s, [("method", "method"), ("base", "base"), ("output", "written")])
    if s.get("inputs"):
        weights = s.get("weights") or []
        rows = [[f"input {i}", str(path), num(weights[i]) if i < len(weights) else "-"]
                for i, path in enumerate(s["inputs"])]
        out += table(["", "model", "weight"], rows)
        shown |= {"inputs", "weights"}
    evaluation = s.get("evaluation") or {}
    models = evaluation.get("models") or {}
    if models:
        task_names = sorted({t for m in models.values() for t in (m.get("tasks") or {})})
        rows = []
        for name, m in models.items():
            val = m.get("val") or {}
            tasks = [fmt((m.get("tasks") or {}).get(t)) if not isinstance((m.get("tasks") or {}).get(t), dict)
                     else "; ".join(f"{k} {fmt(v)}" for k, v in m["tasks"][t].items()) for t in task_names]
            rows.append([name, _bounds(val, "loss"), _bounds(val, "perplexity"), _bounds(val, "bits_per_byte"), *tasks])
        out += "<h3>The merge against its ingredients</h3>" + table(
            ["model", "val loss", "perplexity", "bits/byte", *task_names], rows)
    verdict = evaluation.get("verdict") or {}
    if verdict:
        out += "<p>Merged model beats every input on: " + ", ".join(
            f"{esc(k)} <strong>{'yes' if v else 'no'}</strong>" for k, v in verdict.items()) + "</p>"
    if s.get("soup"):
        inputs = s.get("inputs") or []
        out += "<h3>Greedy soup</h3><p>Inputs in order of their held-out loss; each joins the soup only if the "
        out += "soup's held-out loss does not get worse.</p>" + table(
            ["input", "held-out loss of the soup with it", "kept"],
            [[Path(str(inputs[step["input"]])).name if step.get("input", -1) < len(inputs) else fmt(step.get("input")),
              fmt(step.get("loss")), "yes" if step.get("kept") else "no"] for step in s["soup"]])
        shown.add("soup")
    return out, shown | ({"evaluation"} if evaluation else set())


COMPRESS_COLUMNS = (("method", "method"), ("parameters", "parameters"), ("nonzero_parameters", "nonzero"),
                    ("weight_bytes", "weight bytes"), ("val_loss", "val loss"), ("perplexity", "perplexity"),
                    ("prefill_tokens_per_s", "prefill tok/s"), ("decode_tokens_per_s", "decode tok/s"),
                    ("gap_closed", "distillation gap closed"))


def compress(data: RunData, s: dict) -> tuple[str, set[str]]:
    out, shown = _pairs(s, [("dense", "dense model"), ("table", "table")])
    variants = s.get("variants") or {}
    if variants:
        columns = [c for c in COMPRESS_COLUMNS if any(c[0] in v for v in variants.values())]
        rows = []
        for name, v in variants.items():
            ratio = v.get("ratio_to_dense") or {}
            cells = []
            for key, _ in columns:
                value = v.get(key)
                if key == "method":
                    cells.append(str(value))
                    continue
                shown_ratio = f" ({ratio[key]:.3f}x)" if isinstance(ratio.get(key), (int, float)) and name != "dense" \
                    and math.isfinite(ratio[key]) else ""
                cells.append(f'<td class="num">{esc(fmt(value))}{esc(shown_ratio)}</td>')
            rows.append([name, *cells])
        out += "<h3>Size, speed and quality (ratio to dense)</h3>" + table(["variant", *[c[1] for c in columns]], rows)
        shown.add("variants")
    out += figures([figure(data_uri(data.run.stage_dir("compress") / "table.png"), "quality against size")])
    return out, shown


def _heatmap(tokens: list[str], scores: list[float]) -> str:
    """Tokens shaded by attribution: red for positive, blue for negative, scaled to the largest magnitude."""
    top = max((abs(x) for x in scores if isinstance(x, (int, float))), default=0.0) or 1.0
    spans = []
    for token, score in zip(tokens, scores):
        alpha = min(abs(score) / top, 1.0)
        color = f"rgba(192,57,43,{alpha:.2f})" if score >= 0 else f"rgba(31,95,168,{alpha:.2f})"
        spans.append(f'<span style="background:{color}" title="{esc(fmt(score))}">{esc(token)}</span>')
    return '<div class="tokens">' + "".join(spans) + "</div>"


def _attributions(data: RunData) -> dict:
    path = data.run.stage_dir("explain") / "attributions.json"
    return (read_json(path).get("examples") or {}) if path.exists() else {}


def explain(data: RunData, s: dict) -> tuple[str, set[str]]:
    out, shown = _pairs(s, [("model", "model"), ("layer", "attributions at"), ("html", "interactive page")])
    if s.get("methods"):
        out += f"<p>Methods: {esc(', '.join(map(str, s['methods'])))}.</p>"
        shown.add("methods")
    folder = data.run.stage_dir("explain")
    attributions = _attributions(data)
    for name, example in (s.get("examples") or {}).items():
        out += f"<h3>Example {esc(name)}: target {esc(example.get('target', '-'))}</h3>"
        methods = [m for m in (s.get("methods") or []) if isinstance(example.get(m), dict)]
        rows = [[m, num(example[m].get("comprehensiveness")), num(example[m].get("random_comprehensiveness")),
                 num(example[m].get("sufficiency")), num(example[m].get("random_sufficiency"))] for m in methods]
        if rows:
            out += table(["method", "comprehensiveness (AOPC)", "random", "sufficiency", "random"], rows)
        found = attributions.get(name) or {}
        tokens = found.get("tokens") or []
        for method, attribution in (found.get("attributions") or {}).items():
            if tokens and isinstance(attribution, dict) and attribution.get("scores"):
                out += f"<p class=\"muted\">{esc(method)}</p>" + _heatmap(tokens, attribution["scores"])
        out += figures([figure(data_uri(folder / f"{name}.{what}.png"), f"{name}: {what}")
                        for what in ("attention", "faithfulness")])
    shown.add("examples")
    anatomy = s.get("anatomy") or {}
    if anatomy:
        out += "<h3>Model anatomy (power-law alpha of the weight spectra)</h3>"
        out += table(["matrix", "alpha"], [[k, num(v)] for k, v in (anatomy.get("alpha") or {}).items()])
        out += f"<p>Flagged: {esc(', '.join(anatomy.get('flagged') or []) or 'none')}.</p>"
        shown.add("anatomy")
    if s.get("permutation"):
        out += "<h3>Permutation importance</h3>" + table(["feature", "mean drop"],
                                                         [[k, num(v)] for k, v in s["permutation"].items()])
        shown.add("permutation")
    out += figures([figure(data_uri(folder / f"{what}.png"), what) for what in ("anatomy", "permutation")])
    return out, shown


ATTACK_COLUMNS = (("original_accuracy", "clean accuracy"), ("accuracy_under_attack", "accuracy under attack"),
                  ("attack_success_rate", "success rate"), ("clean_loss", "clean loss"),
                  ("attacked_loss", "loss under attack"), ("average_queries", "queries"),
                  ("average_perturbed_token_share", "perturbed tokens"))


def _attack_rows(model: str, attacks: dict) -> list[list[str]]:
    return [[model, name, *[num(a.get(k)) for k, _ in ATTACK_COLUMNS]] for name, a in attacks.items()]


def attack(data: RunData, s: dict) -> tuple[str, set[str]]:
    out, shown = _pairs(s, [("model", "model"), ("target", "target"), ("examples", "examples"), ("seed", "seed"),
                            ("clean_accuracy", "clean accuracy"), ("clean_loss", "clean loss")])
    models = s.get("models") or [{"model": s.get("model"), "attacks": s.get("attacks") or {}}]
    rows = [row for m in models for row in _attack_rows(str(m.get("model")), m.get("attacks") or {})]
    if rows:
        out += "<h3>Robustness</h3>" + table(["model", "attack", *[c[1] for c in ATTACK_COLUMNS]], rows)
    harden = s.get("harden")
    if isinstance(harden, dict):  # attack.harden: the adversarially fine-tuned model attacked beside the model
        settings = harden.get("adversarial") or {}
        accuracy = ((harden.get("test") or {}).get("metrics") or {}).get("acc")
        out += "<h3>Adversarial fine-tuning (attack.harden)</h3>" + table(["", ""], [
            ["model", str(harden.get("model"))],
            ["adversarial training", ", ".join(f"{k} {fmt(v)}" for k, v in settings.items())],
            ["steps", fmt(harden.get("steps"))],
            ["validation loss", f"{fmt(harden.get('base_val_loss'))} → {fmt(harden.get('final_val_loss'))}"],
            ["test accuracy", interval(accuracy) if accuracy is not None else "-"]])
        shown.add("harden")
    return out, shown | {"models", "attacks"}


def secure(data: RunData, s: dict) -> tuple[str, set[str]]:
    out = ""
    if "verified" in s:
        good = bool(s["verified"])
        out += (f'<p>Signature check: <strong style="color:var(--{"good" if good else "bad"})">'
                f'{"verified" if good else "NOT verified"}</strong></p>')
    body, shown = _pairs(s, [("model", "protected model"), ("output", "written as"), ("signature", "signature"),
                             ("encrypted", "encrypted copy"), ("private_key", "private key (keep it secret)"),
                             ("signing_public_key", "signer's public key"), ("segment_size", "segment size (bytes)"),
                             ("note", "note")])
    out += body
    if s.get("signed_files"):
        out += "<h3>Signed files (SHA-256)</h3>" + table(["file", "sha256"], [[k, str(v)] for k, v in
                                                                            s["signed_files"].items()])
        shown.add("signed_files")
    if s.get("recipients"):
        keys = sorted({k for r in s["recipients"] for k in r})
        out += "<h3>Recipients</h3>" + table(keys, [[fmt(r.get(k)) for k in keys] for r in s["recipients"]])
        shown.add("recipients")
    return out, shown | {"verified"}
