import pytest

from stdlib_samples import stdlib_sample
from lmforge.data.document import Document
from lmforge.data.quality.code import code_rules
from lmforge.data.quality.config import (
    C4Config,
    CodeConfig,
    FineWebConfig,
    GopherQualityConfig,
    GopherRepetitionConfig,
    QualityConfig,
)
from lmforge.data.quality.prose import c4, fineweb, gopher_quality, gopher_repetition
from lmforge.data.quality.step import QualityFilter

GOOD = (
    "The river town woke slowly while the bakers lit their ovens before dawn.\n"
    "Fishermen carried nets to the harbour and argued about the weather with the ferry captain.\n"
    "By eight o'clock the market square was full of farmers selling apples, cheese and honey.\n"
    "Children ran between the stalls, and the old clock above the library struck the hour twice.\n"
    "Visitors who came for the festival found rooms at the inn that faces the stone bridge.\n"
    "In the evening the musicians played on the steps of the church until the lamps were lit.\n"
    "Most people agree that the town is at its best in autumn, when the hills turn gold.\n"
)


def test_good_prose_passes_every_prose_rule_set():
    for rules, cfg in ((gopher_quality, GopherQualityConfig()), (gopher_repetition, GopherRepetitionConfig()),
                       (fineweb, FineWebConfig())):
        assert rules(GOOD, cfg) == (None, GOOD), rules.__name__
    assert c4(GOOD, C4Config()) == (None, GOOD.strip())  # C4 joins the kept lines, stripped


@pytest.mark.parametrize("text, reason", [
    ("Too short to be a document with the words it has.", "gopher_quality:min_doc_words"),
    (" ".join(["a"] * 60), "gopher_quality:min_avg_word_length"),
    (" ".join(["extraordinarily"] * 30 + ["incomprehensibilities"] * 30), "gopher_quality:max_avg_word_length"),
    (GOOD + "#tag " * 20, "gopher_quality:max_symbol_word_ratio"),
    ("\n".join(f"- item number {i} with the words of the list" for i in range(12)), "gopher_quality:max_bullet_lines_ratio"),
    ("\n".join(f"Afterwards the travellers continued walking towards distant mountains {i}..." for i in range(12)),
     "gopher_quality:max_ellipsis_lines_ratio"),
    (GOOD + " 123 456 789 1011 " * 40, "gopher_quality:min_alpha_words_ratio"),
    (" ".join(f"word{i} alpha beta gamma delta" for i in range(15)), "gopher_quality:min_stop_words"),
])
def test_gopher_quality_rules(text, reason):
    assert gopher_quality(text, GopherQualityConfig())[0] == reason


def test_gopher_thresholds_and_switches():
    text = " ".join(["cat"] * 40 + ["the", "and"])
    assert gopher_quality(text, GopherQualityConfig())[0] == "gopher_quality:min_doc_words"
    assert gopher_quality(text, GopherQualityConfig(min_doc_words=40))[0] is None
    assert gopher_quality(text, GopherQualityConfig(min_doc_words=None))[0] is None


@pytest.mark.parametrize("text, reason", [
    ("\n\n".join(["Same paragraph here with words."] * 4 + ["Another one."]), "gopher_repetition:dup_para_frac"),
    ("\n".join(["repeated line of text"] * 5 + [f"unique line {i}" for i in range(6)]), "gopher_repetition:dup_line_frac"),
    (GOOD + "\n" + "the cat " * 60, "gopher_repetition:top_n_grams"),
    (GOOD + " " + " ".join(["Several quiet travellers crossed the northern valley before sunset, carrying "
                            "lanterns, maps and bread for the long journey ahead."] * 3), "gopher_repetition:dup_n_grams"),
])
def test_gopher_repetition_rules(text, reason):
    assert gopher_repetition(text, GopherRepetitionConfig())[0] == reason


def test_gopher_repetition_n_gram_tables_are_configurable():
    text = GOOD + "\n" + "the cat " * 60
    assert gopher_repetition(text, GopherRepetitionConfig(top_n_grams={}, dup_n_grams={}))[0] is None
    assert gopher_repetition(text, GopherRepetitionConfig(top_n_grams={2: 0.9}, dup_n_grams={}))[0] is None


def test_c4_removes_lines_and_drops_documents():
    text = GOOD + "Click here\nThis site uses cookies to track you.\nEnable JavaScript to see the page.\nCited work [1].\n"
    reason, cleaned = c4(text, C4Config())
    assert reason is None
    assert cleaned == GOOD.rstrip("\n") + "\nCited work ."
    assert c4(GOOD + "Lorem ipsum dolor sit amet.\n", C4Config())[0] == "c4:filter_lorem_ipsum"
    assert c4(GOOD + "function f() { return 1; }.\n", C4Config())[0] == "c4:filter_curly_bracket"
    assert c4("One sentence here. Two sentences here.\n", C4Config())[0] == "c4:min_num_sentences"
    assert c4("One sentence here. Two sentences here.\n", C4Config(min_num_sentences=2))[0] is None
    assert c4(GOOD + "function f() { return 1; }.\n", C4Config(filter_curly_bracket=False))[0] is None


@pytest.mark.parametrize("text, reason", [
    ("\n".join(f"a heading without an end {i}" for i in range(10)), "fineweb:line_punct_thr"),
    ("\n".join(f"Short {i}." for i in range(10)), "fineweb:short_line_thr"),
    (GOOD + GOOD.splitlines()[0] + "\n", "fineweb:char_duplicates_ratio"),
    ("\n".join(f"This fairly long line of prose has several words {i}." for i in range(8)) + "\n" * 40,
     "fineweb:new_line_ratio"),
])
def test_fineweb_rules(text, reason):
    assert fineweb(text, FineWebConfig())[0] == reason


@pytest.mark.parametrize("text, reason", [
    ("x = 1\n" + "y = '" + "a" * 1200 + "'\n", "code:max_line_length"),
    ("\n".join("value = compute(" + ", ".join(["argument"] * 14) + ")" for _ in range(5)), "code:max_mean_line_length"),
    ("x = 1\n" + "{}[]();,.:+-*/%\n" * 20, "code:min_alphanumeric_fraction"),
    ("# This file was automatically generated by tool.py. Do not edit.\nx = 1\n", "code:filter_autogenerated"),
    ('DATA = """\n' + "\n".join(["QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVoxMjM0NTY3ODkwYWJjZGVmZ2hpamtsbW5vcHFyc3R1"] * 20)
     + '\n"""\n', "code:max_encoded_blob_chars"),
    ("BLOB = (\n" + "    b'\\x00\\x01\\x02\\x03\\x04\\x05\\x06\\x07\\x08\\x09'\n" * 10 + ")\n",
     "code:max_encoded_fraction"),
])
def test_code_rules(text, reason):
    assert code_rules(text, CodeConfig())[0] == reason


def test_code_rules_keep_almost_all_of_the_standard_library():
    texts = stdlib_sample(150, seed=0, min_chars=64, max_chars=200_000)
    dropped = [code_rules(t, CodeConfig())[0] for t in texts]
    assert sum(r is not None for r in dropped) <= 3, dropped


def test_quality_step_applies_rule_sets_by_document_kind():
    step = QualityFilter(QualityConfig())
    code_doc = Document("a.py", "x = 1\n" * 10, "files", is_code=True)  # fails every prose rule set
    prose_doc = Document("a.txt", "x = 1\n" * 10, "files")
    out = list(step([code_doc, prose_doc, Document("b.txt", GOOD, "files")]))
    assert [d.id for d in out] == ["a.py", "b.txt"]
    assert dict(step.stats.dropped) == {"gopher_repetition:dup_line_frac": 1}
    off = QualityConfig(gopher_quality={"apply_to": "none"}, gopher_repetition={"apply_to": "none"},
                        c4={"apply_to": "none"}, fineweb={"apply_to": "none"}, code={"apply_to": "none"})
    assert not QualityFilter(off).active
    everywhere = QualityFilter(QualityConfig(gopher_quality={"apply_to": "all"}))
    assert list(everywhere([code_doc])) == []
