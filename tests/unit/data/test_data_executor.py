import json
import random

import pytest

from lmforge.data.config import DataConfig, SourceConfig
from lmforge.data.curate import curate
from lmforge.data.shard_work import shard_path

RULES_OFF = {name: {"apply_to": "none"} for name in ("gopher_quality", "gopher_repetition", "c4", "fineweb", "code")}


@pytest.fixture
def corpus(tmp_path):
    """Six JSONL files (one shard each) with varied records, exact and near duplicates across files."""
    rng = random.Random(0)
    vocabulary = [f"word{i}" for i in range(3000)]
    base = [" ".join(rng.choice(vocabulary) for _ in range(120)) for _ in range(40)]
    folder = tmp_path / "in"
    folder.mkdir()
    for f in range(6):
        records = []
        for i in range(40):
            text = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(30, 200)))
            if i % 7 == 0:
                text = base[rng.randrange(40)]  # exact duplicates across files
            elif i % 11 == 0:
                words = base[rng.randrange(40)].split()
                words[rng.randrange(120)] = "edited"
                text = " ".join(words)  # near duplicates
            records.append(json.dumps({"text": text}))
        (folder / f"part{f}.jsonl").write_text("\n".join(records) + "\n")
    return folder


def config(folder, **kw):
    settings = {"quality": RULES_OFF, "shard_mb": 0.001, "report": False, "val_fraction": 0.2, **kw}
    return DataConfig(sources=[SourceConfig(kind="jsonl", path=str(folder))], **settings)


def outputs(out):
    return {name: (out / name).read_bytes() for name in ("train.jsonl", "val.jsonl")}


def test_output_is_identical_whatever_the_number_of_workers(corpus, tmp_path):
    stats = curate(config(corpus, workers=1), seed=1, out_dir=tmp_path / "one")
    assert stats["shards"]["count"] == 6
    assert stats["steps"][-1]["dropped"]["near_duplicate"] > 0 and stats["steps"][-2]["dropped"]["duplicate"] > 0
    for workers in (2, 3):
        other = curate(config(corpus, workers=workers), seed=1, out_dir=tmp_path / f"w{workers}")
        assert outputs(tmp_path / f"w{workers}") == outputs(tmp_path / "one")
        assert other["steps"] == stats["steps"] and other["shards"]["workers"] == workers
    assert not (tmp_path / "one" / "work").exists()  # removed after success


def test_rerun_reuses_finished_shards_and_gives_the_same_bytes(corpus, tmp_path):
    out = tmp_path / "out"
    cfg = config(corpus, workers=1, keep_work=True)
    curate(cfg, seed=2, out_dir=out)
    reference = outputs(out)
    work = out / "work"
    kept_marker = shard_path(work, 0, ".json")
    before = kept_marker.stat().st_mtime_ns
    for index in (2, 5):  # as if killed while these two were running
        shard_path(work, index, ".json").unlink()
    shard_path(work, 3, ".jsonl").with_name("shard_00003.jsonl.tmp-999").write_text("half written")
    curate(cfg, seed=2, out_dir=out)
    assert outputs(out) == reference
    assert kept_marker.stat().st_mtime_ns == before  # shard 0 was reused, not redone
    assert not list(work.glob("*.tmp-*"))
    curate(config(corpus, workers=1, keep_work=True, min_chars=40), seed=2, out_dir=out)  # another plan
    assert kept_marker.stat().st_mtime_ns != before


def test_max_documents_stops_early_with_the_first_kept_documents(corpus, tmp_path):
    full = curate(config(corpus, workers=1, write_dropped=True), seed=3, out_dir=tmp_path / "full")
    capped = curate(config(corpus, workers=2, max_documents=50), seed=3, out_dir=tmp_path / "capped")
    assert capped["shards"]["count"] < full["shards"]["count"]
    order = [f"part{f}.jsonl:{line}" for f in range(6) for line in range(1, 41)]
    kept = {json.loads(line)["id"] for name in ("train.jsonl", "val.jsonl")
            for line in (tmp_path / "full" / name).read_text().splitlines()}
    capped_ids = {json.loads(line)["id"] for name in ("train.jsonl", "val.jsonl")
                  for line in (tmp_path / "capped" / name).read_text().splitlines()}
    assert capped_ids == set([i for i in order if i in kept][:50])


def test_dropped_documents_side_file(corpus, tmp_path):
    stats = curate(config(corpus, workers=2, write_dropped=True, min_chars=200), seed=4, out_dir=tmp_path / "o")
    dropped = [json.loads(line) for line in (tmp_path / "o" / "dropped.jsonl").read_text().splitlines()]
    counted = {(s["name"], reason): n for s in stats["steps"] for reason, n in s["dropped"].items()}
    found = {}
    for record in dropped:
        found[(record["step"], record["reason"])] = found.get((record["step"], record["reason"]), 0) + 1
    assert found == counted
    duplicates = [r for r in dropped if r["step"].startswith("dedup")]
    assert duplicates and all(r["duplicate_of"] and r["text"] for r in duplicates)


def test_a_rerun_with_other_settings_leaves_no_stale_side_files(corpus, tmp_path):
    out = tmp_path / "o"
    curate(config(corpus, workers=1, write_dropped=True, report=True), seed=4, out_dir=out)
    assert {"dropped.jsonl", "summary.md", "length_histogram.png"} <= {p.name for p in out.iterdir()}
    curate(config(corpus, workers=1), seed=4, out_dir=out)
    assert sorted(p.name for p in out.iterdir()) == ["stats.json", "train.jsonl", "val.jsonl"]
