"""The attacked examples: a classifier's labelled texts from a classification task (read by its head, or by a
language model as the evaluation stage's label-verbalizer classifier: the prompt, then each label's word), or for
the language model its texts or seeded windows of the run's validation tokens, each a context (attacked) and a
continuation (scored)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from lmforge.attack.config import AttackConfig
from lmforge.attack.objective import Example
from lmforge.checkpoint.load import classifier_ids
from lmforge.data.packing import TokenShards
from lmforge.errors import AttackError, DataError
from lmforge.evaluate.task_eval import encode_example, fitting
from lmforge.evaluate.task_sources import BUILTIN_KINDS
from lmforge.evaluate.tasks import ClassificationExample, Task, load_task
from lmforge.recipe import RunConfig, read_yaml
from lmforge.rundir import RunDir
from lmforge.transfer.classify import builtin_classification


def protected_tokens(tokenizer, eos: int, ac: AttackConfig, vocab_size: int) -> set[int]:
    """The tokenizer's special (added) tokens, the end-of-text and ``attack.protected_ids``."""
    unknown = next((i for i in ac.protected_ids if i >= vocab_size), None)
    if unknown is not None:
        raise AttackError(f"attack.protected_ids: {unknown} is not a token of the model's vocabulary of {vocab_size}")
    return {eos, *tokenizer.get_added_tokens_decoder(), *ac.protected_ids}


def _example(name: str, context: list[int], suffix: list[int], label: int | None, protected: set[int]) -> Example:
    attackable = tuple(i for i, t in enumerate(context) if t not in protected)
    return Example(name, tuple(context), tuple(suffix), label, attackable)


def task_name(run: RunDir, cfg: RunConfig, path: Path) -> str:
    """``attack.task``, else ``finetune.task``, else for the run's fine-tuned classifier the task it was trained on
    (its ``finetune/recipe.yaml``)."""
    ac = cfg.attack
    name = ac.task if ac is not None and ac.task is not None else (cfg.finetune.task if cfg.finetune else None)
    trained_with = run.stage_dir("finetune") / "recipe.yaml"
    if name is None and Path(path) == run.finetuned_model and trained_with.is_file():
        name = (read_yaml(trained_with).get("finetune") or {}).get("task")
    if name is None:
        raise AttackError("attack.task: a classifier is attacked on a classification task's examples; give one "
                          f"(built-in: {', '.join(k for k, v in BUILTIN_KINDS.items() if v == 'classification')}, "
                          "or a task YAML)")
    return name


def classification_task(run: RunDir, cfg: RunConfig, name: str) -> Task:
    if name in BUILTIN_KINDS:
        if BUILTIN_KINDS[name] != "classification":
            raise AttackError(f"attack.task: {name!r} is a {BUILTIN_KINDS[name]} task, not a classification one")
        if not run.val_docs.exists():
            raise AttackError(f"attack.task {name}: {run.val_docs} not found; run the data stages first")
        return builtin_classification(run, name, cfg.seed, cfg.eval.builtin_examples)
    if not name.endswith((".yaml", ".yml")):
        raise AttackError(f"attack.task: {name!r} is neither a built-in task ({', '.join(BUILTIN_KINDS)}) nor a "
                          "task YAML")
    task = load_task(name)
    if task.kind != "classification":
        raise AttackError(f"attack.task {task.name}: a {task.kind} task; a classifier is attacked on "
                          "classification examples")
    return task


def seeded_choice(total: int, count: int, seed: int) -> list[int]:
    """``count`` of ``range(total)`` (all when fewer), drawn with ``seed``, in order."""
    return [int(i) for i in np.sort(np.random.default_rng(seed).choice(total, size=min(count, total), replace=False))]


def classifier_examples(task: Task, labels: list[str], tokenizer, eos: int, seq_len: int, count: int, seed: int,
                        protected: set[int]) -> list[Example]:
    """``count`` seeded examples of the task (a task's examples often come grouped by label), as the classifier
    reads them (``classifier_ids``)."""
    out = []
    for i in seeded_choice(len(task.examples), count, seed):
        ex = task.examples[i]
        if ex.label not in labels:
            raise AttackError(f"{task.where(i)}: label {ex.label!r} is not one of the classifier's labels {labels}")
        ids = classifier_ids(tokenizer.encode(ex.text, add_special_tokens=False).ids, eos, seq_len)
        out.append(_example(_name(task, ex), ids[:-1], ids[-1:], labels.index(ex.label), protected))
    return out


def _name(task: Task, ex: ClassificationExample) -> str:
    return f"{task.name}-{re.sub(r'[^A-Za-z0-9._-]+', '_', str(ex.id))}"


def verbalizer_examples(task: Task, tokenizer, context_length: int, count: int, seed: int, protected: set[int],
                        builtin: bool) -> list[Example]:
    """``count`` seeded examples of the task as the evaluation stage scores them with a language model: the prompt
    and each label's verbalizer tokens by its encode-pair rule (``task_eval.encode_example``); a built-in task cut
    first to the examples the model reads whole, as the evaluation stage cuts it (a user's task's example that does
    not fit is refused). Only the tokens of the example's own text are attacked, never the template's."""
    if builtin:
        task, _ = fitting(task, tokenizer, context_length)
        if not task.examples:
            raise AttackError(f"attack.task {task.name}: no example fits the model's context of {context_length} "
                              "tokens")
    labels = list(task.verbalizers)
    out = []
    for i in seeded_choice(len(task.examples), count, seed):
        ex = task.examples[i]
        try:
            pairs = encode_example(task, i, tokenizer, context_length)
        except DataError as exc:
            raise AttackError(str(exc)) from None
        context = pairs[0][0]
        own = set(text_positions(task, ex, tokenizer, context))
        template = tuple(j for j in range(len(context)) if j not in own)
        attackable = tuple(j for j in sorted(own) if context[j] not in protected)
        out.append(Example(_name(task, ex), tuple(context), (), labels.index(ex.label), attackable,
                           tuple(tuple(c) for _, c in pairs), template))
    return out


def text_positions(task: Task, ex: ClassificationExample, tokenizer, context: list[int]) -> list[int]:
    """The positions of ``context`` (the prompt's tokens by the encode-pair rule) whose characters all lie in the
    example's text where the template puts it (every {text}); the template's and demonstrations' tokens, and a
    token that runs across a text's edge, are not among them."""
    prompt = task.prompt(ex)
    kept = prompt.rstrip()  # the encode-pair rule moves the prompt's trailing whitespace to the continuation
    encoding = tokenizer.encode(kept, add_special_tokens=False)
    if not kept or encoding.ids != list(context):
        return []  # the end-of-text read in place of an empty prompt
    start = len(prompt) - len(task.render(ex.text))  # after the demonstrations
    parts = task.spec.template.split("{text}")
    spans = []
    for part in parts[:-1]:
        start += len(part)
        spans.append((start, start + len(ex.text)))
        start += len(ex.text)
    return [j for j, (a, b) in enumerate(encoding.offsets) if b > a and any(s <= a and b <= e for s, e in spans)]


def text_examples(texts: list[str], tokenizer, continuation: int, context_length: int,
                  protected: set[int]) -> list[Example]:
    """Each text's tokens: the last ``continuation`` scored, the ones before attacked."""
    out = []
    for i, text in enumerate(texts):
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        if len(ids) > context_length:
            raise AttackError(f"attack.texts[{i}]: the text is {len(ids)} tokens, longer than the model's context of "
                              f"{context_length} tokens")
        if len(ids) <= continuation:
            raise AttackError(f"attack.texts[{i}]: the text is {len(ids)} tokens; it needs more than "
                              f"attack.continuation_tokens={continuation} (a context to attack before them)")
        out.append(_example(f"text-{i}", ids[:-continuation], ids[-continuation:], None, protected))
    return out


def window_examples(run: RunDir, ac: AttackConfig, context_length: int, protected: set[int]) -> list[Example]:
    """Seeded windows of the run's validation tokens, ``context_tokens`` then ``continuation_tokens``."""
    width = ac.context_tokens + ac.continuation_tokens
    if width > context_length:
        raise AttackError(f"attack: context_tokens + continuation_tokens = {width} tokens, longer than the model's "
                          f"context of {context_length} tokens")
    if not run.tokens("val").exists():
        raise AttackError(f"{run.tokens('val')}: no validation tokens; run the data stages first, or give "
                          "attack.texts")
    shards = TokenShards(run.tokens("val"))
    windows = shards.num_windows(width - 1)  # a window of seq_len s holds s + 1 tokens
    if windows == 0:
        raise AttackError(f"{run.tokens('val')}: fewer than {width} validation tokens")
    out = []
    for w in seeded_choice(windows, ac.examples, ac.seed):
        ids = [int(t) for t in shards.window(w, width - 1)]
        out.append(_example(f"val-{w}", ids[:ac.context_tokens], ids[ac.context_tokens:], None, protected))
    return out
