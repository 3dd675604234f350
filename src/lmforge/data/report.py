"""The readable report of a curation: ``summary.md`` and ``length_histogram.png`` beside stats.json."""

from __future__ import annotations

from pathlib import Path

from lmforge.core.atomic import atomic_write_text, atomic_write_with


def write_report(stats: dict, out_dir: Path) -> None:
    atomic_write_text(out_dir / "summary.md", summary_markdown(stats))
    atomic_write_with(out_dir / "length_histogram.png", lambda tmp: _plot_lengths(stats["lengths"], tmp))


def summary_markdown(stats: dict) -> str:
    splits = stats["splits"]
    lines = [
        "# Data curation",
        "",
        f"{stats['documents_read']:,} documents read ({stats['bytes_read'] / 1e6:,.1f} MB) from "
        f"{len(stats['sources'])} source(s); {splits['train']['documents']:,} train and "
        f"{splits['val']['documents']:,} validation documents written "
        f"({stats['shards']['count']} shard(s), {stats['shards']['workers']} worker(s)).",
        "",
        "## Documents and bytes per step",
        "",
        "| step | documents in | documents out | MB in | MB out | changed | dropped (by reason) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for step in stats["steps"]:
        dropped = ", ".join(f"{k}: {v:,}" for k, v in step["dropped"].items()) or "-"
        lines.append(f"| {step['name']} | {step['documents_in']:,} | {step['documents_out']:,} | "
                     f"{step['bytes_in'] / 1e6:,.2f} | {step['bytes_out'] / 1e6:,.2f} | {step['changed']:,} | {dropped} |")
    if stats["skipped"]:
        lines += ["", "## Unusable input (skipped)", "",
                  ", ".join(f"{k}: {v:,}" for k, v in stats["skipped"].items()) + " (each in skipped.jsonl with file and line)"]
    lines += ["", "## PII replacements", ""]
    lines.append(", ".join(f"{k}: {v:,}" for k, v in stats["pii_replacements"].items()) or "none")
    near = stats["near_duplicates"]
    if near:
        lines += ["", "## Duplicate clusters", "",
                  f"{near['clusters']:,} clusters (MinHash LSH: {near['bands']} bands x {near['rows']} rows, "
                  f"threshold {near['threshold']}); the largest:", ""]
        for cluster in near["examples"]:
            lines.append(f"- {cluster['kept']} (kept), {cluster['size'] - 1} duplicate(s): "
                         + ", ".join(cluster["duplicates"]) + (" ..." if cluster["size"] - 1 > 3 else ""))
    if stats["augmented"]:
        lines += ["", "## Augmented training copies", "",
                  ", ".join(f"{k}: {v:,}" for k, v in stats["augmented"].items())]
    if stats.get("tabular"):
        tab = stats["tabular"]
        lines += ["", "## Tabular", "", f"{tab['rows_read']:,} rows read from {tab['path']}; "
                  f"{tab['splits']['train']['rows']:,} train and {tab['splits']['val']['rows']:,} validation rows "
                  "(tabular/train.parquet, tabular/val.parquet, scaler fit on train: tabular/scaler.json)."]
    lines += ["", "## Lengths", "", "![document lengths before and after](length_histogram.png)", ""]
    return "\n".join(lines)


def _plot_lengths(lengths: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # not pyplot: no global state, half the import time

    read, kept = lengths["read"], lengths["kept"]
    used = [k for k in range(len(read)) if read[k] or kept[k]] or [0]
    bins = list(range(min(used), max(used) + 1))
    fig = Figure(figsize=(8, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.4
    ax.bar([k - width / 2 for k in bins], [read[k] for k in bins], width, label="read")
    ax.bar([k + width / 2 for k in bins], [kept[k] for k in bins], width, label="kept (written)")
    ax.set_xticks(bins, [_size_label(2**k) for k in bins], rotation=45, ha="right")
    ax.set_xlabel("document length (UTF-8 bytes, from)")
    ax.set_ylabel("documents")
    ax.set_title("Document lengths before and after curation")
    ax.legend()
    fig.tight_layout()
    with open(path, "wb") as f:
        fig.savefig(f, format="png")


def _size_label(size: int) -> str:
    for unit, factor in (("M", 2**20), ("K", 2**10)):
        if size >= factor:
            return f"{size // factor}{unit}"
    return str(size)
