"""Exact and MinHash near-duplicate removal across the corpus, in corpus order.

Each document is decided when it arrives, against the documents before it: dropped if its digest
equals a kept document's (``dedup_exact``), or if LSH finds an earlier document sharing a band whose
estimated Jaccard similarity reaches the threshold (``dedup_minhash``). It then joins that document's
cluster, so clusters grow transitively (an edited copy of an edited copy still joins), and the earliest
document of a cluster is the one kept. A decision never depends on later documents, so a run that stops
early (``max_documents``) or resumes gives the same answer as a full run. Held in memory: per document
its digest, its signature and its band keys, never its text.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from lmforge.data.config import MinHashConfig
from lmforge.data.minhash import band_keys, estimated_jaccard, optimal_bands
from lmforge.data.shard_work import ShardResult
from lmforge.data.streaming import StepStats

# Members remembered per LSH bucket: a bucket holding this many documents (nearly always of one
# cluster) gains nothing from more, and capping it keeps a huge cluster from making the run quadratic.
BUCKET_LIMIT = 32


class CorpusDedup:
    def __init__(self, exact: bool, minhash: MinHashConfig) -> None:
        self.exact = exact
        self.near = minhash.enabled
        self.threshold = minhash.threshold
        if minhash.bands is not None:
            self.bands, self.rows = minhash.bands, minhash.rows
        else:
            self.bands, self.rows = optimal_bands(minhash.threshold, minhash.num_perm)
        self.exact_stats, self.near_stats = StepStats("dedup_exact"), StepStats("dedup_minhash")
        self.documents = 0  # decided so far: the global index of the next document
        self.kept = 0
        self._digests: dict[bytes, int] = {}  # digest -> global index of the kept document
        self._buckets: list[dict[int, list[int]]] = [defaultdict(list) for _ in range(self.bands)]
        self._rows: dict[int, int] = {}  # global index -> row in _signatures
        self._signatures = np.empty((0, minhash.num_perm), dtype=np.uint32)
        self._count = 0
        self.duplicate_of: dict[int, tuple[int, str]] = {}  # dropped global index -> (kept index, step)

    def add_shard(self, shard: ShardResult) -> np.ndarray:
        """Decide the shard's documents; returns the (n,) keep mask."""
        keep = np.ones(shard.documents, dtype=bool)
        keys = band_keys(shard.signatures, self.bands, self.rows).tolist() if self.near and shard.documents else None
        for i in range(shard.documents):
            index, size = self.documents, int(shard.sizes[i])
            self.documents += 1
            reason = self._exact(index, shard.digests[i].tobytes(), size)
            if reason is None and self.near and shard.has_signature[i]:
                reason = self._near(index, shard.signatures[i], keys[i], size)
            elif reason is None and self.near:
                _count(self.near_stats, size, None)
            keep[i] = reason is None
            self.kept += reason is None
        return keep

    def _exact(self, index: int, digest: bytes, size: int) -> str | None:
        if not self.exact:
            return None
        first = self._digests.get(digest)
        if first is not None:
            self.duplicate_of[index] = (first, "dedup_exact")
            return _count(self.exact_stats, size, "duplicate")
        self._digests[digest] = index
        return _count(self.exact_stats, size, None)

    def _near(self, index: int, signature: np.ndarray, keys: list[int], size: int) -> str | None:
        candidates = sorted({c for band, key in enumerate(keys) for c in self._buckets[band].get(key, ())})
        reason = None
        if candidates:
            similarity = estimated_jaccard(signature, self._signatures[[self._rows[c] for c in candidates]])
            best = int(np.argmax(similarity))  # the most similar, the earliest on ties
            if similarity[best] >= self.threshold:
                match = candidates[best]
                kept = self.duplicate_of[match][0] if match in self.duplicate_of else match
                self.duplicate_of[index] = (kept, "dedup_minhash")
                reason = "near_duplicate"
        for band, key in enumerate(keys):
            bucket = self._buckets[band][key]
            if len(bucket) < BUCKET_LIMIT:
                bucket.append(index)
        self._store(index, signature)
        return _count(self.near_stats, size, reason)

    def _store(self, index: int, signature: np.ndarray) -> None:
        if self._count == len(self._signatures):
            grown = np.empty((max(1024, 2 * self._count), self._signatures.shape[1]), dtype=np.uint32)
            grown[:self._count] = self._signatures[:self._count]
            self._signatures = grown
        self._signatures[self._count] = signature
        self._rows[index] = self._count
        self._count += 1

    def clusters(self) -> dict[int, list[int]]:
        """Kept global index -> the global indices of the documents dropped as its duplicates."""
        groups: dict[int, list[int]] = defaultdict(list)
        for dropped, (kept, _) in self.duplicate_of.items():
            groups[kept].append(dropped)
        return dict(groups)

    def steps(self) -> list[StepStats]:
        return [s for s, on in ((self.exact_stats, self.exact), (self.near_stats, self.near)) if on]


def _count(stats: StepStats, size: int, reason: str | None) -> str | None:
    stats.documents_in += 1
    stats.bytes_in += size
    if reason is None:
        stats.documents_out += 1
        stats.bytes_out += size
    else:
        stats.dropped[reason] += 1
    return reason
