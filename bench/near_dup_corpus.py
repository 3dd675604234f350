"""A labelled near-duplicate corpus built from real documents (the standard library's .py files).

    docs, clusters = build_corpus(bases=400, seed=0)   # texts, and the true cluster of each text

Bases are distinct files (any two share under 30% of their 5-word shingles, so the negatives are true
negatives). Every base gets 1 to 3 near-duplicate variants, each made by one or two controlled edits of
1% to 10% of its lines: inserted lines (from other files), deleted lines, reordered blocks of lines, or
a changed header (the leading comment or docstring replaced). A third of the bases are wrapped in the
same boilerplate (a license header, an import block, a test-runner footer) before their variants are
made: those documents share text with each other yet are not duplicates.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator

from lmforge.data.readers import stdlib_files

_WORDS = re.compile(r"\w+")
LICENSE = """# Copyright (c) 2024 The Example Project Authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in
# compliance with the License. You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software distributed under the License is
# distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or
# implied. See the License for the specific language governing permissions and limitations under the
# License.
from __future__ import annotations

import logging
import os
import sys
from typing import Any, Dict, List, Optional

logger = logging.getLogger(__name__)
"""
FOOTER = """

def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO)
    logger.info("starting %s", __name__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
"""
HEADERS = ['"""Utilities for the example project (generated documentation stub)."""',
           "# -*- coding: utf-8 -*-\n# Maintained by the platform team; see CONTRIBUTING.md before editing.",
           '"""\nThis module is part of the toolkit.\n\nSee the documentation for usage examples.\n"""']


def shingles(text: str, n: int = 5) -> set[str]:
    words = _WORDS.findall(text.lower())
    return {" ".join(words[i:i + n]) for i in range(max(1, len(words) - n + 1))}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def _stdlib_texts(rng: random.Random, min_chars: int, max_chars: int) -> Iterator[str]:
    """Standard library files of a moderate size, in an order chosen by ``rng``."""
    _, paths = stdlib_files()
    rng.shuffle(paths)
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if min_chars <= len(text) <= max_chars:
            yield text


def _edit(text: str, rng: random.Random, donor_lines: list[str]) -> str:
    lines = text.split("\n")
    k = max(1, round(len(lines) * rng.uniform(0.01, 0.10)))
    kind = rng.choice(["insert", "delete", "reorder", "header"])
    if kind == "insert":
        for _ in range(k):
            lines.insert(rng.randrange(len(lines) + 1), rng.choice(donor_lines))
    elif kind == "delete":
        for _ in range(min(k, len(lines) - 1)):
            del lines[rng.randrange(len(lines))]
    elif kind == "reorder":  # move a block of about k lines elsewhere
        start = rng.randrange(len(lines))
        block = lines[start:start + k]
        del lines[start:start + k]
        at = rng.randrange(len(lines) + 1)
        lines[at:at] = block
    else:  # replace the leading comment / docstring lines with another header
        end = 0
        while end < len(lines) and end < 15 and (lines[end].startswith(("#", '"""', "'''")) or not lines[end].strip()
                                               or (end and lines[0].startswith('"""') and '"""' not in lines[end - 1][3:])):
            end += 1
        lines[:max(end, 1)] = rng.choice(HEADERS).split("\n")
    return "\n".join(lines)


def build_corpus(bases: int, seed: int, min_chars: int = 1_500, max_chars: int = 30_000) -> tuple[list[str], list[int]]:
    """(texts, cluster label of each text), shuffled; documents with the same label are near-duplicates."""
    rng = random.Random(seed)
    pool = _stdlib_texts(rng, min_chars, max_chars)
    chosen: list[str] = []
    chosen_shingles: list[set] = []
    for text in pool:
        s = shingles(text)
        if all(jaccard(s, other) < 0.3 for other in chosen_shingles):
            chosen.append(text)
            chosen_shingles.append(s)
            if len(chosen) == bases:
                break
    donors = [text for _, text in zip(range(max(20, bases // 4)), pool)]  # files not among the bases
    donor_lines = [line for text in donors for line in text.split("\n") if len(line.strip()) > 20]
    docs: list[tuple[str, int]] = []
    for label, base in enumerate(chosen):
        if rng.random() < 1 / 3:
            base = LICENSE + base + FOOTER
        docs.append((base, label))
        for _ in range(rng.randint(1, 3)):
            variant = _edit(base, rng, donor_lines)
            if rng.random() < 0.3:
                variant = _edit(variant, rng, donor_lines)
            docs.append((variant, label))
    rng.shuffle(docs)
    return [t for t, _ in docs], [label for _, label in docs]


def pair_scores(true_labels: list[int], predicted: list[int]) -> dict:
    """Pairwise precision, recall and F1 of a clustering (pairs in one cluster = predicted duplicates)."""
    def pairs(labels: list[int]) -> set[tuple[int, int]]:
        groups: dict[int, list[int]] = {}
        for i, label in enumerate(labels):
            groups.setdefault(label, []).append(i)
        return {(a, b) for members in groups.values() for i, a in enumerate(members) for b in members[i + 1:]}

    truth, found = pairs(true_labels), pairs(predicted)
    tp = len(truth & found)
    precision = tp / len(found) if found else 1.0
    recall = tp / len(truth) if truth else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "true_pairs": len(truth), "found_pairs": len(found)}
