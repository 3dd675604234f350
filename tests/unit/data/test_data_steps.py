from lmforge.data.config import DataConfig, SourceConfig
from lmforge.data.document import Document
from lmforge.data.steps import ExactDedup, LengthFilter, Normalize, StripControl, build_steps, run_steps


def docs(*texts):
    return [Document(id=str(i), text=t, source="test") for i, t in enumerate(texts)]


def texts(step, *inputs):
    return [d.text for d in step(docs(*inputs))]


def test_nfc_composes_but_keeps_compatibility_characters():
    step = Normalize("NFC")
    assert texts(step, "e\u0301", "ﬁ ①", "plain") == ["\u00e9", "ﬁ ①", "plain"]
    s = step.stats
    assert (s.documents_in, s.documents_out, s.changed) == (3, 3, 1)
    assert (s.bytes_in, s.bytes_out) == (3 + 7 + 5, 2 + 7 + 5)
    assert s.dropped == {}


def test_nfkc_folds_compatibility_characters():
    assert texts(Normalize("NFKC"), "e\u0301", "ﬁ ①", "Ｆｕｌｌ") == ["\u00e9", "fi 1", "Full"]
    assert texts(Normalize("NFD"), "\u00e9") == ["e\u0301"]


def test_strip_control_keeps_newline_and_tab_and_normalizes_line_ends():
    step = StripControl()
    out = texts(step, "a\r\nb\rc\x00d\x07e\tf\ng\x0bh\x0ci\x1bj\x7fk\x85l", "clean\ttext\n")
    assert out == ["a\nb\ncde\tf\nghijkl", "clean\ttext\n"]
    assert step.stats.changed == 1


def test_length_filter_reasons():
    step = LengthFilter(min_chars=3, max_chars=5)
    assert texts(step, "ab", "abc", "abcdef", "   \n", "", "abcde") == ["abc", "abcde"]
    s = step.stats
    assert s.dropped == {"too_short": 1, "too_long": 1, "blank": 2}
    assert (s.documents_in, s.documents_out, s.bytes_in, s.bytes_out) == (6, 2, 2 + 3 + 6 + 4 + 0 + 5, 3 + 5)


def test_exact_dedup_keeps_first_occurrence():
    step = ExactDedup()
    out = list(step(docs("a", "b", "a", "c", "b", "a")))
    assert [(d.id, d.text) for d in out] == [("0", "a"), ("1", "b"), ("3", "c")]
    assert step.stats.dropped == {"duplicate": 3}


def test_steps_compose_and_dedup_sees_normalized_text():
    cfg = DataConfig(sources=[SourceConfig(kind="python-stdlib")], min_chars=2, normalize="NFC")
    steps = build_steps(cfg)
    assert [s.name for s in steps] == ["normalize", "strip_control", "length", "quality", "pii"]
    dedup = ExactDedup()
    out = list(dedup(run_steps(docs("cafe\u0301\r\n", "caf\u00e9\n", "x"), steps[:3])))
    assert [d.text for d in out] == ["caf\u00e9\n"]
    assert steps[2].stats.dropped == {"too_short": 1}
    assert dedup.stats.dropped == {"duplicate": 1}
    rules_off = {name: {"apply_to": "none"} for name in ("gopher_quality", "gopher_repetition", "c4", "fineweb", "code")}
    off = DataConfig(sources=[SourceConfig(kind="python-stdlib")], normalize="none", strip_control=False,
                     quality=rules_off, pii={"enabled": False})
    assert [s.name for s in build_steps(off)] == ["length"]
