"""The stages of a run: one table, and the only code that decides order, done, skip and redo.

Stages hand off through files in the run directory only. A finished stage is recorded in ``stages.json``
with a fingerprint of the recipe sections it depends on (its own and those of every stage it needs); it is
skipped when the fingerprint matches and its ``summary.json`` is there. A changed recipe for a finished
stage is an error unless that stage is redone (``--redo``, which redoes the stages after it too); cheap
stages (``rerun_on_change``) are simply run again. A command either runs one stage on inputs that must
exist (``run_stage``) or a stage with everything it needs first (``run_through``); ``lmforge run`` runs
the stages the recipe chooses (``chosen_stages``).

The later stages (finetune to secure) run when the recipe has their section (``chosen_stages``); what they
read is made by the stages before them, so each is checked when its turn comes (``check_when_due``), and is
simply run again when its recipe changed. The report always runs last.

Adding a stage: one row here (a later stage's check and run in ``later_stages``), its command, its recipe
section; nothing else outside its folder.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from lmforge.core.atomic import atomic_write_json, atomic_write_text
from lmforge import later_stages as later_
from lmforge.core.progress import info
from lmforge.data.stage import run_curate, run_pack, run_tokenizer
from lmforge.distributed.context import Launch
from lmforge.errors import DataError, LmforgeError
from lmforge.recipe import RunConfig
from lmforge.rundir import RunDir


@dataclasses.dataclass(frozen=True)
class Options:
    """What a command passes to the stages it runs, besides the recipe."""
    resume: bool = False  # train: continue from the latest checkpoint
    launch: Launch = Launch()  # train: this process, or processes through torchrun
    checkpoint: str | None = None  # eval, sample: which checkpoint (default: the selected, else the latest)
    compare: str | None = None  # eval: another model to compare with on the same items

    @property
    def writes(self) -> bool:
        """Whether this invocation records stages: node 0 writes the run directory all nodes share."""
        return self.launch.node_rank == 0


def _device(cfg: RunConfig):
    from lmforge.core.device import pick_device

    return pick_device(cfg.train.device)


def _check_train(run: RunDir, cfg: RunConfig, opts: Options):
    from lmforge.distributed.layout import resolve_layout
    from lmforge.evaluate.train_hook import check_eval_tasks
    from lmforge.train.stage import check_train

    layout = check_train(run, cfg, opts.launch, opts.resume)
    check_eval_tasks(cfg, (layout or resolve_layout(cfg.parallel, opts.launch.world_size)).sharded)
    return layout


def _train(run: RunDir, cfg: RunConfig, opts: Options, checked) -> dict:
    from lmforge.evaluate.train_hook import eval_tasks_hook
    from lmforge.train.stage import run_train

    return run_train(run, cfg, opts.launch, opts.resume, checked, eval_extra=eval_tasks_hook(run, cfg))


def _check_eval(run: RunDir, cfg: RunConfig, opts: Options):
    from lmforge.evaluate.stage import check_eval

    return check_eval(run, cfg)


def _eval(run: RunDir, cfg: RunConfig, opts: Options, checked) -> dict:
    from lmforge.evaluate.stage import stage_eval

    return stage_eval(run, cfg, _device(cfg), opts.checkpoint, checked, opts.compare)


def _sample(run: RunDir, cfg: RunConfig, opts: Options, checked) -> dict:
    from lmforge.evaluate.stage import stage_sample

    return stage_sample(run, cfg, _device(cfg), opts.checkpoint)


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str  # also its folder: <run>/<name>/
    sections: tuple[str, ...]  # the recipe sections it reads itself
    needs: tuple[str, ...]  # the stages whose outputs it reads
    run: Callable[[RunDir, RunConfig, Options, object], dict]  # does the work; returns its headline figures
    outputs: Callable[[RunDir], list[Path]]  # what the stages after it read
    command: str  # the lmforge command that runs it alone
    help: str
    check: Callable[[RunDir, RunConfig, Options], object] | None = None  # before any write; its result goes to run
    rerun_on_change: bool = False  # cheap: a changed recipe reruns it instead of being refused
    resumes: bool = False  # --resume continues it with a changed recipe (its own checks decide what may change)
    always: bool = False  # runs every time (the report of what is there now)
    check_when_due: bool = False  # check just before it runs (what it checks is made by the stages before it)


LATE = {"rerun_on_change": True, "check_when_due": True}  # the later stages: checked when their turn comes, run
# again (from scratch) when their recipe changed
STAGES: tuple[Stage, ...] = (
    Stage("curate", ("seed", "data"), (), lambda run, cfg, opts, checked: run_curate(run, cfg),
          lambda run: [run.train_docs, run.val_docs], "data",
          "read the sources, normalize, filter by quality, scrub PII, remove duplicates, split train/validation"),
    Stage("tokenizer", ("tokenizer",), ("curate",), lambda run, cfg, opts, checked: run_tokenizer(run, cfg),
          lambda run: [run.tokenizer], "data", "train a byte-level BPE tokenizer on the training split"),
    Stage("pack", ("pack",), ("tokenizer",), lambda run, cfg, opts, checked: run_pack(run, cfg),
          lambda run: [run.tokens(split) / "index.json" for split in ("train", "val")], "data",
          "encode the documents into memory-mapped token shards"),
    Stage("train", ("model", "train"), ("pack",), _train, lambda run: [run.checkpoints], "train",
          "pretrain the decoder on the token shards, with checkpoints and metrics", check=_check_train, resumes=True),
    Stage("eval", ("eval",), ("train",), _eval, lambda run: [run.eval_results], "eval",
          "validation loss and the tasks' metrics with intervals; checkpoint selection; paired comparison",
          check=_check_eval, rerun_on_change=True),
    Stage("sample", ("generate",), ("train",), _sample, lambda run: [run.samples], "generate",
          "continue the recipe's prompt with the trained model", rerun_on_change=True),
    Stage("finetune", ("finetune",), ("eval",), later_.finetune, lambda run: [run.finetuned_model], "finetune",
          "fine-tune the selected checkpoint (LoRA, frozen or full; a classification head)",
          check=later_.check_finetune, **LATE, resumes=True),
    Stage("merge", ("merge",), ("eval",), later_.merge, lambda run: [run.merged_model], "merge",
          "merge checkpoints or fine-tunes (greedy soup, task arithmetic, TIES, ...), evaluated against its inputs",
          check=later_.check_merge, **LATE),
    Stage("compress", ("compress",), ("eval",), later_.compress, lambda run: [run.stage_summary("compress")],
          "compress", "int8, pruned and distilled variants and their size / speed / quality table",
          check=later_.check_compress, **LATE),
    Stage("explain", ("explain",), ("eval",), later_.explain, lambda run: [run.stage_summary("explain")], "explain",
          "attributions with their faithfulness, attention, logit lens and weight anatomy",
          check=later_.check_explain, **LATE),
    Stage("attack", ("attack",), ("finetune",), later_.attack, lambda run: [run.stage_summary("attack")], "attack",
          "attack the fine-tuned model, before and after adversarial fine-tuning (attack.harden)",
          check=later_.check_attack, **LATE),
    Stage("secure", ("secure",), ("eval",), later_.secure, lambda run: [run.stage_summary("secure")], "secure",
          "sign and encrypt the selected model with keys made for the run (kept in <run>/secure/keys/)",
          check=later_.check_secure, **LATE),
    Stage("report", (), (), later_.report, lambda run: [run.root / "report.html"], "report",
          "write <run>/report.html: the whole run in one self-contained page", rerun_on_change=True, always=True),
)
CORE = ("curate", "tokenizer", "pack", "train", "eval", "sample")  # what every run does unless told otherwise
BY_NAME = {s.name: s for s in STAGES}
NAMES = tuple(BY_NAME)


def stage(name: str) -> Stage:
    return BY_NAME[name]


def closure(names) -> list[str]:
    """``names`` and every stage they need, in table order."""
    wanted: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo.extend(BY_NAME[name].needs)
    return [n for n in NAMES if n in wanted]


def later(name: str) -> list[str]:
    """``name`` and every stage that depends on it, directly or not (a stage that always runs, the report, reads
    them all)."""
    out = {name}
    for s in STAGES:
        if s.always or any(n in out for n in s.needs):
            out.add(s.name)
    return [n for n in NAMES if n in out]


def sections(name: str) -> tuple[str, ...]:
    """The recipe sections a stage's result depends on: its own and those of everything it needs."""
    return tuple(dict.fromkeys(sec for n in closure([name]) for sec in BY_NAME[n].sections))


def fingerprint(cfg: RunConfig, name: str) -> str:
    return cfg.section_hash(*sections(name))


# --- stages.json -------------------------------------------------------------------------------
def done_stages(run: RunDir) -> dict:
    if not run.stages_file.exists():
        return {}
    try:
        return json.loads(run.stages_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}  # written atomically, so this only happens if edited by hand: treat as not done


def is_done(run: RunDir, cfg: RunConfig, name: str) -> bool:
    entry = done_stages(run).get(name)
    return (isinstance(entry, dict) and entry.get("fingerprint") == fingerprint(cfg, name)
            and run.stage_summary(name).exists())


def invalidate(run: RunDir, name: str) -> None:
    """Forget ``name`` and every stage after it."""
    _forget(run, later(name))


def _forget(run: RunDir, names) -> None:
    stages = done_stages(run)
    kept = {k: v for k, v in stages.items() if k not in names}
    if kept != stages:
        atomic_write_json(run.stages_file, kept)


def _mark_done(run: RunDir, cfg: RunConfig, name: str, summary: dict, seconds: float) -> None:
    atomic_write_json(run.stage_summary(name), summary)
    stages = done_stages(run)
    stages[name] = {"fingerprint": fingerprint(cfg, name), "seconds": round(seconds, 2)}
    atomic_write_json(run.stages_file, stages)


# --- before anything is written ----------------------------------------------------------------
def check_redo(redo) -> list[str]:
    """The stages ``--redo`` names, with everything after them."""
    for name in redo:
        if name not in BY_NAME:
            raise LmforgeError(f"--redo {name}: unknown stage (stages: {', '.join(NAMES)})")
    return [n for n in NAMES if any(n in later(r) for r in redo)]


def check_fits(run: RunDir, cfg: RunConfig, names, *, redo=(), resume: bool = False, needs: bool = True) -> None:
    """Finished stages among ``names`` (and, with ``needs``, what they need) must have run with this recipe,
    unless they are redone, cheap, or resumed with new settings (training: the checkpoint's resume key decides
    then)."""
    redone = check_redo(redo)
    done = done_stages(run)
    for name in closure(names) if needs else names:
        entry = done.get(name)
        if name in redone or BY_NAME[name].rerun_on_change or not isinstance(entry, dict):
            continue
        if entry.get("fingerprint") != fingerprint(cfg, name):
            if resume and BY_NAME[name].resumes:
                continue
            raise LmforgeError(
                f"{run.root}: the recipe differs from the one the {name} stage ran with (one of: "
                f"{', '.join(sections(name))}); pass --redo {name} to redo it and the stages after it, or choose a "
                "new run name")


def check_stages(run: RunDir, cfg: RunConfig, names, opts: Options) -> dict:
    """Every stage's own check (bad options, layouts, checkpoints), before anything is written."""
    return {n: BY_NAME[n].check(run, cfg, opts) for n in names
            if BY_NAME[n].check is not None and not BY_NAME[n].check_when_due}


def prepare(run: RunDir, cfg: RunConfig, *, redo=(), keep_recipe: bool = False) -> None:
    """Record the recipe in the run directory and forget what ``redo`` redoes (after the checks passed)."""
    redone = check_redo(redo)
    run.root.mkdir(parents=True, exist_ok=True)
    if run.clean_temporaries():
        info("removed leftovers of an interrupted write")
    if redone:
        invalidate(run, redone[0])
        for name in redone:  # start over: a redone stage's folder goes (training's checkpoints and metrics too)
            shutil.rmtree(run.stage_dir(name), ignore_errors=True)
    if not (keep_recipe and run.recipe.exists()):
        atomic_write_text(run.recipe, cfg.to_yaml())


# --- running -----------------------------------------------------------------------------------
def require(run: RunDir, name: str, opts: Options = Options()) -> None:
    """The outputs ``name`` reads must be there (a command that runs one stage does not make them). A
    checkpoint given on the command line stands in for the train stage's."""
    for need in BY_NAME[name].needs:
        if need == "train" and opts.checkpoint is not None:
            continue
        for path in BY_NAME[need].outputs(run):
            if not path.exists():
                command = BY_NAME[need].command
                raise DataError(f"{path}: not found (the {need} stage writes it); run the {command} stage first "
                                f"(lmforge {command})")


def run_stage(run: RunDir, cfg: RunConfig, name: str, opts: Options = Options(), *, checked=None,
              again: bool = False) -> dict:
    """Run one stage unless it is done with this recipe (``again``: run it anyway); returns its summary."""
    if not again and is_done(run, cfg, name):
        info(f"[dim]{name}: already done, skipped[/dim]")
        return json.loads(run.stage_summary(name).read_text())
    if BY_NAME[name].check_when_due:  # before its earlier result is forgotten: a refusal leaves it as it was
        checked = BY_NAME[name].check(run, cfg, opts)
    if opts.writes:  # what came after it is out of date now; its own record stays until it succeeds (a run
        # that fails leaves the fingerprint it had, so a changed recipe is still refused, but not its summary)
        _forget(run, later(name)[1:])
        run.stage_summary(name).unlink(missing_ok=True)
    started = time.perf_counter()
    summary = BY_NAME[name].run(run, cfg, opts, checked)
    if opts.writes:
        _mark_done(run, cfg, name, summary, time.perf_counter() - started)
    return summary


def run_through(run: RunDir, cfg: RunConfig, names, opts: Options = Options(), *, redo=(),
                keep_recipe: bool = False) -> dict[str, dict]:
    """Run ``names`` and every stage they need, in order, each unless done; returns their summaries.
    Nothing is written before every check has passed."""
    todo = closure(names)
    check_fits(run, cfg, todo, redo=redo, resume=opts.resume)
    checked = check_stages(run, cfg, todo, opts)
    prepare(run, cfg, redo=redo, keep_recipe=keep_recipe)
    info(f"run directory: {run.root}")
    return {n: run_stage(run, cfg, n, opts, checked=checked.get(n), again=BY_NAME[n].always) for n in todo}


def chosen_stages(cfg: RunConfig, only=(), skip=()) -> list[str]:
    """What ``lmforge run`` runs: ``--only``'s stages, else the recipe's ``stages:``, else the core stages, the
    later ones whose recipe section is there, and the report; less ``--skip``'s and what needs them."""
    for flag, names in (("--only", only), ("--skip", skip), ("stages", cfg.stages or ())):
        for name in names:
            if name not in BY_NAME:
                raise LmforgeError(f"{flag}: unknown stage {name!r} (stages: {', '.join(NAMES)})")
    if only:
        wanted = list(only)
    elif cfg.stages is not None:
        wanted = list(cfg.stages)
    else:
        wanted = [*CORE, *(n for n in NAMES if n not in CORE and getattr(cfg, n, None) is not None), "report"]
    left_out = {n for s in skip for n in later(s) if n == s or not BY_NAME[n].always}
    for name in wanted:
        if name in left_out and name not in skip:
            info(f"[dim]{name}: skipped (it needs {', '.join(s for s in skip if name in later(s))})[/dim]")
    return [n for n in closure(wanted) if n not in left_out]


def run_alone(run: RunDir, cfg: RunConfig, name: str, opts: Options = Options(), *, redo: bool = False,
              again: bool = False) -> dict:
    """One stage on the outputs of the stages it needs, which must be there already (they are not made).
    ``redo``: forget its earlier result first (and what came after it); ``again``: run it even if done."""
    require(run, name, opts)
    redone = (name,) if redo else ()
    # a cheap stage reads its inputs as they are (eval scores whatever checkpoint is there); the others must
    # fit what they build on
    check_fits(run, cfg, [name], redo=redone, resume=opts.resume, needs=not BY_NAME[name].rerun_on_change)
    checked = check_stages(run, cfg, [name], opts)
    if opts.writes:  # node 0 writes the run directory that all nodes share; the others only check
        prepare(run, cfg, redo=redone)
    return run_stage(run, cfg, name, opts, checked=checked.get(name), again=again)
