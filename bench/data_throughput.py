"""Data-stage throughput on the Python standard library corpus, against the plain loop a user would write.

    python bench/data_throughput.py [--runs 3] [--max-documents N] [--json OUT]

curate: MB/s of input text through readers + every curation step (normalize, control characters, length,
        code quality rules, PII scrubbing, exact + MinHash dedup) + split + write, in the executor's worker
        processes (lmforge.data.curate, report files off), against a plain loop that only reads, decodes
        and writes the same files as JSONL (no cleaning, no split).
pack:   MB/s of document text encoded and written as token shards by lmforge.data.pack_tokens through its
        two routes, timed in alternation: tiktoken (the trained tokenizer.json converted exactly; the
        default) against tokenizers' encode_batch_fast (the fallback, and what packing did before), whose
        shards are checked byte-identical; and that route against a per-document Tokenizer.encode loop
        writing the same uint16 tokens.
Figures are medians of --runs runs; progress bars are off while timing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tiktoken
import tokenizers

from lmforge.core import progress
from lmforge.data import DataConfig, PackConfig, SourceConfig, TokenizerConfig, curate, pack_tokens, train_tokenizer
from lmforge.data.readers import stdlib_files
from lmforge.data.tokenizer import EOS_TOKEN, load_tokenizer


def median_seconds(fn, runs: int) -> float:
    return interleaved_median_seconds([fn], runs)[0]


def interleaved_median_seconds(fns, runs: int) -> list[float]:
    """Median seconds of each of ``fns``, run in turn ``runs`` times (a load that comes and goes hits all)."""
    times = [[] for _ in fns]
    for _ in range(runs):
        for fn, seen in zip(fns, times):
            start = time.perf_counter()
            fn()
            seen.append(time.perf_counter() - start)
    return [statistics.median(seen) for seen in times]


def same_shards(a: dict, b: dict, folder_a: Path, folder_b: Path) -> bool:
    return a["shards"] == b["shards"] and all(
        (folder_a / s["file"]).read_bytes() == (folder_b / s["file"]).read_bytes() for s in a["shards"])


def plain_curate(out: Path, max_documents: int | None) -> None:
    root, files = stdlib_files()
    with open(out, "w", encoding="utf-8") as f:
        for path in files[:max_documents]:
            try:
                text = path.read_bytes().decode("utf-8")
            except UnicodeDecodeError:
                continue
            f.write(json.dumps({"id": str(path.relative_to(root)), "text": text}, ensure_ascii=False) + "\n")


def plain_pack(tokenizer_path: Path, docs: Path, out: Path) -> None:
    tokenizer = load_tokenizer(tokenizer_path)
    eos = tokenizer.token_to_id(EOS_TOKEN)
    with open(docs, "rb") as f, open(out, "wb") as w:
        for line in f:
            ids = tokenizer.encode(json.loads(line)["text"], add_special_tokens=False).ids + [eos]
            w.write(np.array(ids, dtype="<u2").tobytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-documents", type=int, default=None, help="cap the corpus for a quick run")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    args = parser.parse_args()
    progress.set_enabled(False)
    cfg = DataConfig(sources=[SourceConfig(kind="python-stdlib")], max_documents=args.max_documents, report=False)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        stats = curate(cfg, seed=0, out_dir=tmp / "data")
        mb_in = stats["bytes_read"] / 1e6
        t_curate = median_seconds(lambda: curate(cfg, seed=0, out_dir=tmp / "data"), args.runs)
        t_plain_curate = median_seconds(lambda: plain_curate(tmp / "plain.jsonl", args.max_documents), args.runs)

        train = tmp / "data" / "train.jsonl"
        start = time.perf_counter()
        train_tokenizer(TokenizerConfig(vocab_size=args.vocab_size), train, tmp / "tokenizer.json")
        t_train_tok = time.perf_counter() - start
        index = pack_tokens(tmp / "tokenizer.json", train, tmp / "tokens", PackConfig())
        fallback = pack_tokens(tmp / "tokenizer.json", train, tmp / "tokens_hf", PackConfig(), encoder="tokenizers")
        if not same_shards(index, fallback, tmp / "tokens", tmp / "tokens_hf"):
            raise SystemExit("the tiktoken and tokenizers routes packed different shards")
        mb_docs = index["num_bytes"] / 1e6
        t_pack, t_pack_hf, t_plain_pack = interleaved_median_seconds([
            lambda: pack_tokens(tmp / "tokenizer.json", train, tmp / "tokens", PackConfig()),
            lambda: pack_tokens(tmp / "tokenizer.json", train, tmp / "tokens_hf", PackConfig(), encoder="tokenizers"),
            lambda: plain_pack(tmp / "tokenizer.json", train, tmp / "plain.bin"),
        ], args.runs)

    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
                   f"{platform.python_version()}, tokenizers {tokenizers.__version__}, tiktoken {tiktoken.__version__}",
        "runs": args.runs,
        "corpus": {"documents_read": stats["documents_read"], "mb": round(mb_in, 2),
                   "train_mb": round(mb_docs, 2), "train_tokens": index["num_tokens"]},
        "curate_mb_s": mb_in / t_curate,
        "plain_read_write_mb_s": mb_in / t_plain_curate,
        "tokenizer_train_s": t_train_tok,
        "pack_encoder": index["encoder"],
        "pack_mb_s": mb_docs / t_pack,
        "pack_tokenizers_route_mb_s": mb_docs / t_pack_hf,
        "pack_ratio_vs_tokenizers": t_pack_hf / t_pack,
        "plain_encode_loop_mb_s": mb_docs / t_plain_pack,
    }
    rows = [
        ("curate (read+all steps+split+write)", results["curate_mb_s"], "plain read+write loop",
         results["plain_read_write_mb_s"]),
        (f"pack, {index['encoder']} route (+ shards)", results["pack_mb_s"], "pack, tokenizers route",
         results["pack_tokenizers_route_mb_s"]),
        ("pack, tokenizers route (+ shards)", results["pack_tokenizers_route_mb_s"], "per-document encode loop",
         results["plain_encode_loop_mb_s"]),
    ]
    print(f"{results['machine']}; stdlib corpus {mb_in:.1f} MB, {stats['documents_read']} files; "
          f"median of {args.runs} runs; tokenizer ({args.vocab_size} vocab) trained in {t_train_tok:.1f} s; "
          f"pack routes: identical shards, {index['num_tokens']:,} tokens")
    print(f"{'stage':<38}{'lmforge MB/s':>13}  {'peer':<26}{'peer MB/s':>10}{'ratio':>8}")
    for name, ours, peer, theirs in rows:
        print(f"{name:<38}{ours:>13.2f}  {peer:<26}{theirs:>10.2f}{ours / theirs:>7.2f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
