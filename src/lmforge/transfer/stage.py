"""``lmforge finetune``: continue training a base model on the run's token shards (objective causal_lm) or on
prompt -> completion records (objective sft, ``transfer.sft``), fully, with some parameters frozen, or with
LoRA adapters, through the training loop's plug points (``init_from``, ``trainable``, ``adapt``; sft:
``loss_fn`` and ``batches``). Everything is written under ``<run>/finetune/``: checkpoints, metrics.jsonl,
summary.json, and (LoRA) ``adapter/`` in peft's format for the HF export."""

from __future__ import annotations

import dataclasses
import fnmatch
from pathlib import Path

import torch

from lmforge.checkpoint.load import (
    checkpoint_dims,
    load_checkpoint,
    load_model,
    model_tokenizer_path,
    pick,
    require_language_model,
)
from lmforge.checkpoint.export import write_exported
from lmforge.core.atomic import atomic_write_json
from lmforge.core.progress import info
from lmforge.data.packing import TokenShards
from lmforge.data.tokenizer import model_tokenizer, read_tokenizer
from lmforge.errors import FinetuneError
from lmforge.evaluate.report import write_task_files
from lmforge.evaluate.task_eval import EvalSettings, fitting, score_task, summarize
from lmforge.evaluate.tasks import Task
from lmforge.model.config import ModelConfig, ModelDims
from lmforge.model.decoder import Decoder, count_parameters
from lmforge.model.fused_layout import model_views
from lmforge.recipe import RunConfig
from lmforge.rundir import RunDir
from lmforge.train.config import sequence_length
from lmforge.transfer.classify import HEAD, ClassBatches, classification_head, load_classification, score_classifier
from lmforge.transfer.config import FinetuneConfig
from lmforge.transfer.data import FinetuneData, plan_data, prepare_data
from lmforge.transfer.lora import add_lora, is_lora_parameter, lora_targets, merge_lora, save_hf_adapter, unwrapped_state
from lmforge.transfer.sft import SftBatches, load_sft_data, sft_loss

STAGE = "finetune"


class FinetuneRunDir(RunDir):
    """The run directory as the training loop sees it while fine-tuning: the base's tokenizer, the run's
    token shards or fine-tuning's own (``transfer.data``), with checkpoints and metrics under ``<run>/finetune/``
    (or ``<run>/<folder>/``: the attack stage's adversarially fine-tuned copy)."""

    def __init__(self, run: RunDir, data: FinetuneData | None = None, folder: str = STAGE):
        super().__init__(run.root)
        self.run, self.data, self.folder = run, data, folder

    @property
    def own(self) -> Path:
        """Where this fine-tuning writes."""
        return self.root / self.folder

    @property
    def summary_file(self) -> Path:
        return self.own / "summary.json"

    @property
    def tokenizer(self) -> Path:
        return self.run.tokenizer if self.data is None else self.data.tokenizer

    def tokens(self, split: str) -> Path:
        if self.data is not None and self.data.own_tokens:
            return self.own / "tokens" / split
        return self.run.tokens(split)

    @property
    def checkpoints(self) -> Path:
        return self.own / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.own / "metrics.jsonl"

    @property
    def adapter(self) -> Path:
        return self.own / "adapter"

    @property
    def model_file(self) -> Path:
        return self.run.finetuned_model if self.folder == STAGE else self.own / "model.safetensors"


@dataclasses.dataclass
class FinetunePlan:
    """What ``check_finetune`` settled before anything is written."""
    base: Path
    dims: ModelDims
    cfg: RunConfig  # the recipe the loop trains with: the base's model, finetune's steps and learning rate
    trainable: object  # (name, param) -> bool, or None: every parameter
    lora_targets: list[str]
    trainable_parameters: int
    parameters: int
    data: FinetuneData
    batches: SftBatches | ClassBatches | None = None  # objectives sft, classification: the examples, split
    task: Task | None = None  # objective classification: the test examples, as an evaluation task
    folder: str = STAGE  # where it writes, under the run directory


def finetune_settings(cfg: RunConfig) -> FinetuneConfig:
    return cfg.finetune or FinetuneConfig()


def training_config(cfg: RunConfig, fc: FinetuneConfig, dims: ModelDims) -> RunConfig:
    """A copy of the recipe for the loop: ``train:``'s optimizer, batch, schedule shape and cadence, with
    fine-tuning's steps, learning rate and warm-up, and the base's dimensions as ``model:``."""
    train = cfg.train.model_copy(update={"max_steps": fc.max_steps, "lr": fc.lr, "warmup_steps": fc.warmup_steps,
                                         "eval_tasks": [], "adversarial": fc.adversarial})
    return cfg.model_copy(update={"model": ModelConfig.describing(dims, dropout=cfg.model.dropout,
                                                                      init_std=cfg.model.init_std), "train": train})


def frozen_names(model: torch.nn.Module, fc: FinetuneConfig) -> set[str]:
    """The parameters ``mode: frozen`` keeps as they are; every pattern must match one."""
    names = [name for name, _ in model.named_parameters()]  # a tied LM head once, as embed_tokens.weight
    settings = fc.frozen
    frozen = {"embed_tokens.weight"} if settings.embeddings else set()
    n_layers = model.dims.n_layers
    if settings.first_blocks > n_layers:
        raise FinetuneError(f"finetune.frozen.first_blocks: {settings.first_blocks} exceeds the base's "
                            f"{n_layers} blocks")
    frozen |= {n for n in names for i in range(settings.first_blocks) if n.startswith(f"layers.{i}.")}
    for pattern in settings.patterns:
        matched = fnmatch.filter(names, pattern)
        if not matched:
            raise FinetuneError(f"finetune.frozen.patterns: {pattern!r} matches no parameter of the base "
                                f"(names such as {names[1]})")
        frozen |= set(matched)
    if not frozen:
        raise FinetuneError("finetune.mode=frozen freezes nothing: set finetune.frozen.embeddings, first_blocks "
                            "or patterns")
    if frozen == set(names):
        raise FinetuneError("finetune.frozen: every parameter is frozen; nothing would train")
    return frozen


def check_base(run: RunDir, base: Path, dims: ModelDims, data: FinetuneData) -> None:
    """The base must read the tokens it trains on: the run's token shards were packed with a tokenizer of its
    vocabulary, or fine-tuning packs its own with the base's tokenizer, whose ids its embeddings must cover."""
    if data.own_tokens:
        size = read_tokenizer(data.tokenizer).get_vocab_size()
        if size > dims.vocab_size:
            raise FinetuneError(f"finetune.base {base}: a model of vocabulary {dims.vocab_size}, but its tokenizer "
                                f"{data.tokenizer} has {size} tokens")
        return
    shards = TokenShards(run.tokens("train"))
    if dims.vocab_size != shards.vocab_size:
        raise FinetuneError(f"finetune.base {base}: a model of vocabulary {dims.vocab_size}, but {run.root}'s token "
                            f"shards were packed with a tokenizer of {shards.vocab_size} tokens (fine-tuning uses the "
                            "base's tokenizer: pack the data with it)")


def check_finetune(run: RunDir, cfg: RunConfig, resume: bool, redo: bool = False,
                   folder: str = STAGE) -> FinetunePlan:
    """Everything that can be refused, before anything is written: the base, the freezing patterns, the
    LoRA targets, the sequence length, existing checkpoints without --resume (or ``redo``: they will go)."""
    fc = finetune_settings(cfg)
    base = pick(run, fc.base).absolute()
    require_language_model(base, "finetune.base")
    dims = checkpoint_dims(base)
    data = plan_data(run, cfg, model_tokenizer_path(base))
    if fc.sources is not None and fc.objective == "sft":
        raise FinetuneError("finetune.sources is read by objectives causal_lm and classification (objective sft reads "
                            "finetune.data)")
    if fc.task is not None and fc.objective != "classification":
        raise FinetuneError(f"finetune.task is read by objective classification only (finetune.objective={fc.objective})")
    for need in [] if data.own_tokens else (run.tokens("train") / "index.json", run.tokens("val") / "index.json"):
        if not need.exists():
            raise FinetuneError(f"{need}: not found; run the data stages first (lmforge data)")
    check_base(run, base, dims, data)
    tcfg = training_config(cfg, fc, dims)
    seq_len = sequence_length(tcfg.train, dims.context_length)  # train.seq_len must fit the base's context
    batches = task = None
    if fc.objective == "sft":
        batches = load_sft_data(fc, data.tokenizer, data.eos_id, seq_len, cfg.seed)
    elif fc.objective == "classification":
        check_labels(cfg, fc)
        if fc.sources is None:  # else the labelled documents are curated first (``classification_data``)
            batches, task = classification_data(run, cfg, data, seq_len)
    if fc.data is not None and fc.objective != "sft":
        raise FinetuneError("finetune.data is read by objective sft only (finetune.objective=sft); objective "
                            "causal_lm trains on token shards (the run's, or finetune.sources')")
    ft_run = FinetuneRunDir(run, data, folder)
    latest = ft_run.latest_checkpoint()
    if latest is not None and not (resume or redo):
        raise FinetuneError(f"{ft_run.own} already holds fine-tuning checkpoints (latest: step "
                            f"{latest[0]}); pass --resume to continue, or --redo to fine-tune over")
    with torch.device("meta"):  # names and shapes only
        model = Decoder(dims)
    if fc.objective == "classification":
        classification_head(2 if batches is None else len(batches.labels))(model)  # 2: counted again once known
    targets, trainable = [], None
    if fc.mode == "frozen":
        frozen = frozen_names(model, fc)
        trainable = lambda name, param: name not in frozen  # noqa: E731
    elif fc.mode == "lora":
        targets = lora_targets(model, fc.lora.target_modules)
        add_lora(model, fc.lora)
        head = fc.objective == "classification"  # a new head always trains
        trainable = lambda name, param=None: is_lora_parameter(name) or (head and name == HEAD)  # noqa: E731
    total = count_parameters(model)
    share = sum(p.numel() for n, p in model.named_parameters() if trainable is None or trainable(n, p))
    return FinetunePlan(base, dims, tcfg, trainable, targets, share, total, data, batches, task, folder)


def check_labels(cfg: RunConfig, fc: FinetuneConfig) -> None:
    """Objective classification needs labels: a task, or sources that carry a label field."""
    if fc.task is not None:
        return
    sources, section = (fc.sources, "finetune.sources") if fc.sources is not None else (cfg.data.sources, "data.sources")
    for i, source in enumerate(sources):
        if source.label_field is None:
            raise FinetuneError(f"finetune.objective=classification needs labels: {section}[{i}] has no label_field "
                                "(or set finetune.task, e.g. which_package)")


def classification_data(run: RunDir, cfg: RunConfig, data: FinetuneData, seq_len: int, docs: Path | None = None):
    """The labelled examples (``transfer.classify``): from finetune.task, or the documents in ``docs`` (the
    run's curated ones by default)."""
    fc = finetune_settings(cfg)
    return load_classification(run, fc, data.tokenizer, data.eos_id, seq_len, cfg.seed, cfg.eval.builtin_examples,
                               docs or run.curated)


def variant(fc: FinetuneConfig, batches) -> dict:
    """What fine-tuning changes in the loop, for its resume key (and the loader: a LoRA checkpoint's adapters)."""
    settings = {"mode": fc.mode, "objective": fc.objective}
    if isinstance(batches, ClassBatches):
        settings["labels"] = batches.labels
    if fc.mode == "frozen":
        settings["frozen"] = fc.frozen.model_dump()
    if fc.mode == "lora":
        settings["lora"] = fc.lora.model_dump()
    return {"finetune": settings}


def adapter_hook(fc: FinetuneConfig, batches):
    """The training loop's ``adapt`` plug point for ``fc``: a classification head, LoRA layers around the
    targets, both, or None."""
    steps = []
    if isinstance(batches, ClassBatches):
        steps.append(classification_head(len(batches.labels)))
    if fc.mode == "lora":
        steps.append(lambda model: add_lora(model, fc.lora))
    if not steps:
        return None

    def adapt(model: Decoder) -> None:
        for step in steps:
            step(model)
    return adapt


def run_finetune(run: RunDir, cfg: RunConfig, ctx, plan: FinetunePlan, resume: bool) -> dict:
    """Fine-tune as ``plan`` says; writes ``finetune/summary.json`` (and the LoRA adapter); returns it."""
    from lmforge.train.loop import train

    fc = finetune_settings(cfg)
    ft_run = FinetuneRunDir(run, plan.data, plan.folder)
    ft_run.summary_file.unlink(missing_ok=True)
    data_figures = prepare_data(run, ft_run.own, cfg, plan.data)
    if fc.objective == "classification" and plan.batches is None:  # from finetune.sources, curated just now
        batches, task = classification_data(run, cfg, plan.data, sequence_length(plan.cfg.train, plan.dims.context_length),
                                            ft_run.own / "data")
        more = (len(batches.labels) - 2) * plan.dims.d_model  # the head's rows beyond the two counted
        plan = dataclasses.replace(plan, batches=batches, task=task, parameters=plan.parameters + more,
                                   trainable_parameters=plan.trainable_parameters + more)
    info(f"fine-tuning {plan.base} ({fc.mode}): {plan.trainable_parameters:,} of {plan.parameters:,} parameters "
         f"train ({100 * plan.trainable_parameters / plan.parameters:.2f}%)")
    sft = {} if plan.batches is None else {"loss_fn": sft_loss, "batches": plan.batches}
    result = train(ft_run, plan.cfg, ctx, resume=resume, init_from=plan.base, trainable=plan.trainable,
                   adapt=adapter_hook(fc, plan.batches), variant=variant(fc, plan.batches), **sft)
    summary = {"base": str(plan.base), "objective": fc.objective, "mode": fc.mode, **result,
               "adversarial": None if fc.adversarial is None else fc.adversarial.model_dump(mode="json"),
               "trainable_parameters": plan.trainable_parameters,
               "trainable_share": plan.trainable_parameters / plan.parameters,
               "base_val_loss": _first_eval(ft_run), "final_val_loss": _last_eval(ft_run),
               "tokenizer": str(plan.data.tokenizer), **data_figures}
    if isinstance(plan.batches, SftBatches):
        summary |= {"data": str(Path(fc.data).absolute()), "train_records": len(plan.batches.train),
                    "val_records": len(plan.batches.val)}
    if isinstance(plan.batches, ClassBatches):
        summary |= classifier_outputs(ft_run, plan, fc, cfg, ctx.device)
    summary |= write_outputs(ft_run, plan, fc)
    atomic_write_json(ft_run.summary_file, summary)
    return summary


def trained_model(ft_run: FinetuneRunDir, plan: FinetunePlan, fc: FinetuneConfig) -> tuple[Decoder, dict]:
    """The latest fine-tuning checkpoint in the model the loop trained (head and adapters included)."""
    model = Decoder(plan.dims)
    hook = adapter_hook(fc, plan.batches)
    if hook is not None:
        hook(model)
    return model, load_checkpoint(ft_run.latest_checkpoint()[1], model, restore_rng_state=False)


def classifier_outputs(ft_run: FinetuneRunDir, plan: FinetunePlan, fc: FinetuneConfig, cfg: RunConfig, device) -> dict:
    """The classifier scored on the test examples with the evaluation stage's metrics (``finetune/test/``:
    predictions, confusion matrix, reliability plots); with finetune.task, the base's prompted (zero-shot)
    score of the same examples beside it."""
    model, state = trained_model(ft_run, plan, fc)
    settings = EvalSettings.of(cfg.eval)
    seq_len = state["resume_key"]["seq_len"]
    scored, entry = score_classifier(model.to(device).eval(), plan.batches, plan.task, settings, seq_len, device)
    entry["files"] = write_task_files(scored, entry, ft_run.own / "test")
    out = {"labels": plan.batches.labels, "train_examples": len(plan.batches.train),
           "val_examples": len(plan.batches.val), "test": entry}
    if fc.task is not None:
        base = load_model(plan.base, device)
        tokenizer = model_tokenizer(plan.data.tokenizer)
        fitted, dropped = fitting(plan.task, tokenizer, base.model.dims.context_length)  # prompts are not cut
        if fitted.examples:
            out["base_test"] = summarize(score_task(base.model, tokenizer, fitted, settings, device), settings)
            out["base_test"]["left_out"] = dropped
    return out


def write_outputs(ft_run: FinetuneRunDir, plan: FinetunePlan, fc: FinetuneConfig) -> dict:
    """From the latest fine-tuning checkpoint: ``finetune/model.safetensors``, the fine-tuned model as an
    exported file (LoRA merged into the weights by peft) that every stage loads (``--checkpoint finetuned``),
    and for LoRA the adapter in peft's format for the base's HF export. A classifier's file records its labels
    and its head (one row per label) apart from the embeddings (its dimensions say the head is untied)."""
    model, state = trained_model(ft_run, plan, fc)
    labels = plan.batches.labels if isinstance(plan.batches, ClassBatches) else None
    dims = plan.dims if labels is None else dataclasses.replace(plan.dims, tie_embeddings=False)
    out = {}
    if fc.mode == "lora":
        if labels is None:  # a classifier's adapters sit under a head the HF export has no place for
            adapter = save_hf_adapter(model, plan.dims, fc.lora, plan.lora_targets, ft_run.adapter, base=str(plan.base))
            out["adapter"] = str(adapter.relative_to(ft_run.root))
        merge_lora(model)
        plain = Decoder(dims)
        if labels is not None:
            classification_head(len(labels))(plain)
        plain.load_state_dict(unwrapped_state(model))
        model = plain
    weights = {name: view.detach().contiguous().clone() for name, view in model_views(model, dims).items()}
    write_exported(ft_run.model_file, weights, dims.to_dict(), state["step"], state["resume_key"]["seq_len"],
                   f"finetune-{fc.mode}", labels, adversarial=state["resume_key"].get("adversarial"))
    out["model"] = str(ft_run.model_file.relative_to(ft_run.root))
    return out


def _evals(run: RunDir) -> list[dict]:
    from lmforge.core.metrics import read_metrics

    return [r for r in read_metrics(run.metrics) if r.get("kind") == "eval"]


def _first_eval(run: RunDir) -> float | None:
    evals = _evals(run)
    return evals[0]["val_loss"] if evals and evals[0]["step"] == 0 else None


def _last_eval(run: RunDir) -> float | None:
    evals = _evals(run)
    return evals[-1]["val_loss"] if evals else None
