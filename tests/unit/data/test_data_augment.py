import json
import random

from lmforge.data.augment.apply import Augmenter
from lmforge.data.augment.config import AugmentConfig
from lmforge.data.augment.rename import rename_locals
from lmforge.data.augment.words import delete_words, insert_words, swap_words
from lmforge.data.config import DataConfig, SourceConfig
from lmforge.data.curate import curate
from lmforge.data.document import Document

TEXT = "the quick brown fox\njumps over the lazy dog\nand runs far away into the dark forest"
RULES_OFF = {name: {"apply_to": "none"} for name in ("gopher_quality", "gopher_repetition", "c4", "fineweb", "code")}


def test_word_operations_are_seeded_and_keep_the_layout():
    words = TEXT.split()
    deleted = delete_words(TEXT, random.Random(0), 0.2)
    assert len(deleted.split()) == len(words) - 3 and deleted != TEXT
    assert delete_words(TEXT, random.Random(0), 0.2) == deleted  # seeded
    swapped = swap_words(TEXT, random.Random(1), 0.1)
    assert sorted(swapped.split()) == sorted(words) and swapped != TEXT
    assert [len(line.split()) for line in swapped.split("\n")] == [4, 5, 8]  # words move, lines stay
    inserted = insert_words(TEXT, random.Random(2), 0.1)
    added = inserted.split()
    assert len(added) == len(words) + 2 and set(added) <= set(words)  # only the document's own words


def test_renaming_is_consistent_and_keeps_code_valid():
    source = (
        "import os\n\ndef total(items, start=0):\n    result = start\n    for item in items:\n"
        "        result += item\n    label = f'{result} done'\n    try:\n        os.stat('.')\n"
        "    except OSError as error:\n        print(error)\n    return result, label\n"
    )
    renamed = rename_locals(source, random.Random(3))
    namespace: dict = {}
    exec(compile(renamed, "<renamed>", "exec"), namespace)  # a test of our own generated code
    assert namespace["total"]([1, 2, 3], start=4) == (10, "10 done")  # same behaviour, arguments kept
    for kept in ("items", "start", "error", "os.stat"):
        assert kept in renamed
    assert "result" not in renamed and "label" not in renamed
    assert rename_locals("def f(:\n", random.Random(0)) is None  # not Python
    assert rename_locals("x = 1\n", random.Random(0)) is None  # no function locals


def test_augmenter_chooses_a_seeded_share_and_keeps_labels():
    cfg = AugmentConfig(enabled=True, fraction=0.3, copies=2)
    docs = [Document(f"d{i}", f"document {i} " + TEXT, "s", label=str(i % 3)) for i in range(400)]
    aug = Augmenter(cfg, seed=5)
    copies = [c for d in docs for c in aug.copies(d)]
    chosen = {c.id.split("#")[0] for c in copies}
    assert 0.22 * 400 < len(chosen) < 0.38 * 400
    assert {c.label for c in copies if c.id.startswith("d7#")} <= {docs[7].label}
    assert all(c.label == docs[int(c.id[1:].split("#")[0])].label for c in copies)
    assert sum(aug.counts.values()) == len(copies)
    again = [c for d in docs for c in Augmenter(cfg, seed=5).copies(d)]
    assert [(c.id, c.text) for c in again] == [(c.id, c.text) for c in copies]  # seeded by content
    other_seed = [c for d in docs for c in Augmenter(cfg, seed=6).copies(d)]
    assert [c.id for c in other_seed] != [c.id for c in copies]


def test_augmented_copies_go_to_the_training_split_only(tmp_path):
    path = tmp_path / "in.jsonl"
    rng = random.Random(0)
    vocabulary = TEXT.split() + [f"term{i}" for i in range(200)]
    path.write_text("".join(json.dumps({"text": " ".join(rng.choice(vocabulary) for _ in range(40)), "label": i % 2})
                            + "\n" for i in range(300)))
    cfg = DataConfig(sources=[SourceConfig(kind="jsonl", path=str(path), label_field="label")], quality=RULES_OFF,
                     minhash={"enabled": False}, val_fraction=0.2, report=False, workers=1,
                     augment={"enabled": True, "fraction": 0.5, "operations": ["delete", "swap", "insert"]})
    stats = curate(cfg, seed=3, out_dir=tmp_path / "out")
    train = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    val = [json.loads(line) for line in (tmp_path / "out" / "val.jsonl").read_text().splitlines()]
    originals = {r["id"]: r for r in train if "#aug" not in r["id"]}
    augmented = [r for r in train if "#aug" in r["id"]]
    assert not any("#aug" in r["id"] for r in val)
    assert 0.35 * len(originals) < len(augmented) < 0.65 * len(originals)
    for record in augmented:
        original = originals[record["id"].split("#")[0]]  # the original is in train too
        assert record["label"] == original["label"] and record["text"] != original["text"]
    val_texts = {r["text"] for r in val}
    assert not any(r["text"] in val_texts for r in augmented)
    assert sum(stats["augmented"].values()) == len(augmented)
    assert stats["splits"]["train"]["documents"] == len(train)
