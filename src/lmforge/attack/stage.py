"""``lmforge attack``: a classifier's labelled examples (read by its head, or by a language model as the evaluation
stage's label-verbalizer classifier), or the language-model loss of validation continuations, under
embedding-space FGSM and PGD (``attack.embedding``), HotFlip token substitution (``attack.hotflip``) and, for the
language model, a GCG suffix search toward a target continuation (``attack.suffix``), on any model the one loader
opens. Written as ``attack/report.json`` (every example under every attack), ``attack/report.md`` and
``attack/summary.json`` (``attack.report``); the folder is built under a temporary name and appears whole,
replacing an earlier one. Seeded: the same recipe gives the same report. ``attack.compare``'s models are attacked
on the same examples with the same attacks and seeds, each a row of the report.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from lmforge.attack.config import AttackConfig, SuffixAttack, TokenAttack
from lmforge.attack.embedding import fgsm, pgd, radii
from lmforge.attack.examples import (classification_task, classifier_examples, protected_tokens, task_name,
                                     text_examples, verbalizer_examples, window_examples)
from lmforge.attack.hotflip import hotflip, nearest_neighbours
from lmforge.attack.suffix import gcg
from lmforge.attack.objective import Example, Outcome, embed, scores
from lmforge.attack.report import Record, attack_summary, markdown, marked
from lmforge.checkpoint.load import LoadedModel, load_model, pick
from lmforge.core.atomic import atomic_dir, atomic_write_json, atomic_write_text
from lmforge.core.progress import info, track
from lmforge.data.tokenizer import eos_id_of, load_tokenizer
from lmforge.errors import AttackError, LmforgeError
from lmforge.evaluate.stage import own_tokenizer
from lmforge.evaluate.task_sources import BUILTIN_KINDS
from lmforge.explain.attributions import frozen
from lmforge.recipe import RunConfig
from lmforge.rundir import RunDir

STAGE = "attack"
CLASSIFIER, LANGUAGE_MODEL, VERBALIZER = "classifier", "language_model", "verbalizer"


@dataclasses.dataclass
class AttackPlan:
    path: Path  # the model
    loaded: LoadedModel
    tokenizer: object
    target: str  # CLASSIFIER, VERBALIZER or LANGUAGE_MODEL
    examples: list[Example]
    protected: set[int]  # token ids never changed nor put in
    neighbours: dict[int, list[int]] | None  # HotFlip's candidates of every attacked token
    suffixes: dict[str, tuple[int, tuple[int, ...]]]  # per GCG attack: its suffix's first token, its target's ids
    labels: list[str] | None = None  # a classifier's (its head's, or the verbalizer task's); None: the language model
    compared: list[AttackPlan] = dataclasses.field(default_factory=list)  # attack.compare's, on the same examples


def settings_of(cfg: RunConfig) -> AttackConfig:
    return cfg.attack or AttackConfig()


def check_attack(run: RunDir, cfg: RunConfig, device="cpu") -> AttackPlan:
    """Everything checked before anything is written: the model and the head the target needs, the examples and
    whether they fit the model's context, the protected tokens, and the models to compare with."""
    ac = settings_of(cfg)
    path = pick(run, ac.checkpoint)
    loaded = _attackable(path, device)
    labels = loaded.labels
    target = ac.target if ac.target != "auto" else (CLASSIFIER if labels is not None else LANGUAGE_MODEL)
    if target == CLASSIFIER and labels is None:
        raise AttackError(f"attack.target=classifier: the model {path} has no classification head (a language "
                          "model); attack a classifier (lmforge finetune with finetune.objective=classification) or "
                          "set attack.target=language_model")
    if target in (LANGUAGE_MODEL, VERBALIZER) and labels is not None:
        needs = "a language-model head" if target == LANGUAGE_MODEL else "a language-model head to score verbalizers"
        raise AttackError(f"attack.target={target}: the model {path} is a classifier (labels "
                          f"{', '.join(labels)}), without {needs}")
    suffix_search = next((i for i, spec in enumerate(ac.attacks) if isinstance(spec, SuffixAttack)), None)
    if target == CLASSIFIER and suffix_search is not None:
        raise AttackError(f"attack.attacks[{suffix_search}] gcg: a suffix search makes a language model's "
                          f"continuation likely; the model {path} is a classifier")
    if target == VERBALIZER and suffix_search is not None:
        raise AttackError(f"attack.attacks[{suffix_search}] gcg: a suffix search makes a language model's "
                          "continuation likely; attack.target=verbalizer attacks the label its verbalizers score")
    tokenizer = loaded.tokenizer if loaded.tokenizer_path is not None else _run_tokenizer(run)
    eos = eos_id_of(tokenizer)
    model = loaded.model
    protected = protected_tokens(tokenizer, eos, ac, model.dims.vocab_size)
    if target in (CLASSIFIER, VERBALIZER):
        if ac.texts is not None:
            raise AttackError("attack.texts: a classifier is attacked on a classification task's examples "
                              "(attack.task), not on texts")
        name = task_name(run, cfg, path)
        task = classification_task(run, cfg, name)
        if target == CLASSIFIER:
            examples = classifier_examples(task, labels, tokenizer, eos, loaded.seq_len, ac.examples, ac.seed,
                                           protected)
        else:
            labels = list(task.verbalizers)
            examples = verbalizer_examples(task, tokenizer, model.dims.context_length, ac.examples, ac.seed,
                                           protected, name in BUILTIN_KINDS)
    elif ac.task is not None:
        raise AttackError(f"attack.task: a language model is attacked on texts (attack.texts) or validation "
                          f"windows, not on a task's examples; the model {path} has no classification head (set "
                          "attack.target=verbalizer to attack it as the task's verbalizer classifier)")
    elif ac.texts is not None:
        examples = text_examples(ac.texts[:ac.examples], tokenizer, ac.continuation_tokens,
                                 model.dims.context_length, protected)
    else:
        if own_tokenizer(run, path) is not None:
            raise AttackError(f"attack: the model {path} has a tokenizer of its own, not the run's validation "
                              "tokens'; give attack.texts")
        examples = window_examples(run, ac, model.dims.context_length, protected)
    if not examples:
        raise AttackError("attack: no examples to attack")
    suffixes = {spec.key: suffix_tokens(spec, i, tokenizer, examples, protected, model.dims.context_length)
                for i, spec in enumerate(ac.attacks) if isinstance(spec, SuffixAttack)}
    plan = AttackPlan(path, loaded, tokenizer, target, examples, protected, _neighbours(ac, model, examples, protected),
                      suffixes, labels)
    plan.compared = [compared_plan(run, ac, plan, i, choice, device) for i, choice in enumerate(ac.compare)]
    return plan


def _attackable(path: Path, device) -> LoadedModel:
    loaded = load_model(path, device)
    if "quantization" in loaded.state:
        raise AttackError(f"attack: the quantized model {path} ({loaded.state['quantization']['method']}) has no "
                          "float embeddings to take gradients toward; attack the model it was made from")
    return loaded


def _neighbours(ac: AttackConfig, model, examples: list[Example], protected: set[int]) -> dict[int, list[int]] | None:
    token_attacks = [a for a in ac.attacks if isinstance(a, TokenAttack)]
    if not token_attacks:
        return None
    attacked = [ex.context[i] for ex in examples for i in ex.attackable]
    return nearest_neighbours(model.embed_tokens.weight.detach(), attacked, max(a.neighbours for a in token_attacks),
                              protected)


def compared_plan(run: RunDir, ac: AttackConfig, main: AttackPlan, index: int, choice: str, device) -> AttackPlan:
    """``attack.compare[index]``'s model attacked on the main model's examples: it must be the same kind of target
    (the same labels for a classifier head), read the same tokens (the same vocabulary) and fit every example."""
    where = f"attack.compare[{index}]"
    try:
        path = pick(run, choice)
        loaded = _attackable(path, device)
    except LmforgeError as exc:
        raise AttackError(f"{where}: {exc}") from None
    kind = "a language model" if loaded.labels is None else f"a classifier (labels {', '.join(loaded.labels)})"
    if (main.target == CLASSIFIER) != (loaded.labels is not None):
        raise AttackError(f"{where}: the model {path} is {kind}; the attacked model {main.path} is attacked as "
                          f"{main.target.replace('_', ' ')}")
    if main.target == CLASSIFIER and loaded.labels != main.labels:
        raise AttackError(f"{where}: the model {path} is {kind}; the attacked model {main.path} has labels "
                          f"{', '.join(main.labels)}")
    tokenizer = loaded.tokenizer if loaded.tokenizer_path is not None else _run_tokenizer(run)
    vocab = (loaded.model.dims.vocab_size, tokenizer.get_vocab_size())
    expected = (main.loaded.model.dims.vocab_size, main.tokenizer.get_vocab_size())
    if vocab != expected or tokenizer.get_vocab() != main.tokenizer.get_vocab():
        raise AttackError(f"{where}: the model {path} reads another vocabulary ({vocab[0]} embeddings, a tokenizer "
                          f"of {vocab[1]} tokens) than the attacked model {main.path} ({expected[0]}, {expected[1]})")
    longest = max(len(ex.ids) + max((len(c) for c in ex.choices), default=1) - 1 for ex in main.examples)
    context = max(len(ex.context) for ex in main.examples)
    for spec in ac.attacks:
        if isinstance(spec, SuffixAttack):  # a context, the suffix searched and the target after it
            longest = max(longest, context + spec.suffix_tokens + len(main.suffixes[spec.key][1]))
    if longest > loaded.model.dims.context_length:
        raise AttackError(f"{where}: the model {path} reads {loaded.model.dims.context_length} tokens at most; the "
                          f"attacked examples need {longest}")
    return dataclasses.replace(main, path=path, loaded=loaded,
                               neighbours=_neighbours(ac, loaded.model, main.examples, main.protected), compared=[])


def suffix_tokens(spec: SuffixAttack, index: int, tokenizer, examples: list[Example], protected: set[int],
                  context_length: int) -> tuple[int, tuple[int, ...]]:
    """A GCG attack's first suffix token and target ids, checked: a target that fits after every context and the
    suffix."""
    where = f"attack.attacks[{index}] gcg"
    ids = tuple(tokenizer.encode(spec.target, add_special_tokens=False).ids)
    init = tokenizer.encode(spec.init, add_special_tokens=False).ids
    if not ids or not init:
        raise AttackError(f"{where}: the {'target' if not ids else 'init'} encodes to no tokens")
    if init[0] in protected:
        raise AttackError(f"{where}: the init {spec.init!r} starts with a protected token ({init[0]})")
    longest = max(len(ex.context) for ex in examples)
    if longest + spec.suffix_tokens + len(ids) > context_length:
        raise AttackError(f"{where}: a context, the suffix and the target {spec.target!r} are {longest} + "
                          f"{spec.suffix_tokens} + {len(ids)} tokens, longer than the model's context of "
                          f"{context_length} tokens")
    return init[0], ids


def _run_tokenizer(run: RunDir):
    if not run.tokenizer.exists():
        raise AttackError(f"{run.tokenizer}: not found; the model has no tokenizer of its own and the run's data "
                          "stages have not run (lmforge data)")
    return load_tokenizer(run.tokenizer)


def outcome_of(plan: AttackPlan, spec, example: Example, clean_loss: float, succeeded, seed: int) -> Outcome:
    model = plan.loaded.model
    if isinstance(spec, TokenAttack):
        near = {t: plan.neighbours[t][:spec.neighbours] for t in {example.context[i] for i in example.attackable}}
        return hotflip(model, example, spec, near, succeeded)
    if spec.name == "fgsm":
        return fgsm(model, example, spec)
    return pgd(model, example, spec, clean_loss, seed)


def score(model, example: Example, ids: list[int], delta: torch.Tensor | None = None) -> tuple[float, int]:
    """The example's loss and prediction on the tokens ``ids`` (their embeddings plus ``delta`` (T, C))."""
    with torch.no_grad():
        x = embed(model, torch.tensor([ids], device=model.rope_cos.device))  # (1, T, C)
        loss, prediction = scores(model, example, x if delta is None else x + delta)
    return float(loss[0]), int(prediction[0])


def attack_example(plan: AttackPlan, ac: AttackConfig, index: int, example: Example
                   ) -> tuple[float, float, dict[str, Record]]:
    """``example``'s clean loss and accuracy, and its record under every attack of ``ac``."""
    model = plan.loaded.model
    clean_loss, clean_pred = score(model, example, example.ids)
    describe = _describer(plan, example)
    skipped = plan.labels is not None and clean_pred != example.label  # already wrong: not attacked

    def succeeded(prediction: int, loss: float) -> bool:
        if plan.labels is not None:
            return prediction != example.label
        return loss - clean_loss >= ac.success_margin

    pieces = [plan.tokenizer.decode([t]) for t in example.context]
    gold = None if example.label is None else plan.labels[example.label]
    clean_correct = _correct(plan, example, clean_pred)
    out = {}
    for j, spec in enumerate(ac.attacks):
        seed = ac.seed * 1_000_003 + index * 101 + j
        if isinstance(spec, SuffixAttack):
            out[spec.key] = suffix_record(plan, spec, example, seed)
            continue
        if skipped:
            out[spec.key] = Record(example.name, True, False, clean_loss, clean_loss, clean_correct, clean_correct,
                                   describe(clean_pred), describe(clean_pred), example.text_tokens, [], 0, None,
                                   "".join(pieces), "".join(pieces), list(example.context), list(example.context),
                                   list(example.suffix), gold)
            continue
        o = outcome_of(plan, spec, example, clean_loss, succeeded, seed)
        _, pred = score(model, example, o.ids, o.delta)
        used = None
        if o.delta is not None:
            r = radii(model, example, spec)  # (T, 1)
            lengths = o.delta.abs().amax(-1, keepdim=True) if spec.norm == "linf" else o.delta.norm(dim=-1, keepdim=True)
            used = float((lengths / r.clamp_min(1e-30)).max())
        tokens_changed = o.changed if o.delta is None else []
        adv_pieces = [plan.tokenizer.decode([t]) for t in o.ids[:len(example.context)]]
        out[spec.key] = Record(example.name, False, succeeded(pred, o.loss), clean_loss, o.loss, clean_correct,
                               _correct(plan, example, pred), describe(clean_pred), describe(pred),
                               example.text_tokens, o.changed, o.queries, used, marked(pieces, tokens_changed),
                               marked(adv_pieces, tokens_changed), list(example.context),
                               o.ids[:len(example.context)], list(example.suffix), gold)
    return clean_loss, clean_correct, out


def suffix_record(plan: AttackPlan, spec: SuffixAttack, example: Example, seed: int) -> Record:
    """GCG on one context: the target's loss and greedy match without a suffix, and after the suffix found
    (the attack succeeds when every target token is the argmax after it)."""
    model = plan.loaded.model
    init, target = plan.suffixes[spec.key]
    n, S = len(example.context), spec.suffix_tokens
    clean = Example(example.name, example.context, target, None, ())
    clean_loss, clean_hits = score(model, clean, clean.ids)
    searched = Example(example.name, (*example.context, *[init] * S), target, None, tuple(range(n, n + S)))
    o = gcg(model, searched, spec, plan.protected, seed)
    _, hits = score(model, searched, o.ids)
    pieces = [plan.tokenizer.decode([t]) for t in o.ids[:n + S]]
    return Record(example.name, False, hits == len(target), clean_loss, o.loss, clean_hits / len(target),
                  hits / len(target), f"{clean_hits}/{len(target)} target tokens", f"{hits}/{len(target)} target tokens",
                  n + S, o.changed, o.queries, None, "".join(pieces[:n]), marked(pieces, o.changed),
                  list(example.context), o.ids[:n + S], list(target), None)


def _correct(plan: AttackPlan, example: Example, prediction: int) -> float:
    if plan.labels is not None:
        return float(prediction == example.label)
    return prediction / len(example.suffix)


def _describer(plan: AttackPlan, example: Example):
    if plan.labels is not None:
        return lambda p: plan.labels[p]
    return lambda p: f"{p}/{len(example.suffix)} continuation tokens"


def attack_all(plan: AttackPlan, ac: AttackConfig, bar) -> tuple[list[float], list[float], dict[str, list[Record]]]:
    """Every example's clean loss and accuracy, and its records under every attack, for ``plan``'s model."""
    records: dict[str, list[Record]] = {spec.key: [] for spec in ac.attacks}
    clean_losses, clean_correct = [], []
    with frozen(plan.loaded.model):
        for i, example in enumerate(plan.examples):
            bar.set(example=example.name)
            loss, correct, found = attack_example(plan, ac, i, example)
            clean_losses.append(loss)
            clean_correct.append(correct)
            for key, record in found.items():
                records[key].append(record)
            bar.advance()
    return clean_losses, clean_correct, records


def run_attack(run: RunDir, cfg: RunConfig, plan: AttackPlan) -> dict:
    """The attacks on the model and on every ``attack.compare`` model (the same examples, attacks and seeds); the
    summary keeps the main model's figures at its top level and every model's in ``models`` (the main model's
    first)."""
    ac = settings_of(cfg)
    plans = [plan, *plan.compared]
    models, records = [], {}
    with track("attack", total=len(plan.examples) * len(plans), unit="examples") as bar:
        for p in plans:
            clean_losses, clean_correct, found = attack_all(p, ac, bar)
            n = len(p.examples)
            models.append({"model": str(p.path), "adversarial": p.loaded.adversarial,
                           "clean_accuracy": sum(clean_correct) / n, "clean_loss": sum(clean_losses) / n,
                           "attacks": {key: attack_summary(rs) for key, rs in found.items()}})
            if p is plan:  # the main model's examples are the ones reported
                records = found
    main = models[0]
    summary = {"model": main["model"], "target": plan.target, "examples": len(plan.examples), "seed": ac.seed,
               "clean_accuracy": main["clean_accuracy"], "clean_loss": main["clean_loss"], "attacks": main["attacks"],
               "models": models}
    report = {**summary, "settings": ac.model_dump(mode="json"),
              "attacks": {spec.key: {"settings": spec.model_dump(mode="json"), "summary": main["attacks"][spec.key],
                                     "examples": [r.to_dict() for r in records[spec.key]]} for spec in ac.attacks}}
    with atomic_dir(run.stage_dir(STAGE)) as folder:
        atomic_write_json(folder / "report.json", report)
        atomic_write_text(folder / "report.md", markdown(summary, records, ac.shown_examples))
        atomic_write_json(folder / "summary.json", summary)
    info(f"attack: {len(plan.examples)} example(s), {len(ac.attacks)} attack(s), {len(plans)} model(s) -> "
         f"{run.stage_dir(STAGE)}")
    return summary
