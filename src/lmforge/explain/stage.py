"""``lmforge explain``: one text, or examples of an evaluation task, explained on any model the one loader opens.

Per example: token attributions toward its target (``explain.attributions``), each with its faithfulness
(``explain.faithfulness``), the attention maps and rollout, the logit lens; once per model its anatomy; with a
classification task or a table the permutation importance of its segments or columns (``explain.importance``). Written as ``explain/<example>.html``
(self-contained), PNG figures, ``explain/attributions.json`` (every number), ``explain/anatomy.json`` and
``explain/summary.json``; the folder is built under a temporary name and appears whole, replacing an earlier one.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
from pathlib import Path

from lmforge.checkpoint.load import LoadedModel, load_model, pick
from lmforge.core.atomic import atomic_dir, atomic_write_json, atomic_write_text
from lmforge.core.progress import info, track
from lmforge.data.tokenizer import eos_id_of, load_tokenizer
from lmforge.errors import ExplainError
from lmforge.evaluate.scoring import encode_pair
from lmforge.evaluate.task_sources import BUILTIN_KINDS, builtin_tasks
from lmforge.evaluate.tasks import Task, load_task
from lmforge.explain import html, plots
from lmforge.explain.anatomy import anatomy
from lmforge.explain.attention import attention_maps, rollout
from lmforge.explain.attributions import GRADIENT_METHODS, AttributionSettings, attribute, attribution_layer
from lmforge.explain.config import ExplainConfig
from lmforge.explain.faithfulness import faithfulness
from lmforge.explain.internals import trace
from lmforge.explain.lens import lens_logits, top_tokens
from lmforge.explain.importance import PermutationInput, importance, permutation_input
from lmforge.explain.targets import Target, continuation_target, label_target, next_token_target
from lmforge.recipe import RunConfig
from lmforge.rundir import RunDir

STAGE = "explain"


@dataclasses.dataclass
class ExplainPlan:
    path: Path  # the model
    loaded: LoadedModel
    tokenizer: object
    eos: int
    items: list[tuple[str, Target]]  # (example name, target)
    task: Task | None  # the task the examples came from
    settings: AttributionSettings
    permutation: PermutationInput | None  # the labelled inputs of permutation importance

    @property
    def labels(self) -> list[str] | None:
        return self.loaded.labels


def settings_of(cfg: RunConfig) -> ExplainConfig:
    return cfg.explain or ExplainConfig()


def check_explain(run: RunDir, cfg: RunConfig, device="cpu") -> ExplainPlan:
    """Everything checked before anything is written: the model, the methods and layer, the examples and their
    targets (an empty text, a target that does not fit the context, a label the classifier does not have)."""
    ec = settings_of(cfg)
    path = pick(run, ec.checkpoint)
    loaded = load_model(path, device)
    model = loaded.model
    if "quantization" in loaded.state:
        needing = [m for m in ec.methods if m in GRADIENT_METHODS]
        if needing:
            raise ExplainError(f"explain.methods: {needing[0]} needs gradients, which the quantized model {path} "
                               f"({loaded.state['quantization']['method']}) has not; use occlusion or shapley")
    try:
        attribution_layer(model, ec.layer)
    except ValueError as exc:
        raise ExplainError(f"explain.layer: {exc}") from None
    tokenizer = loaded.tokenizer if loaded.tokenizer_path is not None else _run_tokenizer(run)
    eos = eos_id_of(tokenizer)
    baseline = eos if ec.baseline == "eos" else ec.baseline
    if baseline is None or not 0 <= baseline < model.dims.vocab_size:
        raise ExplainError(f"explain.baseline: {ec.baseline} is not a token of the model's vocabulary of "
                           f"{model.dims.vocab_size}")
    task = None
    if ec.task is not None:
        task = _task(run, cfg, ec.task, tokenizer, model.dims.context_length)
        items = task_targets(model, tokenizer, eos, loaded.labels, task, ec.examples, ec.target)
    elif ec.text is not None:
        items = [("text", text_target(model, tokenizer, eos, loaded.labels, ec.text, ec.target, "explain.text"))]
    else:
        raise ExplainError("explain: nothing to explain: give --text TEXT or --task NAME (explain.text, explain.task)")
    ig = ec.integrated_gradients
    settings = AttributionSettings(ec.layer, baseline, ig.steps, ig.method, ig.tolerance, ig.max_steps,
                                   ig.internal_batch_size, ec.perturbations_per_eval, ec.shapley_samples, ec.seed)
    permutation = permutation_input(run, cfg, ec.permutation, task, loaded.labels)
    return ExplainPlan(path, loaded, tokenizer, eos, items, task, settings, permutation)


def _run_tokenizer(run: RunDir):
    if not run.tokenizer.exists():
        raise ExplainError(f"{run.tokenizer}: not found; the model has no tokenizer of its own and the run's data "
                           "stages have not run (lmforge data)")
    return load_tokenizer(run.tokenizer)


def _task(run: RunDir, cfg: RunConfig, name: str, tokenizer, context_length: int) -> Task:
    """A built-in task (made from the run's validation documents) or a task YAML."""
    if name in BUILTIN_KINDS:
        if not run.val_docs.exists():
            raise ExplainError(f"explain.task {name}: {run.val_docs} not found; run the data stages first")
        with tempfile.TemporaryDirectory() as folder:
            tasks, notes = builtin_tasks(run, Path(folder), cfg.seed, cfg.eval.builtin_examples, tokenizer,
                                         context_length)
            found = {t.name: t for t in tasks}
            if name not in found:
                raise ExplainError(f"explain.task {name}: cannot be made from this run's documents "
                                   f"({'; '.join(notes) or 'no examples'})")
            return found[name]
    if not name.endswith((".yaml", ".yml")):
        raise ExplainError(f"explain.task: {name!r} is neither a built-in task ({', '.join(BUILTIN_KINDS)}) nor a "
                           "task YAML")
    return load_task(name)


def text_target(model, tokenizer, eos: int, labels: list[str] | None, text: str, target: str | None,
                where: str) -> Target:
    """The target of one text: a classifier's label (given or predicted), a continuation, or the next token."""
    context_length = model.dims.context_length
    if not text.strip():
        raise ExplainError(f"{where}: the text is empty: nothing to explain")
    if labels is not None:
        if target is not None and target not in labels:
            raise ExplainError(f"{where}: label {target!r} is not one of the classifier's labels {labels}")
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        if len(ids) + 1 > context_length:
            raise ExplainError(f"{where}: the text is {len(ids)} tokens and the end-of-text, longer than the "
                               f"model's context of {context_length} tokens")
        return label_target(model, ids, eos, labels, target)
    if target is None:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        if not ids:
            raise ExplainError(f"{where}: the text encodes to no tokens: nothing to explain")
        if len(ids) > context_length:
            raise ExplainError(f"{where}: the text is {len(ids)} tokens, longer than the model's context of "
                               f"{context_length} tokens")
        return next_token_target(model, ids, None, lambda t: repr(tokenizer.decode([t])))
    if not target:
        raise ExplainError(f"{where}: the target is empty: nothing to score")
    context, continuation = encode_pair(tokenizer, text, target)
    if not continuation:
        raise ExplainError(f"{where}: the target {target!r} encodes to no tokens: nothing to score")
    if len(context) + len(continuation) > context_length:
        raise ExplainError(f"{where}: the text and the target {shortened(target)} are {len(context)} + "
                           f"{len(continuation)} tokens, longer than the model's context of {context_length} tokens")
    return continuation_target(context, continuation, repr(target))


def shortened(text: str, limit: int = 40) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def task_targets(model, tokenizer, eos: int, labels: list[str] | None, task: Task, count: int,
                 target: str | None) -> list[tuple[str, Target]]:
    """The first ``count`` examples of ``task``, each toward its gold answer: a classifier's gold label, or for a
    language model the gold label's word after the prompt, the correct choice, the reference answer."""
    if target is not None:
        raise ExplainError("explain.target: a task's examples are explained toward their gold answers; give "
                           "--target with --text only")
    if labels is not None:
        if task.kind != "classification":
            raise ExplainError(f"explain.task {task.name}: a {task.kind} task; a classifier explains "
                               "classification examples only")
        unknown = next((lab for lab in task.spec.labels if lab not in labels), None)
        if unknown is not None:
            raise ExplainError(f"explain.task {task.name}: label {unknown!r} is not one of the classifier's labels "
                               f"{labels}")
    if task.kind == "perplexity":
        raise ExplainError(f"explain.task {task.name}: a perplexity task has no answer to explain; give --text")
    items = []
    for i, ex in enumerate(task.examples[:count]):
        where = task.where(i)
        name = f"{task.name}-{re.sub(r'[^A-Za-z0-9._-]+', '_', str(ex.id))}"
        if labels is not None:
            items.append((name, text_target(model, tokenizer, eos, labels, ex.text, ex.label, where)))
        elif task.kind == "classification":
            items.append((name, text_target(model, tokenizer, eos, None, task.prompt(ex),
                                            task.verbalizers[ex.label], where)))
        elif task.kind == "multiple_choice":
            items.append((name, text_target(model, tokenizer, eos, None, ex.context, ex.choices[ex.answer], where)))
        else:
            items.append((name, text_target(model, tokenizer, eos, None, ex.prompt, ex.answer, where)))
    return items


def token_pieces(tokenizer, ids) -> list[str]:
    return [tokenizer.decode([int(t)]) for t in ids]


def logit_lens(model, t, shown: int, k: int, describe) -> dict:
    """The top-k tokens of every layer's residual stream at the last ``shown`` positions."""
    T = t.logits.shape[0]
    positions = list(range(max(0, T - shown), T))
    layers, top = [], []
    for i, logits in enumerate(lens_logits(model, t.residuals)):
        ids, probs = top_tokens(logits[positions], k)
        layers.append("embeddings" if i == 0 else f"layer {i - 1}")
        top.append([[(describe(int(a)), float(p)) for a, p in zip(row_ids, row_probs)]
                    for row_ids, row_probs in zip(ids, probs)])
    return {"positions": positions, "top_k": k, "layers": layers, "top": top}


def explain_item(plan: ExplainPlan, ec: ExplainConfig, name: str, target: Target, folder: Path, bar) -> dict:
    model = plan.loaded.model
    labels = plan.labels
    describe = (lambda i: labels[i]) if labels is not None else (lambda i: repr(plan.tokenizer.decode([i])))
    attributions, faith = {}, {}
    for method in ec.methods:
        bar.set(example=name, method=method)
        a = attribute(model, target, method, plan.settings)
        attributions[method] = a.to_dict()
        fs = ec.faithfulness
        faith[method] = faithfulness(model, target, a.scores, start=plan.eos, points=fs.points,
                                     random_orders=fs.random_orders, seed=ec.seed, batch_size=fs.batch_size).to_dict()
        bar.advance()
    t = trace(model, target.ids)
    maps = attention_maps(model, t.attention_inputs)
    roll = rollout(maps)
    pieces = token_pieces(plan.tokenizer, target.context)
    suffix = token_pieces(plan.tokenizer, target.suffix)
    s = ec.shown_positions
    plots.attention_png([m[:, -s:, -s:].cpu().numpy() for m in maps], roll[-s:, -s:].cpu().numpy(),
                        (pieces + suffix)[-s:], folder / f"{name}.attention.png")
    plots.faithfulness_png(faith, len(target.context), folder / f"{name}.faithfulness.png")
    entry = {"name": name, "model": str(plan.path), "target": target.to_dict(),
             "log_prob": attributions[ec.methods[0]]["f_input"], "tokens": pieces, "suffix_tokens": suffix,
             "attributions": attributions, "faithfulness": faith,
             "attention": {"layers": len(maps), "heads": maps[0].shape[0], "positions": list(range(len(target.ids)))[-s:],
                           "maps": [m[:, -s:, -s:].cpu().tolist() for m in maps], "rollout": roll[-s:, -s:].cpu().tolist()},
             "logit_lens": logit_lens(model, t, s, ec.lens_top_k, describe)}
    figures = {"attention": folder / f"{name}.attention.png", "faithfulness": folder / f"{name}.faithfulness.png"}
    atomic_write_text(folder / f"{name}.html", html.example_page(entry, pieces, suffix, figures))
    return entry


def run_explain(run: RunDir, cfg: RunConfig, plan: ExplainPlan, device="cpu") -> dict:
    ec = settings_of(cfg)
    examples, entries = {}, {}
    with atomic_dir(run.stage_dir(STAGE)) as folder:
        with track("explain", total=len(plan.items) * len(ec.methods), unit="maps") as bar:
            for name, target in plan.items:
                entry = explain_item(plan, ec, name, target, folder, bar)
                entries[name] = entry
                examples[name] = {"target": target.description, "kind": target.kind, "html": f"explain/{name}.html",
                                  "log_prob": entry["log_prob"], **headline(entry)}
        figures = {}
        facts = None
        if ec.anatomy:
            found = anatomy(plan.loaded.model)
            facts = {"parameters": found["parameters"], "flagged": found["flagged"],
                     "matrices": [f.to_dict() for f in found["matrices"]]}
            atomic_write_json(folder / "anatomy.json", facts)
            plots.anatomy_png(facts["matrices"], folder / "anatomy.png")
            figures["anatomy"] = folder / "anatomy.png"
        permuted = None
        if plan.permutation is not None:
            permuted = importance(plan.permutation, plan.loaded.model, plan.tokenizer, plan.eos, plan.labels,
                                  plan.loaded.seq_len, ec.permutation.repeats, ec.seed, device)
            plots.permutation_png(permuted, folder / "permutation.png")
            figures["permutation"] = folder / "permutation.png"
            atomic_write_json(folder / "permutation.json", permuted)
        atomic_write_json(folder / "attributions.json", {"model": str(plan.path), "examples": entries})
        summary = {"model": str(plan.path), "methods": list(ec.methods), "layer": ec.layer, "examples": examples,
                   "html": "explain/index.html"}
        if facts is not None:
            summary["anatomy"] = {"flagged": facts["flagged"],
                                  "alpha": {m["name"]: m["alpha"] for m in facts["matrices"]}}
        if permuted is not None:
            summary["permutation"] = {f: m for f, m in zip(permuted["features"], permuted["mean"])}
        atomic_write_text(folder / "index.html", html.index_page(summary, facts, permuted, figures))
        atomic_write_json(folder / "summary.json", summary)
    info(f"explain: {len(plan.items)} example(s) -> {run.stage_dir(STAGE)}")
    return summary


def headline(entry: dict) -> dict:
    """Per method: the convergence delta where there is one and the AOPC figures against random."""
    out = {}
    for method, a in entry["attributions"].items():
        f = entry["faithfulness"][method]
        out[method] = {"comprehensiveness": f["comprehensiveness"], "random_comprehensiveness":
                       f["random_comprehensiveness"], "sufficiency": f["sufficiency"],
                       "random_sufficiency": f["random_sufficiency"], "seconds": a["seconds"],
                       "log_prob": {k: f["log_prob"][k] for k in ("comprehensiveness", "random_comprehensiveness",
                                                                 "sufficiency", "random_sufficiency")}}
        if a["delta"] is not None:
            out[method]["delta"] = a["delta"]
    return out
