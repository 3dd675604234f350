"""The size / speed / quality table of the dense model and its variants: ``compress/table.md``, ``table.json``
and ``table.png`` (quality against size and against decode speed).

Speed is measured at batch 1 on the same prompt for every model, the models interleaved in each of ``repeats``
rounds and the median taken: prefill tokens/s (one forward over the prompt) and decode tokens/s (greedy
generation with the KV cache, the prefill's time taken out). Quality: the validation windows' loss, perplexity
and bits per byte, and every task of ``eval.tasks``' headline metric."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from lmforge.core.atomic import atomic_write_text
from lmforge.core.progress import track
from lmforge.evaluate.report import HEADLINE
from lmforge.evaluate.stage import validation_figures
from lmforge.evaluate.task_eval import score_task, summarize
from lmforge.model.quantized import Int4Linear, Int8Embedding, Int8Linear
from lmforge.model.generate import generate
from lmforge.train.validation import window_losses

RATIO_OF = ("parameters", "nonzero_parameters", "weight_bytes", "peak_memory_mb", "prefill_tokens_per_s",
            "decode_tokens_per_s", "val_loss", "perplexity")


@torch.inference_mode()
def speed(model, prompt: list[int], new_tokens: int) -> tuple[float, float]:
    """(prefill tokens/s, decode tokens/s) of one run."""
    start = time.perf_counter()
    model(torch.tensor([prompt]))
    prefill = time.perf_counter() - start
    start = time.perf_counter()
    generate(model, prompt, new_tokens, temperature=0.0)
    total = time.perf_counter() - start
    return len(prompt) / prefill, new_tokens / max(total - prefill, 1e-9)


def weight_figures(model) -> dict:
    """Parameters (a quantized layer's weights counted as its in x out), nonzero ones, and the bytes they take."""
    params, nonzero, nbytes = 0, 0, 0
    for p in {id(p): p for p in model.parameters()}.values():
        params, nonzero, nbytes = params + p.numel(), nonzero + int(torch.count_nonzero(p)), nbytes + p.numel() * p.element_size()
    seen = set()
    for module in model.modules():
        if isinstance(module, (Int8Linear, Int4Linear, Int8Embedding)) and id(module.qweight) not in seen:
            seen.add(id(module.qweight))  # a tied table and head: one tensor
            if isinstance(module, Int4Linear):
                params += module.in_features * module.out_features
                nonzero += int(torch.count_nonzero(module.dequantized()))
            else:  # int8: a weight is zero exactly when its integer is (the scales are positive)
                params += module.qweight.numel()
                nonzero += int(torch.count_nonzero(module.qweight))
            nbytes += sum(b.numel() * b.element_size() for b in module.buffers())
    return {"parameters": params, "nonzero_parameters": nonzero, "weight_bytes": nbytes}


def measure(models: dict[str, dict], prompt: list[int], measure_cfg) -> None:
    """Add the median prefill and decode tokens/s to each entry of ``models`` ({name: {"model": ...}})."""
    runs = {name: [] for name in models}
    with track("compress: speed", total=measure_cfg.repeats * len(models), unit="run") as bar:
        for _ in range(measure_cfg.repeats):
            for name, entry in models.items():  # interleaved: a noisy moment hits every model alike
                runs[name].append(speed(entry["model"], prompt, measure_cfg.new_tokens))
                bar.advance()
    for name, entry in models.items():
        entry["prefill_tokens_per_s"] = statistics.median(r[0] for r in runs[name])
        entry["decode_tokens_per_s"] = statistics.median(r[1] for r in runs[name])


def quality(model, val, seq_len: int, windows, bytes_per_token: float, tasks, tokenizer, settings, batch_size) -> dict:
    losses = window_losses(model, val, seq_len, batch_size=batch_size, max_windows=windows, device="cpu")
    figures = validation_figures(losses, seq_len, bytes_per_token, settings)
    out = {"val_loss": figures["loss"], "perplexity": figures["perplexity"], "bits_per_byte": figures["bits_per_byte"],
           "val_interval": figures["intervals"]["loss"], "tasks": {}}
    for task in tasks:
        metrics = summarize(score_task(model, tokenizer, task, settings, "cpu"), settings)["metrics"]
        metric = HEADLINE[task.kind][0]
        out["tasks"][f"{task.name}/{metric}"] = metrics[metric]["estimate"]
    return out


def with_ratios(rows: dict[str, dict]) -> dict[str, dict]:
    dense = rows["dense"]
    for row in rows.values():
        row["ratio_to_dense"] = {k: row[k] / dense[k] for k in RATIO_OF if dense.get(k)}
        row["ratio_to_dense"] |= {k: v / dense["tasks"][k] for k, v in row["tasks"].items() if dense["tasks"].get(k)}
    return rows


def _with_ratio(value, ratio, form: str) -> str:
    if value is None:
        return "-"
    return form.format(value) + ("" if ratio is None else f" ({ratio:.2f}x)")


def table_markdown(rows: dict[str, dict]) -> str:
    tasks = sorted({t for r in rows.values() for t in r["tasks"]})
    head = ["variant", "method", "params", "nonzero", "weights MB", "peak MB", "prefill tok/s", "decode tok/s", "val loss",
            "perplexity", "bits/byte", *tasks]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows.items():
        q = r["ratio_to_dense"]
        cells = [name, r["method"], f"{r['parameters']:,}",
                 f"{r['nonzero_parameters']:,} ({q['nonzero_parameters']:.2f}x)",
                 f"{r['weight_bytes'] / 1e6:.2f} ({q['weight_bytes']:.2f}x)",
                 _with_ratio(r.get("peak_memory_mb"), q.get("peak_memory_mb"), "{:.1f}"),
                 f"{r['prefill_tokens_per_s']:.0f} ({q['prefill_tokens_per_s']:.2f}x)",
                 f"{r['decode_tokens_per_s']:.0f} ({q['decode_tokens_per_s']:.2f}x)",
                 f"{r['val_loss']:.4f}", f"{r['perplexity']:.2f} ({q['perplexity']:.3f}x)", f"{r['bits_per_byte']:.4f}",
                 *(f"{r['tasks'][t]:.4f}" if t in r["tasks"] else "-" for t in tasks)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + ("\n\nRatios are to the dense model. Speed: batch 1, medians of interleaved runs. Peak "
                                "MB: what generating with the model adds to a bare process's peak RSS.\n")


def write_plot(rows: dict[str, dict], path: Path) -> None:
    from lmforge.evaluate.plots import new_figure, save_figure

    fig = new_figure((10, 4))
    for i, (x_key, label) in enumerate((("nonzero_parameters", "nonzero parameters"),
                                        ("decode_tokens_per_s", "decode tokens/s (batch 1)"))):
        ax = fig.add_subplot(1, 2, i + 1)
        xs = np.array([r[x_key] for r in rows.values()], dtype=float)
        ys = np.array([r["perplexity"] for r in rows.values()], dtype=float)
        ax.scatter(xs, ys)
        for name, x, y in zip(rows, xs, ys):
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel("validation perplexity")
        ax.grid(alpha=0.3)
    fig.suptitle("compression: quality against size and speed")
    save_figure(fig, path)


def write_table(rows: dict[str, dict], folder: Path) -> None:
    atomic_write_text(folder / "table.md", table_markdown(rows))
    atomic_write_text(folder / "table.json", json.dumps(rows, indent=2, sort_keys=True) + "\n")
    write_plot(rows, folder / "table.png")
