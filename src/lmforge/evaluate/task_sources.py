"""Which tasks a run evaluates (``eval.tasks``, ``train.eval_tasks``): the user's task files, read and checked
before anything is written, and the built-in tasks, made from the run's curated corpus when first needed.
"""

from __future__ import annotations

from pathlib import Path

from lmforge.core.progress import info
from lmforge.errors import DataError, RecipeError
from lmforge.evaluate.builtin_tasks import make_builtin_tasks
from lmforge.evaluate.config import BUILTIN, VAL_LOSS
from lmforge.evaluate.task_eval import fitting, kind_metrics, metric_names
from lmforge.evaluate.tasks import Task, load_task
from lmforge.rundir import RunDir

BUILTIN_KINDS = {"docstring_to_name": "multiple_choice", "which_package": "classification"}


def load_user_tasks(entries: list[str], key: str) -> list[Task]:
    """The task files among ``entries`` (``builtin`` aside), each read and checked; names must differ from
    each other and from the built-in tasks when those are listed too."""
    tasks = [load_task(Path(entry)) for entry in entries if entry != BUILTIN]
    seen: dict[str, Path] = {}
    reserved = set(BUILTIN_KINDS) if BUILTIN in entries else set()
    for task in tasks:
        if task.name in seen or task.name in reserved:
            other = seen.get(task.name, "the built-in task")
            raise RecipeError(f"{key}: two tasks are named {task.name!r} ({other} and {task.path})")
        seen[task.name] = task.path
    return tasks


def builtin_tasks(run: RunDir, folder: Path, seed: int, max_examples: int, tokenizer,
                  context_length: int) -> tuple[list[Task], list[str]]:
    """The built-in tasks' validation split, written to ``folder`` from the curated validation documents
    (contexts or texts also in the training documents left out), each cut to the examples that fit the
    model's context; and what was left out, in words (the whole set when the corpus has no Python functions
    to make them from, or a task none of whose examples fits)."""
    try:
        made = make_builtin_tasks(run.val_docs, folder, "val", seed, max_examples, exclude_docs=run.train_docs)
    except DataError as exc:
        info(f"eval: no built-in tasks from this corpus: {exc}")
        return [], [f"built-in tasks: {exc}"]
    tasks, notes = [], []
    for t in made:
        task, dropped = fitting(load_task(t.spec), tokenizer, context_length)
        if dropped:
            notes.append(f"{task.name}: {dropped} of {t.count} examples longer than the context of "
                         f"{context_length} tokens")
        if task.examples:
            tasks.append(task)
    for note in notes:
        info(f"eval: left out: {note}")
    return tasks, notes


def check_select(select, tasks: list[Task], entries: list[str]) -> None:
    """``eval.select.metric`` names val_loss or a metric of a task the recipe evaluates."""
    if select is None or select.metric == VAL_LOSS:
        return
    name, metric = select.metric.split("/", 1)
    by_name = {t.name: t for t in tasks}
    if name in by_name:
        known = metric_names(by_name[name])
    elif name in BUILTIN_KINDS and BUILTIN in entries:
        known = kind_metrics(BUILTIN_KINDS[name])
        if metric.split("/", 1)[0] in ("precision", "recall", "f1") and "/" in metric:
            return  # a per-class metric of a built-in label set, which is known once the task is made
    else:
        listed = sorted({*by_name, *(BUILTIN_KINDS if BUILTIN in entries else ())})
        raise RecipeError(f"eval.select.metric: {select.metric!r}: no task {name!r} in eval.tasks "
                          f"(tasks: {', '.join(listed) or 'none'}; or val_loss)")
    if metric not in known:
        raise RecipeError(f"eval.select.metric: {select.metric!r}: unknown metric {metric!r} of task {name!r} "
                          f"(known: {', '.join(known)})")
