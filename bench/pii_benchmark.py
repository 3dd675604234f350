"""PII scrubbing: recall and precision per kind on a planted set, and what the default run replaces.

    python bench/pii_benchmark.py [--hosts 200] [--per-kind 4] [--json OUT]

planted:  a seeded synthetic set of each kind (bench/pii_corpus.py: e-mail, IPv4, IPv6, phone, Luhn-valid
          card numbers, AWS key ids, GitHub tokens, private key blocks, high-entropy secrets) planted in
          real standard library files together with decoys that are ordinary code (version strings, hex
          colours, hashes, UUIDs, dates, OIDs, MAC addresses, slices, ...); recall and precision per kind.
stdlib:   replacements by kind over the whole standard library (the built-in run's corpus), and MB/s.
No peer runs here: the PII tools a user would pick (Presidio, scrubadub, detect-secrets) are not installed.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from pii_corpus import KINDS, measure  # noqa: E402

from lmforge.data.pii.config import PiiConfig  # noqa: E402
from lmforge.data.pii.step import scrub  # noqa: E402
from lmforge.data.readers import stdlib_files  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=200)
    parser.add_argument("--per-kind", type=int, default=4)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    cfg = PiiConfig()
    _, files = stdlib_files()
    texts = []
    for path in files:
        try:
            texts.append(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            pass
    hosts = [t for t in texts if 2_000 <= len(t) <= 20_000][:args.hosts]
    planted, found, false = measure(cfg, seed=0, hosts=hosts, per_kind=args.per_kind)
    start = time.perf_counter()
    replaced: Counter = Counter()
    changed = 0
    for text in texts:
        _, counts = scrub(text, cfg)
        replaced.update(counts)
        changed += bool(counts)
    seconds = time.perf_counter() - start
    mb = sum(len(t.encode()) for t in texts) / 1e6
    rows = {k: {"planted": planted[k], "found": found[k], "false": false[k], "recall": found[k] / planted[k],
                "precision": found[k] / (found[k] + false[k]) if found[k] + false[k] else 1.0} for k in KINDS}
    print(f"{platform.machine()}, Python {platform.python_version()}; {len(hosts)} host files, "
          f"{args.per_kind} of each kind per file")
    print(f"{'kind':<14}{'planted':>8}{'found':>7}{'false':>7}{'recall':>8}{'precision':>11}")
    for kind, r in rows.items():
        print(f"{kind:<14}{r['planted']:>8}{r['found']:>7}{r['false']:>7}{r['recall']:>8.3f}{r['precision']:>11.3f}")
    print(f"stdlib: {len(texts)} files, {mb:.1f} MB, {changed} files changed, {mb / seconds:.1f} MB/s (one process); "
          "replacements: " + ", ".join(f"{k} {v}" for k, v in sorted(replaced.items())))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"planted": rows, "stdlib": {"files": len(texts), "changed": changed,
                                         "replacements": dict(replaced), "mb_s": mb / seconds}}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
