"""The optimizer comparison's report: a table per optimizer (its best learning rate, best validation loss,
tokens/s, optimizer-state memory), the loss curves, and a recommendation that states its evidence."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from lmforge.core.atomic import atomic_write_json, atomic_write_text, atomic_write_with
from lmforge.estimate.optimizer_state import optimizer_state_bytes
from lmforge.model.config import ModelDims

TIE = 0.005  # best losses within 0.5% of each other: one seed cannot tell them apart


def summarize(results: list[dict], dims: ModelDims, tokens_per_step: int, momentum: dict[str, float]) -> list[dict]:
    """One row per optimizer, best first: its best run and the losses of its whole sweep."""
    rows = []
    for name in dict.fromkeys(r["optimizer"] for r in results):
        runs = sorted((r for r in results if r["optimizer"] == name), key=lambda r: r["lr"])
        ok = [r for r in runs if r["best_val_loss"] is not None and not r["failure"]]
        best = min(ok, key=lambda r: r["best_val_loss"]) if ok else None
        lrs = [r["lr"] for r in runs]
        rows.append({
            "optimizer": name,
            "best_lr": best["lr"] if best else None,
            "best_val_loss": best["best_val_loss"] if best else None,
            "sweep": {f"{r['lr']:g}": (None if r["failure"] else r["best_val_loss"]) for r in runs},
            "lr_at_edge": bool(best) and len(lrs) > 1 and best["lr"] in (lrs[0], lrs[-1]),
            "tokens_per_s": _median([r["tokens_per_s"] for r in ok if r["tokens_per_s"]]),
            "tokens": (best["steps"] or 0) * tokens_per_step if best else 0,
            "state_bytes": optimizer_state_bytes(dims, name, momentum.get(name, 0.0)),
            "curve": best["val_curve"] if best else [],
            "train_curve": best["train_curve"] if best else [],
        })
    return sorted(rows, key=lambda r: (r["best_val_loss"] is None, r["best_val_loss"] or 0.0))


def _median(values: list[float]) -> float | None:
    """The median over an optimizer's runs: one run's speed on a shared machine is noise."""
    values = sorted(values)
    return values[len(values) // 2] if values else None


def recommend(rows: list[dict]) -> str:
    ranked = [r for r in rows if r["best_val_loss"] is not None]
    if not ranked:
        return "no optimizer reached a finite validation loss; lower train.lr or check the data"
    first = ranked[0]
    if len(ranked) == 1:
        return f"{first['optimizer']}: the only one to finish (best val loss {first['best_val_loss']:.4f})"
    second = ranked[1]
    tied = [r for r in ranked if r["best_val_loss"] <= first["best_val_loss"] * (1 + TIE)]
    pick = min(tied, key=lambda r: (r["state_bytes"], -(r["tokens_per_s"] or 0))) if len(tied) > 1 else first
    mib = lambda r: r["state_bytes"] / 2**20  # noqa: E731
    text = f"recommended: {pick['optimizer']} (lr {pick['best_lr']:g}). Evidence: after {pick['tokens']:,} tokens "
    if len(tied) > 1:
        losses = ", ".join(f"{r['optimizer']} {r['best_val_loss']:.4f}" for r in tied)
        cheapest = " and ".join(f"{mib(r):.2f} MiB ({r['optimizer']})" for r in tied if r is not pick)
        text += (f"the best validation losses of {losses} are within {TIE:.1%}: a tie on one seed; "
                 f"{pick['optimizer']} keeps the least optimizer state, {mib(pick):.2f} MiB against {cheapest}")
        second = next(r for r in tied if r is not pick)
    else:
        text += (f"its best validation loss {pick['best_val_loss']:.4f} is {second['best_val_loss'] - pick['best_val_loss']:.4f} "
                 f"lower than the runner-up {second['optimizer']} ({second['best_val_loss']:.4f} at lr "
                 f"{second['best_lr']:g}); {mib(pick):.2f} MiB optimizer state against {mib(second):.2f}")
    if pick["tokens_per_s"] and second["tokens_per_s"] and pick is not second:
        text += f"; {pick['tokens_per_s'] / second['tokens_per_s']:.2f}x {second['optimizer']}'s tokens/s (median of the sweep)"
    if pick["lr_at_edge"]:
        text += "; its best learning rate is at the edge of the sweep, so a wider sweep may do better"
    return text + "."


def write_report(out: Path, results: list[dict], rows: list[dict], recommendation: str, settings: dict) -> None:
    atomic_write_json(out / "results.json", {"settings": settings, "recommendation": recommendation,
                                             "optimizers": [{k: v for k, v in r.items() if "curve" not in k}
                                                            for r in rows], "runs": results})
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["optimizer", "lr", "best_val_loss", "final_val_loss", "tokens_per_s", "failure"])
    for r in results:
        writer.writerow([r["optimizer"], r["lr"], r["best_val_loss"], r["final_val_loss"], r["tokens_per_s"],
                         r["failure"] or ""])
    atomic_write_text(out / "results.csv", buf.getvalue())
    atomic_write_text(out / "recommendation.txt", recommendation + "\n")
    plot_curves(out / "loss_curves.png", rows, settings)


def plot_curves(path: Path, rows: list[dict], settings: dict) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # not pyplot: no global state

    fig = Figure(figsize=(11, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    val_ax, train_ax = fig.subplots(1, 2)
    per_step = settings["tokens_per_step"]
    for row in rows:
        if not row["curve"]:
            continue
        label = f"{row['optimizer']} (lr {row['best_lr']:g})"
        steps, losses = zip(*row["curve"])
        val_ax.plot([s * per_step for s in steps], losses, marker="o", markersize=3, label=label)
        steps, losses = zip(*row["train_curve"])
        train_ax.plot([s * per_step for s in steps], _smooth(losses), label=label)
    for ax, what in ((val_ax, "validation loss"), (train_ax, "training loss (EMA 0.9)")):
        ax.set_xlabel("tokens")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
    val_ax.legend(fontsize=8)
    fig.suptitle(f"optimizers at an equal budget of {settings['tokens']:,} tokens, each at its best learning rate")
    fig.tight_layout()
    atomic_write_with(path, lambda f: fig.savefig(f, format="png"))


def _smooth(values, beta: float = 0.9) -> list[float]:
    out, avg = [], None
    for v in values:
        avg = v if avg is None else beta * avg + (1 - beta) * v
        out.append(avg)
    return out
