"""MinHash near-duplicate removal: lmforge against datasketch (MinHash + MinHashLSH), same run.

    python bench/dedup_benchmark.py [--runs 3] [--bases 400] [--json OUT]

throughput: the standard library corpus (every .py file of this Python, in memory), from text to
            duplicate decisions, single process, same parameters on both sides (5-word shingles,
            128 permutations, the same LSH bands x rows, the same Jaccard threshold, the same greedy
            clustering in corpus order with candidates confirmed by their estimated similarity).
            datasketch: shingles built in Python, MinHash.update_batch, MinHashLSH.query + insert.
            lmforge: MinHasher.signature + CorpusDedup. Medians of --runs runs, interleaved.
quality:    pairwise precision / recall / F1 on the labelled corpus of bench/near_dup_corpus.py (real
            documents, controlled edits, true negatives sharing boilerplate), for both, at several
            thresholds (the default marked).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import datasketch
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from near_dup_corpus import build_corpus, pair_scores  # noqa: E402

from lmforge.data.config import MinHashConfig  # noqa: E402
from lmforge.data.dedup import CorpusDedup  # noqa: E402
from lmforge.data.minhash import MinHasher  # noqa: E402
from lmforge.data.readers import SourceStats, stdlib_files  # noqa: E402
from lmforge.data.shard_work import LENGTH_BINS, ShardResult  # noqa: E402

_WORDS = re.compile(r"\w+")


def lmforge_dedup(docs: list[str], cfg: MinHashConfig) -> list[int]:
    """Cluster label of each document (the index of the document kept for its cluster)."""
    hasher = MinHasher(cfg.num_perm, cfg.ngram, cfg.seed)
    signatures = [hasher.signature(text) for text in docs]
    has = np.array([s is not None for s in signatures])
    matrix = np.array([s if s is not None else np.zeros(cfg.num_perm, np.uint32) for s in signatures], np.uint32)
    digests = np.zeros((len(docs), 16), np.uint8)  # exact dedup off: only the MinHash part is compared
    shard = ShardResult(0, 0, len(docs), SourceStats(), [], [0] * LENGTH_BINS, digests, matrix, has,
                        np.array([len(t) for t in docs]))
    dedup = CorpusDedup(False, cfg)
    dedup.add_shard(shard)
    return [dedup.duplicate_of.get(i, (i, ""))[0] for i in range(len(docs))]


def datasketch_dedup(docs: list[str], cfg: MinHashConfig, bands: int, rows: int) -> list[int]:
    """The same greedy clustering with datasketch's MinHash (SHA-1 of each shingle) and MinHashLSH."""
    lsh = datasketch.MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm, params=(bands, rows))
    sketches: dict[int, datasketch.MinHash] = {}
    labels = []
    for i, text in enumerate(docs):
        words = _WORDS.findall(text.lower())
        n = min(cfg.ngram, len(words))
        shingles = [" ".join(words[j:j + n]).encode() for j in range(len(words) - n + 1)] if words else []
        sketch = datasketch.MinHash(num_perm=cfg.num_perm, seed=cfg.seed)
        sketch.update_batch(shingles)
        label = i
        if shingles:
            candidates = sorted(int(c) for c in lsh.query(sketch))
            if candidates:
                similarity = [sketch.jaccard(sketches[c]) for c in candidates]
                best = int(np.argmax(similarity))
                if similarity[best] >= cfg.threshold:
                    label = labels[candidates[best]]
            lsh.insert(str(i), sketch)
            sketches[i] = sketch
        labels.append(label)
    return labels


def timings(fn, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bases", type=int, default=400, help="distinct documents in the labelled corpus")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    cfg = MinHashConfig()
    probe = CorpusDedup(False, cfg)
    bands, rows = probe.bands, probe.rows

    _, files = stdlib_files()
    corpus = []
    for path in files:
        try:
            corpus.append(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            pass
    mb = sum(len(t.encode()) for t in corpus) / 1e6
    ours, theirs = [], []
    for _ in range(args.runs):  # interleaved, so both see the same machine load
        ours += timings(lambda: lmforge_dedup(corpus, cfg), 1)
        theirs += timings(lambda: datasketch_dedup(corpus, cfg, bands, rows), 1)
    t_ours, t_theirs = statistics.median(ours), statistics.median(theirs)

    docs, truth = build_corpus(args.bases, seed=0)
    quality = []
    for threshold in (0.4, 0.5, 0.6, 0.7, 0.8):
        c = MinHashConfig(threshold=threshold)
        b, r = CorpusDedup(False, c).bands, CorpusDedup(False, c).rows
        quality.append({"threshold": threshold, "bands": b, "rows": r,
                        "lmforge": pair_scores(truth, lmforge_dedup(docs, c)),
                        "datasketch": pair_scores(truth, datasketch_dedup(docs, c, b, r))})

    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
                   f"{platform.python_version()}, numpy {np.__version__}, datasketch {datasketch.__version__}",
        "runs": args.runs,
        "params": {"ngram": cfg.ngram, "num_perm": cfg.num_perm, "threshold": cfg.threshold, "bands": bands, "rows": rows},
        "corpus": {"documents": len(corpus), "mb": round(mb, 2)},
        "lmforge_s": t_ours, "datasketch_s": t_theirs, "lmforge_runs_s": ours, "datasketch_runs_s": theirs,
        "lmforge_docs_s": len(corpus) / t_ours, "datasketch_docs_s": len(corpus) / t_theirs,
        "speedup": t_theirs / t_ours,
        "labelled": {"documents": len(docs), "clusters": len(set(truth)), "quality": quality},
    }
    print(f"{results['machine']}; median of {args.runs} runs")
    print(f"throughput on the stdlib corpus ({len(corpus)} files, {mb:.1f} MB), ngram {cfg.ngram}, "
          f"{cfg.num_perm} permutations, {bands} bands x {rows} rows, threshold {cfg.threshold}:")
    print(f"  lmforge     {t_ours:7.2f} s  {len(corpus) / t_ours:8.0f} docs/s  {mb / t_ours:6.2f} MB/s")
    print(f"  datasketch  {t_theirs:7.2f} s  {len(corpus) / t_theirs:8.0f} docs/s  {mb / t_theirs:6.2f} MB/s")
    print(f"  ratio       {t_theirs / t_ours:.1f}x")
    print(f"labelled near-duplicate corpus: {len(docs)} documents in {len(set(truth))} clusters")
    print(f"  {'threshold':>9} {'bands x rows':>12}  {'lmforge P / R / F1':>22}  {'datasketch P / R / F1':>22}")
    for q in quality:
        mark = " (default)" if q["threshold"] == cfg.threshold else ""
        o, d = q["lmforge"], q["datasketch"]
        print(f"  {q['threshold']:>9} {q['bands']:>5} x {q['rows']:<4}  {o['precision']:.3f} / {o['recall']:.3f} / "
              f"{o['f1']:.3f}    {d['precision']:.3f} / {d['recall']:.3f} / {d['f1']:.3f}{mark}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
