import hashlib
import random
import sys
from pathlib import Path

import datasketch.lsh as datasketch_lsh  # a pinned test dependency (requirements-dev.txt): missing fails
import numpy as np
import pytest

from lmforge.data.config import MinHashConfig
from lmforge.data.dedup import BUCKET_LIMIT, CorpusDedup
from lmforge.data.minhash import MinHasher, band_keys, collision_probability, optimal_bands, word_hashes
from lmforge.data.readers import SourceStats
from lmforge.data.shard_work import LENGTH_BINS, ShardResult

sys.path.insert(0, str(Path(__file__).parents[3] / "bench"))  # the benchmark's labelled corpus, smaller
from near_dup_corpus import build_corpus, jaccard, pair_scores, shingles  # noqa: E402


def shard_of(texts, cfg=MinHashConfig(), start=0):
    hasher = MinHasher(cfg.num_perm, cfg.ngram, cfg.seed)
    sigs = [hasher.signature(t) for t in texts]
    digests = np.frombuffer(b"".join(hashlib.sha256(t.encode()).digest()[:16] for t in texts), np.uint8)
    return ShardResult(start, 0, len(texts), SourceStats(), [], [0] * LENGTH_BINS, digests.reshape(-1, 16),
                       np.array([s if s is not None else np.zeros(cfg.num_perm, np.uint32) for s in sigs], np.uint32)
                       .reshape(len(texts), cfg.num_perm),
                       np.array([s is not None for s in sigs]), np.array([len(t) for t in texts]))


def words(rng, n):
    return [f"w{rng.randrange(50_000)}" for _ in range(n)]


def test_word_hashes_are_case_insensitive_and_see_unicode_words():
    h = word_hashes("Hello, world! HELLO wörld_2 héllo héllo")
    assert h[0] == h[2] and h[4] == h[5] and len(set(h.tolist())) == 4
    assert word_hashes("").size == 0 and word_hashes("  ... !!").size == 0


def test_signature_estimates_jaccard_without_bias():
    rng = random.Random(0)
    hasher = MinHasher(128, 5)
    errors = []
    for _ in range(150):
        a = words(rng, 300)
        b = list(a)
        for i in rng.sample(range(300), rng.randrange(0, 200)):
            b[i] = f"x{rng.randrange(50_000)}"
        truth = jaccard(set(hasher.shingle_hashes(" ".join(a)).tolist()), set(hasher.shingle_hashes(" ".join(b)).tolist()))
        estimate = float(np.mean(hasher.signature(" ".join(a)) == hasher.signature(" ".join(b))))
        errors.append(estimate - truth)
    assert abs(np.mean(errors)) < 0.01  # unbiased
    assert np.std(errors) < 0.05  # sqrt(J(1-J)/128) <= 0.044
    assert np.array_equal(hasher.signature("a b c d e f"), MinHasher(128, 5).signature("A B c d e f"))
    assert hasher.signature("!!!") is None
    assert hasher.signature("two words").shape == (128,)  # fewer words than the shingle size: one shingle


def test_band_keys_match_exactly_when_a_band_matches():
    sig = np.random.default_rng(0).integers(0, 2**32, size=(1, 128), dtype=np.uint32)
    other = sig.copy()
    other[0, 7] += 1  # band 1 (rows 5..9) of 25 x 5 differs
    keys = band_keys(np.vstack([sig, other]), 25, 5)
    assert keys.shape == (2, 25)
    assert [b for b in range(25) if keys[0, b] != keys[1, b]] == [1]


def test_optimal_bands_match_datasketch():
    for threshold, num_perm in ((0.5, 128), (0.7, 128), (0.9, 64)):
        assert optimal_bands(threshold, num_perm) == datasketch_lsh._optimal_param(threshold, num_perm, 0.5, 0.5)
    assert collision_probability(0.5, 25, 5) == pytest.approx(1 - (1 - 0.5**5) ** 25)


def test_exact_and_near_duplicates_keep_the_first_and_cluster_transitively():
    rng = random.Random(1)
    base = words(rng, 400)
    positions = rng.sample(range(400), 16)
    edited = list(base)
    for i in positions[:8]:
        edited[i] = "changed"
    edited_again = list(edited)
    for i in positions[8:]:
        edited_again[i] = "again"
    other = words(rng, 400)
    texts = [" ".join(t) for t in (base, other, edited, base, edited_again)]
    hasher = MinHasher(128, 5)
    similarity = [np.mean(hasher.signature(texts[a]) == hasher.signature(texts[b])) for a, b in ((0, 2), (2, 4), (0, 4))]
    assert similarity[0] >= 0.7 and similarity[1] >= 0.7 and similarity[2] < 0.7  # 4 is like 2, not like 0
    dedup = CorpusDedup(True, MinHashConfig(threshold=0.7))
    keep = dedup.add_shard(shard_of(texts))
    assert keep.tolist() == [True, True, False, False, False]
    assert dedup.duplicate_of == {2: (0, "dedup_minhash"), 3: (0, "dedup_exact"), 4: (0, "dedup_minhash")}
    assert dedup.clusters() == {0: [2, 3, 4]}
    assert (dedup.exact_stats.dropped, dedup.near_stats.dropped) == ({"duplicate": 1}, {"near_duplicate": 2})
    assert dedup.near_stats.documents_in == 4  # the exact duplicate never reaches the MinHash step


def test_decisions_do_not_depend_on_later_documents():
    texts, truth = build_corpus(20, seed=5)
    assert set(truth[:30]) & set(truth[30:])  # clusters cross the cut: later copies of earlier documents exist
    full = CorpusDedup(True, MinHashConfig())
    keep_all = full.add_shard(shard_of(texts))  # the whole corpus in one shard: every later document seen
    prefix = CorpusDedup(True, MinHashConfig())
    keep_prefix = prefix.add_shard(shard_of(texts[:30]))  # the prefix alone, as a run stopped early
    assert np.array_equal(keep_prefix, keep_all[:30]) and not keep_prefix.all()
    assert prefix.duplicate_of == {i: d for i, d in full.duplicate_of.items() if i < 30}
    # and where the shards are cut does not matter either
    sharded = CorpusDedup(True, MinHashConfig())
    keep_sharded = np.concatenate([sharded.add_shard(shard_of(texts[:30])),
                                   sharded.add_shard(shard_of(texts[30:], start=1))])
    assert np.array_equal(keep_sharded, keep_all) and sharded.duplicate_of == full.duplicate_of


def test_large_clusters_stay_linear():
    texts = [" " * i + "the same boilerplate text with a few words " * 20 for i in range(3 * BUCKET_LIMIT)]
    dedup = CorpusDedup(False, MinHashConfig())
    assert dedup.add_shard(shard_of(texts)).sum() == 1
    assert max(len(b) for bucket in dedup._buckets for b in bucket.values()) <= BUCKET_LIMIT


def test_labelled_near_duplicates_f1_at_least_095():
    texts, truth = build_corpus(40, seed=11)
    dedup = CorpusDedup(False, MinHashConfig())
    dedup.add_shard(shard_of(texts))
    predicted = [dedup.duplicate_of.get(i, (i, ""))[0] for i in range(len(texts))]
    scores = pair_scores(truth, predicted)
    assert scores["f1"] >= 0.95, scores
    assert scores["precision"] >= 0.95, scores
    sets = [shingles(t) for t in texts[:50]]
    negatives = [jaccard(a, b) for a, la in zip(sets, truth) for b, lb in zip(sets, truth) if la < lb]
    assert max(negatives) < 0.5  # the negatives are real negatives
